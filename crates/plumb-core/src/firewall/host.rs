//! What containers may send to the host itself. Every container reaches the stack's DNS
//! server (port 53, UDP and TCP) on its own network's gateway, and on no other of the stack's
//! gateways. Containers on an internal network reach nothing else of the host; other
//! networks keep Docker's behaviour (host services are reachable), without spoofed sources.
//! The gateway addresses answer only on plumb's own bridges and from the host.

use super::{Hook, HookPoint, Rule, Ruleset};
use crate::desired::Desired;
use crate::names::BRIDGE_PREFIX;

pub fn contribute(desired: &Desired, rules: &mut Ruleset) {
    let input = rules.chain("input", Some(Hook::filter(HookPoint::Input)));
    input.rules.push(Rule::new(
        "ct state established,related accept",
        "replies to connections the host made",
    ));
    for net in &desired.networks {
        let (br, name) = (&net.bridge, &net.name);
        // `route_localnet` (which lets published ports answer on 127.0.0.1) would otherwise
        // let a container reach services the host binds to 127.0.0.1 only (as in
        // Kubernetes' CVE-2020-8558): only replies may come back to the loopback.
        input.rules.push(Rule::new(
            format!("iifname \"{br}\" ip daddr 127.0.0.0/8 drop"),
            format!("{name}: the host's loopback services are not reachable"),
        ));
        input.rules.push(Rule::new(
            format!(
                "iifname \"{br}\" ip saddr {} ip daddr {} meta l4proto {{ tcp, udp }} th dport 53 accept",
                net.subnet, net.gateway
            ),
            format!("{name}: the stack's DNS server on its gateway"),
        ));
        let others: Vec<String> = desired
            .networks
            .iter()
            .filter(|n| n.name != net.name)
            .map(|n| n.gateway.to_string())
            .collect();
        if !others.is_empty() {
            input.rules.push(Rule::new(
                format!(
                    "iifname \"{br}\" ip daddr {{ {} }} meta l4proto {{ tcp, udp }} th dport 53 drop",
                    others.join(", ")
                ),
                format!("{name}: not the DNS server of another network"),
            ));
        }
        if net.internal {
            input.rules.push(Rule::new(
                format!("iifname \"{br}\" drop"),
                format!("{name}: internal, the host is not reachable"),
            ));
        } else {
            input.rules.push(Rule::new(
                format!("iifname \"{br}\" ip saddr != {} drop", net.subnet),
                format!("{name}: no spoofed sources"),
            ));
        }
    }
    let gateways: Vec<String> = desired.networks.iter().map(|n| n.gateway.to_string()).collect();
    input.rules.push(Rule::new(
        format!(
            "iifname != \"lo\" iifname != \"{BRIDGE_PREFIX}*\" ip daddr {{ {} }} drop",
            gateways.join(", ")
        ),
        "gateways answer only their containers and the host",
    ));
}
