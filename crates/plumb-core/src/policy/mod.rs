//! Network policies compiled: each policy's selectors resolved to address ranges (or the
//! host), which services they isolate (ingress, egress), and the allowed flows cut into the
//! disjoint elements of nft's interval sets. The firewall renders exactly these values
//! (`firewall/policy.rs`), and [`evaluate`] answers `plumb policy why` from them, so the
//! explanation and the kernel cannot disagree.

mod evaluate;
mod explain;
pub mod intervals;
pub mod l7;
mod target;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

pub use evaluate::{evaluate, Endpoint, Query, Reason, Verdict};
pub use explain::{explain, Explanation, Party};
use intervals::{disjoint, subtract, Box3, Interval};
pub use target::{parse_target, BadTarget, PortTarget};

use crate::desired::Desired;
use crate::spec::{PortRange, Protocol, Selector};

/// Every IPv4 address.
const ALL: Interval = Interval { lo: 0, hi: u32::MAX };

/// One side of a policy resolved: address ranges, and whether the host is in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    pub addrs: Vec<Interval>,
    pub host: bool,
}

/// One policy resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Its index in the stack file's `[[policies]]`.
    pub index: usize,
    /// `plumb.toml:42`
    pub source: String,
    pub from: Side,
    pub to: Side,
    pub protocol: Protocol,
    pub ports: Vec<Interval>,
}

impl Grant {
    /// Whether this policy allows `src -> dst` (`None`: the host) on `port`.
    fn allows(&self, src: Option<u32>, dst: Option<u32>, protocol: Protocol, port: u16) -> bool {
        let side = |s: &Side, a: Option<u32>| match a {
            Some(a) => s.addrs.iter().any(|i| i.contains(a)),
            None => s.host,
        };
        self.protocol == protocol
            && self.ports.iter().any(|p| p.contains(u32::from(port)))
            && side(&self.from, src)
            && side(&self.to, dst)
    }
}

/// A flow element: `source . destination . protocol . ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Flow {
    pub src: Interval,
    pub dst: Interval,
    pub protocol: Protocol,
    pub ports: Interval,
}

impl Flow {
    /// The element as nft writes it.
    pub fn text(&self) -> String {
        format!(
            "{} . {} . {} . {}",
            self.src.addr_text(),
            self.dst.addr_text(),
            self.protocol.as_str(),
            self.ports.port_text()
        )
    }
}

/// An element of the host's sets: the container side's address, protocol, ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostFlow {
    pub addr: Interval,
    pub protocol: Protocol,
    pub ports: Interval,
}

impl HostFlow {
    pub fn text(&self) -> String {
        format!(
            "{} . {} . {}",
            self.addr.addr_text(),
            self.protocol.as_str(),
            self.ports.port_text()
        )
    }
}

/// A service that policies isolate in one direction: the policies that name it there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Indexes of the policies naming it.
    pub policies: Vec<usize>,
    /// Those of them with `log = true`.
    pub logged: Vec<usize>,
}

/// A stack's policies, compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compiled {
    pub grants: Vec<Grant>,
    /// Allowed routed and bridged flows (disjoint).
    pub allow: Vec<Flow>,
    /// Allowed flows to the host: source, protocol, port (disjoint).
    pub to_host: Vec<HostFlow>,
    /// Allowed flows from the host: destination, protocol, port (disjoint).
    pub from_host: Vec<HostFlow>,
    /// Services whose ingress is default-deny, and their addresses.
    pub ingress: BTreeMap<String, Target>,
    pub egress: BTreeMap<String, Target>,
    /// Container address → its service.
    pub owners: BTreeMap<Ipv4Addr, String>,
    /// Each network's gateway: where plumb's DNS resolver answers (always reachable).
    pub gateways: Vec<Ipv4Addr>,
    /// A meshed stack keeping its own traces: the receiver on the gateways (TCP 4318) is
    /// always reachable, as DNS is (sidecars of isolated services send their spans there).
    #[serde(default)]
    pub trace_receiver: bool,
}

impl Compiled {
    /// Isolated addresses in one direction, with their service.
    pub fn isolated<'a>(&'a self, targets: &'a BTreeMap<String, Target>) -> impl Iterator<Item = (Ipv4Addr, &'a str)> {
        self.owners
            .iter()
            .filter(|(_, svc)| targets.contains_key(*svc))
            .map(|(a, s)| (*a, s.as_str()))
    }
}

/// A box's source and destination ranges.
type Sides = (Vec<Interval>, Vec<Interval>);

/// Compiles the stack's policies (an empty value when it has none).
pub fn compile(desired: &Desired) -> Compiled {
    let mut owners = BTreeMap::new();
    for c in &desired.containers {
        for i in &c.interfaces {
            owners.insert(i.address, c.service.clone());
        }
    }
    for r in &desired.remote {
        for a in r.addresses.values() {
            owners.insert(*a, r.service.clone());
        }
    }
    let mut out = Compiled {
        owners,
        gateways: desired.networks.iter().map(|n| n.gateway).collect(),
        trace_receiver: desired.tracing.is_none() && desired.containers.iter().any(|c| c.mesh),
        ..Compiled::default()
    };
    for (index, p) in desired.policies.iter().enumerate() {
        let spec = &p.spec;
        let ports: Vec<PortRange> = if spec.ports.is_empty() {
            vec![PortRange::ALL]
        } else {
            spec.ports.clone()
        };
        out.grants.push(Grant {
            index,
            source: p.source.clone(),
            from: side(desired, &spec.from),
            to: side(desired, &spec.to),
            protocol: spec.protocol,
            ports: ports
                .iter()
                .map(|r| Interval {
                    lo: r.first.into(),
                    hi: r.last.into(),
                })
                .collect(),
        });
        for (selectors, targets) in [(&spec.to, &mut out.ingress), (&spec.from, &mut out.egress)] {
            for svc in services_named(desired, selectors) {
                let t = targets.entry(svc).or_default();
                t.policies.push(index);
                if spec.log {
                    t.logged.push(index);
                }
            }
        }
    }
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let grants: Vec<&Grant> = out.grants.iter().filter(|g| g.protocol == protocol).collect();
        let boxes = |pick: &dyn Fn(&Grant) -> Option<Sides>| -> Vec<Box3> {
            grants
                .iter()
                .filter_map(|g| pick(g).map(|(s, d)| Box3::new(s, d, g.ports.clone())))
                .collect()
        };
        let routed = boxes(&|g| Some((g.from.addrs.clone(), g.to.addrs.clone())));
        out.allow
            .extend(disjoint(&routed).into_iter().map(|(src, dst, ports)| Flow {
                src,
                dst,
                protocol,
                ports,
            }));
        let zero = vec![Interval::one(0)];
        let to_host = boxes(&|g| g.to.host.then(|| (zero.clone(), g.from.addrs.clone())));
        let from_host = boxes(&|g| g.from.host.then(|| (zero.clone(), g.to.addrs.clone())));
        for (boxes, list) in [(to_host, &mut out.to_host), (from_host, &mut out.from_host)] {
            list.extend(
                disjoint(&boxes)
                    .into_iter()
                    .map(|(_, addr, ports)| HostFlow { addr, protocol, ports }),
            );
        }
    }
    out
}

/// The addresses (and the host) a list of selectors names.
fn side(desired: &Desired, selectors: &[Selector]) -> Side {
    let mut out = Side::default();
    for s in selectors {
        match s {
            Selector::Host => out.host = true,
            Selector::Cidr(net) => out.addrs.push(Interval::of_net(*net)),
            Selector::Outside => {
                // An overlay's inside is the whole network, every host's block.
                let inside: Vec<Interval> = desired
                    .networks
                    .iter()
                    .map(|n| Interval::of_net(n.overlay.as_ref().map_or(n.subnet, |o| o.subnet)))
                    .collect();
                out.addrs.extend(subtract(ALL, &inside));
            }
            Selector::Service(_) | Selector::Network(_) => {
                let services = services_named(desired, std::slice::from_ref(s));
                for c in desired.containers.iter().filter(|c| services.contains(&c.service)) {
                    out.addrs
                        .extend(c.interfaces.iter().map(|i| Interval::of_addr(i.address)));
                }
                for r in desired.remote.iter().filter(|r| services.contains(&r.service)) {
                    out.addrs.extend(r.addresses.values().map(|a| Interval::of_addr(*a)));
                }
            }
        }
    }
    out.addrs = intervals::merge(out.addrs);
    out
}

/// The services a list of selectors names: directly, or as members of a network.
fn services_named(desired: &Desired, selectors: &[Selector]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in selectors {
        match s {
            Selector::Service(name) => {
                out.insert(name.clone());
            }
            Selector::Network(net) => {
                for c in &desired.containers {
                    if c.interfaces.iter().any(|i| &i.network == net) {
                        out.insert(c.service.clone());
                    }
                }
                for r in &desired.remote {
                    if r.addresses.contains_key(net) {
                        out.insert(r.service.clone());
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
