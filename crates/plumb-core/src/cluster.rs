//! A stack spread over a cluster, as one host sees it: which replicas run here, this host's
//! block of each overlay network, and where the others are. The agent builds a
//! [`HostAssignment`] from the cluster store (etcd); [`crate::desired::resolve_on_host`] turns
//! it and the stack file into this host's [`crate::Desired`], which the same engine as
//! `plumb up` makes real. Pure data.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::names;
use crate::spec::Stack;

/// VXLAN's IANA port.
pub const VXLAN_PORT: u16 = 4789;
/// What VXLAN adds to each packet on an IPv4 underlay: outer IPv4 20 + UDP 8 + VXLAN 8 +
/// inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostAssignment {
    /// This host's name in the cluster.
    pub host: String,
    /// The replicas (1-based) of each service that run on this host; a service not listed
    /// runs none here.
    pub replicas: BTreeMap<String, BTreeSet<u32>>,
    /// This host's part of each overlay network, by network name.
    pub overlays: BTreeMap<String, OverlayAssignment>,
    /// Containers of the stack that run on other hosts (for names, VIPs and policies).
    #[serde(default)]
    pub remote: Vec<RemoteContainer>,
    /// Where relative commands of the stack resolve (the deployer's folder); `None`: the
    /// stack file's folder.
    #[serde(default)]
    pub base: Option<std::path::PathBuf>,
    /// The cluster store's endpoints, which no container of the stack may reach (see
    /// [`store_endpoints`]).
    #[serde(default)]
    pub store: Vec<SocketAddrV4>,
}

impl HostAssignment {
    pub fn runs(&self, service: &str, replica: u32) -> bool {
        self.replicas.get(service).is_some_and(|r| r.contains(&replica))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayAssignment {
    /// This host's block of the network's subnet, leased in the cluster store.
    pub block: Ipv4Net,
    /// This host's underlay address: VXLAN's source, and where peers send to.
    pub local: Ipv4Addr,
    /// The underlay link's MTU minus [`VXLAN_OVERHEAD`].
    pub mtu: u32,
    /// Every other host with a block of this network.
    pub peers: Vec<OverlayPeer>,
    /// Keep transmit checksum offload on the VXLAN device (skip the workaround for NICs and
    /// NATs that corrupt VXLAN checksums): about 3x the throughput where the path is sound.
    #[serde(default)]
    pub tx_offload: bool,
}

/// What containers must not reach of the cluster store at `urls` (etcd client URLs such as
/// `http://10.77.0.1:2379`): each member's client port and, on the same address, the port
/// after it, etcd's peer port by convention (2379 and 2380), since the agent is told only the
/// client URLs. `resolve` turns a host name into its IPv4 addresses (an address is taken as
/// it is); a URL without a port has etcd's 2379. Sorted, without duplicates.
pub fn store_endpoints(urls: &[String], resolve: impl Fn(&str) -> Vec<Ipv4Addr>) -> Vec<SocketAddrV4> {
    let mut out = BTreeSet::new();
    for url in urls {
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or_default();
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) => (h, p),
                Err(_) => continue,
            },
            None => (authority, 2379),
        };
        let addresses = match host.parse::<Ipv4Addr>() {
            Ok(a) => vec![a],
            Err(_) => resolve(host),
        };
        for a in addresses {
            out.insert(SocketAddrV4::new(a, port));
            if let Some(peer) = port.checked_add(1) {
                out.insert(SocketAddrV4::new(a, peer));
            }
        }
    }
    out.into_iter().collect()
}

/// Another host of an overlay network: one route, one neighbour and one FDB entry here.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OverlayPeer {
    pub host: String,
    pub underlay: Ipv4Addr,
    pub block: Ipv4Net,
}

/// A container that runs on another host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteContainer {
    /// `web-2`
    pub name: String,
    pub service: String,
    pub replica: u32,
    pub host: String,
    /// Its address on each overlay network it joins.
    pub addresses: BTreeMap<String, Ipv4Addr>,
    /// Runs and passes its health check (as its host's supervisor last reported).
    pub ready: bool,
}

/// The VXLAN device of one overlay network on a host: `plx` + 8 hex digits.
pub fn vxlan_device(stack: &str, network: &str) -> String {
    format!("plx{:08x}", names::fnv1a(&[stack, "/vxlan/", network]) as u32)
}

/// The MAC of a host's VXLAN device on one network; every host derives every peer's, so the
/// store need not carry them.
pub fn vtep_mac(stack: &str, network: &str, host: &str) -> crate::Mac {
    names::mac(&names::alias(stack, &format!("vtep/{network}/{host}")))
}

/// The address of a host's VXLAN device: its block's network address (as flannel gives
/// `flannel.1` its subnet's `.0`), the next hop that routes to the block point at.
pub fn vtep_address(block: Ipv4Net) -> Ipv4Addr {
    block.network()
}

/// The gateway of a host's block: its first host address, on the network's bridge there.
pub fn block_gateway(block: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(block.network()) + 1)
}

/// Where each replica of a stack runs: container name (`web-2`) → host.
pub type Placement = BTreeMap<String, String>;

/// Places every replica of `stack` on one of the `alive` hosts. Sticky: a replica stays where
/// `previous` put it while that host lives (and its pin allows); the others go to their pinned
/// host, or else to the host with the fewest replicas of the same service, then the fewest
/// overall, then by name, so replicas spread and every host computes the same answer. A
/// replica whose pinned host is not alive is left out (pending).
pub fn place(stack: &Stack, alive: &BTreeSet<String>, previous: &Placement) -> Placement {
    let replicas: Vec<(&str, String, Option<&str>)> = stack
        .services
        .iter()
        .flat_map(|(svc, spec)| {
            (1..=spec.replicas).map(move |r| (svc.as_str(), names::container(svc, r), spec.placement.as_deref()))
        })
        .collect();
    let mut placed = Placed::default();
    for (svc, name, pin) in &replicas {
        if let Some(host) = previous.get(name) {
            if alive.contains(host) && pin.is_none_or(|p| p == host) {
                placed.put(svc, name, host);
            }
        }
    }
    for (svc, name, pin) in &replicas {
        if placed.out.contains_key(name) {
            continue;
        }
        let host = match pin {
            Some(p) => alive.get(*p),
            None => alive.iter().min_by_key(|h| placed.load_key(h, svc)),
        };
        if let Some(h) = host.cloned() {
            placed.put(svc, name, &h);
        }
    }
    placed.out
}

/// A placement being made, with the replicas each host got so far (in all, and per service).
#[derive(Default)]
struct Placed {
    out: Placement,
    load: BTreeMap<String, usize>,
    load_of_service: BTreeMap<(String, String), usize>,
}

impl Placed {
    fn put(&mut self, service: &str, container: &str, host: &str) {
        *self.load.entry(host.to_string()).or_default() += 1;
        *self
            .load_of_service
            .entry((host.to_string(), service.to_string()))
            .or_default() += 1;
        self.out.insert(container.to_string(), host.to_string());
    }

    /// Fewest replicas of the service first, then fewest in all, then by name.
    fn load_key<'a>(&self, host: &'a str, service: &str) -> (usize, usize, &'a str) {
        let of_service = self.load_of_service.get(&(host.to_string(), service.to_string()));
        (
            of_service.copied().unwrap_or(0),
            self.load.get(host).copied().unwrap_or(0),
            host,
        )
    }
}

/// The first block of prefix `prefix` in `subnet` that overlaps none of `taken`.
pub fn free_block(subnet: Ipv4Net, prefix: u8, taken: &BTreeSet<Ipv4Net>) -> Option<Ipv4Net> {
    subnet
        .subnets(prefix)
        .ok()?
        .find(|b| !taken.iter().any(|t| crate::ipam::subnets_overlap(*t, *b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse;

    fn stack(text: &str) -> Stack {
        parse("plumb.toml", text).unwrap().stack
    }

    fn hosts(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|h| h.to_string()).collect()
    }

    #[test]
    fn replicas_spread_stay_put_and_move_only_off_dead_hosts() {
        let s = stack("name = \"s\"\n[services.web]\nreplicas = 3\n[services.db]\n");
        let first = place(&s, &hosts(&["h1", "h2", "h3"]), &Placement::new());
        let on = |p: &Placement, c: &str| p[c].clone();
        let web: BTreeSet<_> = ["web-1", "web-2", "web-3"].iter().map(|c| on(&first, c)).collect();
        assert_eq!(web.len(), 3, "one web replica per host: {first:?}");
        // Deterministic: every agent computes the same placement.
        assert_eq!(place(&s, &hosts(&["h3", "h1", "h2"]), &Placement::new()), first);
        // h2 dies: only its replicas move, to the other hosts.
        let second = place(&s, &hosts(&["h1", "h3"]), &first);
        for (c, h) in &first {
            if h != "h2" {
                assert_eq!(&second[c], h, "{c} moved although its host lives");
            } else {
                assert_ne!(second[c], "h2");
            }
        }
        // h2 comes back: nothing moves back (sticky).
        assert_eq!(place(&s, &hosts(&["h1", "h2", "h3"]), &second), second);
    }

    #[test]
    fn a_pinned_service_runs_on_its_host_or_waits_for_it() {
        let s = stack("name = \"s\"\n[services.db]\nreplicas = 2\nplacement = { host = \"h2\" }\n");
        let p = place(&s, &hosts(&["h1", "h2"]), &Placement::new());
        assert_eq!(p["db-1"], "h2");
        assert_eq!(p["db-2"], "h2");
        let without = place(&s, &hosts(&["h1"]), &p);
        assert!(without.is_empty(), "{without:?}");
        // A pin added later moves the replica there.
        let moved = place(
            &s,
            &hosts(&["h1", "h2"]),
            &[("db-1".to_string(), "h1".to_string())].into(),
        );
        assert_eq!(moved["db-1"], "h2");
    }

    #[test]
    fn blocks_are_the_first_free_ones() {
        let net: Ipv4Net = "10.50.0.0/16".parse().unwrap();
        let taken: BTreeSet<Ipv4Net> = ["10.50.0.0/24".parse().unwrap(), "10.50.2.0/24".parse().unwrap()].into();
        assert_eq!(free_block(net, 24, &taken).unwrap().to_string(), "10.50.1.0/24");
        let small: Ipv4Net = "10.0.0.0/30".parse().unwrap();
        let all: BTreeSet<Ipv4Net> = [small].into();
        assert_eq!(free_block(small, 30, &all), None);
    }

    #[test]
    fn device_names_fit_and_macs_differ_per_host() {
        assert_eq!(vxlan_device("shop", "backend").len(), 11);
        assert_ne!(vtep_mac("s", "n", "h1"), vtep_mac("s", "n", "h2"));
        let block: Ipv4Net = "10.50.3.0/24".parse().unwrap();
        assert_eq!(vtep_address(block).to_string(), "10.50.3.0");
        assert_eq!(block_gateway(block).to_string(), "10.50.3.1");
    }
}
