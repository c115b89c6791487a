//! Virtual IPs, in the shape of kube-proxy's nftables mode: a verdict map `services` from
//! `VIP . protocol . port` to a chain per service port (`svc_…`) that keeps client affinity
//! (if asked) and then picks one READY replica with `numgen`; a chain per replica (`ep_…`)
//! counts the connection and DNATs to it. When readiness changes the supervisor rewrites only
//! that service's `svc_` chains, in one transaction ([`Balancer::update`]). What is not
//! DNATed (no ready replica, a port not exposed) is refused at once and never routed on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Chain, ChainKind, Hook, HookPoint, Policy, Rule, Ruleset, Set, TableId};
use crate::desired::Desired;
use crate::names;
use crate::spec::{Balance, ServicePort};

/// The verdict map from `VIP . protocol . port` to a service port's chain.
pub const MAP: &str = "services";
/// Chains the supervisor rewrites at run time (their rules are not part of a table's
/// fingerprint or shape).
pub const SERVICE_CHAIN_PREFIX: &str = "svc_";
const ENDPOINT_CHAIN_PREFIX: &str = "ep_";
const AFFINITY_SET_PREFIX: &str = "aff_";
/// The filter chain refusing what is addressed to the service subnet and was not DNATed.
const REFUSE_CHAIN: &str = "vip_refuse";
/// The end of the comment of a service's rule turning away clients on none of its networks
/// (`plumb trace` names it as what decided).
pub const ISOLATION_COMMENT: &str = "only from containers on its networks";

/// What the load balancer needs of a stack, for rendering and for the supervisor (which gets
/// it in `run.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balancer {
    pub table: TableId,
    pub services: Vec<Balanced>,
}

/// One service with a VIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balanced {
    pub name: String,
    pub vip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    pub lb: Balance,
    pub affinity_secs: Option<u64>,
    /// The bridges of the service's networks: a client's packet must enter through one...
    pub bridges: Vec<String>,
    /// ... or come from one of these: containers that share a network with the service but
    /// not their first one (their default route, which VIP traffic takes), each with the
    /// bridge of the first network they share with it (where their connection is sent).
    #[serde(default)]
    pub side_clients: Vec<(Ipv4Addr, String)>,
    pub endpoints: Vec<Endpoint>,
}

/// One replica of a balanced service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub container: String,
    /// Its address on each of the service's networks, by bridge: a client gets the address
    /// on the network its packet came in from.
    pub addresses: Vec<(String, Ipv4Addr)>,
}

impl Balancer {
    /// The balanced services of `desired`: those with a VIP, a port and a network (a VIP
    /// without ports refuses everything: it needs no chains).
    pub fn of(desired: &Desired) -> Balancer {
        // Only a container on several networks can reach a service off its default route.
        let multi_homed: Vec<&crate::desired::Container> =
            desired.containers.iter().filter(|c| c.interfaces.len() > 1).collect();
        let services = desired
            .services
            .iter()
            .filter(|s| !s.ports.is_empty())
            .filter_map(|s| {
                let vip = s.vip?;
                let mut endpoints: Vec<Endpoint> = s
                    .containers
                    .iter()
                    .filter_map(|name| desired.container(name))
                    .map(|c| Endpoint {
                        container: c.name.clone(),
                        addresses: c.interfaces.iter().map(|i| (i.bridge.clone(), i.address)).collect(),
                    })
                    .collect();
                // Ready replicas on other hosts, by the bridge of their network here (the
                // overlay routes from it to their host's block).
                endpoints.extend(
                    desired
                        .remote
                        .iter()
                        .filter(|r| r.service == s.name && r.ready)
                        .map(|r| Endpoint {
                            container: r.name.clone(),
                            addresses: desired
                                .networks
                                .iter()
                                .filter_map(|n| r.addresses.get(&n.name).map(|a| (n.bridge.clone(), *a)))
                                .collect(),
                        }),
                );
                let bridges: Vec<String> = endpoints.first()?.addresses.iter().map(|(b, _)| b.clone()).collect();
                if bridges.is_empty() {
                    return None;
                }
                let side_clients = multi_homed
                    .iter()
                    .filter_map(|c| {
                        let first = c.interfaces.first()?;
                        if bridges.contains(&first.bridge) {
                            return None;
                        }
                        let shared = c.interfaces.iter().find(|i| bridges.contains(&i.bridge))?;
                        Some((first.address, shared.bridge.clone()))
                    })
                    .collect();
                Some(Balanced {
                    name: s.name.clone(),
                    vip,
                    ports: s.ports.clone(),
                    lb: s.lb,
                    affinity_secs: s.affinity_secs,
                    bridges,
                    side_clients,
                    endpoints,
                })
            })
            .collect();
        Balancer {
            table: super::table_ids(&desired.stack)[0].clone(),
            services,
        }
    }

    pub fn service(&self, name: &str) -> Option<&Balanced> {
        self.services.iter().find(|s| s.name == name)
    }

    /// One transaction's commands rewriting the port chains of `services` (and nothing
    /// else) for the replicas not in `unready`.
    pub fn update<'a>(&self, services: impl IntoIterator<Item = &'a str>, unready: &BTreeSet<String>) -> Vec<String> {
        let t = &self.table;
        let mut out = Vec::new();
        for svc in services.into_iter().filter_map(|s| self.service(s)) {
            for port in &svc.ports {
                let chain = svc.port_chain(port, unready);
                out.push(format!("flush chain {t} {}", chain.name));
                for rule in &chain.rules {
                    out.push(format!("add rule {t} {} {}", chain.name, rule.text()));
                }
            }
        }
        out
    }
}

impl Balanced {
    /// `svc_web_tcp_80`
    pub fn port_chain_name(&self, port: &ServicePort) -> String {
        format!(
            "{SERVICE_CHAIN_PREFIX}{}_{}_{}",
            self.name,
            port.protocol.as_str(),
            port.port
        )
    }

    /// The chain choosing a ready replica for connections to `VIP:port`. Without a ready
    /// replica it only returns: the connection is then refused.
    pub fn port_chain(&self, port: &ServicePort, unready: &BTreeSet<String>) -> Chain {
        let name = self.port_chain_name(port);
        let svc = &self.name;
        let side = if self.side_clients.is_empty() {
            String::new()
        } else {
            let clients: Vec<String> = self.side_clients.iter().map(|(a, _)| a.to_string()).collect();
            format!(" ip saddr != {{ {} }}", clients.join(", "))
        };
        let mut rules = vec![Rule::new(
            format!("iifname != {{ {} }}{side} return", quoted(&self.bridges)),
            format!("{svc}: {ISOLATION_COMMENT}"),
        )];
        let ready: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| !unready.contains(&e.container))
            .collect();
        if self.affinity_secs.is_some() {
            for e in &ready {
                rules.push(Rule::new(
                    format!("ip saddr @{} goto {}", affinity_set(e), endpoint_chain(e)),
                    format!("{svc}: a client stays on {}", e.container),
                ));
            }
        }
        let pick = match ready.as_slice() {
            [] => None,
            [one] => Some(format!("goto {}", endpoint_chain(one))),
            many => {
                let mode = if self.lb == Balance::Random { "random" } else { "inc" };
                let arms: Vec<String> = many
                    .iter()
                    .enumerate()
                    .map(|(i, e)| format!("{i} : goto {}", endpoint_chain(e)))
                    .collect();
                Some(format!(
                    "numgen {mode} mod {} vmap {{ {} }}",
                    many.len(),
                    arms.join(", ")
                ))
            }
        };
        if let Some(expr) = pick {
            rules.push(Rule::new(
                expr,
                format!("{svc} {port}: {} over {} ready", self.lb.as_str(), ready.len()),
            ));
        }
        Chain {
            name,
            hook: None,
            rules,
        }
    }

    /// The replica's chain: remember the client (affinity), count, DNAT.
    fn endpoint_chain(&self, e: &Endpoint) -> Chain {
        let mut rules = Vec::new();
        if self.affinity_secs.is_some() {
            rules.push(Rule::new(
                format!("update @{} {{ ip saddr }}", affinity_set(e)),
                format!("{}: remember the client", e.container),
            ));
        }
        let to = match e.addresses.as_slice() {
            [(_, one)] => one.to_string(),
            many => {
                let arms: Vec<String> = many.iter().map(|(b, a)| format!("\"{b}\" : {a}")).collect();
                format!("iifname map {{ {} }}", arms.join(", "))
            }
        };
        // Clients whose default route is another network: the address on the network they
        // share with the service (their connection is routed there).
        for (bridge, address) in &e.addresses {
            let clients: Vec<String> = self
                .side_clients
                .iter()
                .filter(|(_, b)| b == bridge)
                .map(|(a, _)| a.to_string())
                .collect();
            if !clients.is_empty() {
                rules.push(Rule::new(
                    format!("ip saddr {{ {} }} counter dnat ip to {address}", clients.join(", ")),
                    format!(
                        "{}: endpoint {}, for clients from another network",
                        self.name, e.container
                    ),
                ));
            }
        }
        rules.push(Rule::new(
            format!("counter dnat ip to {to}"),
            format!("{}: endpoint {}", self.name, e.container),
        ));
        Chain {
            name: endpoint_chain(e),
            hook: None,
            rules,
        }
    }
}

fn endpoint_chain(e: &Endpoint) -> String {
    format!("{ENDPOINT_CHAIN_PREFIX}{}", e.container)
}

fn affinity_set(e: &Endpoint) -> String {
    format!("{AFFINITY_SET_PREFIX}{}", e.container)
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
}

pub fn contribute(desired: &Desired, rules: &mut Ruleset) {
    let balancer = Balancer::of(desired);
    let has_vips = desired.services.iter().any(|s| s.vip.is_some());
    let Some(subnet) = desired.service_subnet.filter(|_| has_vips) else {
        return;
    };
    let mut map = Set::new(MAP, "ipv4_addr . inet_proto . inet_service", Some("verdict"));
    for svc in &balancer.services {
        for e in &svc.endpoints {
            if let Some(secs) = svc.affinity_secs {
                let mut set = Set::new(&affinity_set(e), "ipv4_addr", None);
                set.options = vec!["flags dynamic,timeout".into(), format!("timeout {secs}s")];
                rules.set(set);
            }
            rules.chains.push(svc.endpoint_chain(e));
        }
        for port in &svc.ports {
            let chain = svc.port_chain(port, &desired.unready);
            map.elements.insert(
                format!("{} . {} . {}", svc.vip, port.protocol.as_str(), port.port),
                Some(format!("goto {}", chain.name)),
            );
            rules.chains.push(chain);
        }
    }
    rules.set(map);
    let bridges: Vec<String> = desired.networks.iter().map(|n| n.bridge.clone()).collect();
    let from = format!("iifname {{ {} }}", quoted(&bridges));
    rules
        .chain("prerouting", Some(Hook::nat(HookPoint::Prerouting)))
        .rules
        .push(Rule::new(
            format!("{from} ip daddr . meta l4proto . th dport vmap @{MAP}"),
            "virtual IPs, from the stack's containers",
        ));
    // After dstnat (-100): what still has a service address was not balanced. Refused here,
    // before routing, so it never leaves through the host's default route. Addresses the
    // host holds (a DNS server on the subnet's first address) are left alone.
    let refuse = rules.chain(
        REFUSE_CHAIN,
        Some(Hook {
            kind: ChainKind::Filter,
            point: HookPoint::Prerouting,
            priority: 0,
            policy: Policy::Accept,
        }),
    );
    let what = format!("{from} ip daddr {subnet} fib daddr type != local");
    refuse.rules.push(Rule::new(
        format!("{what} meta l4proto tcp reject with tcp reset"),
        "virtual IPs: no ready replica or port not exposed, refused",
    ));
    refuse.rules.push(Rule::new(
        format!("{what} reject"),
        "virtual IPs: nothing else to the service subnet is routed",
    ));
}

/// Connections each replica has received (its endpoint chain's counter), by container, from
/// one table's objects as `tables_in_listing` gives them.
pub fn endpoint_counts(objects: &[Value]) -> BTreeMap<String, u64> {
    super::counts_by_chain(objects, ENDPOINT_CHAIN_PREFIX)
}

/// Is this a chain the supervisor rewrites?
pub fn is_runtime_chain(name: &str) -> bool {
    name.starts_with(SERVICE_CHAIN_PREFIX)
}

/// The name of a stack's table (for `plumb services`).
pub fn table_of(stack: &str) -> TableId {
    TableId {
        family: super::Family::Inet,
        name: names::nft_table(stack),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::resolve;
    use crate::firewall::{changes, rulesets, NftChange};
    use crate::spec::parse;

    const STACK: &str = "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n\
        [services.web]\nreplicas = 3\nexpose = [80]\n";

    fn desired(text: &str) -> Desired {
        resolve(&parse("f", text).unwrap(), &Default::default()).unwrap().0
    }

    fn table(d: &Desired) -> String {
        rulesets(d).remove(0).print()
    }

    #[test]
    fn round_robin_over_every_ready_replica() {
        let text = table(&desired(STACK));
        assert!(
            text.contains("elements = { 10.96.0.2 . tcp . 80 : goto svc_web_tcp_80 }"),
            "{text}"
        );
        assert!(text.contains("numgen inc mod 3 vmap { 0 : goto ep_web-1, 1 : goto ep_web-2, 2 : goto ep_web-3 }"));
        assert!(text.contains("counter dnat ip to 10.0.0.3 comment \"web: endpoint web-2\""));
        assert!(text.contains("iifname { \"") && text.contains("ip daddr . meta l4proto . th dport vmap @services"));
        assert!(text.contains("ip daddr 10.96.0.0/20 fib daddr type != local meta l4proto tcp reject with tcp reset"));
        // The map comes after the chains it names.
        assert!(text.find("chain svc_web_tcp_80").unwrap() < text.find("map services").unwrap());
    }

    #[test]
    fn random_and_a_single_ready_replica() {
        let mut d = desired(&STACK.replace("expose", "lb = \"random\"\nexpose"));
        assert!(table(&d).contains("numgen random mod 3 vmap"));
        d.unready = ["web-1".to_string(), "web-3".to_string()].into();
        let text = table(&d);
        assert!(!text.contains("numgen"), "{text}");
        assert!(text.contains("goto ep_web-2 comment \"web 80/tcp: random over 1 ready\""));
    }

    #[test]
    fn no_ready_replica_leaves_only_the_guard() {
        let mut d = desired(STACK);
        d.unready = d.containers.iter().map(|c| c.name.clone()).collect();
        let b = Balancer::of(&d);
        let svc = b.service("web").unwrap();
        let chain = svc.port_chain(&svc.ports[0], &d.unready);
        assert_eq!(chain.rules.len(), 1);
        assert!(chain.rules[0].expr.ends_with("return"));
    }

    #[test]
    fn affinity_checks_every_ready_replica_before_numgen() {
        let d = desired(&STACK.replace("expose", "affinity = \"client-ip\"\naffinity_timeout = \"60s\"\nexpose"));
        let text = table(&d);
        assert!(text.contains("set aff_web-1 {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 60s\n"));
        assert!(text.contains("update @aff_web-2 { ip saddr }"));
        let svc = text.find("chain svc_web_tcp_80").unwrap();
        let aff = text[svc..].find("ip saddr @aff_web-3 goto ep_web-3").unwrap();
        let numgen = text[svc..].find("numgen inc").unwrap();
        assert!(aff < numgen, "{text}");
    }

    #[test]
    fn a_readiness_change_rewrites_only_that_services_port_chains() {
        let two = STACK.replace("expose = [80]", "expose = [80, \"53/udp\"]") + "[services.db]\nexpose = [5432]\n";
        let d = desired(&two);
        let b = Balancer::of(&d);
        let unready: BTreeSet<String> = ["web-2".to_string()].into();
        let cmds = b.update(["web"], &unready);
        let mut flushes: Vec<&String> = cmds.iter().filter(|c| c.starts_with("flush")).collect();
        flushes.sort();
        assert_eq!(
            flushes,
            [
                "flush chain inet plumb_s svc_web_tcp_80",
                "flush chain inet plumb_s svc_web_udp_53"
            ]
        );
        assert!(cmds.iter().all(|c| !c.contains("db")), "{cmds:?}");
        assert!(cmds.contains(
            &"add rule inet plumb_s svc_web_tcp_80 numgen inc mod 2 vmap { 0 : goto ep_web-1, 1 : goto ep_web-3 } comment \"web 80/tcp: round-robin over 2 ready\"".to_string()
        ));
        // The engine's own diff for the same change is the same chain rewrite, not a replace.
        let mut after = d.clone();
        after.unready = unready;
        let (old, new) = (rulesets(&d).remove(0), rulesets(&after).remove(0));
        let Some(NftChange::Update { commands, .. }) = changes(Some(&old), &new) else {
            panic!("expected an update")
        };
        let (mut a, mut b) = (commands.clone(), cmds.clone());
        a.sort();
        b.sort();
        // The engine diffs the tables into exactly the commands the supervisor issues.
        assert_eq!(a, b);
    }

    #[test]
    fn a_service_on_two_networks_dnats_to_the_address_on_the_clients_network() {
        let d = desired(
            "name = \"s\"\n[networks.a]\nsubnet = \"10.0.0.0/24\"\n[networks.b]\nsubnet = \"10.0.1.0/24\"\n\
             [services.web]\nnetworks = [\"a\", \"b\"]\nexpose = [80]\n[services.c]\nnetworks = [\"b\"]\n",
        );
        let text = table(&d);
        assert!(text.contains("dnat ip to iifname map { \""), "{text}");
        assert!(text.contains(" : 10.0.1.3 }"), "{text}");
    }

    #[test]
    fn headless_services_and_stacks_without_vips_add_nothing() {
        let d = desired("name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n[services.web]\nlb = \"none\"\n");
        let text = table(&d);
        assert!(!text.contains("map services") && !text.contains("vip_refuse"), "{text}");
    }

    #[test]
    fn counters_are_read_per_endpoint() {
        let objects: Vec<Value> = serde_json::from_str(
            r#"[{"rule":{"chain":"ep_web-1","expr":[{"counter":{"packets":100,"bytes":6000}},{"dnat":{}}]}},
                {"rule":{"chain":"svc_web_tcp_80","expr":[{"counter":{"packets":7,"bytes":1}}]}},
                {"rule":{"chain":"ep_web-2","expr":[{"counter":{"packets":99,"bytes":1}}]}}]"#,
        )
        .unwrap();
        let counts = endpoint_counts(&objects);
        assert_eq!(counts, BTreeMap::from([("web-1".into(), 100), ("web-2".into(), 99)]));
    }
}
