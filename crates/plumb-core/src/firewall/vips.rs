//! Virtual IPs, in the shape of kube-proxy's nftables mode: a verdict map `services` from
//! `VIP . protocol . port` to a chain per service port (`svc_…`) that keeps client affinity
//! (if asked) and then picks a replica with `numgen` over a fixed number of slots, each slot an
//! element of the service's verdict map (`eps_…`) naming a READY replica's chain (`ep_…`),
//! which counts the connection and DNATs to it. When readiness changes, only elements change:
//! the slots are refilled over the replicas that are ready ([`Balancer::update`]), sent as
//! netlink set-element messages whose cost does not grow with the table. What is not DNATed
//! (no ready replica, a port not exposed) is refused at once and never routed on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Chain, ChainKind, ElementAction, ElementEdit, Hook, HookPoint, Policy, Rule, Ruleset, Set, TableId};
use crate::desired::Desired;
use crate::names;
use crate::spec::{Balance, ServicePort};

/// The verdict map from `VIP . protocol . port` to a service port's chain.
pub const MAP: &str = "services";
/// The verdict map from the VIP of a service balancing every port to its one chain.
pub const EVERY_PORT_MAP: &str = "services_every_port";
/// A service port's chain.
pub const SERVICE_CHAIN_PREFIX: &str = "svc_";
const ENDPOINT_CHAIN_PREFIX: &str = "ep_";
const AFFINITY_SET_PREFIX: &str = "aff_";
/// A service's slots: `numgen` value → a ready replica's chain (`return` when none is ready).
/// Its elements follow readiness at run time (not part of a table's fingerprint or shape).
const SLOTS_MAP_PREFIX: &str = "eps_";
/// A replica's affinity gate (services with affinity): the VIP → its chain while it is ready,
/// `continue` while it is not. Run-time elements too.
const LIVE_MAP_PREFIX: &str = "live_";
/// Slots of a service with `replicas` replicas: a number every count of ready replicas up to
/// six divides (1, 2, 6, 12, 60, 60), so those share the slots exactly; past six, four slots a
/// replica (shares within one slot of each other). As few as that, because adding a slot that
/// names a chain makes the kernel walk the whole table for loops (its cost grows with the slots
/// of every service); `return` slots do not.
pub fn slots_for(replicas: usize) -> usize {
    match replicas {
        0 | 1 => 1,
        2 => 2,
        3 => 6,
        4 => 12,
        5 | 6 => 60,
        n => 4 * n,
    }
}
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
    /// Balances every port (no declared ones): one chain, DNAT to the address only.
    #[serde(default)]
    pub every_port: bool,
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
    /// The balanced services of `desired`: those with a VIP, a port (or every port) and a
    /// network.
    pub fn of(desired: &Desired) -> Balancer {
        // Only a container on several networks can reach a service off its default route.
        let multi_homed: Vec<&crate::desired::Container> =
            desired.containers.iter().filter(|c| c.interfaces.len() > 1).collect();
        let services = desired
            .services
            .iter()
            .filter(|s| !s.ports.is_empty() || s.every_port)
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
                    every_port: s.every_port,
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

    /// One transaction's element edits refilling the slots (and affinity gates) of
    /// `services` (and nothing else) for the replicas not in `unready`. Every key is deleted
    /// and added again, so the edits hold whatever the kernel had before.
    pub fn update<'a>(
        &self,
        services: impl IntoIterator<Item = &'a str>,
        unready: &BTreeSet<String>,
    ) -> Vec<ElementEdit> {
        let mut out = Vec::new();
        for svc in services.into_iter().filter_map(|s| self.service(s)) {
            let mut maps = vec![svc.slots_map(unready)];
            if svc.affinity_secs.is_some() {
                maps.extend(svc.endpoints.iter().map(|e| svc.live_map(e, unready)));
            }
            for map in maps {
                let keys = map.elements.keys().map(|k| (k.clone(), None)).collect();
                let all = map.elements.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                out.push(ElementEdit::of(ElementAction::Delete, &map, keys));
                out.push(ElementEdit::of(ElementAction::Add, &map, all));
            }
        }
        out
    }
}

impl Balanced {
    /// `svc_web_tcp_80`, or `svc_web_every_port` (`None`: the service balances every port).
    pub fn port_chain_name(&self, port: Option<&ServicePort>) -> String {
        match port {
            Some(port) => format!(
                "{SERVICE_CHAIN_PREFIX}{}_{}_{}",
                self.name,
                port.protocol.as_str(),
                port.port
            ),
            None => format!("{SERVICE_CHAIN_PREFIX}{}_every_port", self.name),
        }
    }

    /// The chains choosing a replica: one per declared port, or the one for every port.
    fn port_chains(&self) -> Vec<Chain> {
        match self.every_port {
            true => vec![self.port_chain(None)],
            false => self.ports.iter().map(|p| self.port_chain(Some(p))).collect(),
        }
    }

    /// `eps_web_6`: named by its size, so a service that grows gets a new map (a map's type
    /// cannot change) beside its old one, in one transaction.
    fn slots_map_name(&self) -> String {
        format!("{SLOTS_MAP_PREFIX}{}_{}", self.name, self.slots())
    }

    /// How many slots the service's replicas share.
    pub fn slots(&self) -> usize {
        slots_for(self.endpoints.len())
    }

    fn numgen(&self) -> String {
        let mode = if self.lb == Balance::Random { "random" } else { "inc" };
        format!("numgen {mode} mod {}", self.slots())
    }

    /// `eps_web`: slot `i` → the `i % n`th of the `n` ready replicas, `return` if none is ready
    /// (the connection is then refused).
    pub fn slots_map(&self, unready: &BTreeSet<String>) -> Set {
        let mut map = Set::new(
            &self.slots_map_name(),
            &format!("typeof {}", self.numgen()),
            Some("verdict"),
        );
        let ready: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| !unready.contains(&e.container))
            .collect();
        for slot in 0..self.slots() {
            let verdict = match ready.as_slice() {
                [] => "return".to_string(),
                many => format!("goto {}", endpoint_chain(many[slot % many.len()])),
            };
            map.elements.insert(slot.to_string(), Some(verdict));
        }
        map
    }

    /// `live_web-1`: the VIP → the replica's chain while it is ready, else `continue` (its
    /// remembered clients then go by the slots like new ones).
    fn live_map(&self, e: &Endpoint, unready: &BTreeSet<String>) -> Set {
        let mut map = Set::new(&live_map(e), "ipv4_addr", Some("verdict"));
        let verdict = match unready.contains(&e.container) {
            true => "continue".to_string(),
            false => format!("goto {}", endpoint_chain(e)),
        };
        map.elements.insert(self.vip.to_string(), Some(verdict));
        map
    }

    /// The chain choosing a replica for connections to `VIP:port`: the client's remembered
    /// replica if it is ready (affinity), else the next slot. Readiness is in the maps' elements:
    /// the chain does not change with it.
    pub fn port_chain(&self, port: Option<&ServicePort>) -> Chain {
        let name = self.port_chain_name(port);
        let port = port.map_or_else(|| "every port".to_string(), ToString::to_string);
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
        if self.affinity_secs.is_some() {
            for e in &self.endpoints {
                rules.push(Rule::new(
                    format!("ip saddr @{} ip daddr vmap @{}", affinity_set(e), live_map(e)),
                    format!("{svc}: a client stays on {} while it is ready", e.container),
                ));
            }
        }
        rules.push(Rule::new(
            format!("{} vmap @{}", self.numgen(), self.slots_map_name()),
            format!("{svc} {port}: {} over {} slots", self.lb.as_str(), self.slots()),
        ));
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

fn live_map(e: &Endpoint) -> String {
    format!("{LIVE_MAP_PREFIX}{}", e.container)
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
    let mut every_port = Set::new(EVERY_PORT_MAP, "ipv4_addr", Some("verdict"));
    for svc in &balancer.services {
        for e in &svc.endpoints {
            if let Some(secs) = svc.affinity_secs {
                let mut set = Set::new(&affinity_set(e), "ipv4_addr", None);
                set.options = vec!["flags dynamic,timeout".into(), format!("timeout {secs}s")];
                rules.set(set);
                rules.set(svc.live_map(e, &desired.unready));
            }
            rules.chains.push(svc.endpoint_chain(e));
        }
        rules.set(svc.slots_map(&desired.unready));
        for port in &svc.ports {
            map.elements.insert(
                format!("{} . {} . {}", svc.vip, port.protocol.as_str(), port.port),
                Some(format!("goto {}", svc.port_chain_name(Some(port)))),
            );
        }
        if svc.every_port {
            every_port
                .elements
                .insert(svc.vip.to_string(), Some(format!("goto {}", svc.port_chain_name(None))));
        }
        rules.chains.extend(svc.port_chains());
    }
    rules.set(map);
    let balances_every_port = !every_port.elements.is_empty();
    if balances_every_port {
        rules.set(every_port);
    }
    let bridges: Vec<String> = desired.networks.iter().map(|n| n.bridge.clone()).collect();
    let from = format!("iifname {{ {} }}", quoted(&bridges));
    let prerouting = rules.chain("prerouting", Some(Hook::nat(HookPoint::Prerouting)));
    prerouting.rules.push(Rule::new(
        format!("{from} ip daddr . meta l4proto . th dport vmap @{MAP}"),
        "virtual IPs, from the stack's containers",
    ));
    if balances_every_port {
        prerouting.rules.push(Rule::new(
            format!("{from} meta l4proto {{ tcp, udp, sctp }} ip daddr vmap @{EVERY_PORT_MAP}"),
            "virtual IPs of services without declared ports: every port",
        ));
    }
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

/// [`endpoint_counts`] of `stack`'s table in a whole ruleset listing (`nft -j list ruleset`):
/// none if the listing cannot be read, empty if the stack has no VIP table.
pub fn stack_endpoint_counts(listing: &str, stack: &str) -> Option<BTreeMap<String, u64>> {
    let tables = super::tables_in_listing(listing)?;
    Some(
        tables
            .get(&table_of(stack))
            .map(|o| endpoint_counts(o))
            .unwrap_or_default(),
    )
}

/// Is this a map whose elements the supervisor changes with readiness?
pub fn is_runtime_set(name: &str) -> bool {
    name.starts_with(SLOTS_MAP_PREFIX) || name.starts_with(LIVE_MAP_PREFIX)
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
    fn replicas_without_declared_ports_share_a_vip_balancing_every_port() {
        let text = table(&desired(
            &STACK
                .replace("expose = [80]\n", "")
                .replace("[services.web]", "[services.one]\n[services.web]"),
        ));
        assert!(text.contains("map services_every_port {"), "{text}");
        assert!(
            text.contains("elements = { 10.96.0.2 : goto svc_web_every_port }"),
            "{text}"
        );
        assert!(
            text.contains("meta l4proto { tcp, udp, sctp } ip daddr vmap @services_every_port"),
            "{text}"
        );
        assert!(text.contains("numgen inc mod 6 vmap @eps_web_6 comment \"web every port: round-robin over 6 slots\""));
        // The port is kept: DNAT to the replica's address only.
        assert!(
            text.contains("counter dnat ip to 10.0.0.5 comment \"web: endpoint web-3\""),
            "{text}"
        );
        let at = |what: &str| text.find(what).unwrap();
        assert!(at("chain svc_web_every_port") < at("map services_every_port"), "{text}");
        // A lone container without ports has no VIP: its name gives its address.
        assert!(!text.contains("svc_one"), "{text}");
    }

    #[test]
    fn round_robin_over_slots_filled_with_every_ready_replica() {
        let text = table(&desired(STACK));
        assert!(
            text.contains("elements = { 10.96.0.2 . tcp . 80 : goto svc_web_tcp_80 }"),
            "{text}"
        );
        assert!(
            text.contains("map eps_web_6 {\n\t\ttypeof numgen inc mod 6 : verdict\n"),
            "{text}"
        );
        assert!(text.contains("0 : goto ep_web-1, 1 : goto ep_web-2, 2 : goto ep_web-3, 3 : goto ep_web-1"));
        assert!(text.contains("numgen inc mod 6 vmap @eps_web_6 comment \"web 80/tcp: round-robin over 6 slots\""));
        assert!(text.contains("counter dnat ip to 10.0.0.3 comment \"web: endpoint web-2\""));
        assert!(text.contains("iifname { \"") && text.contains("ip daddr . meta l4proto . th dport vmap @services"));
        assert!(text.contains("ip daddr 10.96.0.0/20 fib daddr type != local meta l4proto tcp reject with tcp reset"));
        // Each map comes after the chains it names, each chain after the maps it looks up.
        let at = |what: &str| text.find(what).unwrap();
        assert!(at("chain ep_web-1") < at("map eps_web_6"), "{text}");
        assert!(at("map eps_web_6") < at("chain svc_web_tcp_80"), "{text}");
        assert!(at("chain svc_web_tcp_80") < at("map services"), "{text}");
    }

    #[test]
    fn every_count_of_ready_replicas_up_to_six_divides_the_slots() {
        for n in 1..=6 {
            assert!((1..=n).all(|k| slots_for(n).is_multiple_of(k)), "{n}");
        }
        assert_eq!((slots_for(1), slots_for(3), slots_for(7)), (1, 6, 28));
    }

    #[test]
    fn slots_share_the_ready_replicas_evenly_or_refuse() {
        let mut d = desired(&STACK.replace("expose", "lb = \"random\"\nexpose"));
        let svc = Balancer::of(&d).services.remove(0);
        assert!(table(&d).contains("numgen random mod 6 vmap @eps_web_6"));
        d.unready = ["web-1".to_string(), "web-3".to_string()].into();
        let map = svc.slots_map(&d.unready);
        assert_eq!(map.elements.len(), 6);
        assert!(map.elements.values().all(|v| v.as_deref() == Some("goto ep_web-2")));
        let shares = |m: &Set, e: &str| m.elements.values().filter(|v| v.as_deref() == Some(e)).count();
        let all = svc.slots_map(&BTreeSet::new());
        assert_eq!(
            [
                shares(&all, "goto ep_web-1"),
                shares(&all, "goto ep_web-2"),
                shares(&all, "goto ep_web-3")
            ],
            [2, 2, 2]
        );
        let none = svc.slots_map(&svc.endpoints.iter().map(|e| e.container.clone()).collect());
        assert!(none.elements.values().all(|v| v.as_deref() == Some("return")));
    }

    #[test]
    fn affinity_checks_every_replica_that_is_ready_before_the_slots() {
        let d = desired(&STACK.replace("expose", "affinity = \"client-ip\"\naffinity_timeout = \"60s\"\nexpose"));
        let text = table(&d);
        assert!(text.contains("set aff_web-1 {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 60s\n"));
        assert!(text.contains("update @aff_web-2 { ip saddr }"));
        assert!(text
            .contains("map live_web-3 {\n\t\ttype ipv4_addr : verdict\n\t\telements = { 10.96.0.2 : goto ep_web-3 }"));
        let svc = text.find("chain svc_web_tcp_80").unwrap();
        let aff = text[svc..]
            .find("ip saddr @aff_web-3 ip daddr vmap @live_web-3")
            .unwrap();
        let numgen = text[svc..].find("numgen inc").unwrap();
        assert!(aff < numgen, "{text}");
        let mut unready = d.clone();
        unready.unready = ["web-3".to_string()].into();
        assert!(table(&unready).contains("elements = { 10.96.0.2 : continue }"));
    }

    #[test]
    fn a_readiness_change_is_element_edits_of_that_service_only() {
        let two = STACK.replace("expose = [80]", "expose = [80, \"53/udp\"]") + "[services.db]\nexpose = [5432]\n";
        let d = desired(&two);
        let b = Balancer::of(&d);
        let unready: BTreeSet<String> = ["web-2".to_string()].into();
        let edits = b.update(["web"], &unready);
        // Every slot deleted and added again: whatever the kernel held, the result is the same.
        assert_eq!(edits.len(), 2, "{edits:?}");
        assert!(edits.iter().all(|e| e.set == "eps_web_6" && e.elements.len() == 6));
        assert_eq!(edits[0].action, ElementAction::Delete);
        assert_eq!(
            edits[1].elements[0],
            ("0".to_string(), Some("goto ep_web-1".to_string()))
        );
        assert_eq!(
            edits[1].elements[1],
            ("1".to_string(), Some("goto ep_web-3".to_string()))
        );
        let rendered = edits[1].command(&b.table);
        assert!(rendered.starts_with(
            "add element inet plumb_s eps_web_6 { 0 : goto ep_web-1, 1 : goto ep_web-3, 2 : goto ep_web-1, "
        ));
        // The engine's own diff for the same change: element edits too, of the changed slots.
        let mut after = d.clone();
        after.unready = unready;
        let (old, new) = (rulesets(&d).remove(0), rulesets(&after).remove(0));
        let Some(NftChange::Elements { edits, .. }) = changes(Some(&old), &new) else {
            panic!("expected element edits")
        };
        assert!(edits.iter().all(|e| e.set == "eps_web_6"), "{edits:?}");
        let added: BTreeMap<String, Option<String>> = edits[1].elements.iter().cloned().collect();
        assert!(added.values().all(|v| v.as_deref() != Some("goto ep_web-2")));
        assert_eq!(
            added,
            new.sets
                .iter()
                .find(|s| s.name == "eps_web_6")
                .unwrap()
                .elements
                .clone()
                .into_iter()
                .filter(|(k, _)| added.contains_key(k))
                .collect()
        );
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
