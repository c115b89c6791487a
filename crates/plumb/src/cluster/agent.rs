//! `plumb agent`: one host's member of the cluster. It registers the host under a lease it
//! keeps alive, watches the store, and on every change (and every second) reconciles:
//! places replicas (compare-and-swap, so every agent may and one wins), leases this host's
//! block of each overlay network it needs, makes the host match with the same code as
//! `plumb up` (given a host assignment), and publishes where its replicas run and whether
//! they are ready. A host that loses its lease (partitioned from the store longer than the
//! TTL) removes its replicas, which run elsewhere by then, and joins again when it can.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plumb_core::cluster::{self, HostAssignment, OverlayAssignment, VXLAN_OVERHEAD};
use plumb_core::kernel::Kernel;
use plumb_core::spec::{self, Parsed};

use super::keys;
use super::lease::LeaseClock;
use super::records::EtcdRecords;
use super::store::{Expect, Store};
use super::{EndpointRecord, HostRecord, HostReport, OffloadReport, SpecRecord, StackView, View};
use crate::commands::{down, require_nft, require_root, up, Context};
use crate::failure::{Failure, Result};
use crate::runfile;
use plumb_engine::state::StateStore;

pub struct Options {
    pub store: super::store::Access,
    pub name: Option<String>,
    /// An interface name or one of this host's addresses; default: the default route's link.
    pub underlay: Option<String>,
    pub ttl: Duration,
    /// Keep transmit checksum offload on the VXLAN devices.
    pub tx_offload: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn log(message: impl AsRef<str>) {
    eprintln!("plumb agent: {}", message.as_ref());
}

pub fn run(ctx: &Context, options: Options) -> Result<()> {
    require_root("agent")?;
    require_nft()?;
    let name = match options.name.clone() {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .map_err(|e| Failure::new(format!("cannot read the host name: {e}")))?
            .to_string_lossy()
            .into_owned(),
    };
    if !spec::valid_host_name(&name) {
        return Err(Failure::new(format!("{name:?} is not a usable host name"))
            .hint("pass --name with 1 to 63 letters, digits, '-', '_' or '.'")
            .code(2));
    }
    let ttl_secs = options.ttl.as_secs().max(1) as i64;
    let (underlay, mtu) = underlay(&mut crate::apply::kernel()?, options.underlay.as_deref())?;
    let (store, transport) = Store::connect(&options.store)?;
    if transport == super::store::Transport::Plain {
        // Loud: this is not a state to forget about.
        log(format!("WARNING: {} (--insecure)", super::store::PLAIN_WARNING));
    }
    for signal in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGINT] {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_stop),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic.
        unsafe { nix::sys::signal::sigaction(signal, &action) }
            .map_err(|e| Failure::new(format!("cannot handle {signal}: {e}")))?;
    }
    let record = HostRecord {
        name: name.clone(),
        underlay,
        mtu,
        since_ms: runfile::unix_ms(),
    };
    let (wake, woken) = mpsc::channel::<()>();
    let store = Arc::new(store);
    let records = EtcdRecords::new(store.clone(), &super::keys::records(&name));
    let mut agent = Agent {
        ctx,
        store,
        records,
        me: name,
        record,
        ttl: options.ttl.max(Duration::from_secs(1)),
        ttl_secs,
        lease: Arc::new(AtomicI64::new(0)),
        renewed: Arc::new(LeaseClock::default()),
        applied: BTreeMap::new(),
        tx_offload: options.tx_offload,
    };
    log(format!(
        "host {} (underlay {underlay}, mtu {mtu}) joining the store at {}",
        agent.me,
        agent.store.endpoints.join(",")
    ));
    let mut watching = false;
    while !STOP.load(Ordering::SeqCst) {
        if agent.lease.load(Ordering::SeqCst) == 0 {
            match agent.register() {
                Ok(revision) => {
                    if !watching {
                        let wake = wake.clone();
                        agent.store.watch(keys::ROOT, revision, move || {
                            let _ = wake.send(());
                        });
                        watching = true;
                    }
                }
                Err(e) => {
                    log(format!("cannot register: {e}"));
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
        }
        if agent.lease_lost() {
            log("lost the lease (cut off from the store longer than the TTL): removing this host's replicas, which run elsewhere now");
            agent.fence();
            agent.lease.store(0, Ordering::SeqCst);
            continue;
        }
        if let Err(e) = agent.reconcile() {
            log(format!("{e}"));
        }
        // Wait for a change, or a second (readiness and expiry are polled).
        let _ = woken.recv_timeout(Duration::from_secs(1));
        // Coalesce a burst of changes into one pass.
        std::thread::sleep(Duration::from_millis(50));
        while woken.try_recv().is_ok() {}
    }
    log("stopping: removing this host's replicas and leaving the cluster");
    agent.fence();
    let lease = agent.lease.load(Ordering::SeqCst);
    if lease != 0 {
        let _ = agent.store.revoke(lease);
    }
    Ok(())
}

struct Agent<'a> {
    ctx: &'a Context,
    store: Arc<Store>,
    /// This host's stack records, copied into the store after each change here (the
    /// engine's `StateStore` on etcd), so any host or operator reads what each host holds.
    records: EtcdRecords,
    me: String,
    record: HostRecord,
    ttl: Duration,
    ttl_secs: i64,
    /// The current lease (0: none).
    lease: Arc<AtomicI64>,
    /// When the store last renewed it (on the monotonic clock).
    renewed: Arc<LeaseClock>,
    /// Per stack: the spec text and assignment last made real here.
    applied: BTreeMap<String, (String, HostAssignment, Instant)>,
    tx_offload: bool,
}

impl Agent<'_> {
    /// Takes a lease, writes the host's record with it, moves keys this host still owns to
    /// it (an agent restarted within the TTL keeps its blocks), and keeps it alive.
    fn register(&mut self) -> Result<i64> {
        let lease = self.store.grant(self.ttl_secs)?;
        let key = keys::host(&self.me);
        let value = serde_json::to_string(&self.record).map_err(|e| Failure::new(e.to_string()))?;
        let snap = self.store.get_prefix(keys::ROOT)?;
        if let Some(old) = snap.entries.get(&key) {
            // Ours from before a restart, or another live agent with this name: wait out its
            // lease rather than take its place.
            let theirs: Option<HostRecord> = serde_json::from_str(&old.value).ok();
            if theirs.is_none_or(|t| t.underlay != self.record.underlay) {
                let _ = self.store.revoke(lease);
                return Err(Failure::new(format!(
                    "host name {} is taken by a live agent at another address",
                    self.me
                ))
                .hint("give this host another --name, or stop the other agent"));
            }
        }
        if !self.store.put_if(&[], &[(&key, &value)], Some(lease))? {
            return Err(Failure::new("the store refused the host record"));
        }
        for (k, entry) in &snap.entries {
            let mine = k.contains("/blocks/") && entry.value == self.me;
            if mine && entry.lease != lease {
                self.store.put_if(
                    &[(k, Expect::ModRevision(entry.mod_revision))],
                    &[(k, &entry.value)],
                    Some(lease),
                )?;
            }
        }
        self.lease.store(lease, Ordering::SeqCst);
        self.renewed.renewed();
        let (held, renewed) = (self.lease.clone(), self.renewed.clone());
        self.store.keep_alive(lease, self.ttl / 3, move |ttl| match ttl {
            _ if held.load(Ordering::SeqCst) != lease => false,
            Some(t) if t > 0 => {
                renewed.renewed();
                true
            }
            // The store says the lease is gone: make it look expired.
            Some(_) => {
                renewed.expire();
                true
            }
            None => true,
        });
        log(format!("registered with lease {lease:x} (TTL {} s)", self.ttl_secs));
        Ok(snap.revision)
    }

    fn lease_lost(&self) -> bool {
        self.renewed.lost(self.ttl)
    }

    /// Removes every cluster stack this host runs.
    fn fence(&mut self) {
        for stack in self.local_stacks() {
            if let Err(e) = down::run(self.ctx, &stack, down::Mode::Apply) {
                log(format!("removing {stack}: {e}"));
            }
        }
        self.applied.clear();
    }

    /// Cluster stacks this host has made (their state says which host made them).
    fn local_stacks(&self) -> Vec<String> {
        self.ctx
            .state
            .stacks()
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, st)| st.desired.as_ref().and_then(|d| d.host.as_deref()) == Some(self.me.as_str()))
            .map(|(name, _)| name)
            .collect()
    }

    fn reconcile(&mut self) -> Result<()> {
        let view = View::from_snapshot(&self.store.get_prefix(keys::ROOT)?);
        let lease = self.lease.load(Ordering::SeqCst);
        for (stack, sv) in &view.stacks {
            if let Some(why) = &sv.damaged {
                // Keep the last good state: nothing is removed or changed for a record that
                // cannot be read; it is said in the log and in this host's report.
                let message =
                    format!("stack {stack}: {why}; keeping what runs here until it is fixed (plumb deploy again)");
                let old = sv.reports.get(&self.me);
                if old.and_then(|r| r.error.as_ref()) != Some(&message) {
                    log(&message);
                }
                let (containers, peers, offload) = old
                    .map(|r| (r.containers, r.peers.clone(), r.offload.clone()))
                    .unwrap_or_default();
                self.report(stack, sv, containers, (peers, offload), Some(message), lease);
                continue;
            }
            let Some((spec, _)) = &sv.spec else { continue };
            if let Err(e) = self.reconcile_stack(stack, spec, sv, &view, lease) {
                log(format!("stack {stack}: {e}"));
                self.report(stack, sv, 0, Default::default(), Some(e.to_string()), lease);
            }
        }
        // Stacks undeployed (or never in the store) that this host still runs: remove them
        // and this host's keys under them.
        let deployed: BTreeSet<&String> = view
            .stacks
            .iter()
            .filter(|(_, s)| s.spec.is_some() || s.damaged.is_some())
            .map(|(n, _)| n)
            .collect();
        for stack in self.local_stacks() {
            if !deployed.contains(&stack) {
                log(format!("stack {stack} was undeployed: removing it here"));
                down::run(self.ctx, &stack, down::Mode::Apply)?;
                self.copy_record(&stack);
                self.applied.remove(&stack);
            }
        }
        for (stack, sv) in view
            .stacks
            .iter()
            .filter(|(_, s)| s.spec.is_none() && s.damaged.is_none())
        {
            self.forget(stack, sv)?;
        }
        // Copies of records whose stack is gone here while the store was out of reach (a
        // fenced host removes its stacks without reaching the store).
        let local: BTreeSet<String> = self.local_stacks().into_iter().collect();
        for stack in self
            .records
            .stacks()
            .map(|r| r.into_keys().collect())
            .unwrap_or_else(|_| Vec::new())
        {
            if !local.contains(&stack) {
                self.copy_record(&stack);
            }
        }
        Ok(())
    }

    /// Deletes this host's keys under an undeployed stack.
    fn forget(&self, stack: &str, sv: &StackView) -> Result<()> {
        for (net, blocks) in &sv.blocks {
            for (block, host) in blocks {
                if *host == self.me {
                    self.store.delete(&keys::block(stack, net, *block))?;
                }
            }
        }
        for (c, e) in &sv.endpoints {
            if e.host == self.me {
                self.store.delete(&keys::endpoint(stack, c))?;
            }
        }
        if sv.reports.contains_key(&self.me) {
            self.store.delete(&keys::report(stack, &self.me))?;
        }
        Ok(())
    }

    fn reconcile_stack(
        &mut self,
        stack: &str,
        spec: &SpecRecord,
        sv: &StackView,
        view: &View,
        lease: i64,
    ) -> Result<()> {
        let parsed = plumb_engine::stackfile::parse(&spec.file, &spec.text, &spec.dir, &Default::default())?;
        let placement = cluster::place(&parsed.stack, &view.alive(), &sv.placement);
        if placement != sv.placement {
            let value = serde_json::to_string(&placement).map_err(|e| Failure::new(e.to_string()))?;
            let key = keys::placement(stack);
            let won = self.store.put_if(
                &[(&key, Expect::ModRevision(sv.placement_revision))],
                &[(&key, &value)],
                None,
            )?;
            if won {
                let moved = placement
                    .iter()
                    .filter(|(c, h)| sv.placement.get(*c) != Some(h))
                    .count();
                log(format!("stack {stack}: placed {moved} replica(s)"));
            }
            // Either way the store has changed: the watch brings the next pass.
            return Ok(());
        }
        let here = |c: &String| placement.get(c) == Some(&self.me);
        let replicas: BTreeMap<String, BTreeSet<u32>> = parsed
            .stack
            .services
            .iter()
            .map(|(svc, spec)| {
                let mine = (1..=spec.replicas).filter(|r| here(&plumb_core::names::container(svc, *r)));
                (svc.clone(), mine.collect::<BTreeSet<u32>>())
            })
            .filter(|(_, mine)| !mine.is_empty())
            .collect();
        if replicas.is_empty() {
            if self.local_stacks().iter().any(|s| s == stack) {
                log(format!(
                    "stack {stack}: no replica placed here any more: removing it here"
                ));
                down::run(self.ctx, stack, down::Mode::Apply)?;
                self.copy_record(stack);
            }
            self.applied.remove(stack);
            self.publish(stack, sv, &BTreeMap::new(), lease)?;
            return Ok(());
        }
        let overlays = self.overlays(stack, &parsed, sv, &replicas, view, lease)?;
        let assignment = HostAssignment {
            host: self.me.clone(),
            replicas,
            overlays,
            remote: sv.remote(&self.me),
            base: Some(spec.dir.clone()),
            store: super::store_endpoints(&self.store.endpoints),
        };
        // Apply when anything changed, and every 30 s anyway (the kernel is checked again).
        let fresh = self.applied.get(stack).is_some_and(|(text, a, at)| {
            *text == spec.text && *a == assignment && at.elapsed() < Duration::from_secs(30)
        });
        if !fresh {
            // Through the engine, as `plumb up` does: the spec comes from the store, no file.
            up::bring_up(
                self.ctx,
                &parsed,
                spec.dir.clone(),
                None,
                Some(&assignment),
                up::Mode::Apply(up::Supervision::NoWait),
            )?;
            self.copy_record(stack);
            self.applied.insert(
                stack.to_string(),
                (spec.text.clone(), assignment.clone(), Instant::now()),
            );
        }
        let endpoints = self.endpoints(stack);
        self.publish(stack, sv, &endpoints, lease)?;
        let peers = assignment
            .overlays
            .iter()
            .map(|(n, o)| (n.clone(), o.peers.len()))
            .collect();
        self.report(stack, sv, endpoints.len(), (peers, self.offload(stack)), None, lease);
        Ok(())
    }

    /// What this host decided about each overlay's transmit checksum offload, as its state
    /// records it.
    fn offload(&self, stack: &str) -> BTreeMap<String, OffloadReport> {
        let Ok(Some(state)) = self.ctx.state.load(stack) else {
            return BTreeMap::new();
        };
        let Some(desired) = state.desired else {
            return BTreeMap::new();
        };
        desired
            .networks
            .iter()
            .filter_map(|n| {
                let o = n.overlay.as_ref()?;
                Some((
                    n.name.clone(),
                    OffloadReport {
                        kept: o.tx_offload,
                        why: o.tx_offload_why.clone(),
                    },
                ))
            })
            .collect()
    }

    /// This host's block of each overlay network its replicas join, leased when missing
    /// (create-if-absent: two hosts leasing at once never get the same block).
    fn overlays(
        &self,
        stack: &str,
        parsed: &Parsed,
        sv: &StackView,
        replicas: &BTreeMap<String, BTreeSet<u32>>,
        view: &View,
        lease: i64,
    ) -> Result<BTreeMap<String, OverlayAssignment>> {
        let joined: BTreeSet<&String> = replicas
            .keys()
            .filter_map(|s| parsed.stack.services.get(s))
            .flat_map(|s| s.networks.iter().map(|a| &a.network))
            .collect();
        let mut out = BTreeMap::new();
        for (name, net) in &parsed.stack.networks {
            let Some(o) = net.overlay else { continue };
            if !joined.contains(name) {
                continue;
            }
            let block = match sv.block_of(name, &self.me) {
                Some(b) => b,
                None => self.lease_block(stack, name, net.subnet, o.host_prefix, sv, lease)?,
            };
            out.insert(
                name.clone(),
                OverlayAssignment {
                    block,
                    local: self.record.underlay,
                    mtu: self.record.mtu.saturating_sub(VXLAN_OVERHEAD),
                    peers: sv.peers(name, &self.me, &view.hosts),
                    // Unless told to keep it, offload is decided where the host's NAT rules
                    // are read (`up::decide_offload`), each time the stack is applied.
                    tx_offload: self.tx_offload.then_some(true),
                    tx_offload_why: None,
                },
            );
        }
        Ok(out)
    }

    fn lease_block(
        &self,
        stack: &str,
        network: &str,
        subnet: ipnet::Ipv4Net,
        prefix: u8,
        sv: &StackView,
        lease: i64,
    ) -> Result<ipnet::Ipv4Net> {
        let mut taken: BTreeSet<ipnet::Ipv4Net> = sv
            .blocks
            .get(network)
            .map(|b| b.keys().copied().collect())
            .unwrap_or_default();
        for _ in 0..16 {
            let Some(block) = cluster::free_block(subnet, prefix, &taken) else {
                break;
            };
            let key = keys::block(stack, network, block);
            if self
                .store
                .put_if(&[(&key, Expect::Absent)], &[(&key, &self.me)], Some(lease))?
            {
                log(format!("stack {stack}: leased block {block} of network {network}"));
                return Ok(block);
            }
            // Another host took it at the same moment.
            taken.insert(block);
        }
        Err(Failure::new(format!(
            "network {network} ({subnet}) has no free /{prefix} block left for this host"
        ))
        .hint("give the overlay a larger subnet or a longer host_prefix"))
    }

    /// Copies this host's record of `stack` into the store (or removes it there once the
    /// stack is gone here). A failure is said, not fatal: the record on disk is the truth.
    fn copy_record(&self, stack: &str) {
        let copied = match self.ctx.state.load(stack) {
            Ok(Some(record)) => self.records.save(&record),
            Ok(None) => self.records.remove(stack),
            Err(e) => Err(e),
        };
        if let Err(e) = copied {
            log(format!("stack {stack}: copying its record to the store: {e}"));
        }
    }

    /// This host's replicas of `stack` as the store should show them.
    fn endpoints(&self, stack: &str) -> BTreeMap<String, EndpointRecord> {
        let Ok(Some(state)) = self.ctx.state.load(stack) else {
            return BTreeMap::new();
        };
        let Some(desired) = state.desired else {
            return BTreeMap::new();
        };
        let unready = runfile::read_status(&self.ctx.state.stack_dir(stack)).unready(&desired);
        desired
            .containers
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    EndpointRecord {
                        host: self.me.clone(),
                        service: c.service.clone(),
                        replica: c.replica,
                        addresses: c.interfaces.iter().map(|i| (i.network.clone(), i.address)).collect(),
                        ready: !unready.contains(&c.name),
                    },
                )
            })
            .collect()
    }

    /// Writes changed endpoints (with this host's lease, and only while the stack is
    /// deployed) and deletes this host's stale ones.
    fn publish(&self, stack: &str, sv: &StackView, mine: &BTreeMap<String, EndpointRecord>, lease: i64) -> Result<()> {
        for (c, e) in mine {
            if sv.endpoints.get(c) != Some(e) {
                self.put_while_deployed(stack, sv, &keys::endpoint(stack, c), e, lease)?;
            }
        }
        for (c, e) in &sv.endpoints {
            if e.host == self.me && !mine.contains_key(c) {
                self.store.delete(&keys::endpoint(stack, c))?;
            }
        }
        Ok(())
    }

    fn report(
        &self,
        stack: &str,
        sv: &StackView,
        containers: usize,
        (peers, offload): (BTreeMap<String, usize>, BTreeMap<String, OffloadReport>),
        error: Option<String>,
        lease: i64,
    ) {
        let old = sv.reports.get(&self.me);
        if old
            .is_some_and(|o| o.containers == containers && o.peers == peers && o.error == error && o.offload == offload)
        {
            return;
        }
        let report = HostReport {
            containers,
            peers,
            error,
            at_ms: runfile::unix_ms(),
            offload,
        };
        // A report is advice: one that cannot be written is written on a later pass.
        let _ = self.put_while_deployed(stack, sv, &keys::report(stack, &self.me), &report, lease);
    }

    /// Writes `value` at `key` with this host's lease, only if the stack's spec is still the
    /// one `sv` read (an undeploy meanwhile must not be followed by a stray key).
    fn put_while_deployed(
        &self,
        stack: &str,
        sv: &StackView,
        key: &str,
        value: &impl serde::Serialize,
        lease: i64,
    ) -> Result<bool> {
        let value = serde_json::to_string(value).map_err(|e| Failure::new(e.to_string()))?;
        let deployed = sv.spec_revision;
        self.store.put_if(
            &[(&keys::spec(stack), Expect::ModRevision(deployed))],
            &[(key, &value)],
            Some(lease),
        )
    }
}

/// This host's underlay address and its link's MTU: from `--underlay` (a link name or an
/// address of this host), else the link of the default route (the one whose connected
/// route holds its gateway).
fn underlay(kernel: &mut dyn Kernel, wanted: Option<&str>) -> Result<(Ipv4Addr, u32)> {
    let links = kernel.host_links()?;
    let wanted_ip = wanted.and_then(|w| w.parse::<Ipv4Addr>().ok());
    let name = match (wanted, wanted_ip) {
        (_, Some(ip)) => links
            .iter()
            .find(|l| l.link.addresses.iter().any(|a| a.addr() == ip))
            .map(|l| l.name.clone())
            .ok_or_else(|| {
                Failure::new(format!("{ip} is not an address of this host"))
                    .hint("pass --underlay with one of `ip -4 addr`'s addresses, or a link name")
            })?,
        (Some(w), None) => links
            .iter()
            .find(|l| l.name == w)
            .map(|l| l.name.clone())
            .ok_or_else(|| {
                Failure::new(format!("no link named {w:?} on this host"))
                    .hint("pass --underlay with a link name from `ip link`, or an address")
            })?,
        (None, None) => {
            let gateway = kernel.default_gateway()?;
            let index = match gateway {
                Some(gw) => (kernel.host_routes()?.into_iter())
                    .filter(|r| r.destination.contains(&gw))
                    .max_by_key(|r| r.destination.prefix_len())
                    .and_then(|r| r.link_index),
                None => None,
            };
            let name = match index {
                Some(i) => kernel.link_name(i)?,
                None => None,
            };
            name.ok_or_else(|| {
                Failure::new("this host has no default route to find its underlay by")
                    .hint("pass --underlay IFACE or --underlay ADDRESS")
            })?
        }
    };
    let link = links.iter().find(|l| l.name == name);
    let address = wanted_ip
        .or_else(|| link.and_then(|l| l.link.addresses.first()).map(|a| a.addr()))
        .ok_or_else(|| {
            Failure::new("the underlay link has no IPv4 address").hint("pass --underlay with an address of this host")
        })?;
    let mtu = link.and_then(|l| l.link.mtu).unwrap_or(1500);
    Ok((address, mtu))
}
