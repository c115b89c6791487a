//! A recording fake kernel, in memory: it performs every [`Op`] on a model of links,
//! namespaces and nft tables with the kernel's rules that matter to plans (names are unique,
//! a veth needs its bridge and namespace, deleting a veth's end deletes its peer, deleting a
//! namespace deletes the veths inside it), and records what it was asked. The engine's
//! tests run "execute, observe, diff" over it without root.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::Ipv4Net;
use plumb_core::firewall::{NftChange, Ruleset, TableId};
use plumb_core::kernel::{
    Flow, HostLink, HostRoute, Kernel, KernelError, KernelResult, LinkCounters, Listener, NftListing, SocketInfo,
    Transport,
};
use plumb_core::plan::DEFAULT_MTU;
use plumb_core::{names, At, Mac, ObservedLink, ObservedNetns, ObservedVxlan, Op};

const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ENODEV: i32 = 19;
const EINVAL: i32 = 22;

#[derive(Debug, Clone, Default)]
struct Link {
    kind: &'static str,
    group: u32,
    alias: Option<String>,
    mac: Option<Mac>,
    master: Option<String>,
    up: bool,
    addresses: Vec<Ipv4Net>,
    mtu: Option<u32>,
    /// For a host veth: the namespace and name of its peer.
    peer: Option<(String, String)>,
    /// For a VXLAN device: its settings and entries.
    vxlan: Option<ObservedVxlan>,
    /// The tap a tc redirect on its ingress sends frames to (a chaos fault's detour).
    pub redirect: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Netns {
    lo_up: bool,
    links: BTreeMap<String, Link>,
    gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Default)]
pub struct World {
    pub ip_forward: bool,
    links: BTreeMap<String, Link>,
    namespaces: BTreeMap<String, Netns>,
    tables: BTreeMap<TableId, Ruleset>,
    /// The nftables generation: every transaction (and every change behind plumb's back)
    /// moves it on, as the kernel's does.
    pub nft_generation: u32,
    /// How many times a table was listed.
    pub nft_listings: usize,
    /// Every operation applied, in order.
    pub log: Vec<Op>,
    /// The host's own routes (destination, device), as a test sets them up.
    pub routes: Vec<(Ipv4Net, String)>,
    /// The host's own addresses.
    pub addresses: Vec<Ipv4Addr>,
    /// Namespace paths that are gone (an attach of one fails, as opening it would).
    pub gone_paths: Vec<String>,
    /// Host processes listening: (transport, address, port, holder).
    pub listening: Vec<(Transport, std::net::IpAddr, u16, (u32, String))>,
}

/// Handles share one world, as threads share one kernel.
#[derive(Clone, Default)]
pub struct FakeKernel(pub Arc<Mutex<World>>);

fn fail(what: impl Into<String>, errno: i32) -> KernelError {
    KernelError {
        what: what.into(),
        detail: format!("errno {errno}"),
        errno: Some(errno),
    }
}

impl FakeKernel {
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl World {
    /// Where a tc redirect on host link `dev` sends its frames, if it has one.
    pub fn redirect(&self, dev: &str) -> Option<&str> {
        self.links.get(dev)?.redirect.as_deref()
    }

    /// How many nft tables the kernel holds.
    pub fn table_count(&self) -> usize {
        self.tables.len()
    }

    fn link(&mut self, at: &At, name: &str) -> KernelResult<&mut Link> {
        let found = match at {
            At::Host => self.links.get_mut(name),
            At::Netns(ns) => self.namespaces.get_mut(ns).and_then(|n| n.links.get_mut(name)),
        };
        found.ok_or_else(|| fail(format!("find link {name}"), ENODEV))
    }

    fn entries(&mut self, name: &str) -> KernelResult<&mut plumb_core::OverlayEntries> {
        let link = self.link(&At::Host, name)?;
        match &mut link.vxlan {
            Some(v) => Ok(&mut v.entries),
            None => Err(fail(format!("{name} is not a VXLAN device"), EINVAL)),
        }
    }

    fn delete_host_link(&mut self, name: &str) {
        if let Some(link) = self.links.remove(name) {
            if let Some((ns, peer)) = link.peer {
                if let Some(n) = self.namespaces.get_mut(&ns) {
                    n.links.remove(&peer);
                }
            }
            if link.kind == "bridge" {
                for port in self.links.values_mut().filter(|l| l.master.as_deref() == Some(name)) {
                    port.master = None;
                }
            }
        }
    }

    fn apply(&mut self, op: &Op) -> KernelResult<()> {
        self.log.push(op.clone());
        match op {
            Op::Sysctl { key, value } => {
                if key == "net.ipv4.ip_forward" {
                    self.ip_forward = value == "1";
                }
            }
            Op::NetnsAttach { path, .. } if self.gone_paths.contains(path) => {
                return Err(fail(format!("open {path}"), ENOENT));
            }
            Op::NetnsAdd { name } | Op::NetnsAttach { name, .. } => {
                if self.namespaces.contains_key(name) {
                    return Err(fail(format!("add netns {name}"), EEXIST));
                }
                self.namespaces.insert(name.clone(), Netns::default());
            }
            Op::BridgeAdd { name, mac, mtu } => {
                if self.links.contains_key(name) {
                    return Err(fail(format!("add bridge {name}"), EEXIST));
                }
                let bridge = Link {
                    kind: "bridge",
                    mac: Some(*mac),
                    mtu: Some(mtu.unwrap_or(DEFAULT_MTU)),
                    ..Default::default()
                };
                self.links.insert(name.clone(), bridge);
            }
            Op::VethAdd {
                name,
                bridge,
                peer,
                netns,
                peer_mac,
                mtu,
            } => {
                let mtu = Some(mtu.unwrap_or(DEFAULT_MTU));
                if self.links.contains_key(name) {
                    return Err(fail(format!("add veth {name}"), EEXIST));
                }
                if self.links.get(bridge).is_none_or(|b| b.kind != "bridge") {
                    return Err(fail(format!("find bridge {bridge}"), ENODEV));
                }
                let ns = self
                    .namespaces
                    .get_mut(netns)
                    .ok_or_else(|| fail(format!("find netns {netns}"), ENOENT))?;
                if ns.links.contains_key(peer) {
                    return Err(fail(format!("add veth peer {peer}"), EEXIST));
                }
                let inside = Link {
                    kind: "veth",
                    mac: Some(*peer_mac),
                    mtu,
                    ..Default::default()
                };
                ns.links.insert(peer.clone(), inside);
                let host = Link {
                    kind: "veth",
                    master: Some(bridge.clone()),
                    peer: Some((netns.clone(), peer.clone())),
                    mtu,
                    ..Default::default()
                };
                self.links.insert(name.clone(), host);
            }
            Op::VxlanAdd {
                name,
                vni,
                local,
                port,
                mac,
                mtu,
            } => {
                if self.links.contains_key(name) {
                    return Err(fail(format!("add vxlan {name}"), EEXIST));
                }
                let vxlan = ObservedVxlan {
                    vni: Some(*vni),
                    local: Some(*local),
                    port: Some(*port),
                    mtu: *mtu,
                    ..Default::default()
                };
                let link = Link {
                    kind: "vxlan",
                    mac: Some(*mac),
                    mtu: Some(*mtu),
                    vxlan: Some(vxlan),
                    ..Default::default()
                };
                self.links.insert(name.clone(), link);
            }
            Op::TxChecksumOff { link } => {
                self.link(&At::Host, link)?;
            }
            Op::OnlinkRouteAdd { destination, via, link } => {
                let added = self.entries(link)?.routes.insert((*destination, *via));
                if !added {
                    return Err(fail(format!("add route {destination}"), EEXIST));
                }
            }
            Op::OnlinkRouteDel { destination, via, link } => {
                self.entries(link)?.routes.remove(&(*destination, *via));
            }
            Op::NeighAdd { link, address, mac } => {
                let entries = self.entries(link)?;
                if entries.neighbours.iter().any(|(a, _)| a == address) {
                    return Err(fail(format!("add neighbour {address}"), EEXIST));
                }
                entries.neighbours.insert((*address, *mac));
            }
            Op::NeighDel { link, address } => self.entries(link)?.neighbours.retain(|(a, _)| a != address),
            Op::FdbAdd { link, mac, dst } => {
                if !self.entries(link)?.fdb.insert((*mac, *dst)) {
                    return Err(fail(format!("add fdb entry {mac}"), EEXIST));
                }
            }
            Op::FdbDel { link, mac, dst } => {
                self.entries(link)?.fdb.remove(&(*mac, *dst));
            }
            Op::LinkAlias { at, link, alias, .. } => self.link(at, link)?.alias = Some(alias.clone()),
            Op::LinkMtu { at, link, mtu } => self.link(at, link)?.mtu = Some(*mtu),
            Op::LinkUp { at, link } => {
                if let (At::Netns(ns), "lo") = (at, link.as_str()) {
                    let n = self.namespaces.get_mut(ns).ok_or_else(|| fail("find netns", ENOENT))?;
                    n.lo_up = true;
                } else {
                    self.link(at, link)?.up = true;
                }
            }
            Op::AddrAdd { at, link, cidr } => {
                let l = self.link(at, link)?;
                if l.addresses.contains(cidr) {
                    return Err(fail(format!("add address {cidr}"), EEXIST));
                }
                l.addresses.push(*cidr);
            }
            Op::DefaultRoute { at, gateway } => {
                let At::Netns(ns) = at else {
                    return Err(fail("the fake routes only inside namespaces", ENOENT));
                };
                let n = self.namespaces.get_mut(ns).ok_or_else(|| fail("find netns", ENOENT))?;
                if n.gateway.is_some() {
                    return Err(fail("add default route", EEXIST));
                }
                n.gateway = Some(*gateway);
            }
            Op::StopProcesses { .. } | Op::ResolvConf { .. } | Op::EtcNetnsDel { .. } | Op::NetnsNft { .. } => {}
            Op::BridgePortUp { link } => self.link(&At::Host, link)?.up = true,
            Op::LinkSetGroup { link, group } => {
                if let Some(l) = self.links.get_mut(link) {
                    l.group = *group;
                }
            }
            Op::LinkDelGroup { group, links } => {
                let members: Vec<String> = self
                    .links
                    .iter()
                    .filter(|(_, l)| l.group == *group)
                    .map(|(n, _)| n.clone())
                    .collect();
                let doomed = match plumb_core::ops::group_delete(&members, links) {
                    plumb_core::ops::GroupDelete::Whole => members,
                    plumb_core::ops::GroupDelete::Each(ours) => ours,
                };
                for name in doomed {
                    self.delete_host_link(&name);
                }
            }
            Op::NetnsDel { name } => {
                if self.namespaces.remove(name).is_some() {
                    let inside: Vec<String> = self
                        .links
                        .iter()
                        .filter(|(_, l)| l.peer.as_ref().is_some_and(|(ns, _)| ns == name))
                        .map(|(n, _)| n.clone())
                        .collect();
                    for link in inside {
                        self.links.remove(&link);
                    }
                }
            }
            Op::Nft { changes } => self.nft(changes)?,
            // Chaos objects live outside the stack's model: recorded, not simulated.
            Op::TcRedirect { dev, tap, .. } => self.link(&At::Host, dev)?.redirect = Some(tap.clone()),
            Op::TcClear { dev } => {
                if let Some(l) = self.links.get_mut(dev) {
                    l.redirect = None;
                }
            }
            Op::TapAdd { name, bridge, alias } => {
                if self.links.contains_key(name) {
                    return Err(fail(format!("create tap {name}"), EEXIST));
                }
                let tap = Link {
                    kind: "tun",
                    alias: Some(alias.clone()),
                    master: Some(bridge.clone()),
                    up: true,
                    ..Link::default()
                };
                self.links.insert(name.clone(), tap);
            }
            Op::LinkDel { name } => self.delete_host_link(name),
        }
        Ok(())
    }

    /// One transaction: every change or none.
    fn nft(&mut self, changes: &[NftChange]) -> KernelResult<()> {
        let mut tables = self.tables.clone();
        for change in changes {
            let table = change.table().clone();
            let exists = tables.contains_key(&table);
            match change {
                NftChange::Create { .. } if exists => return Err(fail(format!("create table {table}"), EEXIST)),
                NftChange::Update { .. } | NftChange::Elements { .. } if !exists => {
                    return Err(fail(format!("update table {table}"), ENOENT))
                }
                _ => {}
            }
            match change.result() {
                Some(ruleset) => tables.insert(table, ruleset.clone()),
                None => tables.remove(&table),
            };
        }
        self.tables = tables;
        self.nft_generation += 1;
        Ok(())
    }

    /// Edits a rule's expression behind plumb's back, keeping its comment (the table's shape
    /// stays the same; only its fingerprint tells).
    pub fn edit_a_rule(&mut self, table: &TableId) {
        let rule = self
            .tables
            .get_mut(table)
            .and_then(|t| t.chains.iter_mut().find_map(|c| c.rules.first_mut()));
        if let Some(rule) = rule {
            rule.expr = "accept".into();
        }
        self.nft_generation += 1;
    }

    /// Changes a table behind plumb's back, as another firewall manager would.
    pub fn tamper_with_table(&mut self, table: &TableId) {
        if let Some(t) = self.tables.get_mut(table) {
            t.chains.clear();
        }
        self.nft_generation += 1;
    }

    /// Changes a link's MTU behind plumb's back.
    pub fn set_mtu(&mut self, at: &At, link: &str, mtu: u32) {
        if let Ok(l) = self.link(at, link) {
            l.mtu = Some(mtu);
        }
    }

    /// A bridge plumb did not make, in interface group `group`.
    pub fn add_foreign_bridge(&mut self, name: &str, group: u32) {
        let link = Link {
            kind: "bridge",
            group,
            ..Link::default()
        };
        self.links.insert(name.to_string(), link);
    }

    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces.keys().cloned().collect()
    }

    pub fn link_names(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    pub fn table_names(&self) -> Vec<String> {
        self.tables.keys().map(|t| t.to_string()).collect()
    }
}

fn fingerprint(ruleset: &Ruleset) -> u64 {
    names::fnv1a(&[&ruleset.print()])
}

fn observed(l: &Link) -> ObservedLink {
    ObservedLink {
        alias: l.alias.clone(),
        mac: l.mac,
        master: l.master.clone(),
        up: l.up,
        addresses: l.addresses.clone(),
        mtu: l.mtu,
    }
}

impl Kernel for FakeKernel {
    fn apply(&mut self, op: &Op) -> KernelResult<()> {
        self.world().apply(op)
    }

    fn settle(&mut self) -> KernelResult<()> {
        Ok(())
    }

    fn worker(&self) -> KernelResult<Box<dyn Kernel>> {
        Ok(Box::new(self.clone()))
    }

    fn ip_forward(&mut self) -> KernelResult<bool> {
        Ok(self.world().ip_forward)
    }

    fn host_links(&mut self) -> KernelResult<Vec<HostLink>> {
        Ok(self
            .world()
            .links
            .iter()
            .map(|(name, l)| HostLink {
                name: name.clone(),
                kind: Some(l.kind.to_string()),
                group: l.group,
                link: observed(l),
            })
            .collect())
    }

    fn namespaces(&mut self) -> KernelResult<Vec<String>> {
        Ok(self.world().namespace_names())
    }

    fn netns_bound(&mut self, name: &str) -> KernelResult<bool> {
        Ok(self.world().namespaces.contains_key(name))
    }

    fn netns(&mut self, name: &str) -> KernelResult<Option<ObservedNetns>> {
        Ok(self.world().namespaces.get(name).map(|n| ObservedNetns {
            lo_up: n.lo_up,
            links: n.links.iter().map(|(k, l)| (k.clone(), observed(l))).collect(),
            default_gateway: n.gateway,
        }))
    }

    fn vxlan(&mut self, name: &str) -> KernelResult<Option<ObservedVxlan>> {
        let world = self.world();
        Ok(world.links.get(name).and_then(|l| {
            let mut v = l.vxlan.clone()?;
            v.link = observed(l);
            Some(v)
        }))
    }

    fn nft_generation(&mut self) -> KernelResult<Option<u32>> {
        Ok(Some(self.world().nft_generation))
    }

    fn host_routes(&mut self) -> KernelResult<Vec<HostRoute>> {
        // A route's link index is its position + 1 (see `link_name`).
        Ok((self.world().routes.iter().enumerate())
            .map(|(i, (destination, _))| HostRoute {
                destination: *destination,
                gateway: None,
                link_index: Some(i as u32 + 1),
            })
            .collect())
    }

    fn default_gateway(&mut self) -> KernelResult<Option<Ipv4Addr>> {
        Ok(None)
    }

    fn residents(&mut self, _: &std::collections::HashSet<u64>) -> BTreeMap<u64, Vec<plumb_core::kernel::Resident>> {
        // The fake runs no processes.
        BTreeMap::new()
    }

    fn link_name(&mut self, index: u32) -> KernelResult<Option<String>> {
        let world = self.world();
        Ok(index
            .checked_sub(1)
            .and_then(|i| world.routes.get(i as usize))
            .map(|(_, dev)| dev.clone()))
    }

    fn host_addresses(&mut self) -> KernelResult<Vec<Ipv4Addr>> {
        Ok(self.world().addresses.clone())
    }

    fn listeners(&mut self, transport: Transport, port: u16) -> KernelResult<Vec<Listener>> {
        Ok((self.world().listening.iter())
            .filter(|(t, _, p, _)| *t == transport && *p == port)
            .map(|(_, address, port, holder)| Listener {
                address: *address,
                port: *port,
                holders: vec![holder.clone()],
            })
            .collect())
    }

    fn link_counters(&mut self) -> KernelResult<BTreeMap<String, LinkCounters>> {
        Ok(self
            .world()
            .links
            .keys()
            .map(|n| (n.clone(), LinkCounters::default()))
            .collect())
    }

    fn sockets_in(&mut self, name: &str) -> KernelResult<Vec<SocketInfo>> {
        match self.world().namespaces.contains_key(name) {
            true => Ok(Vec::new()),
            false => Err(fail(format!("open namespace {name}"), ENOENT)),
        }
    }

    fn socket_holders(&mut self) -> BTreeMap<u64, Vec<(u32, String)>> {
        BTreeMap::new()
    }

    fn conntrack(&mut self) -> KernelResult<Vec<Flow>> {
        Ok(Vec::new())
    }

    fn nft_ruleset(&mut self) -> KernelResult<String> {
        Ok(r#"{"nftables": []}"#.to_string())
    }

    fn nft_tables(&mut self) -> KernelResult<Vec<(String, String)>> {
        Ok((self.world().tables.keys())
            .map(|t| (t.family.as_str().to_string(), t.name.clone()))
            .collect())
    }

    fn netns_inode(&mut self, name: &str) -> Option<u64> {
        let world = self.world();
        let position = world.namespaces.keys().position(|n| n == name)?;
        Some(position as u64 + 1)
    }

    fn in_netns(&mut self, name: &str, _: &mut dyn FnMut()) -> KernelResult<()> {
        // The fake has no namespaces a thread can enter.
        Err(fail(format!("enter namespace {name} (the fake kernel cannot)"), EINVAL))
    }

    fn enter_netns(&mut self, name: &str) -> KernelResult<()> {
        Err(fail(format!("enter namespace {name} (the fake kernel cannot)"), EINVAL))
    }

    fn bind_resolv_conf(&mut self, name: &str) -> KernelResult<()> {
        Err(fail(
            format!("bind the resolv.conf of {name} (the fake kernel cannot)"),
            EINVAL,
        ))
    }

    fn bind_probe(&mut self, name: &str, _udp: bool) -> KernelResult<Box<dyn plumb_core::kernel::Probe>> {
        Err(fail(
            format!("make a probe in {name} (the fake kernel sends no packets)"),
            EINVAL,
        ))
    }

    fn confine(
        &mut self,
        _: &mut std::process::Command,
        how: &plumb_core::kernel::Confinement,
    ) -> KernelResult<plumb_core::kernel::SpawnFailure> {
        Err(fail(
            format!("start a process in {} (the fake kernel runs none)", how.netns),
            EINVAL,
        ))
    }

    fn restrict(
        &mut self,
        _: &mut std::process::Command,
        _: Option<plumb_core::kernel::Identity>,
        _: &plumb_core::spec::Capabilities,
    ) -> KernelResult<()> {
        Err(fail("restrict a process (the fake kernel runs none)", EINVAL))
    }

    fn open_tap(&mut self, name: &str) -> KernelResult<std::os::fd::OwnedFd> {
        Err(fail(format!("open tap {name} (the fake kernel has none)"), EINVAL))
    }

    fn nft_table(&mut self, table: &TableId) -> KernelResult<Option<NftListing>> {
        self.world().nft_listings += 1;
        Ok(self.world().tables.get(table).map(|t| NftListing {
            fingerprint: fingerprint(t),
            shape: Some(t.shape()),
        }))
    }
}
