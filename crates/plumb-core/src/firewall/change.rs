//! One nftables transaction, and the smallest one that turns the applied ruleset into the
//! wanted one: only elements when only elements changed ([`NftChange::Elements`], which the
//! kernel side sends as netlink set-element messages: its cost does not grow with the table),
//! element by element and chain by chain when only sets, maps and regular chains changed,
//! otherwise the whole table replaced atomically.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Chain, Ruleset, Set, TableId};

/// One table's change; a plan's changes go to the kernel together, as one transaction.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum NftChange {
    /// The table does not exist yet: add it.
    Create { ruleset: Ruleset },
    /// Replace whatever table is there, atomically (create it empty so the delete cannot fail).
    Replace { ruleset: Ruleset },
    /// Edit the table in place: `commands` turn the applied ruleset into `ruleset`.
    Update { ruleset: Ruleset, commands: Vec<String> },
    /// Only set and map elements change: `edits` turn the applied ruleset into `ruleset`.
    Elements { ruleset: Ruleset, edits: Vec<ElementEdit> },
    /// Remove the table if it is there.
    Delete { table: TableId },
}

impl NftChange {
    /// The table this change leaves, if any.
    pub fn result(&self) -> Option<&Ruleset> {
        match self {
            NftChange::Create { ruleset }
            | NftChange::Replace { ruleset }
            | NftChange::Update { ruleset, .. }
            | NftChange::Elements { ruleset, .. } => Some(ruleset),
            NftChange::Delete { .. } => None,
        }
    }

    pub fn table(&self) -> &TableId {
        match self {
            NftChange::Delete { table } => table,
            NftChange::Create { ruleset }
            | NftChange::Replace { ruleset }
            | NftChange::Update { ruleset, .. }
            | NftChange::Elements { ruleset, .. } => &ruleset.table,
        }
    }

    /// This change's part of the `nft -f -` script. A table created empty and deleted in the
    /// same transaction makes "replace" and "delete if there" idempotent.
    pub fn script(&self) -> String {
        match self {
            NftChange::Create { ruleset } => ruleset.print(),
            NftChange::Replace { ruleset } => {
                let t = &ruleset.table;
                format!("table {t} {{}}\ndelete table {t}\n{}", ruleset.print())
            }
            NftChange::Update { commands, .. } => commands.iter().map(|c| format!("{c}\n")).collect(),
            NftChange::Elements { ruleset, edits } => edits
                .iter()
                .map(|e| format!("{}\n", e.command(&ruleset.table)))
                .collect(),
            NftChange::Delete { table } => format!("table {table} {{}}\ndelete table {table}\n"),
        }
    }
}

/// Whether an [`ElementEdit`] adds or deletes its elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ElementAction {
    Add,
    Delete,
}

/// Elements added to or deleted from one set or map, with what it takes to encode them (the
/// set's key and value types and its options, as declared).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ElementEdit {
    pub action: ElementAction,
    pub set: String,
    /// The set's nft key type (`ipv4_addr . inet_proto . inet_service`, `typeof numgen ...`).
    pub key: String,
    /// A map's value type (`verdict`), `None` for a set.
    pub value: Option<String>,
    /// The set's declaration options (`flags interval` makes each key a range).
    pub options: Vec<String>,
    /// Key → value (`None` in a set, and in every delete), as nft text.
    pub elements: Vec<(String, Option<String>)>,
}

impl ElementEdit {
    pub(crate) fn of(action: ElementAction, set: &Set, elements: Vec<(String, Option<String>)>) -> ElementEdit {
        ElementEdit {
            action,
            set: set.name.clone(),
            key: set.key.clone(),
            value: set.value.clone(),
            options: set.options.clone(),
            elements,
        }
    }

    /// True if keys are ranges (a set with `flags interval`).
    pub fn interval(&self) -> bool {
        self.options
            .iter()
            .any(|o| o.starts_with("flags") && o.contains("interval"))
    }

    /// The same edit as an nft command: `add element inet plumb_s services { k : v, ... }`.
    pub fn command(&self, table: &TableId) -> String {
        let verb = match self.action {
            ElementAction::Add => "add",
            ElementAction::Delete => "delete",
        };
        let items: Vec<String> = self
            .elements
            .iter()
            .map(|(k, v)| match v {
                Some(v) if self.action == ElementAction::Add => format!("{k} : {v}"),
                _ => k.clone(),
            })
            .collect();
        format!("{verb} element {table} {} {{ {} }}", self.set, items.join(", "))
    }
}

/// The whole transaction for several changes.
pub fn transaction(changes: &[NftChange]) -> String {
    changes.iter().map(NftChange::script).collect()
}

/// The shell command applying `changes` as one transaction.
pub fn command(changes: &[NftChange]) -> String {
    format!("nft -f - <<'EOF'\n{}EOF", transaction(changes))
}

/// The transaction from `applied` (what plumb last applied, if the kernel still holds exactly
/// that) to `want`; `None` when nothing changes.
pub fn changes(applied: Option<&Ruleset>, want: &Ruleset) -> Option<NftChange> {
    let Some(old) = applied else {
        return Some(NftChange::Replace { ruleset: want.clone() });
    };
    if old == want {
        return None;
    }
    if let Some(edits) = element_edits(old, want) {
        return Some(NftChange::Elements {
            ruleset: want.clone(),
            edits,
        });
    }
    Some(match update_commands(old, want) {
        Some(commands) => NftChange::Update {
            ruleset: want.clone(),
            commands,
        },
        None => NftChange::Replace { ruleset: want.clone() },
    })
}

/// The element edits turning `old` into `new`, or `None` when anything but elements changed.
fn element_edits(old: &Ruleset, new: &Ruleset) -> Option<Vec<ElementEdit>> {
    let declared = |s: &Set| (s.name.clone(), s.declaration());
    if old.chains != new.chains
        || old.sets.len() != new.sets.len()
        || old.sets.iter().zip(&new.sets).any(|(a, b)| declared(a) != declared(b))
    {
        return None;
    }
    Some(
        old.sets
            .iter()
            .zip(&new.sets)
            .flat_map(|(o, n)| set_edits(o, n))
            .collect(),
    )
}

/// Deletes first, then adds: a changed value is its key deleted and added again.
fn set_edits(old: &Set, new: &Set) -> Vec<ElementEdit> {
    let gone: Vec<(String, Option<String>)> = old
        .elements
        .iter()
        .filter(|(k, v)| new.elements.get(*k) != Some(v))
        .map(|(k, _)| (k.clone(), None))
        .collect();
    let added: Vec<(String, Option<String>)> = new
        .elements
        .iter()
        .filter(|(k, v)| old.elements.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut out = Vec::new();
    if !gone.is_empty() {
        out.push(ElementEdit::of(ElementAction::Delete, old, gone));
    }
    if !added.is_empty() {
        out.push(ElementEdit::of(ElementAction::Add, new, added));
    }
    out
}

/// Commands editing `old` into `new`, or `None` when a base chain or the type of a set both
/// hold changed.
fn update_commands(old: &Ruleset, new: &Ruleset) -> Option<Vec<String>> {
    let base = |r: &Ruleset| -> Vec<Chain> { r.chains.iter().filter(|c| c.hook.is_some()).cloned().collect() };
    let by_name =
        |r: &Ruleset| -> BTreeMap<String, Set> { r.sets.iter().map(|s| (s.name.clone(), s.clone())).collect() };
    let (old_sets, new_sets) = (by_name(old), by_name(new));
    let retyped = old_sets
        .iter()
        .any(|(name, s)| new_sets.get(name).is_some_and(|n| n.declaration() != s.declaration()));
    if base(old) != base(new) || retyped {
        return None;
    }
    let t = &new.table;
    let regular = |r: &Ruleset| -> BTreeMap<String, Chain> {
        r.chains
            .iter()
            .filter(|c| c.hook.is_none())
            .map(|c| (c.name.clone(), c.clone()))
            .collect()
    };
    let (old_chains, new_chains) = (regular(old), regular(new));
    let mut out = Vec::new();
    // New chains first, empty: new maps' elements and the rules below may name them.
    for name in new_chains.keys().filter(|n| !old_chains.contains_key(*n)) {
        out.push(format!("add chain {t} {name}"));
    }
    // New sets and maps, with their elements: the rules below may look them up.
    for set in new_sets.values().filter(|s| !old_sets.contains_key(&s.name)) {
        out.push(format!(
            "add {} {t} {} {{ {}; }}",
            set.kind(),
            set.name,
            set.declaration().join("; ")
        ));
        out.extend(element_commands(
            t,
            &Set {
                elements: BTreeMap::new(),
                ..set.clone()
            },
            set,
        ));
    }
    for (name, chain) in &new_chains {
        match old_chains.get(name) {
            Some(same) if same == chain => continue,
            Some(_) => out.push(format!("flush chain {t} {name}")),
            None => {}
        }
        for rule in &chain.rules {
            out.push(format!("add rule {t} {name} {}", rule.text()));
        }
    }
    for (name, new_set) in &new_sets {
        if let Some(old_set) = old_sets.get(name) {
            out.extend(element_commands(t, old_set, new_set));
        }
    }
    // Chains and sets no one names any more go last, once no element or rule points at them.
    for name in old_chains.keys().filter(|n| !new_chains.contains_key(*n)) {
        out.push(format!("delete chain {t} {name}"));
    }
    for set in old_sets.values().filter(|s| !new_sets.contains_key(&s.name)) {
        out.push(format!("delete {} {t} {}", set.kind(), set.name));
    }
    Some(out)
}

fn element_commands(table: &TableId, old: &Set, new: &Set) -> Vec<String> {
    set_edits(old, new).iter().map(|e| e.command(table)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::resolve;
    use crate::firewall::rulesets;
    use crate::spec::parse;

    /// The stack's inet table.
    fn rules(text: &str) -> Ruleset {
        let d = resolve(&parse("f", text).unwrap(), &Default::default()).unwrap().0;
        rulesets(&d).remove(0)
    }

    const STACK: &str = "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n[services.a]\nports = [\"80:80\"]\n";

    #[test]
    fn nothing_applied_means_replace_and_the_same_means_nothing() {
        let r = rules(STACK);
        assert!(matches!(changes(None, &r), Some(NftChange::Replace { .. })));
        assert_eq!(changes(Some(&r), &r), None);
    }

    #[test]
    fn a_changed_port_swaps_one_element_and_one_chain() {
        let old = rules(STACK);
        let new = rules(&STACK.replace("80:80", "81:80"));
        let Some(NftChange::Update { commands, .. }) = changes(Some(&old), &new) else {
            panic!("expected an in-place update")
        };
        assert_eq!(
            commands,
            [
                "add chain inet plumb_s port_tcp_81",
                "add rule inet plumb_s port_tcp_81 meta l4proto tcp dnat ip to 10.0.0.2:80 comment \"published 81/tcp -> a:80\"",
                "delete element inet plumb_s published { tcp . 80 }",
                "add element inet plumb_s published { tcp . 81 : goto port_tcp_81 }",
                "delete chain inet plumb_s port_tcp_80",
            ]
        );
    }

    #[test]
    fn more_replicas_rewrite_only_their_ports_chain() {
        let old = rules(STACK);
        let new = rules(&STACK.replace("[services.a]\n", "[services.a]\nreplicas = 2\n"));
        let Some(NftChange::Update { commands, .. }) = changes(Some(&old), &new) else {
            panic!("expected an in-place update")
        };
        // The published port's chain; for the VIP a new endpoint chain, a map of two slots
        // (a map of one cannot grow: maps keep their type) and the port chain naming it.
        let changed: Vec<&str> = commands
            .iter()
            .filter_map(|c| c.strip_prefix("flush chain inet plumb_s "))
            .collect();
        assert_eq!(changed, ["port_tcp_80", "svc_a_tcp_80"]);
        assert!(commands
            .iter()
            .any(|c| c.contains("numgen inc mod 2 map { 0 : 10.0.0.2, 1 : 10.0.0.3 }:80")));
        let at = |what: &str| commands.iter().position(|c| c.starts_with(what)).unwrap();
        assert!(
            at("add chain inet plumb_s ep_a-2")
                < at("add map inet plumb_s eps_a_2 { typeof numgen inc mod 2 : verdict; }")
        );
        assert!(
            at("add map inet plumb_s eps_a_2")
                < at("add element inet plumb_s eps_a_2 { 0 : goto ep_a-1, 1 : goto ep_a-2 }")
        );
        assert!(
            at("add element inet plumb_s eps_a_2")
                < at("add rule inet plumb_s svc_a_tcp_80 numgen inc mod 2 vmap @eps_a_2")
        );
        assert!(at("add rule inet plumb_s svc_a_tcp_80 numgen") < at("delete map inet plumb_s eps_a_1"));
        assert_eq!(commands.last().unwrap(), "delete map inet plumb_s eps_a_1");
    }

    #[test]
    fn only_elements_changed_means_element_edits_rendered_as_nft_commands() {
        let old = rules(STACK);
        let mut new = old.clone();
        let published = new.sets.iter_mut().find(|s| s.name == "published").unwrap();
        published
            .elements
            .insert("udp . 53".into(), Some("goto port_tcp_80".into()));
        let Some(change) = changes(Some(&old), &new) else {
            panic!("a change")
        };
        let NftChange::Elements { edits, .. } = &change else {
            panic!("expected element edits, got {change:?}")
        };
        assert_eq!(edits.len(), 1);
        assert_eq!(
            (edits[0].action, edits[0].set.as_str()),
            (ElementAction::Add, "published")
        );
        assert_eq!(edits[0].key, "inet_proto . inet_service");
        assert_eq!(
            change.script(),
            "add element inet plumb_s published { udp . 53 : goto port_tcp_80 }\n"
        );
        let back = changes(Some(&new), &old).unwrap();
        assert_eq!(back.script(), "delete element inet plumb_s published { udp . 53 }\n");
        assert_eq!(back.result(), Some(&old));
    }

    #[test]
    fn a_new_network_replaces_the_table() {
        let old = rules(STACK);
        let with_m = STACK.replace(
            "[services.a]\n",
            "[networks.m]\nsubnet = \"10.0.1.0/24\"\n[services.a]\nnetworks = [\"n\"]\n",
        );
        let new = rules(&with_m);
        assert!(matches!(changes(Some(&old), &new), Some(NftChange::Replace { .. })));
    }

    #[test]
    fn the_table_prints_chains_before_the_map_that_names_them() {
        let text = rules(STACK).print();
        let chain = text.find("chain port_tcp_80").unwrap();
        let map = text.find("map published").unwrap();
        let pre = text.find("chain prerouting").unwrap();
        assert!(chain < map && map < pre, "{text}");
        assert!(text.contains("elements = { tcp . 80 : goto port_tcp_80 }"));
        assert!(text.contains("type nat hook prerouting priority -100; policy accept;"));
    }
}
