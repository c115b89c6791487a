//! A cluster of hosts sharing stacks: the store's keys and records ([`keys`], [`View`]), the
//! etcd client ([`store`]) and the agent that makes one host match ([`agent`]). What goes
//! where is decided in plumb-core's `cluster` (placement, blocks); this module reads and
//! writes it.

pub mod agent;
pub mod lease;
pub mod pki;
pub mod records;
pub mod store;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use plumb_core::cluster::{OverlayPeer, Placement, RemoteContainer};
use serde::{Deserialize, Serialize};

use store::{Entry, Snapshot};

/// What the stack's containers must not reach of the store at `urls` (its members' client
/// and peer ports: [`plumb_core::cluster::store_endpoints`]), a host name resolved to its
/// IPv4 addresses here.
pub fn store_endpoints(urls: &[String]) -> Vec<std::net::SocketAddrV4> {
    use std::net::{SocketAddr, ToSocketAddrs};
    plumb_core::cluster::store_endpoints(urls, |host| {
        (host, 0)
            .to_socket_addrs()
            .map(|addrs| {
                addrs
                    .filter_map(|a| match a {
                        SocketAddr::V4(v4) => Some(*v4.ip()),
                        SocketAddr::V6(_) => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// The store's key layout. Hosts' keys, blocks and endpoints are written with their host's
/// lease, so they vanish with a host that stops renewing it.
pub mod keys {
    pub const ROOT: &str = "/plumb/";
    pub const HOSTS: &str = "/plumb/hosts/";
    pub const STACKS: &str = "/plumb/stacks/";

    pub fn host(name: &str) -> String {
        format!("{HOSTS}{name}")
    }
    /// A host's copies of its stack records (outside [`ROOT`]: agents do not read them back).
    pub fn records(host: &str) -> String {
        format!("/plumb-records/{host}/")
    }
    pub fn stack(stack: &str) -> String {
        format!("{STACKS}{stack}/")
    }
    pub fn spec(stack: &str) -> String {
        format!("{STACKS}{stack}/spec")
    }
    pub fn placement(stack: &str) -> String {
        format!("{STACKS}{stack}/placement")
    }
    /// `/plumb/stacks/S/blocks/NET/10.50.1.0_24`: one host's block of an overlay network.
    pub fn block(stack: &str, network: &str, block: ipnet::Ipv4Net) -> String {
        format!(
            "{STACKS}{stack}/blocks/{network}/{}",
            block.to_string().replace('/', "_")
        )
    }
    pub fn endpoint(stack: &str, container: &str) -> String {
        format!("{STACKS}{stack}/endpoints/{container}")
    }
    /// What one host last made of the stack.
    pub fn report(stack: &str, host: &str) -> String {
        format!("{STACKS}{stack}/hosts/{host}")
    }
}

/// `/plumb/hosts/NAME`: a live agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    /// Where other hosts send VXLAN to.
    pub underlay: Ipv4Addr,
    /// The underlay link's MTU.
    pub mtu: u32,
    /// When the agent registered (Unix ms).
    pub since_ms: u64,
}

/// `/plumb/stacks/S/spec`: the stack file as deployed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecRecord {
    /// The file's name as diagnostics cite it.
    pub file: String,
    /// Where relative commands resolve (the deployer's folder; hosts share it or have a copy).
    pub dir: PathBuf,
    pub text: String,
    pub deployed_ms: u64,
}

/// `/plumb/stacks/S/endpoints/C`: where a replica runs and whether it is ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub host: String,
    pub service: String,
    pub replica: u32,
    /// Address on each network.
    pub addresses: BTreeMap<String, Ipv4Addr>,
    pub ready: bool,
}

/// `/plumb/stacks/S/hosts/H`: what one host made of the stack last time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    pub containers: usize,
    /// Peers wired per overlay network.
    pub peers: BTreeMap<String, usize>,
    /// Why the last attempt failed, if it did.
    pub error: Option<String>,
    pub at_ms: u64,
}

/// One stack as the store holds it.
#[derive(Debug, Clone, Default)]
pub struct StackView {
    pub spec: Option<(SpecRecord, i64)>,
    pub placement: Placement,
    /// The placement key's revision (0: none yet), for compare-and-swap.
    pub placement_revision: i64,
    /// Network → block → host.
    pub blocks: BTreeMap<String, BTreeMap<Ipv4Net, String>>,
    pub endpoints: BTreeMap<String, EndpointRecord>,
    pub reports: BTreeMap<String, HostReport>,
    /// Why its spec or placement key could not be read: the stack is deployed but its record
    /// is damaged; agents keep what they run and change nothing until it is fixed.
    pub damaged: Option<String>,
    /// The spec key's revision (0: none), readable or not, for compare-and-swap.
    pub spec_revision: i64,
}

/// The whole cluster at one revision.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub hosts: BTreeMap<String, (HostRecord, Entry)>,
    pub stacks: BTreeMap<String, StackView>,
}

impl View {
    /// Reads a snapshot of [`keys::ROOT`]; records that do not parse are skipped.
    pub fn from_snapshot(snap: &Snapshot) -> View {
        let mut view = View::default();
        for (key, entry) in &snap.entries {
            if let Some(name) = key.strip_prefix(keys::HOSTS) {
                if let Ok(h) = serde_json::from_str::<HostRecord>(&entry.value) {
                    view.hosts.insert(name.to_string(), (h, entry.clone()));
                }
                continue;
            }
            let Some(rest) = key.strip_prefix(keys::STACKS) else {
                continue;
            };
            let Some((stack, rest)) = rest.split_once('/') else {
                continue;
            };
            let s = view.stacks.entry(stack.to_string()).or_default();
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                ["spec"] => {
                    s.spec_revision = entry.mod_revision;
                    match serde_json::from_str(&entry.value) {
                        Ok(r) => s.spec = Some((r, entry.mod_revision)),
                        Err(e) => s.damaged = Some(format!("its spec ({key}) cannot be read: {e}")),
                    }
                }
                ["placement"] => {
                    match serde_json::from_str(&entry.value) {
                        Ok(p) => s.placement = p,
                        Err(e) => s.damaged = Some(format!("its placement ({key}) cannot be read: {e}")),
                    }
                    s.placement_revision = entry.mod_revision;
                }
                ["blocks", net, block] => {
                    if let Ok(b) = block.replace('_', "/").parse::<Ipv4Net>() {
                        s.blocks
                            .entry(net.to_string())
                            .or_default()
                            .insert(b, entry.value.clone());
                    }
                }
                ["endpoints", c] => {
                    if let Ok(e) = serde_json::from_str(&entry.value) {
                        s.endpoints.insert(c.to_string(), e);
                    }
                }
                ["hosts", h] => {
                    if let Ok(r) = serde_json::from_str(&entry.value) {
                        s.reports.insert(h.to_string(), r);
                    }
                }
                _ => {}
            }
        }
        view
    }

    pub fn alive(&self) -> std::collections::BTreeSet<String> {
        self.hosts.keys().cloned().collect()
    }
}

impl StackView {
    /// `host`'s block of `network`, if it has one.
    pub fn block_of(&self, network: &str, host: &str) -> Option<Ipv4Net> {
        self.blocks
            .get(network)?
            .iter()
            .find(|(_, h)| *h == host)
            .map(|(b, _)| *b)
    }

    /// Every other live host with a block of `network`.
    pub fn peers(&self, network: &str, me: &str, hosts: &BTreeMap<String, (HostRecord, Entry)>) -> Vec<OverlayPeer> {
        self.blocks
            .get(network)
            .into_iter()
            .flatten()
            .filter(|(_, h)| *h != me)
            .filter_map(|(b, h)| {
                hosts.get(h).map(|(rec, _)| OverlayPeer {
                    host: h.clone(),
                    underlay: rec.underlay,
                    block: *b,
                })
            })
            .collect()
    }

    /// Replicas other hosts report running.
    pub fn remote(&self, me: &str) -> Vec<RemoteContainer> {
        self.endpoints
            .iter()
            .filter(|(_, e)| e.host != me)
            .map(|(name, e)| RemoteContainer {
                name: name.clone(),
                service: e.service.clone(),
                replica: e.replica,
                host: e.host.clone(),
                addresses: e.addresses.clone(),
                ready: e.ready,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &str) -> Entry {
        Entry {
            value: value.to_string(),
            mod_revision: 7,
            lease: 0,
        }
    }

    #[test]
    fn a_snapshot_reads_into_hosts_and_stacks() {
        let block: Ipv4Net = "10.50.1.0/24".parse().unwrap();
        let host = HostRecord {
            name: "h2".into(),
            underlay: "10.99.0.12".parse().unwrap(),
            mtu: 1500,
            since_ms: 1,
        };
        let snap = Snapshot {
            revision: 9,
            entries: [
                (keys::host("h2"), entry(&serde_json::to_string(&host).unwrap())),
                (keys::placement("s"), entry("{\"web-1\":\"h2\"}")),
                (keys::block("s", "o", block), entry("h2")),
                (keys::block("s", "o", "10.50.0.0/24".parse().unwrap()), entry("h1")),
            ]
            .into(),
        };
        let view = View::from_snapshot(&snap);
        assert_eq!(view.hosts["h2"].0, host);
        let s = &view.stacks["s"];
        assert_eq!(s.placement["web-1"], "h2");
        assert_eq!(s.placement_revision, 7);
        assert_eq!(s.block_of("o", "h2"), Some(block));
        // h1 has a block but no live host record: not a peer.
        assert!(s.peers("o", "h2", &view.hosts).is_empty());
        let peers = s.peers("o", "h1", &view.hosts);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].block, block);
    }
}
