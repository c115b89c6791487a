//! A ruleset's shape, comparable between plumb's typed ruleset and the kernel's JSON listing
//! (`nft -j list table`): chains with their hook, priority and policy and the comments of
//! their rules in order, and every set's and map's elements. Used when plumb has no record of
//! what it applied (a table made by replaying `--dry-run` by hand, a lost state file): a table
//! of the same shape is taken as plumb's; anything else is replaced.

use std::collections::BTreeMap;

use serde_json::Value;

use super::vips::is_runtime_set;
use super::{Family, Ruleset, TableId};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    /// Chain → (hook as `type hook priority policy`, rule comments in order).
    chains: BTreeMap<String, (Option<String>, Vec<String>)>,
    /// Set or map → element key → value.
    sets: BTreeMap<String, BTreeMap<String, Option<String>>>,
}

fn hook_text(kind: &str, hook: &str, prio: i64, policy: &str) -> String {
    format!("{kind} {hook} {prio} {policy}")
}

impl Ruleset {
    pub fn shape(&self) -> Shape {
        let mut shape = Shape::default();
        for c in &self.chains {
            let hook = c
                .hook
                .map(|h| hook_text(h.kind.as_str(), h.point.as_str(), h.priority.into(), h.policy.as_str()));
            let comments = c.rules.iter().map(|r| r.comment.replace('"', "'")).collect();
            shape.chains.insert(c.name.clone(), (hook, comments));
        }
        // nft's JSON writes strings (interface names) without the quotes nft syntax needs.
        let unquoted = |t: &String| canonical(&t.replace('"', ""));
        for s in &self.sets {
            if s.is_dynamic() || is_runtime_set(&s.name) {
                shape.sets.insert(s.name.clone(), BTreeMap::new());
                continue;
            }
            let elements = s
                .elements
                .iter()
                .map(|(k, v)| (unquoted(k), v.as_ref().map(unquoted)))
                .collect();
            shape.sets.insert(s.name.clone(), elements);
        }
        shape
    }
}

/// The shape of `nft -j list table` output; `None` if it is not what nft prints.
pub fn shape_of_listing(json: &str) -> Option<Shape> {
    let value: Value = serde_json::from_str(json).ok()?;
    shape_of_objects(value.get("nftables")?.as_array()?)
}

/// Each table's objects (the table, its chains, sets, maps and rules) in `nft -j list
/// ruleset` output: one listing serves every table of a stack. `None` if it is not what nft
/// prints.
pub fn tables_in_listing(json: &str) -> Option<BTreeMap<TableId, Vec<Value>>> {
    let value: Value = serde_json::from_str(json).ok()?;
    let mut out: BTreeMap<TableId, Vec<Value>> = BTreeMap::new();
    for object in value.get("nftables")?.as_array()? {
        let Some((kind, body)) = object.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let name = if kind == "table" {
            body.get("name")
        } else {
            body.get("table")
        };
        let family = match body.get("family").and_then(Value::as_str) {
            Some("inet") => Family::Inet,
            Some("bridge") => Family::Bridge,
            _ => continue,
        };
        let Some(name) = name.and_then(Value::as_str) else {
            continue;
        };
        let table = TableId {
            family,
            name: name.to_string(),
        };
        out.entry(table).or_default().push(object.clone());
    }
    Some(out)
}

/// The shape of one table's objects, as [`tables_in_listing`] gives them.
pub fn shape_of_objects(objects: &[Value]) -> Option<Shape> {
    let mut shape = Shape::default();
    for object in objects {
        if let Some(c) = object.get("chain") {
            let hook = match c.get("hook") {
                Some(h) => Some(hook_text(
                    c.get("type")?.as_str()?,
                    h.as_str()?,
                    c.get("prio")?.as_i64()?,
                    c.get("policy")?.as_str()?,
                )),
                None => None,
            };
            shape
                .chains
                .insert(c.get("name")?.as_str()?.to_string(), (hook, Vec::new()));
        }
        for kind in ["set", "map"] {
            if let Some(s) = object.get(kind) {
                let mut elements = BTreeMap::new();
                let elems = s.get("elem").filter(|_| !is_dynamic(s));
                let elems = elems.filter(|_| !s.get("name").and_then(Value::as_str).is_some_and(is_runtime_set));
                for e in elems.and_then(Value::as_array).into_iter().flatten() {
                    match (kind, e.as_array()) {
                        ("map", Some(pair)) if pair.len() == 2 => {
                            elements.insert(canonical(&element(&pair[0])?), Some(canonical(&element(&pair[1])?)));
                        }
                        _ => {
                            elements.insert(canonical(&element(e)?), None);
                        }
                    }
                }
                shape.sets.insert(s.get("name")?.as_str()?.to_string(), elements);
            }
        }
        if let Some(r) = object.get("rule") {
            let chain = r.get("chain")?.as_str()?;
            let comment = r.get("comment").and_then(Value::as_str).unwrap_or("").to_string();
            shape.chains.get_mut(chain)?.1.push(comment);
        }
    }
    Some(shape)
}

/// A set the packet path fills (affinity): its elements are the kernel's.
fn is_dynamic(set: &Value) -> bool {
    let flags = set.get("flags").and_then(Value::as_array).into_iter().flatten();
    flags
        .filter_map(Value::as_str)
        .any(|f| f == "timeout" || f == "dynamic")
}

/// One table's objects without what changes while it runs, for its fingerprint: counter
/// values, the elements of dynamic (affinity) sets, and the elements of the maps the
/// supervisor refills when a replica's readiness changes. Any other change still shows.
pub fn without_runtime_state(objects: &[Value]) -> Vec<Value> {
    objects
        .iter()
        .map(|o| {
            let mut o = o.clone();
            for kind in ["set", "map"] {
                if let Some(Value::Object(s)) = o.get_mut(kind) {
                    let runtime = s.get("name").and_then(Value::as_str).is_some_and(is_runtime_set);
                    if runtime || is_dynamic(&Value::Object(s.clone())) {
                        s.remove("elem");
                    }
                }
            }
            if let Some(Value::Array(exprs)) = o.get_mut("rule").and_then(|r| r.get_mut("expr")) {
                for e in exprs.iter_mut().filter(|e| e.get("counter").is_some()) {
                    *e = serde_json::json!({ "counter": null });
                }
            }
            o
        })
        .collect()
}

/// The packets the counters of each chain named `PREFIX...` counted, by the rest of its name,
/// from one table's objects as `tables_in_listing` gives them.
pub fn counts_by_chain(objects: &[Value], prefix: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for rule in objects.iter().filter_map(|o| o.get("rule")) {
        let Some(rest) = rule
            .get("chain")
            .and_then(Value::as_str)
            .and_then(|c| c.strip_prefix(prefix))
        else {
            continue;
        };
        let exprs = rule.get("expr").and_then(Value::as_array).into_iter().flatten();
        for counter in exprs.filter_map(|e| e.get("counter")) {
            let packets = counter.get("packets").and_then(Value::as_u64).unwrap_or(0);
            *out.entry(rest.to_string()).or_insert(0) += packets;
        }
    }
    out
}

/// One element (or part of one) as plumb writes it: `tcp . 8080`, `goto port_tcp_8080`.
/// An element as both sides can agree on it: nft names a protocol ("tcp") where the host has
/// /etc/protocols and prints its number (6) where it does not (a minimal root, a container
/// image), so each part of a concatenation that is a protocol is written as its number.
fn canonical(element: &str) -> String {
    element
        .split(" . ")
        .map(|part| match part {
            "icmp" => "1",
            "tcp" => "6",
            "udp" => "17",
            "sctp" => "132",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(" . ")
}

fn element(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(o) => {
            if let Some(parts) = o.get("concat").and_then(Value::as_array) {
                let parts: Option<Vec<String>> = parts.iter().map(element).collect();
                return Some(parts?.join(" . "));
            }
            if let Some(p) = o.get("prefix") {
                let (addr, len) = (p.get("addr")?.as_str()?, p.get("len")?.as_u64()?);
                return Some(if len == 32 {
                    addr.to_string()
                } else {
                    format!("{addr}/{len}")
                });
            }
            if let Some(r) = o.get("range").and_then(Value::as_array) {
                return Some(format!("{}-{}", element(r.first()?)?, element(r.get(1)?)?));
            }
            for verdict in ["goto", "jump"] {
                if let Some(target) = o.get(verdict).and_then(|t| t.get("target")).and_then(Value::as_str) {
                    return Some(format!("{verdict} {target}"));
                }
            }
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::HookPoint;

    #[test]
    fn a_listing_reads_back_into_the_same_shape() {
        let listing = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
            {"table":{"family":"inet","name":"t","handle":1}},
            {"map":{"family":"inet","name":"published","table":"t","type":["inet_proto","inet_service"],"map":"verdict",
              "elem":[[{"concat":["tcp",8080]},{"goto":{"target":"port_tcp_8080"}}]]}},
            {"chain":{"family":"inet","table":"t","name":"port_tcp_8080","handle":1}},
            {"chain":{"family":"inet","table":"t","name":"prerouting","type":"nat","hook":"prerouting","prio":-100,"policy":"accept"}},
            {"rule":{"family":"inet","table":"t","chain":"port_tcp_8080","comment":"published 8080/tcp -> web:80","expr":[]}},
            {"rule":{"family":"inet","table":"t","chain":"prerouting","comment":"published ports","expr":[]}}]}"#;
        let mut want = Ruleset::new(super::super::TableId {
            family: super::super::Family::Inet,
            name: "t".into(),
        });
        let hook = super::super::Hook::nat(HookPoint::Prerouting);
        want.chain("port_tcp_8080", None)
            .rules
            .push(super::super::Rule::new("x", "published 8080/tcp -> web:80"));
        want.set(super::super::Set {
            name: "published".into(),
            key: "inet_proto . inet_service".into(),
            value: Some("verdict".into()),
            elements: BTreeMap::from([("tcp . 8080".into(), Some("goto port_tcp_8080".into()))]),
            options: Vec::new(),
        });
        want.chain("prerouting", Some(hook))
            .rules
            .push(super::super::Rule::new("y", "published ports"));
        assert_eq!(shape_of_listing(listing), Some(want.shape()));
        // Where the host has no /etc/protocols (no netbase), nft prints the number: the same.
        let numeric = listing.replace(r#"["tcp",8080]"#, "[6,8080]");
        assert_ne!(numeric, listing);
        assert_eq!(shape_of_listing(&numeric), Some(want.shape()));
        want.chains[1].rules.clear();
        assert_ne!(shape_of_listing(listing), Some(want.shape()));
    }

    #[test]
    fn runtime_state_is_left_out_and_everything_else_kept() {
        let objects: Vec<Value> = serde_json::from_str(
            r#"[{"chain":{"name":"ep_web-1"}},{"chain":{"name":"svc_web_tcp_80"}},
                {"set":{"name":"aff_web-1","flags":["timeout"],"elem":[{"elem":{"val":"10.0.0.9","expires":5}}]}},
                {"set":{"name":"ports","elem":["a"]}},
                {"map":{"name":"eps_web","map":"verdict","elem":[[0,{"goto":{"target":"ep_web-1"}}]]}},
                {"rule":{"chain":"svc_web_tcp_80","handle":9,"expr":[]}},
                {"rule":{"chain":"ep_web-1","handle":3,"expr":[{"counter":{"packets":4,"bytes":9}},{"dnat":{}}]}}]"#,
        )
        .unwrap();
        let stable = without_runtime_state(&objects);
        assert_eq!(stable.len(), 7);
        assert_eq!(stable[2]["set"].get("elem"), None);
        assert_eq!(stable[3]["set"]["elem"][0], "a");
        // The slots follow readiness: their elements are the supervisor's.
        assert_eq!(stable[4]["map"].get("elem"), None);
        assert_eq!(stable[5]["rule"]["handle"], 9);
        assert_eq!(stable[6]["rule"]["expr"][0], serde_json::json!({ "counter": null }));
        let shape = shape_of_objects(&objects).unwrap();
        assert_eq!((shape.sets["aff_web-1"].len(), shape.sets["eps_web"].len()), (0, 0));
    }
}
