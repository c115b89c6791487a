//! Plans are values: the diff between what the stack file wants ([`Desired`]) and what the
//! kernel holds ([`Actual`]) is a list of [`Step`]s, each lowered to [`Op`]s. Executing the
//! operations (netlink, nft) and rendering them as an `ip`/`nft` script are two readings of
//! the same value.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::cluster;
use crate::desired::{Container, Desired, Network, Overlay};
use crate::firewall::{NftChange, Ruleset, TableId};
use crate::mac::Mac;
use crate::ops::{At, Op};
use crate::{firewall, lower, names};

/// What the kernel holds of one stack, read back by the observer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Actual {
    pub ip_forward: bool,
    /// plumb turned IPv4 forwarding on and this stack is the last one up: removing it turns
    /// forwarding off again (the state store knows this, not the kernel).
    pub forwarding_to_restore: bool,
    /// The stack's bridges (by alias) and any link named like a desired bridge.
    pub bridges: BTreeMap<String, ObservedLink>,
    /// Host-side veth ends (names starting with `plv`).
    pub host_veths: BTreeMap<String, ObservedLink>,
    /// The stack's container namespaces, by name under /run/netns.
    pub containers: BTreeMap<String, ObservedNetns>,
    /// The stack's nft tables that exist (a table not listed is absent).
    pub firewall: BTreeMap<TableId, ObservedFirewall>,
    /// Networks the state file says the stack has had (aliases in the kernel tell the rest),
    /// to name the host ends of old veths.
    pub known_networks: BTreeSet<String>,
    /// The stack's VXLAN devices (by alias) and any link named like a desired one, with their
    /// entries.
    pub vxlans: BTreeMap<String, ObservedVxlan>,
    /// Namespaces of attached containers (another's: the record says so): removing them ends
    /// no process in them, it only unwires them and drops the name.
    pub external: BTreeSet<String>,
    /// Namespaces that got the mesh's interception table (the state record says so: the
    /// table goes with its namespace, so a container joining or leaving the mesh is rebuilt).
    pub meshed: BTreeSet<String>,
}

/// A VXLAN device as read back: its settings and its static entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedVxlan {
    pub link: ObservedLink,
    pub vni: Option<u32>,
    pub local: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub learning: bool,
    pub mtu: u32,
    /// Transmit checksum offload is on (plumb turns it off).
    pub tx_checksum: bool,
    pub entries: OverlayEntries,
}

/// An overlay's static entries on one host: per peer, a route to its block via its VTEP
/// address, a permanent neighbour entry for that address (its VTEP MAC) and a permanent FDB
/// entry for that MAC (its underlay address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayEntries {
    /// (block, VTEP address)
    pub routes: BTreeSet<(Ipv4Net, Ipv4Addr)>,
    /// (VTEP address, VTEP MAC)
    pub neighbours: BTreeSet<(Ipv4Addr, Mac)>,
    /// (VTEP MAC, underlay address)
    pub fdb: BTreeSet<(Mac, Ipv4Addr)>,
}

impl OverlayEntries {
    /// What `overlay` wants on its device.
    pub fn wanted(stack: &str, network: &str, overlay: &Overlay) -> OverlayEntries {
        let mut out = OverlayEntries::default();
        for peer in &overlay.peers {
            let vtep = cluster::vtep_address(peer.block);
            let mac = overlay.peer_mac(stack, network, peer);
            out.routes.insert((peer.block, vtep));
            out.neighbours.insert((vtep, mac));
            out.fdb.insert((mac, peer.underlay));
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.neighbours.is_empty() && self.fdb.is_empty()
    }

    /// The entries of `self` that `other` lacks.
    pub fn minus(&self, other: &OverlayEntries) -> OverlayEntries {
        OverlayEntries {
            routes: self.routes.difference(&other.routes).cloned().collect(),
            neighbours: self.neighbours.difference(&other.neighbours).cloned().collect(),
            fdb: self.fdb.difference(&other.fdb).cloned().collect(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedLink {
    pub alias: Option<String>,
    pub mac: Option<Mac>,
    pub master: Option<String>,
    pub up: bool,
    pub addresses: Vec<Ipv4Net>,
    /// None: not read.
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedNetns {
    pub lo_up: bool,
    /// Links other than `lo`, by name.
    pub links: BTreeMap<String, ObservedLink>,
    pub default_gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ObservedFirewall {
    #[default]
    Absent,
    /// The table exactly as plumb last applied it (the kernel's listing is unchanged since).
    Applied(Ruleset),
    /// The table exists but differs from what plumb applied (or plumb has no record).
    Changed,
}

/// One change to the kernel, as a person would name it ("make container web-1"), and the
/// operations it lowers to. The operations are what executes and what renders.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    #[serde(flatten)]
    pub what: What,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum What {
    EnableForwarding,
    /// The last stack is gone and forwarding was off before plumb: off again.
    DisableForwarding,
    /// Anything running inside a namespace keeps it (and its veths) alive: end it first.
    StopProcesses {
        namespaces: Vec<String>,
    },
    /// The host ends of removed containers' veths (their peers go with them) and the bridges
    /// of removed networks, in one request.
    RemoveLinks {
        links: Vec<String>,
        networks: Vec<String>,
    },
    DeleteContainer {
        container: String,
        netns: String,
    },
    CreateBridge {
        network: String,
        bridge: String,
    },
    /// An overlay network's VXLAN device, its VTEP address and its peers' entries.
    CreateOverlay {
        network: String,
        device: String,
        /// Whether tx checksum offload is kept, and why.
        offload: String,
    },
    /// Entries of peers gone or changed removed, of new or changed peers added.
    UpdateOverlay {
        network: String,
        device: String,
    },
    /// Kept links of a network whose MTU is not the network's (an overlay's MTU followed its
    /// underlay's, or someone changed it) set to it in place: the ports, then the bridge.
    SetMtu {
        network: String,
        mtu: u32,
    },
    ApplyFirewall {
        tables: Vec<String>,
    },
    CreateContainer {
        container: String,
        service: String,
        replica: u32,
    },
    DeleteFirewall {
        tables: Vec<String>,
    },
    /// An active fault's redirects, re-made on containers this plan rebuilt (their new veths
    /// have none): the fault stays what `plumb chaos ls` says it is.
    RestoreFault {
        fault: u32,
        target: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// How many steps match `f`.
    pub fn count(&self, f: impl Fn(&What) -> bool) -> usize {
        self.steps.iter().filter(|s| f(&s.what)).count()
    }

    /// Every operation, in order.
    pub fn ops(&self) -> impl Iterator<Item = &Op> {
        self.steps.iter().flat_map(|s| &s.ops)
    }
}

/// The MTU of a link made without one (bridges and veths of a network that is not an overlay).
pub const DEFAULT_MTU: u32 = 1500;

/// How long processes found in a namespace being deleted get between SIGTERM and SIGKILL.
pub const STOP_GRACE_MS: u64 = 3000;

/// The plan that makes `actual` match `desired`; `None` means the stack should not exist.
pub fn diff(stack: &str, desired: Option<&Desired>, actual: &Actual) -> Plan {
    let no_networks = Vec::new();
    let no_containers = Vec::new();
    let want_networks = desired.map_or(&no_networks, |d| &d.networks);
    let want_containers = desired.map_or(&no_containers, |d| &d.containers);
    let mut steps = Vec::new();

    if !actual.ip_forward && want_networks.iter().any(|n| !n.internal) {
        steps.push(lower::enable_forwarding());
    }

    let rebuilt: BTreeSet<&str> = want_networks
        .iter()
        .filter(|n| !bridge_matches(n, actual.bridges.get(&n.bridge)))
        .map(|n| n.bridge.as_str())
        .collect();

    let mut deleted: Vec<&str> = Vec::new();
    let mut created: Vec<&Container> = Vec::new();
    for c in want_containers {
        match actual.containers.get(&c.netns) {
            Some(got) if container_matches(c, got, actual, &rebuilt) => {}
            Some(_) => {
                deleted.push(&c.netns);
                created.push(c);
            }
            None => created.push(c),
        }
    }
    let wanted: BTreeSet<&str> = want_containers.iter().map(|c| c.netns.as_str()).collect();
    deleted.extend(
        actual
            .containers
            .keys()
            .map(String::as_str)
            .filter(|ns| !wanted.contains(ns)),
    );
    deleted.sort_unstable();

    // Everything removed goes first, in one batch: names are free again before anything is
    // made, and one request removes every link (one RCU wait instead of one per link).
    let ours: Vec<String> = (deleted.iter())
        .filter(|n| !actual.external.contains(**n))
        .map(|n| n.to_string())
        .collect();
    if !ours.is_empty() {
        steps.push(lower::stop_processes(ours));
    }
    let nft = firewall_changes(desired, actual);
    let tables = |changes: &[NftChange]| changes.iter().map(|c| c.table().to_string()).collect();
    // Going down, the tables go as soon as no process runs: their transaction then overlaps
    // with removing the links.
    if desired.is_none() && !nft.is_empty() {
        steps.push(lower::firewall(
            What::DeleteFirewall { tables: tables(&nft) },
            nft.clone(),
        ));
    }
    let networks = networks_seen(stack, want_networks, actual);
    let mut links = Vec::new();
    let containers: Vec<(String, &str)> = deleted
        .iter()
        .map(|netns| {
            (
                netns.strip_prefix(&format!("{stack}-")).unwrap_or(netns).to_string(),
                *netns,
            )
        })
        .collect();
    for (container, _) in &containers {
        for net in &networks {
            let veth = names::host_veth(stack, container, net);
            if actual.host_veths.contains_key(&veth) {
                links.push(veth);
            }
        }
    }
    let mut overlays = Vec::new();
    for net in want_networks {
        let Some(overlay) = &net.overlay else { continue };
        match actual.vxlans.get(&overlay.device) {
            Some(got) if vxlan_matches(stack, net, overlay, got) => {
                let want = OverlayEntries::wanted(stack, &net.name, overlay);
                let (gone, new) = (got.entries.minus(&want), want.minus(&got.entries));
                if !gone.is_empty() || !new.is_empty() {
                    overlays.push(lower::update_overlay(net, overlay, &gone, &new));
                }
            }
            got => {
                if got.is_some() {
                    links.push(overlay.device.clone());
                }
                overlays.push(lower::create_overlay(stack, net, overlay));
            }
        }
    }
    let want_devices: BTreeSet<&str> = want_networks
        .iter()
        .filter_map(|n| n.overlay.as_ref().map(|o| o.device.as_str()))
        .collect();
    links.extend(
        actual
            .vxlans
            .keys()
            .filter(|d| !want_devices.contains(d.as_str()))
            .cloned(),
    );
    let want_bridges: BTreeSet<&str> = want_networks.iter().map(|n| n.bridge.as_str()).collect();
    let mut gone_networks = Vec::new();
    for (name, link) in &actual.bridges {
        if !want_bridges.contains(name.as_str()) || rebuilt.contains(name.as_str()) {
            links.push(name.clone());
            gone_networks.push(network_of_alias(stack, link.alias.as_deref()));
        }
    }
    if !links.is_empty() {
        steps.push(lower::remove_links(names::link_group(stack), links, gone_networks));
    }
    for (container, netns) in containers {
        steps.push(lower::delete_container(container, netns.to_string()));
    }
    for net in want_networks.iter().filter(|n| rebuilt.contains(n.bridge.as_str())) {
        steps.push(lower::create_bridge(net));
    }
    steps.extend(overlays);
    let kept: Vec<&Container> = want_containers
        .iter()
        .filter(|c| !created.iter().any(|n| n.netns == c.netns))
        .collect();
    for net in want_networks.iter().filter(|n| !rebuilt.contains(n.bridge.as_str())) {
        steps.extend(lower::set_mtu(net, mtu_drift(net, &kept, actual)));
    }

    if desired.is_some() && !nft.is_empty() {
        steps.push(lower::firewall(What::ApplyFirewall { tables: tables(&nft) }, nft));
    }
    steps.extend(created.into_iter().map(|c| lower::create_container(stack, c)));
    if desired.is_none() && actual.forwarding_to_restore && actual.ip_forward {
        steps.push(lower::disable_forwarding());
    }
    Plan { steps }
}

/// The kept links of `net` (its bridge and both ends of its kept containers' veths) whose MTU
/// is not the network's, as operations that set it: the ports first, then the bridge.
fn mtu_drift(net: &Network, kept: &[&Container], actual: &Actual) -> Vec<Op> {
    let want = net.mtu().unwrap_or(DEFAULT_MTU);
    let drifted = |link: Option<&ObservedLink>| link.and_then(|l| l.mtu).is_some_and(|m| m != want);
    let set = |at: At, link: &str| Op::LinkMtu {
        at,
        link: link.to_string(),
        mtu: want,
    };
    let mut ops = Vec::new();
    for c in kept {
        for i in c.interfaces.iter().filter(|i| i.bridge == net.bridge) {
            if drifted(actual.host_veths.get(&i.host_veth)) {
                ops.push(set(At::Host, &i.host_veth));
            }
            let inside = actual.containers.get(&c.netns).and_then(|ns| ns.links.get(&i.name));
            if drifted(inside) {
                ops.push(set(At::Netns(c.netns.clone()), &i.name));
            }
        }
    }
    if drifted(actual.bridges.get(&net.bridge)) {
        ops.push(set(At::Host, &net.bridge));
    }
    ops
}

/// The changes that turn the stack's tables into the wanted ones: each wanted table created,
/// updated or replaced as needed, each other table of the stack deleted.
fn firewall_changes(desired: Option<&Desired>, actual: &Actual) -> Vec<NftChange> {
    let want = desired.map(firewall::rulesets).unwrap_or_default();
    let mut out = Vec::new();
    for ruleset in &want {
        let change = match actual.firewall.get(&ruleset.table) {
            None | Some(ObservedFirewall::Absent) => Some(NftChange::Create {
                ruleset: ruleset.clone(),
            }),
            Some(ObservedFirewall::Applied(have)) => firewall::changes(Some(have), ruleset),
            Some(ObservedFirewall::Changed) => firewall::changes(None, ruleset),
        };
        out.extend(change);
    }
    for (table, observed) in &actual.firewall {
        if *observed != ObservedFirewall::Absent && !want.iter().any(|r| &r.table == table) {
            out.push(NftChange::Delete { table: table.clone() });
        }
    }
    out
}

/// Every network the stack may have wired a veth to: wanted, remembered, or named by an alias
/// on a bridge (`plumb:S/net/N`) or on a container interface (`plumb:S/C/N`).
fn networks_seen(stack: &str, want: &[Network], actual: &Actual) -> BTreeSet<String> {
    let prefix = names::alias_prefix(stack);
    let mut out: BTreeSet<String> = actual.known_networks.clone();
    out.extend(want.iter().map(|n| n.name.clone()));
    let aliases = actual
        .bridges
        .values()
        .chain(actual.containers.values().flat_map(|ns| ns.links.values()));
    for alias in aliases.filter_map(|l| l.alias.as_deref()) {
        if let Some((_, net)) = alias.strip_prefix(&prefix).and_then(|rest| rest.split_once('/')) {
            out.insert(net.to_string());
        }
    }
    out
}

fn network_of_alias(stack: &str, alias: Option<&str>) -> String {
    alias
        .and_then(|a| a.strip_prefix(&names::alias_prefix(stack)))
        .and_then(|a| a.strip_prefix("net/"))
        .unwrap_or("?")
        .to_string()
}

fn bridge_matches(want: &Network, got: Option<&ObservedLink>) -> bool {
    got.is_some_and(|g| g.up && g.alias.as_deref() == Some(want.alias.as_str()) && g.addresses == [want.gateway_cidr()])
}

/// A VXLAN device is kept (its entries updated in place) while its settings are as wanted.
fn vxlan_matches(stack: &str, net: &Network, want: &Overlay, got: &ObservedVxlan) -> bool {
    let alias = vxlan_alias(stack, &net.name);
    got.link.up
        && got.link.alias.as_deref() == Some(alias.as_str())
        && got.link.mac == Some(want.mac)
        && got.link.addresses == [vtep_cidr(net)]
        && got.vni == Some(want.vni)
        && got.local == Some(want.local)
        && got.port == Some(cluster::VXLAN_PORT)
        && !got.learning
        && got.tx_checksum == want.tx_offload
        && got.mtu == want.mtu
}

/// The alias of an overlay network's VXLAN device: `plumb:STACK/vxlan/NETWORK`.
pub fn vxlan_alias(stack: &str, network: &str) -> String {
    names::alias(stack, &format!("vxlan/{network}"))
}

/// This host's VTEP address on an overlay network, as a /32.
pub fn vtep_cidr(net: &Network) -> Ipv4Net {
    Ipv4Net::new(cluster::vtep_address(net.subnet), 32).expect("/32 is a valid prefix")
}

/// A container's namespace as its plan leaves it (what `container_matches` accepts): for a
/// caller that trusts the record instead of reading the namespace (an attach or detach, which
/// changes one container; `up` reads them all).
pub fn as_made(c: &Container) -> ObservedNetns {
    let links = c
        .interfaces
        .iter()
        .map(|i| {
            let inside = ObservedLink {
                alias: Some(i.alias.clone()),
                mac: Some(i.mac),
                master: None,
                up: true,
                addresses: vec![i.cidr()],
                mtu: Some(i.mtu.unwrap_or(DEFAULT_MTU)),
            };
            (i.name.clone(), inside)
        })
        .collect();
    ObservedNetns {
        lo_up: true,
        links,
        default_gateway: c.gateway,
    }
}

/// A container is kept only if every part of its wiring is as desired; anything else (for
/// example an `up` killed half-way) is rebuilt from scratch.
fn container_matches(want: &Container, got: &ObservedNetns, actual: &Actual, rebuilt: &BTreeSet<&str>) -> bool {
    // An attached container may hold interfaces of its own (another plugin's): only plumb's
    // are compared.
    got.lo_up
        && want.mesh == actual.meshed.contains(&want.netns)
        && got.default_gateway == want.gateway
        && (want.external.is_some() || got.links.len() == want.interfaces.len())
        && want.interfaces.iter().all(|i| {
            let inside = got.links.get(&i.name).is_some_and(|l| {
                l.up && l.alias.as_deref() == Some(i.alias.as_str())
                    && l.addresses == [i.cidr()]
                    && l.mac == Some(i.mac)
            });
            let outside = actual
                .host_veths
                .get(&i.host_veth)
                .is_some_and(|h| h.up && h.master.as_deref() == Some(i.bridge.as_str()));
            inside && outside && !rebuilt.contains(i.bridge.as_str())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::resolve;
    use crate::spec::parse;

    fn desired(text: &str) -> Desired {
        resolve(&parse("f", text).unwrap(), &Default::default()).unwrap().0
    }

    const STACK: &str =
        "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n[services.a]\nreplicas = 2\nports = [\"80:80\"]\n";

    /// The kernel state that executing `d`'s plan leaves behind.
    fn applied(d: &Desired) -> Actual {
        let mut actual = Actual {
            ip_forward: true,
            ..Default::default()
        };
        for n in &d.networks {
            let link = ObservedLink {
                alias: Some(n.alias.clone()),
                mac: None,
                master: None,
                up: true,
                addresses: vec![n.gateway_cidr()],
                mtu: Some(n.mtu().unwrap_or(DEFAULT_MTU)),
            };
            actual.bridges.insert(n.bridge.clone(), link);
        }
        for c in &d.containers {
            for i in &c.interfaces {
                let outside = ObservedLink {
                    master: Some(i.bridge.clone()),
                    up: true,
                    mtu: Some(i.mtu.unwrap_or(DEFAULT_MTU)),
                    ..Default::default()
                };
                actual.host_veths.insert(i.host_veth.clone(), outside);
            }
            actual.containers.insert(c.netns.clone(), as_made(c));
        }
        for r in firewall::rulesets(d) {
            actual.firewall.insert(r.table.clone(), ObservedFirewall::Applied(r));
        }
        for n in &d.networks {
            let Some(o) = &n.overlay else { continue };
            let vxlan = ObservedVxlan {
                link: ObservedLink {
                    alias: Some(vxlan_alias(&d.stack, &n.name)),
                    mac: Some(o.mac),
                    master: None,
                    up: true,
                    addresses: vec![vtep_cidr(n)],
                    mtu: Some(o.mtu),
                },
                vni: Some(o.vni),
                local: Some(o.local),
                port: Some(cluster::VXLAN_PORT),
                learning: false,
                tx_checksum: false,
                mtu: o.mtu,
                entries: OverlayEntries::wanted(&d.stack, &n.name, o),
            };
            actual.vxlans.insert(o.device.clone(), vxlan);
        }
        actual
    }

    const OVERLAY: &str = "name = \"s\"\n[networks.o]\nsubnet = \"10.50.0.0/16\"\ndriver = \"overlay\"\n\
                           [services.a]\nnetworks = [\"o\"]\n";

    fn peer(host: &str, underlay: &str, block: &str) -> cluster::OverlayPeer {
        cluster::OverlayPeer {
            host: host.into(),
            underlay: underlay.parse().unwrap(),
            block: block.parse().unwrap(),
        }
    }

    /// Host h1 of a three-host cluster (block 10.50.0.0/24), running a-1, with `peers`.
    fn on_h1(peers: Vec<cluster::OverlayPeer>) -> Desired {
        on_h1_with_mtu(peers, 1450)
    }

    fn on_h1_with_mtu(peers: Vec<cluster::OverlayPeer>, mtu: u32) -> Desired {
        let assignment = cluster::HostAssignment {
            host: "h1".into(),
            replicas: [("a".to_string(), [1].into())].into(),
            overlays: [(
                "o".to_string(),
                cluster::OverlayAssignment {
                    block: "10.50.0.0/24".parse().unwrap(),
                    local: "10.99.0.11".parse().unwrap(),
                    mtu,
                    tx_offload: None,
                    tx_offload_why: None,
                    peers,
                },
            )]
            .into(),
            remote: vec![],
            base: None,
            store: vec![],
        };
        let parsed = parse("f", OVERLAY).unwrap();
        crate::desired::resolve_on_host(&parsed, &Default::default(), &assignment)
            .unwrap()
            .0
    }

    fn two_peers() -> Vec<cluster::OverlayPeer> {
        vec![
            peer("h2", "10.99.0.12", "10.50.1.0/24"),
            peer("h3", "10.99.0.13", "10.50.2.0/24"),
        ]
    }

    /// The underlay's MTU changed: the overlay's is lower now. The VXLAN device is made
    /// again, and the bridge and both ends of each veth take the new MTU in place.
    #[test]
    fn an_overlay_mtu_change_reaches_the_bridge_and_the_veths() {
        let actual = applied(&on_h1_with_mtu(two_peers(), 1450));
        let d = on_h1_with_mtu(two_peers(), 1400);
        let plan = diff("s", Some(&d), &actual);
        assert_eq!(kinds(&plan), ["remove links", "create overlay", "set mtu"]);
        let (net, c) = (&d.networks[0], &d.containers[0]);
        let i = &c.interfaces[0];
        assert_eq!(
            plan.steps[2].ops,
            [
                Op::LinkMtu {
                    at: At::Host,
                    link: i.host_veth.clone(),
                    mtu: 1400
                },
                Op::LinkMtu {
                    at: At::Netns(c.netns.clone()),
                    link: i.name.clone(),
                    mtu: 1400
                },
                Op::LinkMtu {
                    at: At::Host,
                    link: net.bridge.clone(),
                    mtu: 1400
                },
            ]
        );
        let mut after = applied(&d);
        assert!(diff("s", Some(&d), &after).is_empty());
        // A link changed behind plumb's back is set back.
        after.host_veths.get_mut(&i.host_veth).unwrap().mtu = Some(9000);
        assert_eq!(kinds(&diff("s", Some(&d), &after)), ["set mtu"]);
    }

    #[test]
    fn with_offload_kept_the_checksum_workaround_is_skipped() {
        let mut d = on_h1(two_peers());
        d.networks[0].overlay.as_mut().unwrap().tx_offload = true;
        let plan = diff("s", Some(&d), &Actual::default());
        assert!(!plan.ops().any(|o| matches!(o, Op::TxChecksumOff { .. })));
    }

    #[test]
    fn an_overlay_gets_its_device_and_three_entries_per_peer_before_the_containers() {
        let d = on_h1(two_peers());
        let plan = diff("s", Some(&d), &Actual::default());
        assert_eq!(
            kinds(&plan),
            [
                "forwarding",
                "create bridge",
                "create overlay",
                "apply firewall",
                "create container"
            ]
        );
        let ops = &plan.steps[2].ops;
        assert!(
            matches!(&ops[0], Op::VxlanAdd { vni, mtu: 1450, port: 4789, .. } if *vni == d.networks[0].overlay.as_ref().unwrap().vni)
        );
        assert!(ops.iter().any(|o| matches!(o, Op::TxChecksumOff { .. })));
        let count = |f: fn(&Op) -> bool| ops.iter().filter(|o| f(o)).count();
        assert_eq!(count(|o| matches!(o, Op::FdbAdd { .. })), 2);
        assert_eq!(count(|o| matches!(o, Op::NeighAdd { .. })), 2);
        assert_eq!(count(|o| matches!(o, Op::OnlinkRouteAdd { .. })), 2);
        // The bridge and the containers' veths get the overlay's MTU.
        assert!(matches!(&plan.steps[1].ops[0], Op::BridgeAdd { mtu: Some(1450), .. }));
        assert!(plan.ops().any(|o| matches!(o, Op::VethAdd { mtu: Some(1450), .. })));
        let script = crate::render::script(&plan, "plumb up", "");
        for needle in [
            "type vxlan id",
            "local 10.99.0.11 dstport 4789 nolearning",
            "ethtool -K plx",
            "ip addr add 10.50.0.0/32 dev plx",
            "ip route add 10.50.2.0/24 via 10.50.2.0 dev plx",
            "bridge fdb add",
            "dst 10.99.0.13 self permanent",
        ] {
            assert!(script.contains(needle), "missing {needle:?} in:\n{script}");
        }
    }

    #[test]
    fn the_same_assignment_twice_needs_nothing() {
        let d = on_h1(two_peers());
        assert!(diff("s", Some(&d), &applied(&d)).is_empty());
    }

    #[test]
    fn a_peer_gone_removes_exactly_its_three_entries() {
        let actual = applied(&on_h1(two_peers()));
        let plan = diff("s", Some(&on_h1(two_peers()[..1].to_vec())), &actual);
        // The VXLAN accept set loses the peer's address, element by element.
        assert_eq!(kinds(&plan), ["update overlay", "apply firewall"]);
        assert!(
            matches!(&plan.steps[1].ops[..], [Op::Nft { changes }] if matches!(changes[..], [NftChange::Elements { .. }]))
        );
        let ops: Vec<String> = plan.steps[0].ops.iter().map(Op::command).collect();
        assert_eq!(ops.len(), 3, "{ops:#?}");
        assert!(ops[0].starts_with("ip route del 10.50.2.0/24 via 10.50.2.0 dev plx"));
        assert!(ops[1].starts_with("ip neigh del 10.50.2.0 dev plx"));
        assert!(ops[2].starts_with("bridge fdb del") && ops[2].contains("dst 10.99.0.13"));
    }

    #[test]
    fn a_peer_moved_changes_only_its_fdb_entry_and_a_new_block_only_its_route_and_neighbour() {
        let actual = applied(&on_h1(two_peers()));
        let mut moved = two_peers();
        moved[1].underlay = "10.99.0.23".parse().unwrap();
        let ops: Vec<String> = diff("s", Some(&on_h1(moved)), &actual).steps[0]
            .ops
            .iter()
            .map(Op::command)
            .collect();
        assert_eq!(ops.len(), 2, "{ops:#?}");
        assert!(ops[0].contains("fdb del") && ops[0].contains("10.99.0.13"));
        assert!(ops[1].contains("fdb add") && ops[1].contains("10.99.0.23"));
        let mut reblocked = two_peers();
        reblocked[1].block = "10.50.7.0/24".parse().unwrap();
        let ops: Vec<String> = diff("s", Some(&on_h1(reblocked)), &actual)
            .ops()
            .map(Op::command)
            .collect();
        assert_eq!(ops.len(), 4, "{ops:#?}");
        assert!(ops[3].contains("ip route add 10.50.7.0/24 via 10.50.7.0"));
    }

    #[test]
    fn down_removes_the_vxlan_device_with_the_links() {
        let d = on_h1(two_peers());
        let plan = diff("s", None, &applied(&d));
        let device = &d.networks[0].overlay.as_ref().unwrap().device;
        assert!(plan
            .steps
            .iter()
            .any(|s| matches!(&s.what, What::RemoveLinks { links, .. } if links.contains(device))));
        // A device with another VNI is made again.
        let mut actual = applied(&d);
        actual.vxlans.get_mut(device).unwrap().vni = Some(7);
        let kinds = kinds(&diff("s", Some(&d), &actual));
        assert_eq!(kinds, ["remove links", "create overlay"]);
    }

    fn kinds(plan: &Plan) -> Vec<&'static str> {
        plan.steps
            .iter()
            .map(|s| match s.what {
                What::EnableForwarding => "forwarding",
                What::DisableForwarding => "no forwarding",
                What::CreateBridge { .. } => "create bridge",
                What::CreateOverlay { .. } => "create overlay",
                What::UpdateOverlay { .. } => "update overlay",
                What::RemoveLinks { .. } => "remove links",
                What::CreateContainer { .. } => "create container",
                What::StopProcesses { .. } => "stop processes",
                What::DeleteContainer { .. } => "delete container",
                What::ApplyFirewall { .. } => "apply firewall",
                What::DeleteFirewall { .. } => "delete firewall",
                What::RestoreFault { .. } => "restore fault",
                What::SetMtu { .. } => "set mtu",
            })
            .collect()
    }

    #[test]
    fn the_last_down_turns_forwarding_off_as_a_step_of_its_plan() {
        let d = desired(STACK);
        let mut actual = applied(&d);
        assert!(!kinds(&diff("s", None, &actual)).contains(&"no forwarding"));
        actual.forwarding_to_restore = true;
        let plan = diff("s", None, &actual);
        assert_eq!(kinds(&plan).last(), Some(&"no forwarding"));
        assert_eq!(
            plan.steps.last().unwrap().ops,
            [Op::Sysctl {
                key: "net.ipv4.ip_forward".into(),
                value: "0".into()
            }]
        );
        // Not while the stack stays, nor when forwarding is off already.
        assert!(!kinds(&diff("s", Some(&d), &actual)).contains(&"no forwarding"));
        actual.ip_forward = false;
        assert!(!kinds(&diff("s", None, &actual)).contains(&"no forwarding"));
    }

    #[test]
    fn from_nothing_everything_is_made_bridges_and_rules_before_containers() {
        let d = desired(STACK);
        let plan = diff("s", Some(&d), &Actual::default());
        assert_eq!(
            kinds(&plan),
            [
                "forwarding",
                "create bridge",
                "apply firewall",
                "create container",
                "create container"
            ]
        );
        assert!(matches!(&plan.steps[2].ops[..], [Op::Nft { changes }] if changes.len() == 2));
    }

    #[test]
    fn a_matching_kernel_needs_nothing() {
        let d = desired(STACK);
        assert!(diff("s", Some(&d), &applied(&d)).is_empty());
    }

    #[test]
    fn an_incomplete_container_is_rebuilt_alone() {
        let d = desired(STACK);
        let mut actual = applied(&d);
        actual.containers.get_mut("s-a-2").unwrap().default_gateway = None;
        let plan = diff("s", Some(&d), &actual);
        assert_eq!(
            kinds(&plan),
            ["stop processes", "remove links", "delete container", "create container"]
        );
        assert!(matches!(&plan.steps[3].what, What::CreateContainer { container, .. } if container == "a-2"));
    }

    #[test]
    fn a_changed_port_only_updates_the_rules_in_place() {
        let d = desired(STACK);
        let actual = applied(&d);
        let plan = diff("s", Some(&desired(&STACK.replace("80:80", "81:80"))), &actual);
        assert_eq!(kinds(&plan), ["apply firewall"]);
        assert!(
            matches!(&plan.steps[0].ops[..], [Op::Nft { changes }] if matches!(changes[..], [NftChange::Update { .. }]))
        );
    }

    #[test]
    fn down_removes_everything_links_in_one_request() {
        let d = desired(STACK);
        let plan = diff("s", None, &applied(&d));
        assert_eq!(
            kinds(&plan),
            [
                "stop processes",
                "delete firewall",
                "remove links",
                "delete container",
                "delete container"
            ]
        );
        let What::RemoveLinks { links, networks } = &plan.steps[2].what else {
            panic!()
        };
        assert_eq!((links.len(), networks.as_slice()), (3, ["n".to_string()].as_slice()));
        assert!(matches!(plan.steps[2].ops.last(), Some(Op::LinkDelGroup { links, .. }) if links.len() == 3));
    }

    #[test]
    fn the_script_says_what_each_step_does() {
        let d = desired(STACK);
        let script = crate::render::script(&diff("s", Some(&d), &Actual::default()), "plumb up", "");
        assert!(script.starts_with("#!/bin/sh\n"));
        for needle in [
            "ip link add plb",
            "type bridge mcast_snooping 0",
            "ip netns add s-a-1",
            "type veth peer name eth0 netns s-a-1",
            "ip -n s-a-2 addr add 10.0.0.3/24 dev eth0",
            "ip -n s-a-1 route add default via 10.0.0.1",
            "nft -f - <<'EOF'",
            "numgen inc mod 2 map { 0 : 10.0.0.2, 1 : 10.0.0.3 }:80",
        ] {
            assert!(script.contains(needle), "missing {needle:?} in:\n{script}");
        }
        assert_eq!(crate::render::script(&Plan::default(), "plumb up", ""), "");
    }
}
