//! Overlay networks on a cluster host: routed traffic between the network's bridge and its
//! VXLAN device stays within the network's whole subnet (so two overlays, or an overlay and a
//! bridge network, stay apart across hosts as on one host); what comes out of the VXLAN
//! device must come from another host's block of the network (anti-spoofing); and VXLAN
//! itself (UDP 4789, the network's VNI) is accepted only from the peers' underlay addresses,
//! one set whose elements change as hosts come and go. Egress NAT leaves the overlay's own
//! subnet alone (see `egress`): sources are preserved across hosts.
//!
//! And on every host, overlay or not: containers send no VXLAN ([`contribute_sender`]). A
//! peer's underlay address is trusted only because what leaves it to the VXLAN port is what
//! its own kernel encapsulated; a container's datagram to a VTEP, masqueraded to that same
//! address, would otherwise be taken for one, its forged inner packet delivered past
//! anti-spoofing and policies. So the VNI need not be secret: knowing it gets a container
//! nothing.

use std::collections::BTreeMap;

use super::{Hook, HookPoint, Rule, Ruleset, Set};
use crate::cluster::VXLAN_PORT;
use crate::desired::Desired;

/// The set of the overlay peers' underlay addresses.
pub const HOSTS_SET: &str = "overlay_hosts";

/// Containers of every network send nothing to the VXLAN port (of any host, this one
/// included): only the host encapsulates.
pub fn contribute_sender(desired: &Desired, rules: &mut Ruleset) {
    if desired.networks.is_empty() {
        return;
    }
    let bridges: Vec<String> = desired.networks.iter().map(|n| format!("\"{}\"", n.bridge)).collect();
    let expr = format!(
        "iifname {{ {} }} udp dport {VXLAN_PORT} counter drop",
        bridges.join(", ")
    );
    for point in [HookPoint::Forward, HookPoint::Input] {
        let chain = rules.chain(point.as_str(), Some(Hook::filter(point)));
        chain.rules.push(Rule::new(
            expr.clone(),
            "containers send no VXLAN: only the host encapsulates",
        ));
    }
}

pub fn contribute(desired: &Desired, rules: &mut Ruleset) {
    let overlays: Vec<_> = desired
        .networks
        .iter()
        .filter_map(|n| n.overlay.as_ref().map(|o| (n, o)))
        .collect();
    if overlays.is_empty() {
        return;
    }
    let forward = rules.chain("forward", Some(Hook::filter(HookPoint::Forward)));
    for (net, o) in &overlays {
        let (br, dev, name, block, subnet) = (&net.bridge, &o.device, &net.name, net.subnet, o.subnet);
        for (expr, why) in [
            (
                format!("iifname \"{dev}\" ip saddr != {subnet} drop"),
                "from the overlay, only the network's addresses",
            ),
            (
                format!("iifname \"{dev}\" ip saddr {block} drop"),
                "from the overlay, never this host's own block",
            ),
            (
                format!("iifname \"{dev}\" oifname \"{br}\" ip daddr {block} accept"),
                "other hosts' containers reach this host's",
            ),
            (format!("iifname \"{dev}\" drop"), "nothing else comes from the overlay"),
            (
                format!("iifname \"{br}\" oifname \"{dev}\" ip saddr {block} ip daddr {subnet} accept"),
                "this host's containers reach the other hosts'",
            ),
            (format!("oifname \"{dev}\" drop"), "nothing else goes into the overlay"),
        ] {
            forward.rules.push(Rule::new(expr, format!("{name}: {why}")));
        }
    }
    let hosts: BTreeMap<String, Option<String>> = overlays
        .iter()
        .flat_map(|(_, o)| o.peers.iter().map(|p| (p.underlay.to_string(), None)))
        .collect();
    rules.set(Set {
        elements: hosts,
        ..Set::new(HOSTS_SET, "ipv4_addr", None)
    });
    let input = rules.chain("input", Some(Hook::filter(HookPoint::Input)));
    for (net, o) in &overlays {
        let (dev, name, vni) = (&o.device, &net.name, o.vni);
        // The VNI is the 24 bits after the VXLAN header's flags and reserved bytes.
        input.rules.push(Rule::new(
            format!("udp dport {VXLAN_PORT} @th,96,24 {vni} ip saddr != @{HOSTS_SET} counter drop"),
            format!("{name}: VXLAN only from the overlay's hosts"),
        ));
        input.rules.push(Rule::new(
            format!("iifname \"{dev}\" drop"),
            format!("{name}: the overlay carries containers' traffic, not the host's"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::cluster::{HostAssignment, OverlayAssignment, OverlayPeer};
    use crate::desired::resolve_on_host;
    use crate::firewall::rulesets;
    use crate::spec::parse;

    #[test]
    fn overlay_rules_keep_the_subnet_and_accept_vxlan_from_peers_only() {
        let text = "name = \"s\"\n[networks.o]\nsubnet = \"10.50.0.0/16\"\ndriver = \"overlay\"\ninternal = true\n\
                    [networks.b]\nsubnet = \"10.60.0.0/24\"\n[services.a]\nnetworks = [\"o\", \"b\"]\n";
        let assignment = HostAssignment {
            host: "h1".into(),
            replicas: [("a".to_string(), [1].into())].into(),
            overlays: [(
                "o".to_string(),
                OverlayAssignment {
                    block: "10.50.0.0/24".parse().unwrap(),
                    local: "10.99.0.11".parse().unwrap(),
                    mtu: 1450,
                    tx_offload: None,
                    tx_offload_why: None,
                    peers: vec![OverlayPeer {
                        host: "h2".into(),
                        underlay: "10.99.0.12".parse().unwrap(),
                        block: "10.50.1.0/24".parse().unwrap(),
                    }],
                },
            )]
            .into(),
            remote: vec![],
            base: None,
            store: vec![],
        };
        let d = resolve_on_host(&parse("f", text).unwrap(), &Default::default(), &assignment)
            .unwrap()
            .0;
        let inet = rulesets(&d).remove(0).print();
        for needle in [
            "ip saddr != 10.50.0.0/16 drop",
            "ip saddr 10.50.0.0/24 drop",
            "ip saddr 10.50.0.0/24 ip daddr 10.50.0.0/16 accept",
            "set overlay_hosts",
            "elements = { 10.99.0.12 }",
            "udp dport 4789 @th,96,24",
            "ip saddr != @overlay_hosts counter drop",
            "udp dport 4789 counter drop comment \"containers send no VXLAN",
        ] {
            assert!(inet.contains(needle), "missing {needle:?} in\n{inet}");
        }
        // The overlay's rules come before "nothing else enters" and the internal network's
        // "nothing leaves".
        let at = |needle: &str| inet.find(needle).unwrap_or_else(|| panic!("{needle}"));
        assert!(at("reach this host's") < at("nothing else enters"));
        assert!(at("reach the other hosts'") < at("internal, nothing leaves"));
        // Containers' VXLAN is dropped before anything could accept it (and masquerade it
        // into the underlay), in forward and in input.
        let sender = inet
            .lines()
            .filter(|l| l.contains("containers send no VXLAN"))
            .collect::<Vec<_>>();
        assert_eq!(sender.len(), 2, "{inet}");
        assert!(sender
            .iter()
            .all(|l| l.contains(&d.networks[0].bridge) && l.contains(&d.networks[1].bridge)));
        assert!(at("containers send no VXLAN") < at("replies to connections already allowed"));
        // The bridge network keeps its egress NAT; the internal overlay has none.
        assert!(inet.contains("ip saddr 10.60.0.0/24 oifname"));
        assert!(!inet.contains("ip saddr 10.50.0.0/24 ip daddr != 10.50.0.0/16"));
    }
}
