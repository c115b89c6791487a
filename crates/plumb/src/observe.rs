//! Reads back what the kernel holds of one stack (links, addresses, routes, namespaces, the
//! nft table) into an [`Actual`] for the diff.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::AsFd;

use ipnet::Ipv4Net;
use plumb_core::{names, Actual, Desired, ObservedFirewall, ObservedLink, ObservedNetns};
use plumb_linux::link::Link;
use plumb_linux::netns::Home;
use plumb_linux::{addr, link, netns, nft, route, sysctl, Netlink};

use crate::failure::Result;
use crate::state::StackState;

pub fn observe(stack: &str, desired: Option<&Desired>, state: Option<&StackState>) -> Result<Actual> {
    // nft runs in the background while netlink reads the rest.
    let table = nft::start_list_table(&names::nft_table(stack))?;
    let home = Home::current()?;
    let mut host = Netlink::open()?;
    let links = link::list(&mut host)?;
    let addresses = addresses_by_index(addr::list_v4(&mut host)?);
    let names_by_index: HashMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
    let observed = |l: &Link| ObservedLink {
        alias: l.alias.clone(),
        master: l.master.and_then(|m| names_by_index.get(&m)).map(|s| s.to_string()),
        up: l.up,
        addresses: addresses.get(&l.index).cloned().unwrap_or_default(),
    };
    let prefix = names::alias_prefix(stack);
    let desired_bridges: BTreeSet<&str> = desired
        .iter()
        .flat_map(|d| d.networks.iter().map(|n| n.bridge.as_str()))
        .collect();
    let bridges = links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .filter(|l| {
            desired_bridges.contains(l.name.as_str()) || l.alias.as_deref().is_some_and(|a| a.starts_with(&prefix))
        })
        .map(|l| (l.name.clone(), observed(l)))
        .collect();
    let host_veths = links
        .iter()
        .filter(|l| l.name.starts_with(names::VETH_PREFIX))
        .map(|l| (l.name.clone(), observed(l)))
        .collect();

    let mut known: BTreeSet<&str> = desired
        .iter()
        .flat_map(|d| d.containers.iter().map(|c| c.netns.as_str()))
        .collect();
    known.extend(state.iter().flat_map(|s| s.namespaces.iter().map(String::as_str)));
    let ns_prefix = format!("{stack}-");
    let mut containers = BTreeMap::new();
    for name in netns::list()?.into_iter().filter(|n| n.starts_with(&ns_prefix)) {
        if desired.is_none() && known.contains(name.as_str()) {
            // Going down: a known container is deleted whatever it holds; no need to read it.
            containers.insert(name, ObservedNetns::default());
            continue;
        }
        let Ok(fd) = netns::open(&name) else { continue };
        let Ok(mut inner) = home.netlink_in(fd.as_fd()) else {
            // A name with no namespace mounted on it: an `up` killed between the two steps.
            if known.contains(name.as_str()) {
                containers.insert(name, ObservedNetns::default());
            }
            continue;
        };
        let ns = observe_netns(&mut inner)?;
        let ours = known.contains(name.as_str())
            || ns
                .links
                .values()
                .any(|l| l.alias.as_deref().is_some_and(|a| a.starts_with(&prefix)));
        if ours {
            containers.insert(name, ns);
        }
    }

    Ok(Actual {
        ip_forward: sysctl::get("net.ipv4.ip_forward").is_ok_and(|v| v == "1"),
        bridges,
        host_veths,
        containers,
        firewall: observe_firewall(nft::listing(table)?, desired, state),
        known_networks: state.map(|s| s.networks.clone()).unwrap_or_default(),
    })
}

/// Links, addresses and default route inside one namespace.
pub fn observe_netns(nl: &mut Netlink) -> Result<ObservedNetns> {
    let links = link::list(nl)?;
    let addresses = addresses_by_index(addr::list_v4(nl)?);
    let mut ns = ObservedNetns {
        default_gateway: route::default_gateway_v4(nl)?,
        ..Default::default()
    };
    for l in links {
        if l.name == "lo" {
            ns.lo_up = l.up;
            continue;
        }
        let observed = ObservedLink {
            alias: l.alias,
            master: None,
            up: l.up,
            addresses: addresses.get(&l.index).cloned().unwrap_or_default(),
        };
        ns.links.insert(l.name, observed);
    }
    Ok(ns)
}

fn addresses_by_index(list: Vec<(u32, Ipv4Net)>) -> HashMap<u32, Vec<Ipv4Net>> {
    let mut out: HashMap<u32, Vec<Ipv4Net>> = HashMap::new();
    for (index, net) in list {
        out.entry(index).or_default().push(net);
    }
    out
}

fn observe_firewall(
    listing: Option<String>,
    desired: Option<&Desired>,
    state: Option<&StackState>,
) -> ObservedFirewall {
    let Some(listing) = listing else {
        return ObservedFirewall::Absent;
    };
    // Ours if nft lists exactly what we would apply (our text is written in nft's own listing
    // format), or if it is unchanged since we applied it (in case nft formats differently).
    if let Some(want) = desired.and_then(plumb_core::firewall::ruleset) {
        if without_whitespace(&want) == without_whitespace(&listing) {
            return ObservedFirewall::Applied(want);
        }
    }
    match state.and_then(|s| s.firewall.as_ref()) {
        Some(applied) if applied.listing_hash == listing_hash(&listing) => {
            ObservedFirewall::Applied(applied.ruleset.clone())
        }
        _ => ObservedFirewall::Changed,
    }
}

fn without_whitespace(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Fingerprint of nft's own listing of a table (not of our input, which nft reformats).
pub fn listing_hash(listing: &str) -> u64 {
    names::fnv1a(&[listing])
}
