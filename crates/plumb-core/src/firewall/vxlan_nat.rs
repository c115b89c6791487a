//! Whether a NAT on this host could rewrite the VXLAN packets it sends, and so whether its
//! VXLAN devices keep transmit checksum offload.
//!
//! The workaround (`ethtool -K DEV tx off`, [`crate::ops::Op::TxChecksumOff`]) exists for
//! VXLAN packets that a NAT rewrites on their way out (calico#3145, flannel#1279): kube-proxy
//! marks a container's packet for masquerade, the mark survives encapsulation, and the outer
//! UDP packet is masqueraded with its checksum still partial. It costs most of the overlay's
//! throughput (the device loses TSO: every segment is encapsulated and checksummed in
//! software). flannel leaves offload on and documents the workaround for hosts behind a NAT;
//! plumb keeps it on wherever it can show that no NAT rule touches the packets: containers
//! send no VXLAN of their own (see `overlay::contribute_sender`), so what is left are the
//! host's own rules, read here.
//!
//! The packet: IPv4, from this host's underlay address, UDP to port 4789, locally generated
//! (no input interface), to a peer (not a local address), mark unknown. Its path: the `output`
//! and `postrouting` hooks. Every `nat` base chain there (families `ip` and `inet`) is walked,
//! following jumps, gotos and verdict maps; a rule is passed over only if one of its own
//! matches cannot hold for that packet (`ip saddr` not this host's address, another
//! transport, a destination port other than 4789, an input interface, a local destination,
//! IPv6). Any other rule that NATs (snat, dnat, masquerade, redirect, an iptables-nft target)
//! means the workaround. Unknown matches count as "may match", so the answer errs towards
//! the workaround. iptables-legacy rules are not in nftables' listing: a legacy `nat` table
//! means the workaround too.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::cluster::VXLAN_PORT;

/// What becomes of a VXLAN device's transmit checksum offload on this host, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxOffload {
    pub keep: bool,
    pub why: String,
}

/// The decision for an overlay whose VXLAN packets leave from `local`. `forced` is what the
/// assignment says (`plumb agent --vxlan-offload`, or `tx_offload` in a hand-written
/// assignment); otherwise the host's NAT rules decide: `ruleset` is `nft -j list ruleset`'s
/// output and the names in `/proc/net/ip_tables_names` (iptables-legacy), or why they could
/// not be read.
pub fn decide(forced: Option<bool>, local: Ipv4Addr, ruleset: Result<(&str, &[String]), String>) -> TxOffload {
    match forced {
        Some(true) => {
            return TxOffload {
                keep: true,
                why: "tx checksum offload kept: asked for (--vxlan-offload or the assignment)".into(),
            }
        }
        Some(false) => {
            return TxOffload {
                keep: false,
                why: "tx checksum offload off: asked for (the assignment)".into(),
            }
        }
        None => {}
    }
    let nat = match ruleset {
        Err(e) => Some(format!("the host's NAT rules could not be read ({e})")),
        Ok((json, legacy)) => nat_on_vxlan(json, legacy, local),
    };
    match nat {
        None => TxOffload {
            keep: true,
            why: format!(
                "tx checksum offload kept: no NAT rule on this host can match its VXLAN packets \
                 (udp {VXLAN_PORT} from {local}; nftables and iptables-legacy checked)"
            ),
        },
        Some(rule) => TxOffload {
            keep: false,
            why: format!("tx checksum offload off (calico#3145 workaround): {rule}"),
        },
    }
}

/// The first NAT rule that may rewrite VXLAN packets sent from `local`, described; `None` if
/// there is none. `json` is `nft -j list ruleset`'s output, `legacy` the iptables-legacy
/// tables.
pub fn nat_on_vxlan(json: &str, legacy: &[String], local: Ipv4Addr) -> Option<String> {
    if legacy.iter().any(|t| t == "nat") {
        return Some("iptables-legacy has a nat table (its rules are not in nftables' listing)".into());
    }
    let value: Value = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => return Some(format!("the nftables ruleset is not nft's JSON ({e})")),
    };
    let objects: Vec<&Value> = value
        .get("nftables")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let listing = Listing { objects, local };
    let mut seen = BTreeSet::new();
    for o in &listing.objects {
        let Some(chain) = o.get("chain") else { continue };
        let family = str_of(chain, "family");
        let hook = str_of(chain, "hook");
        if matches!(family, "ip" | "inet") && str_of(chain, "type") == "nat" && matches!(hook, "output" | "postrouting")
        {
            let key = (family, str_of(chain, "table"), str_of(chain, "name"));
            if let Some(found) = listing.walk(key, &mut seen) {
                return Some(found);
            }
        }
    }
    None
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

type ChainKey<'a> = (&'a str, &'a str, &'a str);

struct Listing<'a> {
    objects: Vec<&'a Value>,
    local: Ipv4Addr,
}

/// iptables-nft targets that do not rewrite addresses or ports.
const HARMLESS_TARGETS: &[&str] = &["MARK", "CONNMARK", "LOG", "NFLOG", "RETURN", "ACCEPT", "CT", "TRACE"];

impl<'a> Listing<'a> {
    fn rules(&self, (family, table, chain): ChainKey<'_>) -> impl Iterator<Item = &'a Value> + '_ {
        let (family, table, chain) = (family.to_string(), table.to_string(), chain.to_string());
        self.objects.iter().filter_map(move |o| {
            let r = o.get("rule")?;
            (str_of(r, "family") == family && str_of(r, "table") == table && str_of(r, "chain") == chain).then_some(r)
        })
    }

    fn walk(&self, key: ChainKey<'a>, seen: &mut BTreeSet<ChainKey<'a>>) -> Option<String> {
        if !seen.insert(key) {
            return None;
        }
        let (family, table, chain) = key;
        for rule in self.rules(key) {
            let exprs: Vec<&Value> = rule
                .get("expr")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            if exprs.iter().any(|e| self.excludes(e)) {
                continue;
            }
            let mut next: Vec<&str> = Vec::new();
            for e in &exprs {
                if let Some(what) = nat_statement(e) {
                    let handle = rule.get("handle").and_then(Value::as_u64).unwrap_or_default();
                    return Some(format!(
                        "table {family} {table}, chain {chain}: a {what} rule (handle {handle}) may match udp {VXLAN_PORT} from {}",
                        self.local
                    ));
                }
                for verdict in ["jump", "goto"] {
                    if let Some(t) = e.get(verdict).and_then(|j| j.get("target")).and_then(Value::as_str) {
                        next.push(t);
                    }
                }
                if let Some(vmap) = e.get("vmap") {
                    next.extend(self.vmap_targets(vmap, family, table));
                }
            }
            for t in next {
                let target = self
                    .objects
                    .iter()
                    .filter_map(|o| o.get("chain"))
                    .find(|c| str_of(c, "family") == family && str_of(c, "table") == table && str_of(c, "name") == t)
                    .map(|c| (family, table, str_of(c, "name")));
                if let Some(found) = target.and_then(|k| self.walk(k, seen)) {
                    return Some(found);
                }
            }
        }
        None
    }

    /// The chains a verdict map may send the packet to: those of the elements whose key may
    /// match it (all the table's chains for a map that is not in the listing).
    fn vmap_targets(&self, vmap: &'a Value, family: &str, table: &str) -> Vec<&'a str> {
        let key = vmap.get("key").unwrap_or(&Value::Null);
        let parts: Vec<&Value> = match key.get("concat").and_then(Value::as_array) {
            Some(c) => c.iter().collect(),
            None => vec![key],
        };
        let data = vmap.get("data").unwrap_or(&Value::Null);
        let elements: Vec<&Value> = if let Some(name) = data.as_str().and_then(|s| s.strip_prefix('@')) {
            let map =
                self.objects.iter().filter_map(|o| o.get("map")).find(|m| {
                    str_of(m, "family") == family && str_of(m, "table") == table && str_of(m, "name") == name
                });
            match map {
                Some(m) => m
                    .get("elem")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().collect())
                    .unwrap_or_default(),
                None => {
                    return self
                        .objects
                        .iter()
                        .filter_map(|o| o.get("chain"))
                        .filter(|c| str_of(c, "family") == family && str_of(c, "table") == table)
                        .map(|c| str_of(c, "name"))
                        .collect()
                }
            }
        } else {
            data.get("set")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        for element in elements {
            let Some([k, verdict]) = element.as_array().map(Vec::as_slice) else {
                continue;
            };
            let k = k.get("elem").and_then(|e| e.get("val")).unwrap_or(k);
            let values: Vec<&Value> = match k.get("concat").and_then(Value::as_array) {
                Some(c) => c.iter().collect(),
                None => vec![k],
            };
            let excluded = parts
                .iter()
                .zip(&values)
                .any(|(left, right)| self.match_excludes(left, "==", right));
            if excluded {
                continue;
            }
            for v in ["jump", "goto"] {
                if let Some(t) = verdict.get(v).and_then(|j| j.get("target")).and_then(Value::as_str) {
                    out.push(t);
                }
            }
        }
        out
    }

    /// Whether this expression of a rule cannot hold for the VXLAN packet.
    fn excludes(&self, expr: &Value) -> bool {
        let Some(m) = expr.get("match") else { return false };
        let (Some(left), Some(right)) = (m.get("left"), m.get("right")) else {
            return false;
        };
        self.match_excludes(left, str_of(m, "op"), right)
    }

    fn match_excludes(&self, left: &Value, op: &str, right: &Value) -> bool {
        let positive = match op {
            "==" | "in" => true,
            "!=" => false,
            _ => return false,
        };
        let values = values_of(right);
        let Some(values) = values else { return false };
        // Whether the packet's value is among `values` (None: cannot tell).
        let holds: Option<bool> = if let Some(p) = left.get("payload") {
            let (protocol, field) = (str_of(p, "protocol"), str_of(p, "field"));
            match (protocol, field) {
                ("ip", "saddr") => values
                    .iter()
                    .map(|v| contains_addr(v, self.local))
                    .collect::<Option<Vec<_>>>()
                    .map(|v| v.contains(&true)),
                ("ip", "protocol") => Some(values.iter().any(|v| is_udp(v))),
                ("udp" | "th", "dport") => values
                    .iter()
                    .map(|v| contains_port(v, VXLAN_PORT))
                    .collect::<Option<Vec<_>>>()
                    .map(|v| v.contains(&true)),
                // A match on another transport's or IPv6's header holds only for those
                // packets, whatever the value.
                (
                    "tcp" | "sctp" | "dccp" | "icmp" | "icmpv6" | "igmp" | "ah" | "esp" | "comp" | "udplite" | "ip6",
                    _,
                ) => return true,
                _ => None,
            }
        } else if let Some(meta) = left.get("meta") {
            match str_of(meta, "key") {
                "l4proto" => Some(values.iter().any(|v| is_udp(v))),
                "nfproto" | "protocol" => Some(values.iter().any(|v| matches!(v.as_str(), Some("ipv4" | "ip")))),
                // Locally generated: no input interface (nft compares "" and index 0).
                "iifname" => Some(values.iter().any(|v| matches!(v.as_str(), Some("" | "*")))),
                "iif" => Some(false),
                _ => None,
            }
        } else if let Some(fib) = left.get("fib") {
            let daddr_type = str_of(fib, "result") == "type"
                && fib
                    .get("flags")
                    .and_then(Value::as_array)
                    .is_some_and(|f| f.iter().any(|x| x == "daddr"));
            // The destination is a peer: another host's unicast address.
            daddr_type.then(|| values.iter().any(|v| v.as_str() == Some("unicast")))
        } else {
            None
        };
        matches!(holds, Some(h) if h != positive)
    }
}

/// The values of a match's right side: one value, or a literal set's; `None` for a named set.
fn values_of(right: &Value) -> Option<Vec<&Value>> {
    if right.as_str().is_some_and(|s| s.starts_with('@')) {
        return None;
    }
    Some(match right.get("set").and_then(Value::as_array) {
        Some(s) => s.iter().collect(),
        None => vec![right],
    })
}

fn is_udp(v: &Value) -> bool {
    v.as_str() == Some("udp") || v.as_u64() == Some(17)
}

/// Whether `v` (an address, a prefix or a range) holds `addr`; `None` if it is none of those.
fn contains_addr(v: &Value, addr: Ipv4Addr) -> Option<bool> {
    if let Some(s) = v.as_str() {
        return s.parse::<Ipv4Addr>().ok().map(|a| a == addr);
    }
    if let Some(p) = v.get("prefix") {
        let net = format!("{}/{}", str_of(p, "addr"), p.get("len")?.as_u64()?);
        return net.parse::<Ipv4Net>().ok().map(|n| n.contains(&addr));
    }
    if let Some([lo, hi]) = v.get("range").and_then(Value::as_array).map(Vec::as_slice) {
        let (lo, hi) = (
            lo.as_str()?.parse::<Ipv4Addr>().ok()?,
            hi.as_str()?.parse::<Ipv4Addr>().ok()?,
        );
        return Some(lo <= addr && addr <= hi);
    }
    None
}

fn contains_port(v: &Value, port: u16) -> Option<bool> {
    if let Some(n) = v.as_u64() {
        return Some(n == u64::from(port));
    }
    if let Some([lo, hi]) = v.get("range").and_then(Value::as_array).map(Vec::as_slice) {
        return Some(lo.as_u64()? <= u64::from(port) && u64::from(port) <= hi.as_u64()?);
    }
    None
}

/// The NAT this statement does, if it does one.
fn nat_statement(e: &Value) -> Option<String> {
    for k in ["snat", "dnat", "masquerade", "redirect"] {
        if e.get(k).is_some() {
            return Some(k.to_string());
        }
    }
    let xt = e.get("xt")?;
    let name = str_of(xt, "name");
    (str_of(xt, "type") == "target" && !HARMLESS_TARGETS.contains(&name)).then(|| format!("{name} (iptables)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 11);
    /// plumb's own table on an overlay host (networks a: overlay 10.50.0.0/16, b: bridge
    /// 10.60.0.0/24; a VIP, a published port): `nft -j list ruleset` after `plumb up`.
    const PLUMB: &str = include_str!("testdata/plumb-overlay-ruleset.json");

    /// A ruleset of one `inet t` table: a nat postrouting chain `post` with `rules` (nft JSON
    /// expression lists) and a regular chain `sub` with `sub`.
    fn table(rules: &[&str], sub: &[&str]) -> String {
        let mut o = vec![
            r#"{"table": {"family": "inet", "name": "t", "handle": 1}}"#.to_string(),
            r#"{"chain": {"family": "inet", "table": "t", "name": "post", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}"#.into(),
            r#"{"chain": {"family": "inet", "table": "t", "name": "sub", "handle": 2}}"#.into(),
        ];
        for (chain, list) in [("post", rules), ("sub", sub)] {
            for (i, r) in list.iter().enumerate() {
                o.push(format!(
                    r#"{{"rule": {{"family": "inet", "table": "t", "chain": "{chain}", "handle": {}, "expr": {r}}}}}"#,
                    10 + i
                ));
            }
        }
        format!(r#"{{"nftables": [{}]}}"#, o.join(", "))
    }

    fn nat(json: &str) -> Option<String> {
        nat_on_vxlan(json, &[], LOCAL)
    }

    const MASQ: &str = r#"{"masquerade": null}"#;

    #[test]
    fn plumbs_own_rules_leave_vxlan_alone_so_offload_is_kept() {
        assert_eq!(nat(PLUMB), None);
        assert_eq!(nat(r#"{"nftables": []}"#), None);
        let d = decide(None, LOCAL, Ok((PLUMB, &[])));
        assert!(d.keep, "{d:?}");
        assert!(d.why.contains("no NAT rule"), "{}", d.why);
    }

    #[test]
    fn a_nat_rule_that_may_match_vxlan_means_the_workaround() {
        // kube-proxy's masquerade of marked packets (iptables-nft): the mark survives
        // encapsulation, so it may match (calico#3145).
        let kube = r#"{"nftables": [
            {"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
            {"rule": {"family": "ip", "table": "nat", "chain": "POSTROUTING", "handle": 4, "expr": [{"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 16384]}, "right": 16384}}, {"counter": {"packets": 0, "bytes": 0}}, {"xt": {"type": "target", "name": "MASQUERADE"}}]}}]}"#;
        let found = nat(kube).expect("kube-proxy's masquerade may match");
        assert!(
            found.contains("table ip nat, chain POSTROUTING") && found.contains("MASQUERADE"),
            "{found}"
        );
        let d = decide(None, LOCAL, Ok((kube, &[])));
        assert!(
            !d.keep && d.why.contains("calico#3145") && d.why.contains("POSTROUTING"),
            "{d:?}"
        );
        // The same rule in plumb's listing: still the workaround.
        let both = PLUMB.replacen(
            r#"{"nftables": ["#,
            &format!("{},", &kube[..kube.rfind(']').unwrap()]),
            1,
        );
        assert!(nat(&both).is_some());
        // A blanket masquerade, a source NAT of the underlay's subnet, one to port 4789.
        assert!(nat(&table(&[&format!("[{MASQ}]")], &[])).is_some());
        let saddr = |net: &str, len: u8, op: &str| {
            format!(
                r#"[{{"match": {{"op": "{op}", "left": {{"payload": {{"protocol": "ip", "field": "saddr"}}}}, "right": {{"prefix": {{"addr": "{net}", "len": {len}}}}}}}}}, {MASQ}]"#
            )
        };
        assert!(nat(&table(&[&saddr("10.99.0.0", 24, "==")], &[])).is_some());
        assert!(nat(&table(&[&saddr("10.50.0.0", 16, "!=")], &[])).is_some());
        let dport = |port: u16| {
            format!(
                r#"[{{"match": {{"op": "==", "left": {{"payload": {{"protocol": "udp", "field": "dport"}}}}, "right": {port}}}}}, {{"snat": {{"family": "ip", "addr": "1.2.3.4"}}}}]"#
            )
        };
        assert!(nat(&table(&[&dport(4789)], &[])).is_some());
        // Reached through a jump, and through a verdict map whose element may match.
        let jump = r#"[{"jump": {"target": "sub"}}]"#;
        assert!(nat(&table(&[jump], &[&format!("[{MASQ}]")]))
            .expect("through the jump")
            .contains("chain sub"));
        let vmap = |proto: &str, port: u16| {
            format!(
                r#"[{{"vmap": {{"key": {{"concat": [{{"meta": {{"key": "l4proto"}}}}, {{"payload": {{"protocol": "th", "field": "dport"}}}}]}}, "data": {{"set": [[{{"concat": ["{proto}", {port}]}}, {{"goto": {{"target": "sub"}}}}]]}}}}}}]"#
            )
        };
        assert!(nat(&table(&[&vmap("udp", 4789)], &[&format!("[{MASQ}]")])).is_some());
        // A named map that is not in the listing: every chain of the table may be reached.
        let named = r#"[{"vmap": {"key": {"meta": {"key": "l4proto"}}, "data": "@gone"}}]"#;
        assert!(nat(&table(&[named], &[&format!("[{MASQ}]")])).is_some());
        // iptables-legacy's rules cannot be read: a nat table there means the workaround.
        assert!(nat_on_vxlan(PLUMB, &["filter".into(), "nat".into()], LOCAL).is_some());
        assert_eq!(nat_on_vxlan(PLUMB, &["filter".into()], LOCAL), None);
        // A ruleset that cannot be read, or is not JSON: the workaround.
        assert!(!decide(None, LOCAL, Err("nft: not found".into())).keep);
        assert!(nat("nft: error").is_some());
    }

    #[test]
    fn nat_rules_that_cannot_match_vxlan_keep_offload() {
        let saddr = |net: &str, len: u8, op: &str| {
            format!(
                r#"[{{"match": {{"op": "{op}", "left": {{"payload": {{"protocol": "ip", "field": "saddr"}}}}, "right": {{"prefix": {{"addr": "{net}", "len": {len}}}}}}}}}, {MASQ}]"#
            )
        };
        let others = [
            // Another source, another transport, another port, an input interface, a
            // local destination, IPv6.
            saddr("10.50.0.0", 16, "=="),
            saddr("10.99.0.0", 24, "!="),
            format!(
                r#"[{{"match": {{"op": "==", "left": {{"meta": {{"key": "l4proto"}}}}, "right": "tcp"}}}}, {MASQ}]"#
            ),
            format!(
                r#"[{{"match": {{"op": "==", "left": {{"payload": {{"protocol": "tcp", "field": "dport"}}}}, "right": 4789}}}}, {MASQ}]"#
            ),
            format!(
                r#"[{{"match": {{"op": "==", "left": {{"payload": {{"protocol": "udp", "field": "dport"}}}}, "right": {{"set": [53, {{"range": [5000, 6000]}}]}}}}}}, {MASQ}]"#
            ),
            format!(
                r#"[{{"match": {{"op": "==", "left": {{"meta": {{"key": "iifname"}}}}, "right": {{"set": ["br0", "veth*"]}}}}}}, {MASQ}]"#
            ),
            format!(
                r#"[{{"match": {{"op": "==", "left": {{"fib": {{"result": "type", "flags": ["daddr"]}}}}, "right": "local"}}}}, {MASQ}]"#
            ),
            format!(
                r#"[{{"match": {{"op": "==", "left": {{"meta": {{"key": "nfproto"}}}}, "right": "ipv6"}}}}, {MASQ}]"#
            ),
        ];
        for rule in &others {
            assert_eq!(nat(&table(&[rule], &[])), None, "{rule}");
        }
        // A jump the packet cannot take, a verdict map element it cannot match, a target
        // that does not NAT.
        let tcp_jump = r#"[{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"jump": {"target": "sub"}}]"#;
        assert_eq!(nat(&table(&[tcp_jump], &[&format!("[{MASQ}]")])), None);
        let vmap = r#"[{"vmap": {"key": {"concat": [{"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}, "data": {"set": [[{"concat": ["tcp", 4789]}, {"goto": {"target": "sub"}}], [{"concat": ["udp", 53]}, {"goto": {"target": "sub"}}]]}}}]"#;
        assert_eq!(nat(&table(&[vmap], &[&format!("[{MASQ}]")])), None);
        let mark = r#"[{"xt": {"type": "target", "name": "MARK"}}]"#;
        assert_eq!(nat(&table(&[mark], &[])), None);
        // The underlay is not the containers' subnet: with another local address a
        // container subnet's masquerade would match.
        let d = decide(None, "10.60.0.7".parse().unwrap(), Ok((PLUMB, &[])));
        assert!(!d.keep, "{d:?}");
        // What the assignment asks for wins.
        assert!(decide(Some(true), LOCAL, Err("unread".into())).keep);
        assert!(!decide(Some(false), LOCAL, Ok((PLUMB, &[]))).keep);
    }
}
