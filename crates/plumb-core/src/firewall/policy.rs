//! Network policies in the kernel, from [`crate::policy::compile`]'s values: one lookup in a
//! concatenated interval set (`policy_allow`: source . destination . protocol . port)
//! decides whether a policy allows a flow; verdict maps from an isolated address to its
//! service's deny chain (counter, and a rate-limited log when a policy asks) deny the rest
//! for isolated services. Only a stack with policies gets them; their base chains never
//! change with the policies, so an edit is element and chain updates in one transaction.
//!
//! `inet`: routed traffic (forward, with conntrack for replies), containers to the host
//! (input; plumb's DNS on the gateways always passes), the host to containers (output,
//! published ports from the host included). Base chains at priority -10, before plumb's
//! other filter chains: an accept here still meets network isolation there, so policies only
//! restrict. `bridge`: frames between containers on one bridge, which never reach the inet
//! hooks without br_netfilter. The bridge family has no conntrack without
//! `nf_conntrack_bridge`, so replies pass through a set of allowed flows the packet path
//! fills and refreshes (`policy_flows`, idle timeout [`FLOW_TIMEOUT`]).
//!
//! Broadcast and multicast (and any frame not addressed to the container whose port it
//! leaves by) are judged per receiving bridge port, before anything else in the bridge table:
//! one lookup of `source . port . protocol . port number` in `policy_port_allow` (the allowed
//! flows, each destination range turned into the ports of the containers in it), else the
//! port's service's ingress deny chain (`policy_ingress_ports`), else the sender's egress
//! deny chain. A frame a unicast to that container would not pass, a broadcast does not
//! either.

use super::{antispoof, Hook, HookPoint, Rule, Ruleset, Set};
use crate::desired::Desired;
use crate::names;
use crate::policy::{compile, Compiled, Target};

/// Flows idle this long are forgotten by the bridge table (replies then count as new flows).
pub const FLOW_TIMEOUT: &str = "10m";
/// The most flows the bridge table remembers; past it, new flows of isolated services are denied.
const FLOW_SLOTS: u32 = 65536;
/// Priority of the policy base chains in `inet`: before plumb's own filter chains (0).
const INET_PRIORITY: i32 = -10;

const ALLOW: &str = "policy_allow";
pub(super) const TO_HOST: &str = "policy_to_host";
const FROM_HOST: &str = "policy_from_host";
const INGRESS: &str = "policy_ingress";
const EGRESS: &str = "policy_egress";
const ISOLATED: &str = "policy_isolated";
const FLOWS: &str = "policy_flows";
const PORT_ALLOW: &str = "policy_port_allow";
const INGRESS_PORTS: &str = "policy_ingress_ports";

const FLOW_KEY: &str = "ip saddr . ip daddr . meta l4proto . th dport";
const TUPLE: &str = "ip saddr . ip daddr . meta l4proto . th sport . th dport";
const REPLY_TUPLE: &str = "ip daddr . ip saddr . meta l4proto . th dport . th sport";

pub fn contribute_inet(desired: &Desired, rules: &mut Ruleset) {
    if desired.policies.is_empty() {
        return;
    }
    let c = compile(desired);
    common(desired, &c, rules);
    let host_set = |name: &str, elements: Vec<String>| {
        let mut s = Set::new(name, "ipv4_addr . inet_proto . inet_service", None);
        s.options.push("flags interval".into());
        s.elements = elements.into_iter().map(|e| (e, None)).collect();
        s
    };
    rules.set(host_set(TO_HOST, c.to_host.iter().map(|f| f.text()).collect()));
    rules.set(host_set(FROM_HOST, c.from_host.iter().map(|f| f.text()).collect()));
    let established = || {
        Rule::new(
            "ct state established,related accept",
            "policies: replies to allowed connections",
        )
    };
    let hook = |point| Hook {
        priority: INET_PRIORITY,
        ..Hook::filter(point)
    };
    // Where br_netfilter is loaded, frames bridged between two containers also pass the inet
    // hooks, after the bridge table's policy chain has judged them: they are told from routed
    // packets by their destination MAC (a routed packet is sent to the bridge's own MAC), so
    // the allowed-flow set is looked up once per new connection, not twice.
    let bridges: Vec<String> = desired.networks.iter().map(|n| format!("\"{}\"", n.bridge)).collect();
    let own_macs: Vec<String> = desired
        .networks
        .iter()
        .map(|n| format!("\"{}\" . {}", n.bridge, n.bridge_mac()))
        .collect();
    let bridged = Rule::new(
        format!(
            "iifname {{ {} }} iifname . ether daddr != {{ {} }} accept",
            bridges.join(", "),
            own_macs.join(", ")
        ),
        "policies: bridged frames (br_netfilter) were judged in the bridge table",
    );
    let forward = rules.chain("policy_forward", Some(hook(HookPoint::Forward)));
    forward.rules.extend([
        established(),
        bridged,
        Rule::new(format!("{FLOW_KEY} @{ALLOW} accept"), "policies: allowed flows"),
        Rule::new(format!("ip daddr vmap @{INGRESS}"), "policies: default-deny ingress"),
        Rule::new(format!("ip saddr vmap @{EGRESS}"), "policies: default-deny egress"),
    ]);
    let gateways: Vec<String> = c.gateways.iter().map(|g| g.to_string()).collect();
    let input = rules.chain("policy_input", Some(hook(HookPoint::Input)));
    input.rules.extend([
        established(),
        Rule::new(
            format!(
                "ip daddr {{ {} }} meta l4proto {{ tcp, udp }} th dport 53 accept",
                gateways.join(", ")
            ),
            "policies: plumb's DNS resolver is always reachable",
        ),
    ]);
    if c.trace_receiver {
        input.rules.push(Rule::new(
            format!(
                "ip daddr {{ {} }} tcp dport {} accept",
                gateways.join(", "),
                crate::mesh::OTLP_PORT
            ),
            "policies: a meshed stack's trace receiver is always reachable",
        ));
    }
    input.rules.extend([
        Rule::new(
            format!("ip saddr . meta l4proto . th dport @{TO_HOST} accept"),
            "policies: allowed flows to the host",
        ),
        Rule::new(format!("ip saddr vmap @{EGRESS}"), "policies: default-deny egress"),
    ]);
    let output = rules.chain("policy_output", Some(hook(HookPoint::Output)));
    output.rules.extend([
        established(),
        Rule::new(
            format!("ip daddr . meta l4proto . th dport @{FROM_HOST} accept"),
            "policies: allowed flows from the host",
        ),
        Rule::new(format!("ip daddr vmap @{INGRESS}"), "policies: default-deny ingress"),
    ]);
}

pub fn contribute_bridge(desired: &Desired, rules: &mut Ruleset) {
    if desired.policies.is_empty() || desired.containers.is_empty() {
        return;
    }
    let c = compile(desired);
    common(desired, &c, rules);
    let mut isolated = Set::new(ISOLATED, "ipv4_addr", None);
    isolated.elements = c
        .isolated(&c.ingress)
        .chain(c.isolated(&c.egress))
        .map(|(a, _)| (a.to_string(), None))
        .collect();
    rules.set(isolated);
    let mut flows = Set::new(
        FLOWS,
        "ipv4_addr . ipv4_addr . inet_proto . inet_service . inet_service",
        None,
    );
    flows.options = vec![
        format!("size {FLOW_SLOTS}"),
        "flags dynamic,timeout".into(),
        format!("timeout {FLOW_TIMEOUT}"),
    ];
    rules.set(flows);
    group_sets(desired, &c, rules);
    let remember = format!("update @{FLOWS} {{ {TUPLE} }}");
    // Not addressed to the receiving port's container: broadcast, multicast.
    let group = format!("oifname . ip daddr != @{}", antispoof::PORT_ADDRS);
    let forward = rules.chain("policy_forward", Some(Hook::bridge_filter(HookPoint::Forward)));
    forward.rules.extend([
        Rule::new(
            format!("{group} ip saddr . oifname . meta l4proto . th dport @{PORT_ALLOW} accept"),
            "policies: broadcast and multicast, allowed to this port",
        ),
        Rule::new(
            format!("{group} oifname vmap @{INGRESS_PORTS}"),
            "policies: broadcast and multicast, default-deny ingress of this port",
        ),
        Rule::new(
            format!("{group} ip saddr vmap @{EGRESS}"),
            "policies: broadcast and multicast, default-deny egress",
        ),
        Rule::new(
            format!("{REPLY_TUPLE} @{FLOWS} update @{FLOWS} {{ {REPLY_TUPLE} }} accept"),
            "policies: replies to allowed flows",
        ),
        Rule::new(
            format!("{TUPLE} @{FLOWS} {remember} accept"),
            "policies: flows already allowed",
        ),
        Rule::new(
            format!("{FLOW_KEY} @{ALLOW} {remember} accept"),
            "policies: allowed flows",
        ),
        Rule::new(format!("ip daddr vmap @{INGRESS}"), "policies: default-deny ingress"),
        Rule::new(format!("ip saddr vmap @{EGRESS}"), "policies: default-deny egress"),
        Rule::new(
            format!("ip saddr @{ISOLATED} {remember}"),
            "policies: remember flows whose replies isolation would stop",
        ),
        Rule::new(
            format!("ip daddr @{ISOLATED} {remember}"),
            "policies: remember flows whose replies isolation would stop",
        ),
    ]);
}

/// The bridge table's view of the policies by receiving port: the allowed flows with each
/// destination range replaced by the ports of the container interfaces in it (disjoint, as
/// the flows are), and each ingress-isolated interface's port to its service's deny chain.
fn group_sets(desired: &Desired, c: &Compiled, rules: &mut Ruleset) {
    let ports: Vec<(&str, u32)> = desired
        .containers
        .iter()
        .flat_map(|k| k.interfaces.iter())
        .map(|i| (i.host_veth.as_str(), u32::from(i.address)))
        .collect();
    let mut allow = Set::new(PORT_ALLOW, "ipv4_addr . ifname . inet_proto . inet_service", None);
    allow.options.push("flags interval".into());
    for f in &c.allow {
        for (port, _) in ports.iter().filter(|(_, a)| f.dst.contains(*a)) {
            let element = format!(
                "{} . \"{port}\" . {} . {}",
                f.src.addr_text(),
                f.protocol.as_str(),
                f.ports.port_text()
            );
            allow.elements.insert(element, None);
        }
    }
    rules.set(allow);
    let mut isolated = Set::new(INGRESS_PORTS, "ifname", Some("verdict"));
    for (addr, svc) in c.isolated(&c.ingress) {
        for (port, _) in ports.iter().filter(|(_, a)| *a == u32::from(addr)) {
            let verdict = format!("goto {}", deny_chain("to", svc));
            isolated.elements.insert(format!("\"{port}\""), Some(verdict));
        }
    }
    rules.set(isolated);
}

/// What both tables hold: the allowed flows, the isolation maps and the deny chains.
fn common(desired: &Desired, c: &Compiled, rules: &mut Ruleset) {
    let mut allow = Set::new(ALLOW, "ipv4_addr . ipv4_addr . inet_proto . inet_service", None);
    allow.options.push("flags interval".into());
    allow.elements = c.allow.iter().map(|f| (f.text(), None)).collect();
    rules.set(allow);
    for (map, direction, targets) in [(INGRESS, "to", &c.ingress), (EGRESS, "from", &c.egress)] {
        let mut m = Set::new(map, "ipv4_addr", Some("verdict"));
        m.elements = c
            .isolated(targets)
            .map(|(a, svc)| (a.to_string(), Some(format!("goto {}", deny_chain(direction, svc)))))
            .collect();
        rules.set(m);
        for (svc, target) in targets {
            deny(desired, rules, direction, svc, target);
        }
    }
}

/// Packets each service's default-deny dropped, by (direction, service), from one table's
/// objects as `tables_in_listing` gives them.
pub fn deny_counts(objects: &[serde_json::Value]) -> std::collections::BTreeMap<(String, String), u64> {
    super::counts_by_chain(objects, "deny_")
        .into_iter()
        .filter_map(|(rest, n)| {
            let (direction, service) = rest.split_once('_')?;
            Some(((direction.to_string(), service.to_string()), n))
        })
        .collect()
}

/// What one service's default-deny in one direction dropped, and the policies that isolate it
/// there (each as `policies[i] plumb.toml:42`): for `plumb ui`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Denial {
    pub service: String,
    /// `ingress` (what reaches it) or `egress` (what it sends).
    pub direction: &'static str,
    pub packets: u64,
    pub policies: Vec<String>,
}

/// Every service the policies isolate, with the packets its deny chains dropped summed over
/// the stack's tables (`tables_in_listing`'s; both families hold deny chains).
pub fn denials(
    desired: &Desired,
    tables: &std::collections::BTreeMap<super::TableId, Vec<serde_json::Value>>,
) -> Vec<Denial> {
    let name = names::nft_table(&desired.stack);
    let mut counts: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for (_, objects) in tables.iter().filter(|(id, _)| id.name == name) {
        for (key, n) in deny_counts(objects) {
            *counts.entry(key).or_default() += n;
        }
    }
    let compiled = compile(desired);
    let mut out = Vec::new();
    for (direction, chain, targets) in [
        ("ingress", "to", &compiled.ingress),
        ("egress", "from", &compiled.egress),
    ] {
        for (service, target) in targets {
            out.push(Denial {
                service: service.clone(),
                direction,
                packets: counts.get(&(chain.to_string(), service.clone())).copied().unwrap_or(0),
                policies: target
                    .policies
                    .iter()
                    .map(|i| format!("policies[{i}] {}", desired.policies[*i].source))
                    .collect(),
            });
        }
    }
    out
}

fn deny_chain(direction: &str, service: &str) -> String {
    format!("deny_{direction}_{service}")
}

/// A service's deny chain in one direction: a rate-limited log if a policy asks, a counter, drop.
fn deny(desired: &Desired, rules: &mut Ruleset, direction: &str, service: &str, target: &Target) {
    let chain = rules.chain(&deny_chain(direction, service), None);
    if !target.logged.is_empty() {
        let named: Vec<String> = target
            .logged
            .iter()
            .map(|i| format!("policies[{i}] {}", desired.policies[*i].source))
            .collect();
        let prefix = format!(
            "plumb {} deny {direction} {service} ({}): ",
            desired.stack,
            named.join(", ")
        );
        chain.rules.push(Rule::new(
            format!(
                "limit rate 10/second burst 20 packets log prefix \"{}\"",
                log_prefix(&prefix)
            ),
            format!("{service}: log what {direction} default-deny drops"),
        ));
    }
    chain.rules.push(Rule::new(
        "counter drop",
        format!("{service}: {direction} default-deny"),
    ));
}

/// A log prefix: a safe label ([`names::label`]: no newline can forge a kernel log line) of
/// at most 127 bytes, ending in `...: ` when cut.
fn log_prefix(text: &str) -> String {
    let whole = names::label(text, usize::MAX);
    if whole.len() <= names::LOG_PREFIX_MAX {
        return whole;
    }
    names::label(&whole, names::LOG_PREFIX_MAX - 2) + ": "
}

#[cfg(test)]
mod tests {
    use super::log_prefix;
    use crate::desired::resolve;
    use crate::firewall::rulesets;
    use crate::spec::parse;

    #[test]
    fn denials_sum_both_tables_and_name_the_isolating_policy() {
        use crate::firewall::{Family, TableId};
        let text = "name = \"s\"\n[networks.n]\nsubnet = \"10.9.0.0/24\"\n[services.a]\n[services.b]\n\
                    [[policies]]\nfrom = \"a\"\nto = \"b\"\nports = [80]\n";
        let d = resolve(&parse("plumb.toml", text).unwrap(), &Default::default())
            .unwrap()
            .0;
        let rule = |chain: &str, n: u64| serde_json::json!({"rule": {"chain": chain, "expr": [{"counter": {"packets": n, "bytes": 60 * n}}, {"drop": null}]}});
        let table = |family| TableId {
            family,
            name: crate::names::nft_table("s"),
        };
        let tables = [
            (table(Family::Inet), vec![rule("deny_to_b", 2)]),
            (table(Family::Bridge), vec![rule("deny_to_b", 3)]),
        ]
        .into_iter()
        .collect();
        let found = super::denials(&d, &tables);
        let b = found
            .iter()
            .find(|x| x.service == "b" && x.direction == "ingress")
            .unwrap();
        assert_eq!(b.packets, 5);
        assert_eq!(b.policies, vec!["policies[0] plumb.toml:6".to_string()]);
        let a = found
            .iter()
            .find(|x| x.service == "a" && x.direction == "egress")
            .unwrap();
        assert_eq!(a.packets, 0);
    }

    #[test]
    fn a_newline_in_the_stack_files_path_reaches_no_log_prefix_nor_comment() {
        let text = "name = \"s\"\n[networks.n]\nsubnet = \"10.9.0.0/24\"\n[services.a]\n[services.b]\n\
                    [[policies]]\nfrom = \"a\"\nto = \"b\"\nlog = true\n";
        let file = "/tmp/x\nkernel: Out of memory: Killed process 1 \"init\"\n/plumb.toml";
        let d = resolve(&parse(file, text).unwrap(), &Default::default()).unwrap().0;
        for table in rulesets(&d) {
            let printed = table.print();
            let prefix = printed.lines().find(|l| l.contains("log prefix")).map(str::to_string);
            for line in printed.lines() {
                assert!(!line.trim_start().starts_with("kernel:"), "forged line in\n{printed}");
            }
            if let Some(line) = prefix {
                assert!(line.contains("/tmp/x?kernel: Out of memory"), "{line}");
                assert!(line.contains("'init'?/plumb.toml:6"), "{line}");
            }
        }
        assert!(log_prefix(&"x".repeat(300)).ends_with("...: "));
        assert!(log_prefix(&"é\n".repeat(300)).len() <= 127);
    }

    #[test]
    fn broadcast_and_multicast_are_judged_by_receiving_port_first() {
        let text = "name = \"s\"\n[networks.n]\nsubnet = \"10.9.0.0/24\"\n[services.a]\n[services.b]\n[services.c]\n\
                    [[policies]]\nfrom = \"a\"\nto = \"b\"\nports = [7001]\nprotocol = \"udp\"\n";
        let d = resolve(&parse("f", text).unwrap(), &Default::default()).unwrap().0;
        let port = |svc: &str| {
            let c = d.containers.iter().find(|c| c.service == svc).unwrap();
            c.interfaces[0].host_veth.clone()
        };
        let a = d.containers.iter().find(|c| c.service == "a").unwrap().interfaces[0].address;
        let bridge = rulesets(&d).pop().unwrap();
        let printed = bridge.print();
        let set = |name: &str| bridge.sets.iter().find(|s| s.name == name).unwrap();
        // a's flow to b, at b's port; b's port to b's deny chain; c is not isolated.
        let allowed: Vec<&String> = set("policy_port_allow").elements.keys().collect();
        assert_eq!(allowed, [&format!("{a} . \"{}\" . udp . 7001", port("b"))], "{printed}");
        let ports = &set("policy_ingress_ports").elements;
        assert_eq!(ports.len(), 1, "{printed}");
        assert_eq!(ports[&format!("\"{}\"", port("b"))].as_deref(), Some("goto deny_to_b"));
        let chain = bridge.chains.iter().find(|c| c.name == "policy_forward").unwrap();
        assert!(chain.rules[..3]
            .iter()
            .all(|r| r.expr.starts_with("oifname . ip daddr != @port_addrs")));
        assert!(chain.rules[3].comment.contains("replies"), "{printed}");
    }
}
