//! The nftables ruleset of one stack, as nft text: one table (`inet plumb_STACK`) holding
//! isolation between networks, egress masquerade and published ports. The same text is
//! applied in one transaction and printed by `--dry-run`.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::desired::Desired;
use crate::names;
use crate::spec::PortSpec;

/// The table body for `desired`, or `None` if the stack has no networks.
pub fn ruleset(desired: &Desired) -> Option<String> {
    if desired.networks.is_empty() {
        return None;
    }
    let table = names::nft_table(&desired.stack);
    let mut out = format!("table inet {table} {{\n");
    out += &forward_chain(desired);
    let (prerouting, output) = published_ports(desired);
    if !prerouting.is_empty() {
        out += &nat_chain("prerouting", "prerouting", "dstnat", &prerouting);
        out += &nat_chain("output", "output", "-100", &output); // nft names "dstnat" only for prerouting
    }
    let postrouting = postrouting_rules(desired);
    if !postrouting.is_empty() {
        out += &nat_chain("postrouting", "postrouting", "srcnat", &postrouting);
    }
    out += "}\n";
    Some(out)
}

/// The script that replaces the stack's table atomically: create it if absent (so the delete
/// cannot fail), delete it, add the new one. `nft -f` runs it as one transaction.
pub fn replace_script(desired: &Desired) -> Option<String> {
    let table = names::nft_table(&desired.stack);
    ruleset(desired).map(|body| format!("table inet {table} {{}}\ndelete table inet {table}\n{body}"))
}

fn forward_chain(desired: &Desired) -> String {
    let mut out = String::from("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n");
    let prefix = names::BRIDGE_PREFIX;
    for net in &desired.networks {
        let br = &net.bridge;
        if net.internal {
            let _ = writeln!(
                out,
                "\t\tiifname \"{br}\" oifname != \"{br}\" drop comment \"{}: internal, nothing leaves\"",
                net.name
            );
            let _ = writeln!(
                out,
                "\t\toifname \"{br}\" iifname != \"{br}\" drop comment \"{}: internal, nothing enters\"",
                net.name
            );
        } else {
            let _ = writeln!(
                out,
                "\t\tiifname \"{br}\" oifname != \"{br}\" oifname \"{prefix}*\" drop comment \"{}: no traffic to other plumb networks\"",
                net.name
            );
        }
    }
    out += "\t}\n";
    out
}

/// DNAT rules for published ports: from other hosts (prerouting) and from this host (output).
/// Several replicas share a port round-robin through `numgen`.
fn published_ports(desired: &Desired) -> (Vec<String>, Vec<String>) {
    let mut by_port: BTreeMap<PortSpec, (String, Vec<std::net::Ipv4Addr>)> = BTreeMap::new();
    for c in &desired.containers {
        let Some(ip) = c.published_address(&desired.networks) else {
            continue;
        };
        for p in &c.ports {
            by_port
                .entry(*p)
                .or_insert_with(|| (c.service.clone(), Vec::new()))
                .1
                .push(ip);
        }
    }
    let mut rules = Vec::new();
    for (port, (service, ips)) in &by_port {
        let proto = port.protocol.as_str();
        let target = match ips.as_slice() {
            [one] => format!("{one}:{}", port.container),
            many => {
                let entries: Vec<String> = many.iter().enumerate().map(|(i, ip)| format!("{i} : {ip}")).collect();
                format!(
                    "numgen inc mod {} map {{ {} }}:{}",
                    many.len(),
                    entries.join(", "),
                    port.container
                )
            }
        };
        rules.push(format!(
            "fib daddr type local {proto} dport {} dnat ip to {target} comment \"published {}/{proto} -> {service}:{}\"",
            port.host, port.host, port.container
        ));
    }
    (rules.clone(), rules)
}

fn postrouting_rules(desired: &Desired) -> Vec<String> {
    let mut rules = Vec::new();
    for net in desired.networks.iter().filter(|n| !n.internal) {
        let br = &net.bridge;
        rules.push(format!(
            "ip saddr {} oifname != \"{br}\" masquerade comment \"{}: egress NAT\"",
            net.subnet, net.name
        ));
        rules.push(format!(
            "oifname \"{br}\" ip saddr 127.0.0.0/8 masquerade comment \"{}: published ports reached via localhost\"",
            net.name
        ));
    }
    rules
}

fn nat_chain(name: &str, hook: &str, priority: &str, rules: &[String]) -> String {
    let mut out = format!("\tchain {name} {{\n\t\ttype nat hook {hook} priority {priority}; policy accept;\n");
    for r in rules {
        let _ = writeln!(out, "\t\t{r}");
    }
    out += "\t}\n";
    out
}
