//! A ruleset's shape, comparable between plumb's typed ruleset and the kernel's JSON listing
//! (`nft -j list table`): chains with their hook, priority and policy and the comments of
//! their rules in order, and every set's and map's elements. Used when plumb has no record of
//! what it applied (a table made by replaying `--dry-run` by hand, a lost state file): a table
//! of the same shape is taken as plumb's; anything else is replaced.

use std::collections::BTreeMap;

use serde_json::Value;

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
        let unquoted = |t: &String| t.replace('"', "");
        for s in &self.sets {
            if s.is_dynamic() {
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
                for e in s.get("elem").and_then(Value::as_array).into_iter().flatten() {
                    match (kind, e.as_array()) {
                        ("map", Some(pair)) if pair.len() == 2 => {
                            elements.insert(element(&pair[0])?, Some(element(&pair[1])?));
                        }
                        _ => {
                            elements.insert(element(e)?, None);
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

/// A table's listing without what the packet path changes: rule counters read as zero, and
/// the elements of sets with timeouts (filled by the packet path) are left out. Fingerprints
/// and shapes are taken of this, so traffic does not make plumb think a table was edited.
pub fn settle_listing(objects: &mut [Value]) {
    for object in objects.iter_mut() {
        if let Some(set) = object.get_mut("set").and_then(Value::as_object_mut) {
            let filled_by_packets = set.contains_key("timeout")
                || set
                    .get("flags")
                    .and_then(Value::as_array)
                    .is_some_and(|f| f.iter().any(|x| x == "timeout" || x == "dynamic"));
            if filled_by_packets {
                set.remove("elem");
            }
        }
        if let Some(exprs) = object
            .get_mut("rule")
            .and_then(|r| r.get_mut("expr"))
            .and_then(Value::as_array_mut)
        {
            for e in exprs {
                if let Some(counter) = e.get_mut("counter").and_then(Value::as_object_mut) {
                    for k in ["packets", "bytes"] {
                        if counter.contains_key(k) {
                            counter.insert(k.into(), Value::from(0));
                        }
                    }
                }
            }
        }
    }
}

/// One element (or part of one) as plumb writes it: `tcp . 8080`, `goto port_tcp_8080`.
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
        want.chains[1].rules.clear();
        assert_ne!(shape_of_listing(listing), Some(want.shape()));
    }
}
