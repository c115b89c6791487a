//! Desired state: what a stack file asks for, fully resolved (every address allocated, every
//! interface named). Pure data, computed without touching the machine.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::diag::Diagnostics;
use crate::ipam::{self, Leases, Pool, Request};
use crate::names;
use crate::spec::{Parsed, PolicySpec, PortSpec, ProcessSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    pub stack: String,
    pub networks: Vec<Network>,
    pub containers: Vec<Container>,
    /// The stack file's `[[policies]]`, in order, each with where it is written.
    #[serde(default)]
    pub policies: Vec<Policy>,
}

/// One policy and its place in the stack file, for `plumb policy why` and drop logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub spec: PolicySpec,
    /// `plumb.toml:42`
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub internal: bool,
    pub bridge: String,
    pub alias: String,
}

impl Network {
    /// The bridge's MAC address: locally administered, derived from its alias.
    pub fn bridge_mac_text(&self) -> String {
        names::mac(&self.alias)
    }

    /// The bridge's own address: the gateway, with the subnet's prefix.
    pub fn gateway_cidr(&self) -> Ipv4Net {
        Ipv4Net::new(self.gateway, self.subnet.prefix_len()).expect("prefix comes from a valid subnet")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    /// `web-2`
    pub name: String,
    pub service: String,
    pub replica: u32,
    /// `shop-web-2`, under /run/netns.
    pub netns: String,
    pub interfaces: Vec<Interface>,
    /// Default route, via the first network's gateway; `None` without networks.
    pub gateway: Option<Ipv4Addr>,
    pub ports: Vec<PortSpec>,
    pub process: Option<ProcessSpec>,
}

impl Container {
    /// The address published ports forward to: the one on the first non-internal network.
    pub fn published_address(&self, networks: &[Network]) -> Option<Ipv4Addr> {
        self.interfaces
            .iter()
            .find(|i| networks.iter().any(|n| n.name == i.network && !n.internal))
            .map(|i| i.address)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// `eth0` inside the container.
    pub name: String,
    pub network: String,
    pub bridge: String,
    /// The veth's other end, on the host, attached to `bridge`.
    pub host_veth: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// `plumb:shop/web-2/frontend`: marks the interface (and so the namespace) as the stack's.
    pub alias: String,
    /// Derived from the alias: the only MAC the anti-spoofing rules let it send from.
    #[serde(default)]
    pub mac: String,
}

impl Interface {
    pub fn cidr(&self) -> Ipv4Net {
        Ipv4Net::new(self.address, self.prefix_len).expect("prefix comes from a valid subnet")
    }
}

impl Desired {
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    pub fn container(&self, name: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.name == name)
    }
}

/// Resolves a parsed stack into its desired state, keeping previous address leases.
pub fn resolve(parsed: &Parsed, previous: &Leases) -> Result<(Desired, Leases), Diagnostics> {
    let stack = &parsed.stack;
    let networks: Vec<Network> = stack
        .networks
        .iter()
        .map(|(name, spec)| Network {
            name: name.clone(),
            subnet: spec.subnet,
            gateway: spec.gateway,
            internal: spec.internal,
            bridge: names::bridge(&stack.name, name),
            alias: names::alias(&stack.name, &format!("net/{name}")),
        })
        .collect();
    let pools: BTreeMap<String, Pool> = networks
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                Pool {
                    subnet: n.subnet,
                    gateway: n.gateway,
                },
            )
        })
        .collect();
    let mut requests = Vec::new();
    for (svc_name, svc) in &stack.services {
        for replica in 1..=svc.replicas {
            let container = names::container(svc_name, replica);
            for a in &svc.networks {
                requests.push(Request {
                    key: format!("{container}/{}", a.network),
                    network: a.network.clone(),
                    fixed: a.ip,
                });
            }
        }
    }
    let leases = ipam::allocate(&pools, &requests, previous).map_err(|e| {
        Diagnostics(vec![parsed.error(
            &format!("networks.{}.subnet", e.network),
            e.to_string(),
            "use a larger subnet (a shorter prefix) or fewer replicas",
        )])
    })?;
    let mut containers = Vec::new();
    for (svc_name, svc) in &stack.services {
        for replica in 1..=svc.replicas {
            let name = names::container(svc_name, replica);
            let interfaces: Vec<Interface> = svc
                .networks
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let net = &pools[&a.network];
                    Interface {
                        name: names::container_ifname(i),
                        network: a.network.clone(),
                        bridge: names::bridge(&stack.name, &a.network),
                        host_veth: names::host_veth(&stack.name, &name, &a.network),
                        address: leases[&format!("{name}/{}", a.network)],
                        prefix_len: net.subnet.prefix_len(),
                        alias: names::alias(&stack.name, &format!("{name}/{}", a.network)),
                        mac: names::mac(&names::alias(&stack.name, &format!("{name}/{}", a.network))),
                    }
                })
                .collect();
            containers.push(Container {
                netns: names::netns(&stack.name, &name),
                gateway: svc.networks.first().map(|a| pools[&a.network].gateway),
                name,
                service: svc_name.clone(),
                replica,
                interfaces,
                ports: svc.ports.clone(),
                process: svc.process.clone(),
            });
        }
    }
    let policies = stack
        .policies
        .iter()
        .enumerate()
        .map(|(i, spec)| Policy {
            spec: spec.clone(),
            source: parsed.place(&format!("policies[{i}]")),
        })
        .collect();
    Ok((
        Desired {
            stack: stack.name.clone(),
            networks,
            containers,
            policies,
        },
        leases,
    ))
}
