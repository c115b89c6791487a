//! Stacks as the kernel's own marks tell them, for stacks whose record is lost or damaged:
//! namespaces whose interfaces carry the alias `plumb:STACK/CONTAINER/NETWORK`, bridges with
//! `plumb:STACK/net/NETWORK`, and the stack's nft table. Read through the `Kernel` trait.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use plumb_core::kernel::{Kernel, KernelResult};

/// What the kernel holds of one stack.
#[derive(Debug, Default, PartialEq)]
pub struct FoundStack {
    pub containers: Vec<FoundContainer>,
    /// The networks whose bridges carry the stack's mark.
    pub networks: BTreeSet<String>,
    /// The stack's nft table exists.
    pub nft_table: bool,
}

#[derive(Debug, PartialEq)]
pub struct FoundContainer {
    pub name: String,
    pub netns: String,
    pub interfaces: Vec<FoundInterface>,
}

#[derive(Debug, PartialEq)]
pub struct FoundInterface {
    pub name: String,
    pub network: String,
    pub address: Option<Ipv4Net>,
}

/// What the records already account for: those stacks, and those namespaces, are not read.
#[derive(Debug, Default)]
pub struct Known {
    pub stacks: BTreeSet<String>,
    pub namespaces: BTreeSet<String>,
}

/// Every stack the kernel holds marks of, but the known ones.
pub fn stacks(kernel: &mut dyn Kernel, known: &Known) -> KernelResult<BTreeMap<String, FoundStack>> {
    let mut found: BTreeMap<String, FoundStack> = BTreeMap::new();
    for link in kernel.host_links()? {
        let Some((stack, object)) = mark(link.link.alias.as_deref()) else {
            continue;
        };
        if let (Some("bridge"), Some(network)) = (link.kind.as_deref(), object.strip_prefix("net/")) {
            found.entry(stack).or_default().networks.insert(network.to_string());
        }
    }
    for netns in kernel.namespaces()? {
        if known.namespaces.contains(&netns) {
            continue;
        }
        let Some(inside) = kernel.netns(&netns)? else { continue };
        let mut owner = None;
        let mut interfaces = Vec::new();
        for (name, link) in &inside.links {
            let Some((stack, object)) = mark(link.alias.as_deref()) else {
                continue;
            };
            let Some((container, network)) = object.split_once('/') else {
                continue;
            };
            owner = Some((stack, container.to_string()));
            interfaces.push(FoundInterface {
                name: name.clone(),
                network: network.to_string(),
                address: link.addresses.first().copied(),
            });
        }
        if let Some((stack, name)) = owner {
            found.entry(stack).or_default().containers.push(FoundContainer {
                name,
                netns,
                interfaces,
            });
        }
    }
    found.retain(|stack, _| !known.stacks.contains(stack));
    for (stack, f) in &mut found {
        let [inet, _] = plumb_core::firewall::table_ids(stack);
        f.nft_table = kernel.nft_table(&inet)?.is_some();
    }
    Ok(found)
}

/// The stack and object an alias `plumb:STACK/OBJECT` names.
fn mark(alias: Option<&str>) -> Option<(String, &str)> {
    let (stack, object) = plumb_core::names::parse_alias(alias?)?;
    Some((stack.to_string(), object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumb_core::{desired, plan, spec};
    use plumb_engine::fake::FakeKernel;
    use plumb_engine::{execute, OnError};

    /// A kernel holding stacks `a` (two replicas, one network) and `b`, made as `up` makes them.
    fn kernel_with_two_stacks() -> FakeKernel {
        let kernel = FakeKernel::default();
        for (name, subnet, replicas) in [("a", "10.1.0.0/24", 2), ("b", "10.2.0.0/24", 1)] {
            let text = format!(
                "name = \"{name}\"\n[networks.n]\nsubnet = \"{subnet}\"\n[services.s]\nreplicas = {replicas}\n"
            );
            let parsed = spec::parse("plumb.toml", &text).unwrap();
            let (wanted, _) = desired::resolve(&parsed, &Default::default()).unwrap();
            let steps = plan::diff(name, Some(&wanted), &Default::default());
            let outcome = execute(&mut kernel.clone(), &steps, OnError::Stop, &|_, _, _| {});
            assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
        }
        kernel
    }

    #[test]
    fn stacks_are_found_from_the_marks_on_their_links() {
        let mut kernel = kernel_with_two_stacks();
        let found = stacks(&mut kernel, &Known::default()).unwrap();
        assert_eq!(found.keys().collect::<Vec<_>>(), ["a", "b"]);
        let a = &found["a"];
        let containers: Vec<(&str, &str)> = a
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.netns.as_str()))
            .collect();
        assert_eq!(containers, [("s-1", "a-s-1"), ("s-2", "a-s-2")]);
        assert_eq!(a.networks, BTreeSet::from(["n".to_string()]));
        assert!(a.nft_table);
        let eth0 = &a.containers[0].interfaces[0];
        assert_eq!((eth0.name.as_str(), eth0.network.as_str()), ("eth0", "n"));
        assert_eq!(eth0.address.map(|a| a.to_string()).as_deref(), Some("10.1.0.2/24"));
    }

    #[test]
    fn known_stacks_and_namespaces_are_left_out() {
        let mut kernel = kernel_with_two_stacks();
        let known = Known {
            stacks: BTreeSet::from(["a".to_string()]),
            namespaces: ["a-s-1", "a-s-2"].into_iter().map(String::from).collect(),
        };
        let found = stacks(&mut kernel, &known).unwrap();
        assert_eq!(found.keys().collect::<Vec<_>>(), ["b"]);
    }
}
