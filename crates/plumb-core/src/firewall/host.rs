//! What containers may send to the host itself (any of its addresses: gateways, uplink,
//! underlay). Only what plumb serves them: the stack's DNS server (port 53, UDP and TCP) on
//! its own network's gateway (on no other of the stack's gateways), a ping of that gateway,
//! replies to connections the host made, and, from a non-internal network, what a policy
//! with `to = "host"` allows. Nothing else: a host service on 0.0.0.0 (sshd, etcd, a
//! database) is not the containers' to reach. The gateway addresses answer only on plumb's
//! own bridges and from the host.

use super::{policy, Hook, HookPoint, Rule, Ruleset};
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
        if desired.tracing.is_none() && desired.containers.iter().any(|c| c.mesh) {
            input.rules.push(Rule::new(
                format!(
                    "iifname \"{br}\" ip saddr {} ip daddr {} tcp dport {} accept",
                    net.subnet,
                    net.gateway,
                    crate::mesh::OTLP_PORT
                ),
                format!("{name}: the stack's trace receiver (OTLP/HTTP) on its gateway"),
            ));
        }
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
            continue;
        }
        input.rules.push(Rule::new(
            format!("iifname \"{br}\" ip saddr != {} drop", net.subnet),
            format!("{name}: no spoofed sources"),
        ));
        input.rules.push(Rule::new(
            format!(
                "iifname \"{br}\" ip daddr {} icmp type echo-request accept",
                net.gateway
            ),
            format!("{name}: ping of its gateway"),
        ));
        if !desired.policies.is_empty() {
            input.rules.push(Rule::new(
                format!(
                    "iifname \"{br}\" ip saddr . meta l4proto . th dport @{} accept",
                    policy::TO_HOST
                ),
                format!("{name}: what a policy to the host allows"),
            ));
        }
        input.rules.push(Rule::new(
            format!("iifname \"{br}\" drop"),
            format!("{name}: the host's own services are not reachable"),
        ));
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
