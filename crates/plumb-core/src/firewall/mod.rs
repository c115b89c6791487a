//! The nftables rulesets of one stack as typed values: an `inet plumb_STACK` table (routed
//! traffic: the cluster store's guard, isolation, inbound, host access, published ports,
//! virtual IPs, egress NAT) and a `bridge plumb_STACK` table (frames on the bridges:
//! anti-spoofing), each with its chains (base chains with hook, priority and policy; regular
//! chains), sets, maps and rules. Each feature contributes its part through [`Feature`]; a
//! table is printed once, in nft's own syntax. [`NftChange`] is one table's change (create,
//! replace, an element-by-element update, delete); the changes of one plan go to the kernel
//! as one transaction.

mod antispoof;
mod change;
mod egress;
mod host;
mod inbound;
mod isolation;
mod overlay;
mod policy;
mod ports;
mod shape;
mod store;
pub mod vips;
pub mod vxlan_nat;

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::desired::Desired;
use crate::names;

pub use change::{changes, command, transaction, ElementAction, ElementEdit, NftChange};
pub use policy::deny_counts as policy_deny_counts;
pub use policy::{denials as policy_denials, Denial};
pub use shape::counts_by_chain;
pub use shape::{shape_of_listing, shape_of_objects, tables_in_listing, without_runtime_state, Shape};

/// A feature adds its chains, rules, sets and maps to one of the stack's rulesets.
pub type Feature = fn(&Desired, &mut Ruleset);

/// In this order: rules added earlier match first within a shared base chain.
const INET_FEATURES: &[Feature] = &[
    store::contribute,
    overlay::contribute_sender,
    overlay::contribute,
    inbound::contribute,
    isolation::contribute,
    host::contribute,
    ports::contribute,
    vips::contribute,
    egress::contribute,
    policy::contribute_inet,
];
const BRIDGE_FEATURES: &[Feature] = &[antispoof::contribute, policy::contribute_bridge];

/// The stack's rulesets (none if the stack has no networks; no bridge table without
/// containers).
pub fn rulesets(desired: &Desired) -> Vec<Ruleset> {
    if desired.networks.is_empty() {
        return Vec::new();
    }
    let name = names::nft_table(&desired.stack);
    let mut out = Vec::new();
    for (family, features) in [(Family::Inet, INET_FEATURES), (Family::Bridge, BRIDGE_FEATURES)] {
        let mut rules = Ruleset::new(TableId {
            family,
            name: name.clone(),
        });
        for feature in features {
            feature(desired, &mut rules);
        }
        if !rules.chains.is_empty() {
            out.push(rules);
        }
    }
    out
}

/// The tables a stack may have, wanted or not (what observing reads back).
pub fn table_ids(stack: &str) -> [TableId; 2] {
    let name = names::nft_table(stack);
    [
        TableId {
            family: Family::Inet,
            name: name.clone(),
        },
        TableId {
            family: Family::Bridge,
            name,
        },
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4 and IPv6 as routed by the host.
    Inet,
    /// Frames crossing a bridge.
    Bridge,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Bridge => "bridge",
        }
    }
}

/// A table: its family and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableId {
    pub family: Family,
    pub name: String,
}

impl std::fmt::Display for TableId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.family.as_str(), self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    pub table: TableId,
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    pub name: String,
    /// `None` for a regular chain, reached only by jump, goto or a verdict map.
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub kind: ChainKind,
    pub point: HookPoint,
    pub priority: i32,
    pub policy: Policy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainKind {
    Filter,
    Nat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookPoint {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Accept,
    Drop,
}

/// One rule: an nft expression and the comment saying which feature made it and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub expr: String,
    pub comment: String,
}

/// A named set (`value` is `None`) or map (`key : value`); elements change one by one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Set {
    pub name: String,
    /// nft type, e.g. `inet_proto . inet_service`, or `typeof EXPR` (`typeof numgen inc mod
    /// 64`) for a key no type names.
    pub key: String,
    /// For a map, the value type, e.g. `verdict`.
    pub value: Option<String>,
    /// Element key → value (`None` in a plain set), as nft text.
    pub elements: BTreeMap<String, Option<String>>,
    /// Declaration lines after `type`, e.g. `flags interval`, `timeout 10m`. A set with
    /// `flags dynamic,timeout` is filled by the packet path: plumb never lists or edits its
    /// elements.
    #[serde(default)]
    pub options: Vec<String>,
}

impl Set {
    /// A set (`value` `None`) or map without elements or options.
    pub fn new(name: &str, key: &str, value: Option<&str>) -> Set {
        Set {
            name: name.into(),
            key: key.into(),
            value: value.map(str::to_string),
            elements: BTreeMap::new(),
            options: Vec::new(),
        }
    }

    /// True for a set the packet path fills (its elements are not plumb's to compare).
    pub fn is_dynamic(&self) -> bool {
        self.options
            .iter()
            .any(|o| o.starts_with("flags") && o.contains("dynamic"))
    }

    fn holds_verdicts(&self) -> bool {
        self.value.as_deref() == Some("verdict")
    }

    /// `k : v, k2 : v2`, or `k, k2` for a set.
    fn elements_text<'a>(&self, keys: impl Iterator<Item = &'a String>) -> String {
        keys.map(|k| match self.elements.get(k).cloned().flatten() {
            Some(v) => format!("{k} : {v}"),
            None => k.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
    }
}

impl Hook {
    pub fn filter(point: HookPoint) -> Hook {
        Hook {
            kind: ChainKind::Filter,
            point,
            priority: 0,
            policy: Policy::Accept,
        }
    }

    /// Bridge filtering before anything else sees the frame ("filter" in the bridge family).
    pub fn bridge_filter(point: HookPoint) -> Hook {
        Hook {
            kind: ChainKind::Filter,
            point,
            priority: -200,
            policy: Policy::Accept,
        }
    }

    /// Destination NAT runs at -100 ("dstnat"), source NAT at 100 ("srcnat").
    pub fn nat(point: HookPoint) -> Hook {
        let priority = if point == HookPoint::Postrouting { 100 } else { -100 };
        Hook {
            kind: ChainKind::Nat,
            point,
            priority,
            policy: Policy::Accept,
        }
    }
}

impl Ruleset {
    pub fn new(table: TableId) -> Ruleset {
        Ruleset {
            table,
            sets: Vec::new(),
            chains: Vec::new(),
        }
    }

    /// The chain called `name`, made (with `hook`) the first time it is asked for.
    pub fn chain(&mut self, name: &str, hook: Option<Hook>) -> &mut Chain {
        let at = match self.chains.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => {
                self.chains.push(Chain {
                    name: name.to_string(),
                    hook,
                    rules: Vec::new(),
                });
                self.chains.len() - 1
            }
        };
        &mut self.chains[at]
    }

    pub fn set(&mut self, set: Set) {
        self.sets.push(set);
    }

    /// The table in nft syntax. Order matters within one transaction: plain sets, then regular
    /// chains and verdict maps, each after what it names (a chain after the maps its rules look
    /// up, a map after the chains its elements jump to), then base chains (their rules name the
    /// sets and maps).
    pub fn print(&self) -> String {
        let mut out = format!("table {} {{\n", self.table);
        let (mut maps, plain): (Vec<&Set>, Vec<&Set>) = self.sets.iter().partition(|s| s.holds_verdicts());
        for set in plain {
            print_set(&mut out, set);
        }
        let mut chains: Vec<&Chain> = self.chains.iter().filter(|c| c.hook.is_none()).collect();
        while !chains.is_empty() || !maps.is_empty() {
            let before = chains.len() + maps.len();
            let waiting: Vec<String> = maps.iter().map(|m| format!("@{}", m.name)).collect();
            chains.retain(|c| {
                let blocked = c.rules.iter().any(|r| waiting.iter().any(|m| names(&r.expr, m)));
                if !blocked {
                    print_chain(&mut out, c);
                }
                blocked
            });
            let waiting: Vec<&str> = chains.iter().map(|c| c.name.as_str()).collect();
            maps.retain(|m| {
                let targets = m
                    .elements
                    .values()
                    .flatten()
                    .filter_map(|v| v.split_whitespace().nth(1));
                let blocked = targets.into_iter().any(|t| waiting.contains(&t));
                if !blocked {
                    print_set(&mut out, m);
                }
                blocked
            });
            if chains.len() + maps.len() == before {
                // A cycle nft could not load either: print the rest as it is.
                chains.drain(..).for_each(|c| print_chain(&mut out, c));
                maps.drain(..).for_each(|m| print_set(&mut out, m));
            }
        }
        for chain in self.chains.iter().filter(|c| c.hook.is_some()) {
            print_chain(&mut out, chain);
        }
        out += "}\n";
        out
    }
}

/// Whether `expr` names `reference` (`@set`) as a whole word.
fn names(expr: &str, reference: &str) -> bool {
    expr.match_indices(reference).any(|(at, _)| {
        let next = expr[at + reference.len()..].chars().next();
        !next.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-')
    })
}

impl Rule {
    /// A rule; its comment is made a safe label ([`names::label`]) here, so what plumb keeps
    /// is what nft lists back.
    pub fn new(expr: impl Into<String>, comment: impl Into<String>) -> Rule {
        Rule {
            expr: expr.into(),
            comment: names::label(&comment.into(), names::COMMENT_MAX),
        }
    }

    /// The rule as nft writes it inside a chain.
    pub fn text(&self) -> String {
        format!(
            "{} comment \"{}\"",
            self.expr,
            names::label(&self.comment, names::COMMENT_MAX)
        )
    }
}

impl Set {
    /// `set` or `map`.
    pub(crate) fn kind(&self) -> &'static str {
        if self.value.is_some() {
            "map"
        } else {
            "set"
        }
    }

    /// The declaration's lines: `type K : V` (or `typeof EXPR : V`), then the options.
    pub(crate) fn declaration(&self) -> Vec<String> {
        let (decl, key) = match self.key.strip_prefix("typeof ") {
            Some(expr) => ("typeof", expr),
            None => ("type", self.key.as_str()),
        };
        let ty = match &self.value {
            Some(v) => format!("{key} : {v}"),
            None => key.to_string(),
        };
        std::iter::once(format!("{decl} {ty}"))
            .chain(self.options.iter().cloned())
            .collect()
    }
}

fn print_set(out: &mut String, set: &Set) {
    let _ = writeln!(out, "\t{} {} {{", set.kind(), set.name);
    for line in set.declaration() {
        let _ = writeln!(out, "\t\t{line}");
    }
    if !set.elements.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", set.elements_text(set.elements.keys()));
    }
    out.push_str("\t}\n");
}

fn print_chain(out: &mut String, chain: &Chain) {
    let _ = writeln!(out, "\tchain {} {{", chain.name);
    if let Some(h) = chain.hook {
        let _ = writeln!(
            out,
            "\t\ttype {} hook {} priority {}; policy {};",
            h.kind.as_str(),
            h.point.as_str(),
            h.priority,
            h.policy.as_str()
        );
    }
    for rule in &chain.rules {
        let _ = writeln!(out, "\t\t{}", rule.text());
    }
    out.push_str("\t}\n");
}

impl ChainKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChainKind::Filter => "filter",
            ChainKind::Nat => "nat",
        }
    }
}

impl HookPoint {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HookPoint::Prerouting => "prerouting",
            HookPoint::Input => "input",
            HookPoint::Forward => "forward",
            HookPoint::Output => "output",
            HookPoint::Postrouting => "postrouting",
        }
    }
}

impl Policy {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Policy::Accept => "accept",
            Policy::Drop => "drop",
        }
    }
}
