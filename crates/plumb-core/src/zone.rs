//! A stack's names as its DNS server answers them, built from the desired state and the
//! replicas that are not ready. Pure: the server asks it one question at a time, with the
//! asker's address, which decides what the asker may see (the networks it sits on).
//!
//! - `SVC`, `SVC.STACK` and each alias: the service's VIP; a headless service (`lb = "none"`)
//!   gives its ready replicas' addresses instead, NXDOMAIN when none is ready.
//! - `SVC-k`, `SVC-k.STACK`: that replica's address, ready or not.
//! - `_PORT._tcp.SVC` / `_PORT._udp.SVC` (and `.STACK`): SRV for each of the service's ports,
//!   pointing at `SVC.STACK.`.
//! - PTR for every address plumb assigns: a replica's address gives `SVC-k.STACK.`, a VIP
//!   `SVC.STACK.`.
//!
//! A name answers only an asker that shares a network with it (a service: with one of its
//! replicas); to anyone else it does not exist. Names of one label, and names under `STACK`,
//! are the stack's own: unknown ones are NXDOMAIN, never forwarded.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::desired::Desired;
use crate::spec::{Balance, Protocol};

/// The kinds of question the zone knows; everything else gets an empty answer for a name
/// that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryType {
    A,
    Ptr,
    Srv,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    A(Ipv4Addr),
    /// A fully qualified name, with its final dot.
    Ptr(String),
    Srv {
        port: u16,
        target: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name is the stack's and the asker may see it: these records (none when the name
    /// has no record of the asked type).
    Records(Vec<Record>),
    /// The stack's name space, but no such name for this asker (or none ready).
    NxDomain,
    /// Not the stack's: for the upstream resolvers, if [`Zone::may_forward`] allows.
    Elsewhere,
}

#[derive(Debug, Clone)]
struct NetworkEntry {
    name: String,
    subnet: Ipv4Net,
    internal: bool,
}

#[derive(Debug, Clone)]
struct ContainerEntry {
    /// (network, address), in the container's interface order.
    addresses: Vec<(String, Ipv4Addr)>,
    ready: bool,
}

#[derive(Debug, Clone)]
struct ServiceEntry {
    vip: Option<Ipv4Addr>,
    ports: Vec<(u16, Protocol)>,
    containers: Vec<String>,
}

/// What a label of the stack names.
#[derive(Debug, Clone)]
enum Target {
    Service(String),
    Replica(String),
}

#[derive(Debug, Clone)]
pub struct Zone {
    stack: String,
    networks: Vec<NetworkEntry>,
    containers: BTreeMap<String, ContainerEntry>,
    services: BTreeMap<String, ServiceEntry>,
    /// Service names, aliases and replica names (lower case).
    labels: BTreeMap<String, Target>,
    /// Every replica address, to its container.
    by_address: BTreeMap<Ipv4Addr, String>,
    vips: BTreeMap<Ipv4Addr, String>,
}

impl Zone {
    /// The zone of `desired`, where the containers in `unready` do not take new connections.
    pub fn build(desired: &Desired, unready: &BTreeSet<String>) -> Zone {
        let networks = desired
            .networks
            .iter()
            .map(|n| NetworkEntry {
                name: n.name.clone(),
                subnet: n.subnet,
                internal: n.internal,
            })
            .collect();
        let mut containers = BTreeMap::new();
        let mut by_address = BTreeMap::new();
        let mut labels = BTreeMap::new();
        for c in &desired.containers {
            for i in &c.interfaces {
                by_address.insert(i.address, c.name.clone());
            }
            containers.insert(
                c.name.clone(),
                ContainerEntry {
                    addresses: c.interfaces.iter().map(|i| (i.network.clone(), i.address)).collect(),
                    ready: !unready.contains(&c.name),
                },
            );
            labels.insert(c.name.to_lowercase(), Target::Replica(c.name.clone()));
        }
        // Replicas on other hosts of a cluster, reached over the overlay.
        for r in &desired.remote {
            let addresses: Vec<(String, Ipv4Addr)> = desired
                .networks
                .iter()
                .filter_map(|n| r.addresses.get(&n.name).map(|a| (n.name.clone(), *a)))
                .collect();
            for (_, a) in &addresses {
                by_address.insert(*a, r.name.clone());
            }
            containers.insert(
                r.name.clone(),
                ContainerEntry {
                    addresses,
                    ready: r.ready,
                },
            );
            labels.insert(r.name.to_lowercase(), Target::Replica(r.name.clone()));
        }
        let mut services = BTreeMap::new();
        let mut vips = BTreeMap::new();
        for s in &desired.services {
            let vip = if s.lb == Balance::None { None } else { s.vip };
            if let Some(v) = vip {
                vips.insert(v, s.name.clone());
            }
            services.insert(
                s.name.clone(),
                ServiceEntry {
                    vip,
                    ports: s.ports.iter().map(|p| (p.port, p.protocol)).collect(),
                    containers: s
                        .containers
                        .iter()
                        .cloned()
                        .chain(
                            desired
                                .remote
                                .iter()
                                .filter(|r| r.service == s.name)
                                .map(|r| r.name.clone()),
                        )
                        .collect(),
                },
            );
            for label in std::iter::once(&s.name).chain(&s.aliases) {
                labels.insert(label.to_lowercase(), Target::Service(s.name.clone()));
            }
        }
        Zone {
            stack: desired.stack.to_lowercase(),
            networks,
            containers,
            services,
            labels,
            by_address,
            vips,
        }
    }

    /// The stack's name, which is also its domain (`SVC.STACK`).
    pub fn domain(&self) -> &str {
        &self.stack
    }

    /// The networks `asker` sits on: all of its container's, or else the one whose subnet
    /// holds the address (the host, asking from a gateway address).
    fn networks_of(&self, asker: Ipv4Addr) -> BTreeSet<&str> {
        if let Some(c) = self.by_address.get(&asker).and_then(|c| self.containers.get(c)) {
            return c.addresses.iter().map(|(n, _)| n.as_str()).collect();
        }
        self.networks
            .iter()
            .filter(|n| n.subnet.contains(&asker))
            .map(|n| n.name.as_str())
            .collect()
    }

    /// Whether names that are not the stack's are forwarded for `asker`: only if one of its
    /// networks is not internal (an internal network reaches nothing outside, names included).
    pub fn may_forward(&self, asker: Ipv4Addr) -> bool {
        let on = self.networks_of(asker);
        self.networks
            .iter()
            .any(|n| !n.internal && on.contains(n.name.as_str()))
    }

    /// Answers `name` (any case, with or without its final dot) of type `qtype` for `asker`.
    pub fn answer(&self, asker: Ipv4Addr, name: &str, qtype: QueryType) -> Answer {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(reverse) = name.strip_suffix(".in-addr.arpa") {
            return self.reverse(asker, reverse, qtype);
        }
        let local = match name.strip_suffix(&format!(".{}", self.stack)) {
            Some(l) => l,
            None if name == self.stack => return Answer::Records(Vec::new()),
            None if !name.contains('.') => name.as_str(),
            None => {
                // `_PORT._tcp.SVC` without the stack's domain is the stack's too.
                if name.starts_with('_') && name.split('.').count() == 3 {
                    name.as_str()
                } else {
                    return Answer::Elsewhere;
                }
            }
        };
        let on = self.networks_of(asker);
        let labels: Vec<&str> = local.split('.').collect();
        match labels[..] {
            [label] => self.forward_answer(&on, label, qtype),
            [port, proto, label] => self.srv_answer(&on, port, proto, label, qtype),
            _ => Answer::NxDomain,
        }
    }

    fn forward_answer(&self, on: &BTreeSet<&str>, label: &str, qtype: QueryType) -> Answer {
        let addresses = match self.labels.get(label) {
            Some(Target::Service(s)) => self.service_addresses(on, s),
            Some(Target::Replica(c)) => self.address_for(on, c).into_iter().collect(),
            None => Vec::new(),
        };
        if addresses.is_empty() {
            return Answer::NxDomain;
        }
        match qtype {
            QueryType::A => Answer::Records(addresses.into_iter().map(Record::A).collect()),
            _ => Answer::Records(Vec::new()),
        }
    }

    fn srv_answer(&self, on: &BTreeSet<&str>, port: &str, proto: &str, label: &str, qtype: QueryType) -> Answer {
        let Some(Target::Service(s)) = self.labels.get(label) else {
            return Answer::NxDomain;
        };
        let protocol = match proto {
            "_tcp" => Protocol::Tcp,
            "_udp" => Protocol::Udp,
            _ => return Answer::NxDomain,
        };
        let Some(port) = port.strip_prefix('_').and_then(|p| p.parse::<u16>().ok()) else {
            return Answer::NxDomain;
        };
        let declared = self.services[s].ports.contains(&(port, protocol));
        if !declared || !self.visible(on, s) {
            return Answer::NxDomain;
        }
        match qtype {
            QueryType::Srv => Answer::Records(vec![Record::Srv {
                port,
                target: format!("{s}.{}.", self.stack),
            }]),
            _ => Answer::Records(Vec::new()),
        }
    }

    fn reverse(&self, asker: Ipv4Addr, reverse: &str, qtype: QueryType) -> Answer {
        let octets: Vec<u8> = reverse.split('.').rev().filter_map(|o| o.parse().ok()).collect();
        let Ok(octets) = <[u8; 4]>::try_from(octets) else {
            return Answer::Elsewhere;
        };
        let address = Ipv4Addr::from(octets);
        let on = self.networks_of(asker);
        let name = if let Some(s) = self.vips.get(&address) {
            self.visible(&on, s).then(|| format!("{s}.{}.", self.stack))
        } else if let Some(c) = self.by_address.get(&address) {
            let shared = self.containers[c]
                .addresses
                .iter()
                .any(|(n, a)| *a == address && on.contains(n.as_str()));
            shared.then(|| format!("{c}.{}.", self.stack))
        } else if self.networks.iter().any(|n| n.subnet.contains(&address)) {
            None
        } else {
            return Answer::Elsewhere;
        };
        match (name, qtype) {
            (None, _) => Answer::NxDomain,
            (Some(name), QueryType::Ptr) => Answer::Records(vec![Record::Ptr(name)]),
            (Some(_), _) => Answer::Records(Vec::new()),
        }
    }

    /// A service is visible to an asker that shares a network with one of its replicas.
    fn visible(&self, on: &BTreeSet<&str>, service: &str) -> bool {
        self.services[service]
            .containers
            .iter()
            .any(|c| self.address_for(on, c).is_some())
    }

    /// What the service's name gives this asker: its VIP, or its ready replicas' addresses.
    fn service_addresses(&self, on: &BTreeSet<&str>, service: &str) -> Vec<Ipv4Addr> {
        let s = &self.services[service];
        match s.vip {
            Some(vip) if self.visible(on, service) => vec![vip],
            Some(_) => Vec::new(),
            _ => s
                .containers
                .iter()
                .filter(|c| self.containers.get(*c).is_some_and(|e| e.ready))
                .filter_map(|c| self.address_for(on, c))
                .collect(),
        }
    }

    /// The container's address on the first of its networks the asker is on.
    fn address_for(&self, on: &BTreeSet<&str>, container: &str) -> Option<Ipv4Addr> {
        let c = self.containers.get(container)?;
        c.addresses
            .iter()
            .find(|(n, _)| on.contains(n.as_str()))
            .map(|(_, a)| *a)
    }
}

/// The resolv.conf a container gets: the DNS server on its first network's gateway, the
/// stack's domain to search, and `ndots:1` (a name with a dot is tried as it is first).
/// Without a network, no server: nothing resolves (glibc then asks its own loopback).
pub fn resolv_conf(stack: &str, gateway: Option<Ipv4Addr>) -> String {
    let server = gateway.map(|g| format!("nameserver {g}\n")).unwrap_or_default();
    format!("# written by plumb for stack {stack}\n{server}search {stack}\noptions ndots:1\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::resolve;
    use crate::spec::parse;

    const STACK: &str = r#"
name = "shop"
[networks.front]
subnet = "10.0.1.0/24"
[networks.back]
subnet = "10.0.2.0/24"
[networks.db]
subnet = "10.0.3.0/24"
internal = true
[services.web]
networks = ["front"]
[services.api]
networks = ["front", "back"]
replicas = 2
expose = [80, "53/udp"]
aliases = ["gateway"]
[services.store]
networks = ["back", "db"]
replicas = 3
lb = "none"
[services.redis]
networks = ["db"]
"#;

    fn zone(unready: &[&str]) -> (Desired, Zone) {
        let parsed = parse("plumb.toml", STACK).unwrap_or_else(|e| panic!("{e}"));
        let (desired, _) = resolve(&parsed, &Default::default()).unwrap();
        let unready = unready.iter().map(|s| s.to_string()).collect();
        let zone = Zone::build(&desired, &unready);
        (desired, zone)
    }

    fn addr(d: &Desired, container: &str, network: &str) -> Ipv4Addr {
        let c = d.container(container).unwrap();
        c.interfaces.iter().find(|i| i.network == network).unwrap().address
    }

    fn a(records: &[Ipv4Addr]) -> Answer {
        Answer::Records(records.iter().copied().map(Record::A).collect())
    }

    #[test]
    fn service_names_give_the_vip_and_replica_names_their_address() {
        let (d, z) = zone(&[]);
        let web = addr(&d, "web-1", "front");
        let vip = d.service("api").unwrap().vip.unwrap();
        for name in ["api", "api.shop", "API.Shop.", "gateway", "gateway.shop."] {
            assert_eq!(z.answer(web, name, QueryType::A), a(&[vip]), "{name}");
        }
        assert_eq!(z.answer(web, "api-2", QueryType::A), a(&[addr(&d, "api-2", "front")]));
        assert_eq!(
            z.answer(web, "api-2.shop", QueryType::A),
            a(&[addr(&d, "api-2", "front")])
        );
        // A name that exists, asked for another type: an empty answer, not NXDOMAIN.
        assert_eq!(z.answer(web, "api", QueryType::Other), Answer::Records(vec![]));
        assert_eq!(z.answer(web, "nothing", QueryType::A), Answer::NxDomain);
        assert_eq!(z.answer(web, "nothing.shop", QueryType::A), Answer::NxDomain);
        assert_eq!(z.answer(web, "a.b.shop", QueryType::A), Answer::NxDomain);
        assert_eq!(z.answer(web, "example.com", QueryType::A), Answer::Elsewhere);
    }

    #[test]
    fn a_replica_answers_with_its_address_on_the_first_network_the_asker_shares() {
        let (d, z) = zone(&[]);
        // store-1 is on back and db; api (front, back) sees it on back, redis (db) on db.
        let api = addr(&d, "api-1", "front");
        assert_eq!(
            z.answer(api, "store-1", QueryType::A),
            a(&[addr(&d, "store-1", "back")])
        );
        let redis = addr(&d, "redis-1", "db");
        assert_eq!(
            z.answer(redis, "store-1", QueryType::A),
            a(&[addr(&d, "store-1", "db")])
        );
        // The asker is known by any of its addresses: api asking from back is still api.
        let api_back = addr(&d, "api-1", "back");
        assert_eq!(
            z.answer(api_back, "web-1", QueryType::A),
            a(&[addr(&d, "web-1", "front")])
        );
    }

    #[test]
    fn names_are_scoped_to_the_networks_the_asker_shares() {
        let (d, z) = zone(&[]);
        let web = addr(&d, "web-1", "front");
        for hidden in ["store", "store-1", "redis", "redis-1.shop", "_80._tcp.redis"] {
            assert_eq!(z.answer(web, hidden, QueryType::A), Answer::NxDomain, "{hidden}");
        }
        let redis = addr(&d, "redis-1", "db");
        assert_eq!(z.answer(redis, "api", QueryType::A), Answer::NxDomain);
        assert_eq!(z.answer(redis, "web-1", QueryType::A), Answer::NxDomain);
        // The host asking from a gateway address sees what that network sees.
        let gateway = d.network("db").unwrap().gateway;
        assert_eq!(
            z.answer(gateway, "redis-1", QueryType::A),
            a(&[addr(&d, "redis-1", "db")])
        );
        assert_eq!(z.answer(gateway, "web", QueryType::A), Answer::NxDomain);
    }

    #[test]
    fn a_headless_service_gives_its_ready_replicas_and_nxdomain_when_none_is() {
        let (d, z) = zone(&["store-2"]);
        let api = addr(&d, "api-1", "back");
        let ready = [addr(&d, "store-1", "back"), addr(&d, "store-3", "back")];
        assert_eq!(z.answer(api, "store", QueryType::A), a(&ready));
        // A replica's own name answers, ready or not.
        assert_eq!(
            z.answer(api, "store-2", QueryType::A),
            a(&[addr(&d, "store-2", "back")])
        );
        let (_, none) = zone(&["store-1", "store-2", "store-3"]);
        assert_eq!(none.answer(api, "store", QueryType::A), Answer::NxDomain);
    }

    #[test]
    fn a_service_on_any_network_the_asker_shares_gives_its_vip() {
        // api's first network is front; store sits on back and db: api reaches it on back,
        // and the load balancer takes its VIP connections there too.
        let text = STACK.replace("lb = \"none\"\n", "expose = [5432]\n");
        let parsed = parse("plumb.toml", &text).unwrap();
        let (d, _) = resolve(&parsed, &Default::default()).unwrap();
        let z = Zone::build(&d, &["store-2".to_string()].into());
        let api = addr(&d, "api-1", "front");
        let store_vip = d.service("store").unwrap().vip.unwrap();
        assert_eq!(z.answer(api, "store", QueryType::A), a(&[store_vip]));
        // web shares no network with store: nothing.
        assert_eq!(
            z.answer(addr(&d, "web-1", "front"), "store", QueryType::A),
            Answer::NxDomain
        );
    }

    #[test]
    fn srv_names_each_declared_port_of_a_visible_service() {
        let (d, z) = zone(&[]);
        let web = addr(&d, "web-1", "front");
        let srv = |port| {
            Answer::Records(vec![Record::Srv {
                port,
                target: "api.shop.".into(),
            }])
        };
        assert_eq!(z.answer(web, "_80._tcp.api", QueryType::Srv), srv(80));
        assert_eq!(z.answer(web, "_80._tcp.api.shop.", QueryType::Srv), srv(80));
        assert_eq!(z.answer(web, "_53._udp.gateway.shop", QueryType::Srv), srv(53));
        assert_eq!(z.answer(web, "_53._tcp.api", QueryType::Srv), Answer::NxDomain);
        assert_eq!(z.answer(web, "_81._tcp.api", QueryType::Srv), Answer::NxDomain);
        assert_eq!(z.answer(web, "_80._sctp.api", QueryType::Srv), Answer::NxDomain);
        assert_eq!(z.answer(web, "_80._tcp.web-1", QueryType::Srv), Answer::NxDomain);
    }

    #[test]
    fn ptr_names_every_assigned_address_for_those_who_share_it() {
        let (d, z) = zone(&[]);
        let web = addr(&d, "web-1", "front");
        let reverse = |a: Ipv4Addr| {
            let o = a.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        };
        let ptr = |n: &str| Answer::Records(vec![Record::Ptr(n.into())]);
        let api2 = addr(&d, "api-2", "front");
        assert_eq!(z.answer(web, &reverse(api2), QueryType::Ptr), ptr("api-2.shop."));
        let vip = d.service("api").unwrap().vip.unwrap();
        assert_eq!(z.answer(web, &reverse(vip), QueryType::Ptr), ptr("api.shop."));
        // api-2's back address is not on web's network; an unassigned address in a subnet is
        // not anyone's; an address outside the stack is for upstream.
        let api2_back = addr(&d, "api-2", "back");
        assert_eq!(z.answer(web, &reverse(api2_back), QueryType::Ptr), Answer::NxDomain);
        assert_eq!(
            z.answer(web, "200.1.0.10.in-addr.arpa", QueryType::Ptr),
            Answer::NxDomain
        );
        assert_eq!(z.answer(web, "8.8.8.8.in-addr.arpa", QueryType::Ptr), Answer::Elsewhere);
    }

    #[test]
    fn only_askers_on_a_network_that_is_not_internal_are_forwarded() {
        let (d, z) = zone(&[]);
        assert!(z.may_forward(addr(&d, "web-1", "front")));
        // store is on back too, so it may; redis is on db (internal) alone.
        assert!(z.may_forward(addr(&d, "store-1", "db")));
        assert!(!z.may_forward(addr(&d, "redis-1", "db")));
        assert!(!z.may_forward("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn resolv_conf_names_the_first_networks_gateway_and_the_stack() {
        let (d, _) = zone(&[]);
        let text = resolv_conf("shop", d.container("store-1").unwrap().gateway);
        assert!(text.contains("nameserver 10.0.2.1\n"), "{text}");
        assert!(text.contains("search shop\noptions ndots:1\n"), "{text}");
    }
}
