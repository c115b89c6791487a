//! Reads back what the kernel holds of one stack (bridges, veths, namespaces, the nft table)
//! into an [`Actual`] for the diff. Ownership comes from what plumb stamped on the kernel's
//! objects (link aliases `plumb:STACK/...`), not from names alone: a namespace named like one
//! of ours but stamped by another stack is that stack's, and is reported, never touched.

use std::collections::{BTreeMap, BTreeSet};

use plumb_core::kernel::Kernel;
use plumb_core::{firewall, names, Actual, Desired, ObservedFirewall, ObservedNetns};

use crate::error::Result;
use crate::state::StackState;

/// What observing found: the stack's own objects, and the names it wants that another stack
/// owns (an `up` must refuse those).
#[derive(Debug, Default)]
pub struct Observed {
    pub actual: Actual,
    /// Namespace name → the stack that owns it.
    pub foreign: BTreeMap<String, String>,
    /// Tables recognised by their shape, with the fingerprint to record for them.
    pub fingerprints: Vec<(plumb_core::firewall::Ruleset, u64)>,
    /// The nftables generation the tables were read at (before reading them).
    pub nft_generation: Option<u32>,
}

/// The owner named for a namespace that carries no plumb mark and no plumb record.
pub const NOT_PLUMB: &str = "(not made by plumb)";

/// Which stack's alias marks a namespace's interfaces, if any.
fn stamped_owner(ns: &ObservedNetns) -> Option<String> {
    ns.links
        .values()
        .find_map(|l| names::parse_alias(l.alias.as_deref()?).map(|(stack, _)| stack.to_string()))
}

/// Namespace names the other stacks' state records claim, with their stack.
pub fn claims(others: &BTreeMap<String, StackState>, stack: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, st) in others.iter().filter(|(n, _)| n.as_str() != stack) {
        let desired = st.desired.iter().flat_map(|d| d.containers.iter().map(|c| &c.netns));
        for ns in st.namespaces.iter().chain(desired) {
            out.insert(ns.clone(), name.clone());
        }
    }
    out
}

/// What the kernel holds of a stack. With `trusted` (an attach or detach, which changes one
/// container), a container that the record's desired state and `desired` describe alike is
/// taken as its plan left it, not read: one namespace read per change instead of one per
/// container. `up` passes none and reads every namespace.
pub fn observe(
    kernel: &mut dyn Kernel,
    stack: &str,
    desired: Option<&Desired>,
    state: Option<&StackState>,
    others: &BTreeMap<String, String>,
    trusted: Option<&Desired>,
) -> Result<Observed> {
    let tables = firewall::table_ids(stack);
    // No transaction since plumb last verified or applied the tables: they are as recorded,
    // without listing them.
    let generation = kernel.nft_generation()?;
    let unchanged = generation.is_some() && state.and_then(|s| s.nft_generation) == generation;
    if !unchanged {
        kernel.prefetch_nft();
    }
    let links = kernel.host_links()?;
    let prefix = names::alias_prefix(stack);
    // A link's alias is set by a request after the one that creates it (the kernel ignores
    // IFLA_IFALIAS in a create request), so an `up` killed between the two leaves a link
    // unmarked: it is ours too if its name is derived from a network this stack wants or
    // recorded before making anything (`StackState::networks`).
    let networks: BTreeSet<&str> = desired
        .iter()
        .flat_map(|d| d.networks.iter().map(|n| n.name.as_str()))
        .chain(state.iter().flat_map(|s| s.networks.iter().map(String::as_str)))
        .collect();
    let desired_bridges: BTreeSet<String> = networks.iter().map(|n| names::bridge(stack, n)).collect();
    let bridges = links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .filter(|l| {
            let alias = l.link.alias.as_deref();
            match alias.filter(|a| a.starts_with("plumb:")) {
                Some(a) => a.starts_with(&prefix),
                None => desired_bridges.contains(&l.name),
            }
        })
        .map(|l| (l.name.clone(), l.link.clone()))
        .collect();
    let desired_devices: BTreeSet<String> = networks
        .iter()
        .map(|n| plumb_core::cluster::vxlan_device(stack, n))
        .collect();
    let vxlan_prefix = format!("{prefix}vxlan/");
    let mut vxlans = BTreeMap::new();
    for l in links.iter().filter(|l| l.kind.as_deref() == Some("vxlan")) {
        let ours = match l.link.alias.as_deref().filter(|a| a.starts_with("plumb:")) {
            Some(a) => a.starts_with(&vxlan_prefix),
            None => desired_devices.contains(&l.name),
        };
        if let Some(vxlan) = ours.then(|| kernel.vxlan(&l.name)).transpose()?.flatten() {
            vxlans.insert(l.name.clone(), vxlan);
        }
    }
    let host_veths = links
        .iter()
        .filter(|l| l.name.starts_with(names::VETH_PREFIX))
        .map(|l| (l.name.clone(), l.link.clone()))
        .collect();

    let wanted: BTreeSet<&str> = desired
        .iter()
        .flat_map(|d| d.containers.iter().map(|c| c.netns.as_str()))
        .collect();
    let remembered: BTreeSet<&str> = state
        .iter()
        .flat_map(|s| s.namespaces.iter().map(String::as_str))
        .collect();
    let ns_prefix = format!("{stack}-");
    // An attached container's namespace under the runtime's own name (`ip netns add
    // shop-x` by a runtime, then CNI ADD): the same namespace as plumb's name for it, so it
    // holds the stack's stamp, but it is the runtime's name to keep, never a container of ours.
    let runtime_names: BTreeSet<&str> = (desired.into_iter())
        .chain(state.and_then(|s| s.desired.as_ref()))
        .flat_map(|d| d.containers.iter())
        .filter_map(|c| c.external.as_deref()?.strip_prefix("/run/netns/"))
        .collect();
    let mut observed = Observed::default();
    for name in
        (kernel.namespaces()?.into_iter()).filter(|n| n.starts_with(&ns_prefix) && !runtime_names.contains(n.as_str()))
    {
        let claimed_by = others.get(&name);
        let ours_by_record = remembered.contains(name.as_str()) && claimed_by.is_none();
        if desired.is_none() && ours_by_record {
            // Going down: a container of ours is deleted whatever it holds; no need to read it.
            observed.actual.containers.insert(name, ObservedNetns::default());
            continue;
        }
        let unchanged = |d: &Desired| d.containers.iter().find(|c| c.netns == name).cloned();
        let recorded = trusted.and_then(unchanged);
        if let Some(c) = recorded.filter(|c| ours_by_record && desired.and_then(unchanged).as_ref() == Some(c)) {
            observed.actual.containers.insert(name, plumb_core::plan::as_made(&c));
            continue;
        }
        let inside = kernel.netns(&name)?;
        let owner = inside.as_ref().and_then(stamped_owner).or_else(|| claimed_by.cloned());
        match (owner, inside) {
            (Some(owner), Some(ns)) if owner == stack => {
                observed.actual.containers.insert(name, ns);
            }
            (Some(owner), _) => {
                if wanted.contains(name.as_str()) {
                    observed.foreign.insert(name, owner);
                }
            }
            // Unstamped (half made, or emptied): ours if our record says we made it, or if it is
            // a bare name with nothing mounted (nothing there to harm).
            (None, inside) if ours_by_record || (wanted.contains(name.as_str()) && inside.is_none()) => {
                observed.actual.containers.insert(name, inside.unwrap_or_default());
            }
            (None, Some(_)) if wanted.contains(name.as_str()) => {
                observed.foreign.insert(name, NOT_PLUMB.into());
            }
            (None, _) => {}
        }
    }

    observed.actual.ip_forward = kernel.ip_forward()?;
    observed.actual.bridges = bridges;
    observed.actual.host_veths = host_veths;
    observed.actual.vxlans = vxlans;
    observed.actual.known_networks = state.map(|s| s.networks.clone()).unwrap_or_default();
    observed.actual.meshed = state
        .and_then(|s| s.desired.as_ref())
        .map(|d| {
            d.containers
                .iter()
                .filter(|c| c.mesh)
                .map(|c| c.netns.clone())
                .collect()
        })
        .unwrap_or_default();
    observed.nft_generation = generation;
    if unchanged {
        for applied in tables.iter().filter_map(|t| state.and_then(|s| s.applied(t))) {
            let seen = ObservedFirewall::Applied(applied.ruleset.clone());
            observed.actual.firewall.insert(applied.ruleset.table.clone(), seen);
        }
        return Ok(observed);
    }
    let want = desired.map(firewall::rulesets).unwrap_or_default();
    for table in tables {
        let Some(listing) = kernel.nft_table(&table)? else {
            continue;
        };
        let recorded = state.and_then(|s| s.applied(&table));
        let wanted = want.iter().find(|r| r.table == table);
        let same_shape = |r: &plumb_core::firewall::Ruleset| listing.shape.as_ref() == Some(&r.shape());
        let seen = match recorded.and_then(|r| r.fingerprint.map(|fp| (r, fp))) {
            Some((applied, fp)) if fp == listing.fingerprint => ObservedFirewall::Applied(applied.ruleset.clone()),
            // Changed since plumb fingerprinted it, whatever its shape now.
            Some(_) => ObservedFirewall::Changed,
            // Not fingerprinted yet (applied by the last run, made by a script replayed by
            // hand, or the record is lost): recognised by its shape, fingerprinted now.
            None => match recorded
                .map(|r| &r.ruleset)
                .into_iter()
                .chain(wanted)
                .find(|r| same_shape(r))
            {
                Some(ruleset) => {
                    observed.fingerprints.push((ruleset.clone(), listing.fingerprint));
                    ObservedFirewall::Applied(ruleset.clone())
                }
                None => ObservedFirewall::Changed,
            },
        };
        observed.actual.firewall.insert(table, seen);
    }
    Ok(observed)
}
