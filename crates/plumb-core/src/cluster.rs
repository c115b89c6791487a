//! A stack spread over a cluster, as one host sees it: which replicas run here, this host's
//! block of each overlay network, and where the others are. The agent builds a
//! [`HostAssignment`] from the cluster store (etcd); [`crate::desired::resolve_on_host`] turns
//! it and the stack file into this host's [`crate::Desired`], which the same engine as
//! `plumb up` makes real. Pure data.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::names;

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
pub fn vtep_mac(stack: &str, network: &str, host: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_fit_and_macs_differ_per_host() {
        assert_eq!(vxlan_device("shop", "backend").len(), 11);
        assert_ne!(vtep_mac("s", "n", "h1"), vtep_mac("s", "n", "h2"));
        let block: Ipv4Net = "10.50.3.0/24".parse().unwrap();
        assert_eq!(vtep_address(block).to_string(), "10.50.3.0");
        assert_eq!(block_gateway(block).to_string(), "10.50.3.1");
    }
}
