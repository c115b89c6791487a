//! Anti-spoofing on the bridges: a container sends only from the MAC address and the IPv4
//! address plumb gave it, in IP packets and in ARP (so it can neither take another
//! container's address, nor poison a neighbour's ARP cache, nor clone a MAC), and no IPv6
//! (plumb offers none). One bridge-family table, three sets keyed by bridge port: a new
//! container is three elements, not a new rule.

use std::collections::BTreeMap;

use super::{Hook, HookPoint, Rule, Ruleset, Set};
use crate::desired::Desired;

/// The set of each container port's own address (`ifname . ipv4_addr`); policies use it too.
pub const PORT_ADDRS: &str = "port_addrs";

pub fn contribute(desired: &Desired, rules: &mut Ruleset) {
    let mut ports = BTreeMap::new();
    let mut macs = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    for c in &desired.containers {
        for i in &c.interfaces {
            let port = format!("\"{}\"", i.host_veth);
            ports.insert(port.clone(), None);
            macs.insert(format!("{port} . {}", i.mac), None);
            addrs.insert(format!("{port} . {}", i.address), None);
        }
    }
    if ports.is_empty() {
        return;
    }
    let set = |name: &str, key: &str, elements| Set {
        name: name.into(),
        key: key.into(),
        value: None,
        elements,
        options: Vec::new(),
    };
    rules.set(set("ports", "ifname", ports));
    rules.set(set("port_macs", "ifname . ether_addr", macs));
    rules.set(set(PORT_ADDRS, "ifname . ipv4_addr", addrs));
    let prerouting = rules.chain("prerouting", Some(Hook::bridge_filter(HookPoint::Prerouting)));
    for (expr, why) in [
        ("iifname . ether saddr != @port_macs drop", "only from its own MAC"),
        (
            "meta protocol ip iifname . ip saddr != @port_addrs drop",
            "IP only from its own address",
        ),
        (
            "meta protocol arp iifname . arp saddr ip != @port_addrs drop",
            "ARP only for its own address",
        ),
        (
            "meta protocol arp iifname . arp saddr ether != @port_macs drop",
            "ARP only with its own MAC",
        ),
        ("meta protocol ip6 drop", "no IPv6"),
    ] {
        prerouting.rules.push(Rule::new(
            format!("iifname @ports {expr}"),
            format!("anti-spoofing: a container sends {why}"),
        ));
    }
}
