//! The real kernel behind plumb-core's [`Kernel`] trait: each [`Op`] has its one execution
//! here, with in-process netlink (a socket per namespace, opened once), sysctl writes and
//! `nft` transactions in the background.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use plumb_core::firewall::{self, shape_of_objects, tables_in_listing, NftChange, TableId};
use plumb_core::kernel::{
    Flow, HostLink, HostRoute, Kernel, KernelError, KernelResult, LinkCounters, Listener, NftListing, SocketInfo,
    Transport,
};
use plumb_core::names;
use plumb_core::ops::{group_delete, At, GroupDelete, Ipv6, Op};
use plumb_core::{ObservedLink, ObservedNetns, ObservedVxlan, OverlayEntries};

use crate::link::LinkRef;
use crate::netns::Home;
use crate::{addr, ethtool, link, neigh, netns, nft, nft_elements, route, sysctl, tap, tc, Error, Netlink};

pub struct LinuxKernel {
    home: Home,
    host: Netlink,
    /// Sockets inside container namespaces, by name, with the namespace's fd. A container's
    /// operations come together, so only the last few are kept (see `keep_inside`).
    inside: HashMap<String, (OwnedFd, Netlink)>,
    /// Bridge name → index (veths name their master by index).
    bridges: HashMap<String, u32>,
    /// The nft transaction running in the background.
    nft: Option<nft::Pending<()>>,
    /// A ruleset listing started by `prefetch_nft`.
    prefetched: Option<nft::Pending<String>>,
    /// The last ruleset listing, by table (forgotten when a transaction changes it).
    listed: Option<BTreeMap<TableId, Vec<serde_json::Value>>>,
    /// /run/netns is made a shared mount point once per handle.
    run_dir_ready: bool,
}

fn kernel_error(e: Error) -> KernelError {
    KernelError {
        errno: e.errno(),
        detail: e.source.to_string(),
        what: e.what,
    }
}

/// Absence is fine for the operations that delete or skip what is gone.
fn tolerate(result: crate::netlink::Result<()>, errno: Errno) -> crate::netlink::Result<()> {
    match result {
        Err(e) if e.errno() == Some(errno as i32) => Ok(()),
        other => other,
    }
}

impl LinuxKernel {
    pub fn new() -> KernelResult<Self> {
        Ok(LinuxKernel {
            home: Home::current().map_err(kernel_error)?,
            host: Netlink::open().map_err(kernel_error)?,
            inside: HashMap::new(),
            bridges: HashMap::new(),
            nft: None,
            prefetched: None,
            listed: None,
            run_dir_ready: false,
        })
    }

    fn socket(&mut self, at: &At) -> crate::netlink::Result<&mut Netlink> {
        match at {
            At::Host => Ok(&mut self.host),
            At::Netns(name) => {
                if !self.inside.contains_key(name) {
                    let fd = netns::open(name)?;
                    let nl = self.home.netlink_in(fd.as_fd())?;
                    self.keep_inside(name, fd, nl);
                }
                Ok(&mut self.inside.get_mut(name).expect("inserted above").1)
            }
        }
    }

    /// Remembers a namespace's socket, forgetting older ones first: a thousand open sockets
    /// (each with its 64 KiB buffer) would cost more than reopening the rare one needed again.
    fn keep_inside(&mut self, name: &str, fd: OwnedFd, nl: Netlink) {
        if self.inside.len() >= 4 {
            self.inside.clear();
        }
        self.inside.insert(name.to_string(), (fd, nl));
    }

    fn bridge_index(&mut self, name: &str) -> crate::netlink::Result<u32> {
        if let Some(i) = self.bridges.get(name) {
            return Ok(*i);
        }
        let index = link::index_of(&mut self.host, name)?;
        self.bridges.insert(name.to_string(), index);
        Ok(index)
    }

    fn execute(&mut self, op: &Op) -> crate::netlink::Result<()> {
        match op {
            Op::Sysctl { key, value } => sysctl::set(key, value),
            Op::NetnsAdd { name } => {
                if !self.run_dir_ready {
                    netns::prepare_run_dir()?;
                    self.run_dir_ready = true;
                }
                let created = netns::create(&self.home, name)?;
                self.keep_inside(name, created.fd, created.netlink);
                Ok(())
            }
            Op::NetnsAttach { name, path } => {
                if !self.run_dir_ready {
                    netns::prepare_run_dir()?;
                    self.run_dir_ready = true;
                }
                let attached = netns::attach(&self.home, name, std::path::Path::new(path))?;
                self.keep_inside(name, attached.fd, attached.netlink);
                Ok(())
            }
            Op::BridgeAdd { name, mac, mtu } => {
                link::create_bridge(&mut self.host, name, mac.octets(), *mtu)?;
                self.bridges.remove(name);
                Ok(())
            }
            Op::VethAdd {
                name,
                bridge,
                peer,
                netns: ns,
                peer_mac,
                mtu,
            } => {
                let master = self.bridge_index(bridge)?;
                self.socket(&At::Netns(ns.clone()))?;
                let fd = &self.inside[ns].0;
                let peer = (peer.as_str(), peer_mac.octets());
                link::create_veth(&mut self.host, name, master, peer, fd.as_fd(), *mtu)
            }
            Op::VxlanAdd {
                name,
                vni,
                local,
                port,
                mac,
                mtu,
            } => {
                let vxlan = link::Vxlan {
                    vni: *vni,
                    local: Some(*local),
                    port: Some(*port),
                    learning: false,
                    mac: mac.octets(),
                    mtu: *mtu,
                };
                link::create_vxlan(&mut self.host, name, &vxlan)
            }
            Op::TxChecksumOff { link: l } => ethtool::tx_checksum_off(l),
            Op::OnlinkRouteAdd {
                destination,
                via,
                link: l,
            } => {
                let index = link::index_of(&mut self.host, l)?;
                route::add_onlink(&mut self.host, *destination, *via, index)
            }
            Op::OnlinkRouteDel {
                destination,
                via,
                link: l,
            } => {
                let Some(index) = self.index_if_present(l)? else {
                    return Ok(());
                };
                tolerate(
                    route::delete_via(&mut self.host, *destination, *via, index),
                    Errno::ESRCH,
                )
            }
            Op::NeighAdd { link: l, address, mac } => {
                let index = link::index_of(&mut self.host, l)?;
                neigh::add_permanent(&mut self.host, index, *address, mac.octets())
            }
            Op::NeighDel { link: l, address } => {
                let Some(index) = self.index_if_present(l)? else {
                    return Ok(());
                };
                tolerate(neigh::delete(&mut self.host, index, *address), Errno::ENOENT)
            }
            Op::FdbAdd { link: l, mac, dst } => {
                let index = link::index_of(&mut self.host, l)?;
                neigh::fdb_add(&mut self.host, index, mac.octets(), *dst)
            }
            Op::FdbDel { link: l, mac, dst } => {
                let Some(index) = self.index_if_present(l)? else {
                    return Ok(());
                };
                tolerate(
                    neigh::fdb_delete(&mut self.host, index, mac.octets(), *dst),
                    Errno::ENOENT,
                )
            }
            Op::LinkAlias {
                at,
                link: l,
                alias,
                ipv6,
            } => {
                let nl = self.socket(at)?;
                match ipv6 {
                    Ipv6::Keep => link::set_alias(nl, LinkRef::Name(l), alias),
                    Ipv6::NoAddresses => link::set_alias_without_ipv6(nl, LinkRef::Name(l), alias),
                }
            }
            Op::LinkUp { at, link: l } => link::set_up(self.socket(at)?, LinkRef::Name(l)),
            Op::LinkMtu { at, link: l, mtu } => link::set_mtu(self.socket(at)?, LinkRef::Name(l), *mtu),
            Op::BridgePortUp { link: l } => link::set_port_up_with_hairpin(&mut self.host, LinkRef::Name(l)),
            Op::AddrAdd { at, link: l, cidr } => {
                let nl = self.socket(at)?;
                let index = link::index_of(nl, l)?;
                addr::add_v4(nl, index, *cidr)
            }
            Op::DefaultRoute { at, gateway } => route::add_default_v4(self.socket(at)?, *gateway),
            Op::StopProcesses { namespaces, grace_ms } => {
                netns::end_processes(namespaces.iter().map(String::as_str), Duration::from_millis(*grace_ms));
                Ok(())
            }
            Op::LinkSetGroup { link: l, group } => {
                tolerate(link::set_group(&mut self.host, LinkRef::Name(l), *group), Errno::ENODEV)
            }
            Op::LinkDelGroup { group, links } => self.delete_group(*group, links),
            Op::NetnsDel { name } => {
                self.inside.remove(name);
                netns::delete(name)
            }
            Op::ResolvConf { netns: ns, content } => netns::write_resolv_conf(ns, content),
            Op::NetnsNft { netns: ns, script } => nft::apply_in(ns, script),
            Op::EtcNetnsDel { netns: ns } => netns::remove_etc(ns),
            Op::Nft { changes } => {
                // One transaction at a time: the previous one completes first.
                if let Some(pending) = self.nft.take() {
                    pending.wait()?;
                }
                self.listed = None;
                // Element edits alone go over netlink, now: no `nft` process, no ruleset read.
                match element_batch(changes) {
                    Some(mut batch) => batch.send(),
                    None => {
                        self.nft = Some(nft::apply(firewall::transaction(changes)));
                        Ok(())
                    }
                }
            }
            // What `Op::tool_commands` renders, one request for each command.
            Op::TapAdd { name, bridge, alias } => {
                tap::create_persistent(name).map_err(|e| Error::new(format!("create tap {name}"), e))?;
                let master = self.bridge_index(bridge)?;
                link::set_alias_and_master(&mut self.host, LinkRef::Name(name), alias, master)?;
                link::set_port_quiet(&mut self.host, LinkRef::Name(name))?;
                link::set_up(&mut self.host, LinkRef::Name(name))
            }
            Op::TcRedirect { dev, tap, to } => {
                let index = link::index_of(&mut self.host, dev)?;
                let tap = link::index_of(&mut self.host, tap)?;
                tc::add_clsact(&mut self.host, index)?;
                if to.is_empty() {
                    tc::add_redirect(&mut self.host, index, tap, None)?;
                }
                for ip in to {
                    tc::add_redirect(&mut self.host, index, tap, Some(*ip))?;
                }
                Ok(())
            }
            Op::LinkDel { name } => tolerate(link::delete(&mut self.host, name), Errno::ENODEV),
            Op::TcClear { dev } => {
                // As the script's `2>/dev/null || true`: no link, or no qdisc, is done.
                if let Ok(index) = link::index_of(&mut self.host, dev) {
                    let _ = tc::delete_clsact(&mut self.host, index);
                }
                Ok(())
            }
        }
    }

    /// A host link's index; `None` if it is gone (removing its entries is then done).
    fn index_if_present(&mut self, name: &str) -> crate::netlink::Result<Option<u32>> {
        match link::index_of(&mut self.host, name) {
            Err(e) if e.errno() == Some(Errno::ENODEV as i32) => Ok(None),
            other => other.map(Some),
        }
    }

    /// A VXLAN device with its settings and entries.
    fn read_vxlan(&mut self, name: &str) -> crate::netlink::Result<Option<ObservedVxlan>> {
        let Some((index, v)) = link::vxlan(&mut self.host, name)? else {
            return Ok(None);
        };
        let l = link::get(&mut self.host, LinkRef::Index(index))?;
        let addresses = addr::list_v4(&mut self.host)?
            .into_iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, a)| a)
            .collect();
        let entries = OverlayEntries {
            routes: route::via_link(&mut self.host, index)?.into_iter().collect(),
            neighbours: neigh::permanent(&mut self.host, index)?.into_iter().collect(),
            fdb: neigh::fdb(&mut self.host, index)?.into_iter().collect(),
        };
        Ok(Some(ObservedVxlan {
            link: ObservedLink {
                alias: l.alias,
                mac: l.mac,
                master: None,
                up: l.up,
                addresses,
                mtu: l.mtu,
            },
            vni: Some(v.vni),
            local: v.local,
            port: v.port,
            learning: v.learning,
            mtu: v.mtu,
            tx_checksum: ethtool::tx_checksum(name)?,
            entries,
        }))
    }

    /// Deletes the group in one request, unless a link this plan does not name is in it
    /// (someone else's group with the same number): then only the named links, one by one
    /// ([`group_delete`], as the script and the fake do).
    fn delete_group(&mut self, group: u32, links: &[String]) -> crate::netlink::Result<()> {
        let members: Vec<link::Link> = link::list(&mut self.host)?
            .into_iter()
            .filter(|l| l.group == group)
            .collect();
        for l in &members {
            if l.kind.as_deref() == Some("bridge") {
                self.bridges.remove(&l.name);
            }
        }
        let names: Vec<String> = members.into_iter().map(|l| l.name).collect();
        match group_delete(&names, links) {
            GroupDelete::Whole => tolerate(link::delete_group(&mut self.host, group), Errno::ENODEV),
            GroupDelete::Each(ours) => {
                for name in &ours {
                    tolerate(link::delete(&mut self.host, name), Errno::ENODEV)?;
                }
                Ok(())
            }
        }
    }
}

/// The changes as one netlink batch, if they are element edits only and netlink can encode
/// them.
fn element_batch(changes: &[NftChange]) -> Option<nft_elements::Batch> {
    let tables: Vec<nft_elements::TableEdits> = changes
        .iter()
        .map(|c| match c {
            NftChange::Elements { ruleset, edits } => Some((&ruleset.table, edits.as_slice())),
            _ => None,
        })
        .collect::<Option<_>>()?;
    nft_elements::Batch::encode(&tables).ok()
}

/// Fingerprint of nft's JSON listing of a table (without its run-time state: see
/// `firewall::without_runtime_state`).
pub fn listing_fingerprint(listing: &str) -> u64 {
    names::fnv1a(&[listing])
}

impl Kernel for LinuxKernel {
    fn apply(&mut self, op: &Op) -> KernelResult<()> {
        self.execute(op).map_err(kernel_error)
    }

    fn settle(&mut self) -> KernelResult<()> {
        match self.nft.take() {
            Some(pending) => pending.wait().map_err(kernel_error),
            None => Ok(()),
        }
    }

    fn worker(&self) -> KernelResult<Box<dyn Kernel>> {
        Ok(Box::new(LinuxKernel::new()?))
    }

    fn ip_forward(&mut self) -> KernelResult<bool> {
        Ok(sysctl::get("net.ipv4.ip_forward").map_err(kernel_error)? == "1")
    }

    fn host_links(&mut self) -> KernelResult<Vec<HostLink>> {
        let links = link::list(&mut self.host).map_err(kernel_error)?;
        let mut addresses = addresses_by_index(addr::list_v4(&mut self.host).map_err(kernel_error)?);
        let names: HashMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
        Ok(links
            .into_iter()
            .map(|l| HostLink {
                link: ObservedLink {
                    mac: l.mac,
                    alias: l.alias,
                    master: l.master.and_then(|m| names.get(&m).cloned()),
                    up: l.up,
                    addresses: addresses.remove(&l.index).unwrap_or_default(),
                    mtu: l.mtu,
                },
                name: l.name,
                kind: l.kind,
                group: l.group,
            })
            .collect())
    }

    fn namespaces(&mut self) -> KernelResult<Vec<String>> {
        netns::list().map_err(kernel_error)
    }

    fn netns_bound(&mut self, name: &str) -> KernelResult<bool> {
        Ok(netns::is_bound(name))
    }

    fn netns(&mut self, name: &str) -> KernelResult<Option<ObservedNetns>> {
        let Ok(fd) = netns::open(name) else {
            return Ok(None);
        };
        // A name with nothing mounted on it cannot be entered.
        let Ok(mut nl) = self.home.netlink_in(fd.as_fd()) else {
            return Ok(None);
        };
        observe_netns(&mut nl).map(Some).map_err(kernel_error)
    }

    fn vxlan(&mut self, name: &str) -> KernelResult<Option<ObservedVxlan>> {
        self.read_vxlan(name).map_err(kernel_error)
    }

    fn nft_table(&mut self, table: &TableId) -> KernelResult<Option<NftListing>> {
        if self.listed.is_none() {
            let json = match self.prefetched.take() {
                Some(pending) => pending.wait(),
                None => nft::list_ruleset(),
            }
            .map_err(kernel_error)?;
            let tables = tables_in_listing(&json).ok_or_else(|| KernelError {
                what: "read the nftables ruleset".into(),
                detail: "`nft -j list ruleset` printed something that is not nft's JSON".into(),
                errno: None,
            })?;
            self.listed = Some(tables);
        }
        let objects = self.listed.as_ref().and_then(|t| t.get(table));
        Ok(objects.map(|objects| NftListing {
            fingerprint: listing_fingerprint(
                &serde_json::to_string(&firewall::without_runtime_state(objects)).unwrap_or_default(),
            ),
            shape: shape_of_objects(objects),
        }))
    }

    fn nft_generation(&mut self) -> KernelResult<Option<u32>> {
        nft_elements::generation().map(Some).map_err(kernel_error)
    }

    fn host_routes(&mut self) -> KernelResult<Vec<HostRoute>> {
        let routes = route::list_v4(&mut self.host).map_err(kernel_error)?;
        Ok(routes
            .into_iter()
            .map(|(destination, link_index)| HostRoute {
                destination,
                gateway: None,
                link_index,
            })
            .collect())
    }

    fn default_gateway(&mut self) -> KernelResult<Option<std::net::Ipv4Addr>> {
        route::default_gateway_v4(&mut self.host).map_err(kernel_error)
    }

    fn residents(
        &mut self,
        inodes: &std::collections::HashSet<u64>,
    ) -> BTreeMap<u64, Vec<plumb_core::kernel::Resident>> {
        netns::residents(inodes)
    }

    fn link_name(&mut self, index: u32) -> KernelResult<Option<String>> {
        match link::get(&mut self.host, LinkRef::Index(index)) {
            Ok(l) => Ok(Some(l.name)),
            Err(e) if e.errno() == Some(Errno::ENODEV as i32) => Ok(None),
            Err(e) => Err(kernel_error(e)),
        }
    }

    fn host_addresses(&mut self) -> KernelResult<Vec<std::net::Ipv4Addr>> {
        let list = addr::list_v4(&mut self.host).map_err(kernel_error)?;
        Ok(list.into_iter().map(|(_, net)| net.addr()).collect())
    }

    fn listeners(&mut self, transport: Transport, port: u16) -> KernelResult<Vec<Listener>> {
        crate::sockets::listeners(transport, port).map_err(kernel_error)
    }

    fn link_counters(&mut self) -> KernelResult<BTreeMap<String, LinkCounters>> {
        link::counters(&mut self.host).map_err(kernel_error)
    }

    fn sockets_in(&mut self, name: &str) -> KernelResult<Vec<SocketInfo>> {
        let fd = netns::open(name).map_err(kernel_error)?;
        self.home
            .within(fd.as_fd(), crate::sockets::all)
            .and_then(|r| r)
            .map_err(kernel_error)
    }

    fn socket_holders(&mut self) -> BTreeMap<u64, Vec<(u32, String)>> {
        crate::sockets::holders().into_iter().collect()
    }

    fn conntrack(&mut self) -> KernelResult<Vec<Flow>> {
        Ok(crate::conntrack::flows())
    }

    fn nft_ruleset(&mut self) -> KernelResult<String> {
        nft::list_ruleset().map_err(kernel_error)
    }

    fn nft_tables(&mut self) -> KernelResult<Vec<(String, String)>> {
        nft::list_tables().map_err(kernel_error)
    }

    fn netns_inode(&mut self, name: &str) -> Option<u64> {
        netns::inode(name)
    }

    fn in_netns(&mut self, name: &str, f: &mut dyn FnMut()) -> KernelResult<()> {
        let fd = netns::open(name).map_err(kernel_error)?;
        self.home.within(fd.as_fd(), f).map_err(kernel_error)
    }

    fn enter_netns(&mut self, name: &str) -> KernelResult<()> {
        let fd = netns::open(name).map_err(kernel_error)?;
        netns::enter(fd.as_fd()).map_err(kernel_error)
    }

    fn bind_resolv_conf(&mut self, name: &str) -> KernelResult<()> {
        netns::bind_resolv_conf(name).map_err(kernel_error)
    }

    fn bind_probe(&mut self, name: &str, udp: bool) -> KernelResult<Box<dyn plumb_core::kernel::Probe>> {
        let fd = netns::open(name).map_err(kernel_error)?;
        let probe = self
            .home
            .within(fd.as_fd(), || crate::probe::Probe::bind(udp))
            .and_then(|r| r)
            .map_err(kernel_error)?;
        Ok(Box::new(probe))
    }

    fn confine(
        &mut self,
        command: &mut std::process::Command,
        how: &plumb_core::kernel::Confinement,
    ) -> KernelResult<plumb_core::kernel::SpawnFailure> {
        let fd = netns::open(how.netns).map_err(kernel_error)?;
        let resolv_conf = netns::resolv_conf_path(how.netns);
        let files = crate::spawn::EtcFiles {
            hosts: how.hosts,
            resolv_conf: how.resolv_conf.then_some(resolv_conf.as_path()),
        };
        let cgroup = match how.cgroup {
            Some((path, limits)) => crate::cgroup::procs_files(path, limits).map_err(|e| KernelError {
                what: format!("open the cgroup of {path}"),
                detail: e.to_string(),
                errno: e.raw_os_error(),
            })?,
            None => Vec::new(),
        };
        let confined = crate::spawn::confine(command, fd, how.hostname, files, how.identity, how.capabilities, cgroup)
            .map_err(|e| KernelError {
                what: format!("prepare a process for {}", how.netns),
                detail: e.to_string(),
                errno: e.raw_os_error(),
            })?;
        Ok(Box::new(move |program, err| confined.explain(program, err)))
    }

    fn cgroup_join(
        &mut self,
        command: &mut std::process::Command,
        path: &str,
        limits: &plumb_core::cgroup::Limits,
    ) -> KernelResult<()> {
        let procs = crate::cgroup::procs_files(path, limits).map_err(|e| KernelError {
            what: format!("open the cgroup of {path}"),
            detail: e.to_string(),
            errno: e.raw_os_error(),
        })?;
        crate::spawn::join_cgroup(command, procs);
        Ok(())
    }

    fn cgroup_unenforceable(&mut self, limits: &plumb_core::cgroup::Limits) -> Option<String> {
        crate::cgroup::unenforceable(limits)
    }

    fn cgroup_make(&mut self, path: &str, limits: &plumb_core::cgroup::Limits) -> KernelResult<()> {
        crate::cgroup::make(path, limits).map_err(|e| KernelError {
            what: format!("make the cgroup of {path}"),
            detail: e.to_string(),
            errno: e.raw_os_error(),
        })
    }

    fn cgroup_usage(&mut self, path: &str) -> Option<plumb_core::cgroup::Usage> {
        crate::cgroup::usage(path)
    }

    fn cgroup_pids(&mut self, path: &str) -> Vec<i32> {
        crate::cgroup::pids(path)
    }

    fn cgroup_remove(&mut self, path: &str) -> KernelResult<()> {
        crate::cgroup::remove(path).map_err(|e| KernelError {
            what: format!("remove the cgroup of {path}"),
            detail: e.to_string(),
            errno: e.raw_os_error(),
        })
    }

    fn cgroup_remove_tree(&mut self, path: &str) {
        crate::cgroup::remove_tree(path)
    }

    fn cgroup_children(&mut self, path: &str) -> Vec<String> {
        crate::cgroup::children(path)
    }

    fn restrict(
        &mut self,
        command: &mut std::process::Command,
        identity: Option<plumb_core::kernel::Identity>,
        capabilities: &plumb_core::spec::Capabilities,
    ) -> KernelResult<()> {
        crate::spawn::restrict(command, identity, capabilities).map_err(|e| KernelError {
            what: "restrict a process's privileges".into(),
            detail: e.to_string(),
            errno: e.raw_os_error(),
        })
    }

    fn open_tap(&mut self, name: &str) -> KernelResult<std::os::fd::OwnedFd> {
        crate::tap::open(name).map_err(|e| KernelError {
            what: format!("open tap {name}"),
            detail: e.to_string(),
            errno: e.raw_os_error(),
        })
    }

    fn prefetch_nft(&mut self) {
        // One listing serves every table.
        if self.prefetched.is_none() && self.listed.is_none() {
            self.prefetched = Some(nft::start_list_ruleset());
        }
    }

    fn iptables_legacy_tables(&mut self) -> KernelResult<Vec<String>> {
        match std::fs::read_to_string("/proc/net/ip_tables_names") {
            Ok(text) => Ok(text.lines().map(str::to_string).collect()),
            // No ip_tables in this kernel (or not loaded): no legacy table.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(KernelError {
                what: "read /proc/net/ip_tables_names".into(),
                detail: e.to_string(),
                errno: e.raw_os_error(),
            }),
        }
    }
}

/// Links, addresses and default route inside one namespace.
pub fn observe_netns(nl: &mut Netlink) -> crate::netlink::Result<ObservedNetns> {
    let links = link::list(nl)?;
    let mut addresses = addresses_by_index(addr::list_v4(nl)?);
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
            mac: l.mac,
            alias: l.alias,
            master: None,
            up: l.up,
            addresses: addresses.remove(&l.index).unwrap_or_default(),
            mtu: l.mtu,
        };
        ns.links.insert(l.name, observed);
    }
    Ok(ns)
}

fn addresses_by_index(list: Vec<(u32, ipnet::Ipv4Net)>) -> HashMap<u32, Vec<ipnet::Ipv4Net>> {
    let mut out: HashMap<u32, Vec<ipnet::Ipv4Net>> = HashMap::new();
    for (index, net) in list {
        out.entry(index).or_default().push(net);
    }
    out
}
