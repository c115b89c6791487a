//! Published ports, in the shape of kube-proxy's nftables mode: verdict maps from
//! `protocol . port` (on every host address) and `address . protocol . port` (on one) to a
//! chain per published port that DNATs to the replicas (round robin through `numgen` when
//! there are several). From other hosts (prerouting) and from this host (output, 127.0.0.1
//! included through `route_localnet` on plumb's bridges). A changed port is an element and a
//! chain swapped in one transaction, not a new table.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::{Hook, HookPoint, Rule, Ruleset, Set};
use crate::desired::Desired;
use crate::spec::PortSpec;

/// Ports published on every host address.
pub const MAP: &str = "published";
/// Ports published on one host address.
pub const MAP_AT: &str = "published_at";

pub fn contribute(desired: &Desired, rules: &mut Ruleset) {
    let mut by_port: BTreeMap<PortSpec, (String, Vec<Ipv4Addr>)> = BTreeMap::new();
    for c in &desired.containers {
        let Some(ip) = c.published_address(&desired.networks) else {
            continue;
        };
        for p in &c.ports {
            let entry = by_port.entry(*p).or_insert_with(|| (c.service.clone(), Vec::new()));
            entry.1.push(ip);
        }
    }
    if by_port.is_empty() {
        return;
    }
    let map = |name: &str, key: &str| Set {
        name: name.into(),
        key: key.into(),
        value: Some("verdict".into()),
        elements: BTreeMap::new(),
        timeout_secs: None,
    };
    let mut anywhere = map(MAP, "inet_proto . inet_service");
    let mut at = map(MAP_AT, "ipv4_addr . inet_proto . inet_service");
    for (port, (service, ips)) in &by_port {
        let proto = port.protocol.as_str();
        let chain = match port.host_ip {
            Some(ip) => format!("port_{proto}_{}_{}", ip.to_string().replace('.', "_"), port.host),
            None => format!("port_{proto}_{}", port.host),
        };
        let verdict = Some(format!("goto {chain}"));
        match port.host_ip {
            Some(ip) => at.elements.insert(format!("{ip} . {proto} . {}", port.host), verdict),
            None => anywhere.elements.insert(format!("{proto} . {}", port.host), verdict),
        };
        let target = match ips.as_slice() {
            [one] => format!("{one}:{}", port.container),
            many => {
                let entries: Vec<String> = many.iter().enumerate().map(|(i, ip)| format!("{i} : {ip}")).collect();
                let n = many.len();
                format!("numgen inc mod {n} map {{ {} }}:{}", entries.join(", "), port.container)
            }
        };
        rules.chain(&chain, None).rules.push(Rule::new(
            format!("meta l4proto {proto} dnat ip to {target}"),
            format!("published {} -> {service}:{}", port.host_side(), port.container),
        ));
    }
    rules.set(at);
    rules.set(anywhere);
    for point in [HookPoint::Prerouting, HookPoint::Output] {
        let chain = rules.chain(point_name(point), Some(Hook::nat(point)));
        chain.rules.push(Rule::new(
            format!("fib daddr type local ip daddr . meta l4proto . th dport vmap @{MAP_AT}"),
            "ports published on one host address",
        ));
        chain.rules.push(Rule::new(
            format!("fib daddr type local meta l4proto . th dport vmap @{MAP}"),
            "ports published on every host address",
        ));
    }
    let postrouting = rules.chain("postrouting", Some(Hook::nat(HookPoint::Postrouting)));
    for net in desired.networks.iter().filter(|n| !n.internal) {
        postrouting.rules.push(Rule::new(
            format!("oifname \"{}\" ip saddr 127.0.0.0/8 masquerade", net.bridge),
            format!("{}: published ports reached via localhost", net.name),
        ));
    }
}

fn point_name(point: HookPoint) -> &'static str {
    match point {
        HookPoint::Prerouting => "prerouting",
        _ => "output",
    }
}
