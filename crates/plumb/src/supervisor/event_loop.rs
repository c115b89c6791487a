//! The supervisor's event loop: one thread waiting on a signalfd (SIGCHLD, SIGHUP for a new
//! `run.json`, SIGTERM/SIGINT to stop), the processes' output pipes, the probes' wake pipe and
//! the stack's socket (which makes this supervisor the stack's only one, and answers who asks
//! with a report). Each event becomes a replica transition; the loop carries out what the
//! transition asks. Whatever a replica leaves in its container (a daemon) is ended before it
//! starts again and when it stops (sweeps).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::{umask, Mode};
use plumb_core::firewall::{ElementEdit, NftChange, Ruleset, TableId};
use plumb_core::kernel::Kernel;
use plumb_core::services::RunSpec;
use plumb_core::Op;

use super::autoscaler::{Autoscaling, Running};
use super::balancer::Balancer;
use super::dns::Dns;
use super::hosts;
use super::logs::{LogWriter, Pipes};
use super::metrics;
use super::plan::{self, Change};
use super::probe::Probes;
use super::replica::{dependencies_ready, AfterExit, AfterStop, Due, Replica, StopStep, Verdict};
use super::spawn::{self, signal_each, signal_group, spawn_replica, spawn_sidecar};
use super::status;
use crate::census;
use crate::events;
use crate::failure::{Failure, Result};
use crate::runfile::{self, Exit, ReplicaState, StatusFile};
use crate::state::{create_private_dir, HOSTS_DIR};
use crate::supervisor_socket::{Listener, Report};

/// The loop wakes at least this often, whatever is due.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// While a sweep runs, the loop looks this often whether its processes are gone (they are not
/// its children: their end sends no signal).
const SWEEP_POLL: Duration = Duration::from_millis(100);
/// A process still there this long after SIGKILL is signalled again ...
const KILL_RECHECK: Duration = Duration::from_secs(1);
/// ... this many times; then the sweep gives up (the process is stuck in the kernel).
const KILL_ROUNDS: u32 = 3;

/// A replica with what the loop holds for it: its process and its log.
struct Slot {
    replica: Replica,
    /// Some exactly while `replica.has_process()`.
    child: Option<Child>,
    log: LogWriter,
    /// The OOM kills its cgroup has counted that were already told (None: no cgroup).
    oom_kills_seen: Option<u64>,
    /// The OOM killer ended a process of its cgroup since its process started.
    oom_in_run: bool,
    /// The limits its cgroup was made with (for the event's words).
    memory_limit: Option<u64>,
    /// A meshed replica's sidecar proxy: it runs while the replica's process does.
    sidecar: Option<Child>,
    /// When the sidecar was last started (one that keeps dying is started at most once a
    /// second).
    sidecar_started: Option<Instant>,
}

impl Slot {
    /// Lets the sidecar go (it exits on SIGTERM); `orphans` keeps it until it is reaped.
    fn end_sidecar(&mut self, orphans: &mut Vec<Child>) {
        if let Some(mut sidecar) = self.sidecar.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(sidecar.id() as i32), Signal::SIGTERM);
            if !matches!(sidecar.try_wait(), Ok(Some(_))) {
                orphans.push(sidecar);
            }
        }
    }
}

/// Ending the processes a replica's container holds that are not the replica's own process
/// tree (a daemon its service left behind): SIGTERM, then SIGKILL once the service's stop grace
/// period has passed. Until its container is clear, the replica does not start.
struct Sweep {
    netns: String,
    grace: Duration,
    /// When SIGKILL is due; None until the first census has found something and sent SIGTERM.
    deadline: Option<Instant>,
    kills: u32,
}

impl Sweep {
    fn of(spec: &RunSpec) -> Self {
        Sweep {
            netns: spec.netns.clone(),
            grace: Duration::from_millis(spec.stop_grace_ms),
            deadline: None,
            kills: 0,
        }
    }
}

pub struct Supervisor {
    /// The stack's DNS server (its own threads). First: it stops (its sockets close) before
    /// the stack's socket does, so when `down` sees the supervisor gone, port 53 is free.
    dns: Dns,
    dir: PathBuf,
    /// The stack's name (its state folder's), for events.
    stack: String,
    /// The generation of `run.json` applied.
    generation: u64,
    slots: BTreeMap<String, Slot>,
    pipes: Pipes,
    signals: SignalFd,
    probes: Probes,
    /// Held while this supervisor runs: no other can start for the stack.
    socket: Listener,
    /// Containers being cleared of what their replica left, by container name.
    sweeps: BTreeMap<String, Sweep>,
    shutting_down: bool,
    /// Something changed since `status.json` was written.
    dirty: bool,
    /// Unix milliseconds of the last successful write of `status.json`.
    status_written_ms: Option<u64>,
    /// The virtual IPs' port chains, following readiness.
    balancer: Balancer,
    /// The Prometheus endpoint, when the stack file asks for one.
    metrics: Option<metrics::Server>,
    /// The last probe's duration per container, for the metrics.
    probe_times: metrics::ProbeTimes,
    /// Why the last write of `status.json` failed (cleared by the next that succeeds).
    status_error: Option<String>,
    /// When expired faults were last looked for.
    faults_checked: Option<Instant>,
    /// When the replicas' OOM counts were last read.
    oom_checked: Option<Instant>,
    /// The kernel: processes started in containers, the balancer's element changes, sweeps.
    kernel: Box<dyn Kernel>,
    /// The replicas' cgroups made so far, removed when the supervisor ends.
    cgroups: BTreeSet<String>,
    /// Replicas on their way out (`run.json`'s `draining`): out of the VIPs and DNS.
    draining: BTreeSet<String>,
    /// The autoscaled services' controller.
    autoscaling: Autoscaling,
    /// Sidecars let go of (their replica stopped or went), until they are reaped.
    orphans: Vec<Child>,
    /// The OTLP/HTTP receiver keeping the stack's traces (a meshed stack without a collector).
    receiver: Option<crate::traces::Receiver>,
    /// Replicas some sidecar has ejected (failures in a row): out of the VIP's ready set too,
    /// and when they were last looked for.
    ejected: BTreeSet<String>,
    ejections_checked: Option<Instant>,
}

impl Supervisor {
    /// Prepares a supervisor for the stack whose state folder is `dir`. Blocks the signals it
    /// handles; call from the main thread before any other thread starts. `startup_lock` (the
    /// state directory's lock, inherited from the `up` that started it) is let go once the
    /// socket is bound and the signals are blocked: from then on the next command finds this
    /// supervisor, and what it sends is read in turn (see `processes::hand_over`).
    pub fn new(dir: &Path, startup_lock: Option<OwnedFd>) -> Result<Self> {
        // What the supervisor writes (status, logs) is for its owner's eyes only.
        umask(Mode::from_bits_truncate(0o077));
        // First of all: a second supervisor of the stack stops here, before it touches anything.
        let socket = Listener::bind(dir)?;
        let mut mask = SigSet::empty();
        for s in [Signal::SIGCHLD, Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT] {
            mask.add(s);
        }
        mask.thread_block()
            .map_err(|e| Failure::new(format!("cannot block signals: {e}")))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| Failure::new(format!("signalfd: {e}")))?;
        drop(startup_lock);
        create_private_dir(&runfile::logs_dir(dir))?;
        // After the signals are blocked: its threads inherit the mask, so they never take one.
        let dns = Dns::start();
        let kernel = Box::new(crate::apply::kernel()?);
        let stack = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Supervisor {
            kernel,
            dir: dir.to_path_buf(),
            autoscaling: Autoscaling::new(dir, &stack),
            draining: BTreeSet::new(),
            stack,
            generation: 0,
            slots: BTreeMap::new(),
            pipes: Pipes::default(),
            signals,
            probes: Probes::new()?,
            socket,
            sweeps: BTreeMap::new(),
            shutting_down: false,
            dirty: true,
            status_written_ms: None,
            status_error: None,
            faults_checked: None,
            oom_checked: None,
            balancer: Balancer::default(),
            metrics: None,
            probe_times: metrics::ProbeTimes::default(),
            dns,
            cgroups: BTreeSet::new(),
            orphans: Vec::new(),
            receiver: None,
            ejected: BTreeSet::new(),
            ejections_checked: None,
        })
    }

    /// Runs until asked to stop (SIGTERM or SIGINT), then stops every process and returns.
    pub fn run(mut self) -> Result<()> {
        self.kill_orphans();
        self.reload(Instant::now());
        loop {
            let now = Instant::now();
            self.tick(now);
            if self.shutting_down
                && self.slots.values().all(|s| s.child.is_none() && s.sidecar.is_none())
                && self.orphans.is_empty()
                && self.sweeps.is_empty()
            {
                break;
            }
            if self.dirty {
                // Every readiness change (start, exit, health verdict, stop) marks the status
                // dirty: the load balancer and the DNS answers follow it here, before
                // `status.json` says so.
                self.readiness_changed();
                self.write_status();
            }
            self.dns.keep_listening();
            self.end_expired_faults(now);
            self.watch_oom_kills(now);
            self.autoscale(now);
            self.follow_ejections(now);
            let sleep = self
                .slots
                .values()
                .filter_map(|s| s.replica.next_deadline())
                .chain(self.autoscaling.deadline())
                .min()
                .map_or(MAX_SLEEP, |t| t.saturating_duration_since(Instant::now()));
            let most = if self.sweeps.is_empty() { MAX_SLEEP } else { SWEEP_POLL };
            self.wait_events(sleep.min(most));
        }
        self.slots.clear();
        self.remove_cgroups();
        // Each container's monitor (conmon) outlives its `podman run` by a moment.
        crate::oci::wait_for_monitors(&self.dir.join(crate::state::CONMON_DIR), Duration::from_secs(5));
        self.write_status();
        Ok(())
    }

    /// An OOM kill that spares a replica's own process (one of its workers) is told too, at
    /// most a second late.
    fn watch_oom_kills(&mut self, now: Instant) {
        if self.oom_checked.is_some_and(|t| now.duration_since(t) < MAX_SLEEP) {
            return;
        }
        self.oom_checked = Some(now);
        for (name, slot) in self.slots.iter_mut() {
            if slot.child.is_some() {
                notice_oom_kills(
                    self.kernel.as_mut(),
                    &self.dir,
                    &self.stack,
                    name,
                    slot,
                    "still running",
                );
            }
        }
    }

    /// The autoscaler's tick, when one is due.
    fn autoscale(&mut self, now: Instant) {
        if self.shutting_down || !self.autoscaling.due(now) {
            return;
        }
        let unready = self.unready();
        let running: Vec<Running> = self
            .slots
            .iter()
            .map(|(name, slot)| Running {
                spec: slot.replica.spec(),
                ready: slot.child.is_some() && !unready.contains(name),
            })
            .collect();
        self.autoscaling
            .tick(now, self.dns.desired(), &running, self.kernel.as_mut());
    }

    /// Removes every replica's cgroup: what is still inside (a process that left its
    /// process group and its namespace) is killed first, by PID.
    fn remove_cgroups(&mut self) {
        for path in std::mem::take(&mut self.cgroups) {
            crate::processes::remove_cgroup(self.kernel.as_mut(), &path);
        }
    }

    /// The replicas the sidecars have ejected (read from their counts at most twice a second)
    /// leave the VIP's ready set and the DNS answers until their ejection ends.
    fn follow_ejections(&mut self, now: Instant) {
        if self
            .ejections_checked
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(500))
        {
            return;
        }
        self.ejections_checked = Some(now);
        let ejected = match self.dns.desired() {
            Some(d) if d.containers.iter().any(|c| c.mesh) => {
                let stats = metrics::read_mesh_stats(&self.dir, d);
                plumb_core::mesh::stats::ejected_now(&stats, runfile::unix_ms())
            }
            _ => BTreeSet::new(),
        };
        if ejected != self.ejected {
            for c in ejected.difference(&self.ejected) {
                say(&format!(
                    "{c} ejected by a sidecar: out of its VIP until the ejection ends"
                ));
            }
            self.ejected = ejected;
            self.dirty = true;
        }
    }

    /// Faults made by `plumb chaos` whose time is up (or whose relay died) are removed here,
    /// at most once a second, so they end even if every plumb command was killed.
    fn end_expired_faults(&mut self, now: Instant) {
        if self.faults_checked.is_some_and(|t| now.duration_since(t) < MAX_SLEEP) {
            return;
        }
        self.faults_checked = Some(now);
        match crate::faults::tend(&self.dir) {
            Ok(gone) => {
                for f in gone {
                    say(&format!("fault {} ({} on {}) ended", f.id, f.describe(), f.target));
                }
            }
            Err(e) => say(&format!("removing expired faults: {}", e.message)),
        }
    }

    /// A previous supervisor that died leaves its processes running: end them (by PID) so
    /// restarting the stack never runs a service twice.
    fn kill_orphans(&mut self) {
        let run = runfile::read_run(&self.dir);
        // A stack without processes has none to end: no scan of /proc.
        if !run.specs.is_empty() {
            let _ = self.kernel.apply(&Op::StopProcesses {
                namespaces: run.specs.iter().map(|s| s.netns.clone()).collect(),
                grace_ms: 0,
            });
        }
        // Its image services' containers outlive it in podman (conmon keeps them).
        if crate::oci::runs_containers(&run.specs) {
            match crate::oci::remove_stack(&self.stack) {
                Ok(0) => {}
                Ok(n) => say(&format!(
                    "removed {n} container(s) a previous supervisor left in podman"
                )),
                Err(e) => say(&format!("removing the containers left in podman: {}", e.message)),
            }
        }
    }

    /// Applies the current `run.json`.
    fn reload(&mut self, now: Instant) {
        let run = runfile::read_run(&self.dir);
        // The state directory may have been deleted and made again: log to the new files.
        let _ = create_private_dir(&runfile::logs_dir(&self.dir));
        self.slots.values_mut().for_each(|s| s.log.reopen());
        let kernel = &mut self.kernel;
        let changes = plan::changes(self.slots.iter().map(|(n, s)| (n, &s.replica)), &run, |ns| {
            kernel.netns_inode(ns)
        });
        for spec in &run.specs {
            self.adopt(spec, run.restart_token(&spec.service));
        }
        for (name, change) in changes {
            match change {
                Change::Add => {}
                Change::Keep => self.slots.get_mut(&name).into_iter().for_each(|s| s.replica.resume()),
                Change::Restart => self.stop(&name, AfterStop::Restart, now),
                Change::Stop => self.stop(&name, AfterStop::Stop, now),
                Change::Remove => self.stop(&name, AfterStop::Remove, now),
            }
        }
        self.generation = run.generation;
        self.dirty = true;
        for name in run.draining.difference(&self.draining) {
            let detail = "out of its VIPs and DNS; stopped once its connections end";
            events::record(&self.dir, &self.stack, name, "draining", detail);
            if let Some(slot) = self.slots.get_mut(name) {
                slot.log.note(&format!("draining: {detail}"));
            }
        }
        self.draining = run.draining.clone();
        self.autoscaling.reload(run.desired.as_ref());
        self.dns.reload(run.desired.as_ref());
        self.serve_metrics(run.desired.as_ref().and_then(|d| d.metrics));
        self.receive_traces(run.desired.as_ref());
        // A new CA and certificates for the mesh at every `up` (before any sidecar starts).
        if let Some(desired) = run.desired.as_ref() {
            if let Err(e) = crate::mesh::pki::issue(&self.dir, desired) {
                say(&e.message);
            }
        }
        let unready = self.unready();
        let balancer = run.desired.as_ref().map(plumb_core::firewall::vips::Balancer::of);
        let kernel = self.kernel.as_mut();
        note_balancer_error(
            self.balancer
                .reload(balancer, &unready, &mut |t, e| apply_nft(kernel, t, e)),
        );
        self.dns.readiness(unready);
    }

    /// Receives OTLP on every gateway of a meshed stack that keeps its own traces.
    fn receive_traces(&mut self, desired: Option<&plumb_core::Desired>) {
        let gateways: Vec<std::net::Ipv4Addr> = desired
            .filter(|d| d.tracing.is_none() && d.containers.iter().any(|c| c.mesh))
            .map(|d| d.networks.iter().map(|n| n.gateway).collect())
            .unwrap_or_default();
        if gateways.is_empty() {
            self.receiver = None;
            return;
        }
        if self.receiver.is_none() {
            match crate::traces::Receiver::new(&self.dir) {
                Ok(r) => self.receiver = Some(r),
                Err(e) => return say(&format!("cannot receive traces: {e}")),
            }
        }
        if let Some(receiver) = self.receiver.as_mut() {
            for (address, e) in receiver.listen_on(&gateways) {
                say(&format!(
                    "cannot receive traces on {address}:{}: {e}",
                    crate::traces::OTLP_PORT
                ));
            }
        }
    }

    /// Serves metrics on `address` (moving there if it changed), or stops serving them.
    fn serve_metrics(&mut self, address: Option<std::net::SocketAddrV4>) {
        if self.metrics.as_ref().map(|m| m.address) == address {
            return;
        }
        self.metrics = None;
        let Some(address) = address else { return };
        let sources = metrics::Sources {
            stack: self.stack.clone(),
            dir: self.dir.clone(),
            probes: self.probe_times.clone(),
            dns: self.dns.stats(),
        };
        match metrics::Server::start(address, sources) {
            Ok(server) => self.metrics = Some(server),
            Err(e) => say(&format!("cannot serve metrics on {address}: {e}")),
        }
    }

    /// The load balancer and the DNS answers catch up with the replicas' readiness.
    fn readiness_changed(&mut self) {
        if self.shutting_down {
            // Everything stops and `down` removes the table: no point rewriting it.
            return;
        }
        let unready = self.unready();
        let kernel = self.kernel.as_mut();
        note_balancer_error(self.balancer.follow(&unready, &mut |t, e| apply_nft(kernel, t, e)));
        self.dns.readiness(unready);
    }

    /// The containers that may not take new connections (as `status.json` will say): see
    /// [`StatusFile::unready`].
    fn unready(&self) -> BTreeSet<String> {
        let status = StatusFile {
            replicas: self
                .slots
                .iter()
                .map(|(name, slot)| {
                    let pid = slot.child.as_ref().map(Child::id);
                    (name.clone(), status::replica_status(&slot.replica, pid))
                })
                .collect(),
            ..StatusFile::default()
        };
        let mut unready = match self.dns.desired() {
            Some(desired) => status.unready(desired),
            None => status
                .replicas
                .iter()
                .filter(|(_, r)| !r.is_ready())
                .map(|(n, _)| n.clone())
                .collect(),
        };
        unready.extend(self.draining.iter().cloned());
        unready.extend(self.ejected.iter().cloned());
        unready
    }

    /// Takes `spec` as its replica's definition, adding the replica if it is new.
    fn adopt(&mut self, spec: &RunSpec, restart_token: u64) {
        let name = &spec.container;
        if let Some(slot) = self.slots.get_mut(name) {
            if slot.replica.spec().hosts != spec.hosts {
                let _ = hosts::write(&self.dir.join(HOSTS_DIR), name, &spec.hosts);
            }
            slot.replica.update(spec.clone(), restart_token);
            return;
        }
        let slot = Slot {
            replica: Replica::new(spec.clone(), restart_token),
            child: None,
            log: LogWriter::new(runfile::logs_dir(&self.dir).join(format!("{name}.log"))),
            oom_kills_seen: None,
            oom_in_run: false,
            memory_limit: None,
            sidecar: None,
            sidecar_started: None,
        };
        self.slots.insert(name.clone(), slot);
    }

    /// Starts what may start (once its container is clear), restarts what is due, probes,
    /// escalates slow stops, and carries sweeps on. Goes round again while it started
    /// something, for those waiting on what just started.
    fn tick(&mut self, now: Instant) {
        self.keep_sidecars(now);
        loop {
            let mut to_start = Vec::new();
            let names: Vec<String> = self.slots.keys().cloned().collect();
            for name in names {
                let Some(slot) = self.slots.get(&name) else { continue };
                match slot.replica.due(now) {
                    Some(Due::StartAfterDependencies)
                        if !self.shutting_down
                            && dependencies_ready(slot.replica.spec(), self.slots.values().map(|s| &s.replica)) =>
                    {
                        to_start.push(name)
                    }
                    Some(Due::Restart) if !self.shutting_down => to_start.push(name),
                    Some(Due::Kill) => self.kill(&name, now),
                    Some(Due::Probe) => self.probe(&name, now),
                    _ => {}
                }
            }
            for name in &to_start {
                if let Some(slot) = self.slots.get(name) {
                    let sweep = Sweep::of(slot.replica.spec());
                    self.sweeps.entry(name.clone()).or_insert(sweep);
                }
            }
            self.sweep(now);
            let clear: Vec<String> = to_start.into_iter().filter(|n| !self.sweeps.contains_key(n)).collect();
            if clear.is_empty() {
                return;
            }
            for name in clear {
                self.start(&name, now);
            }
        }
    }

    /// Carries every sweep on, from one census of the containers: forgets those whose
    /// container is clear, sends SIGTERM where a sweep begins and SIGKILL where one is due.
    fn sweep(&mut self, now: Instant) {
        if self.sweeps.is_empty() {
            return;
        }
        let mut left = self.untracked();
        let slots = &mut self.slots;
        self.sweeps.retain(|name, sweep| {
            let pids = left.remove(name).unwrap_or_default();
            let mut note = |text: String| {
                if let Some(slot) = slots.get_mut(name) {
                    slot.log.note(&text);
                }
            };
            if pids.is_empty() {
                return false;
            }
            match sweep.deadline {
                None => {
                    note(format!(
                        "ending {} process(es) left in the container: {pids:?}",
                        pids.len()
                    ));
                    signal_each(&pids, Signal::SIGTERM);
                    sweep.deadline = Some(now + sweep.grace);
                }
                Some(deadline) if deadline <= now => {
                    if sweep.kills >= KILL_ROUNDS {
                        note(format!("cannot end processes {pids:?}: they outlive SIGKILL"));
                        return false;
                    }
                    signal_each(&pids, Signal::SIGKILL);
                    sweep.kills += 1;
                    sweep.deadline = Some(now + KILL_RECHECK);
                }
                Some(_) => {}
            }
            true
        });
    }

    /// For each container being swept, the processes inside that are neither the replica's
    /// process tree nor this supervisor's children (health probes).
    fn untracked(&mut self) -> BTreeMap<String, Vec<i32>> {
        let kernel = &mut self.kernel;
        let inodes: BTreeMap<&String, u64> = self
            .sweeps
            .iter()
            .filter_map(|(name, sweep)| Some((name, kernel.netns_inode(&sweep.netns)?)))
            .collect();
        let residents = kernel.residents(&inodes.values().copied().collect::<HashSet<u64>>());
        let supervisor = std::process::id();
        inodes
            .into_iter()
            .map(|(name, inode)| {
                let main = self.slots.get(name).and_then(|s| s.child.as_ref()).map(Child::id);
                let inside = residents.get(&inode).map_or(&[][..], Vec::as_slice);
                (name.clone(), census::untracked(inside, supervisor, main))
            })
            .collect()
    }

    /// A meshed replica whose process runs gets its sidecar back if it died.
    fn keep_sidecars(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        for (name, slot) in &mut self.slots {
            let due = slot.replica.spec().mesh
                && slot.child.is_some()
                && slot.sidecar.is_none()
                && slot
                    .sidecar_started
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
            if due {
                let _ = start_sidecar(self.kernel.as_mut(), &self.dir, name, slot, &mut self.pipes, now);
            }
        }
    }

    fn start(&mut self, name: &str, now: Instant) {
        let hosts_dir = self.dir.join(HOSTS_DIR);
        let Some(slot) = self.slots.get_mut(name) else { return };
        self.dirty = true;
        // Its cgroup's OOM count before the process can allocate anything (none before the
        // first start made the cgroup).
        let cgroup = spawn::cgroup_path(slot.replica.spec());
        let oom_kills_before = self.kernel.cgroup_usage(&cgroup).map_or(0, |u| u.oom_kills);
        if slot.replica.spec().mesh && slot.sidecar.is_none() {
            if let Err(e) = start_sidecar(self.kernel.as_mut(), &self.dir, name, slot, &mut self.pipes, now) {
                let error = format!("cannot start: {e}");
                events::record(&self.dir, &self.stack, name, "start_failed", error.clone());
                let after = slot.replica.start_failed(now, error);
                self.settle(name, after, "a failed start of its sidecar");
                return;
            }
        }
        match spawn_replica(self.kernel.as_mut(), slot.replica.spec(), &hosts_dir) {
            Ok((mut child, inode)) => {
                let command = match &slot.replica.spec().oci {
                    Some(run) => format!("container {} (image {})", run.name, run.image),
                    None => slot.replica.spec().command.join(" "),
                };
                slot.log.note(&format!("started {command} (pid {})", child.id()));
                events::record(&self.dir, &self.stack, name, "started", format!("pid {}", child.id()));
                self.pipes.add(&mut child, name);
                slot.oom_kills_seen = None;
                slot.oom_in_run = false;
                slot.memory_limit = slot.replica.spec().limits.memory;
                if slot.replica.spec().oci.is_none() && self.kernel.cgroup_usage(&cgroup).is_some() {
                    slot.oom_kills_seen = Some(oom_kills_before);
                    self.cgroups.insert(cgroup);
                }
                slot.replica.started(now, runfile::unix_ms(), inode);
                slot.child = Some(child);
            }
            Err(e) => {
                let error = format!("cannot start: {e}");
                slot.log.note(&error);
                events::record(&self.dir, &self.stack, name, "start_failed", error.clone());
                let after = slot.replica.start_failed(now, error);
                self.settle(name, after, "a failed start");
            }
        }
    }

    /// Carries out what follows an exit (or a failed start).
    /// `why`: what ended the process (the restart's reason).
    fn settle(&mut self, name: &str, after: AfterExit, why: &str) {
        match after {
            AfterExit::RestartIn(delay) => {
                if let Some(slot) = self.slots.get_mut(name) {
                    slot.log.note(&format!("restarting in {delay:?} after {why}"));
                    let detail = format!("in {delay:?} after {why}");
                    events::record(&self.dir, &self.stack, name, "restarting", detail);
                }
            }
            AfterExit::Remove => {
                if let Some(mut slot) = self.slots.remove(name) {
                    slot.end_sidecar(&mut self.orphans);
                }
            }
            AfterExit::Settled => {}
        }
    }

    /// Stops a replica's process, and ends whatever else its container holds.
    fn stop(&mut self, name: &str, then: AfterStop, now: Instant) {
        let Some(slot) = self.slots.get_mut(name) else { return };
        self.dirty = true;
        self.sweeps
            .entry(name.to_string())
            .or_insert_with(|| Sweep::of(slot.replica.spec()));
        match slot.replica.stop(now, then) {
            StopStep::Terminate => slot.child.iter().for_each(|c| signal_group(c, Signal::SIGTERM)),
            StopStep::Remove => {
                if let Some(mut slot) = self.slots.remove(name) {
                    slot.end_sidecar(&mut self.orphans);
                }
            }
            StopStep::Wait | StopStep::Done => {}
        }
    }

    fn kill(&mut self, name: &str, now: Instant) {
        if let Some(slot) = self.slots.get_mut(name) {
            slot.child.iter().for_each(|c| signal_group(c, Signal::SIGKILL));
            // A killed `podman run` leaves its container to conmon: remove it too.
            if let Some(run) = &slot.replica.spec().oci {
                crate::oci::remove_soon(&run.name);
            }
            slot.replica.kill_sent(now);
        }
        // What else the container holds goes at the same time.
        if let Some(sweep) = self.sweeps.get_mut(name) {
            sweep.deadline = sweep.deadline.map(|d| d.min(now));
        }
    }

    fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        self.autoscaling.stop();
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            self.stop(&name, AfterStop::Stop, now);
        }
    }

    /// Collects every process that exited.
    fn reap(&mut self, now: Instant) {
        self.orphans.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        for slot in self.slots.values_mut() {
            if let Some(Ok(Some(status))) = slot.sidecar.as_mut().map(Child::try_wait) {
                slot.sidecar = None;
                let how = Exit::of(status).map_or("unknown".to_string(), |e| e.to_string());
                slot.log.note(&format!("sidecar exited: {how}"));
            }
        }
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            let Some(slot) = self.slots.get_mut(&name) else {
                continue;
            };
            let Some(Ok(Some(status))) = slot.child.as_mut().map(Child::try_wait) else {
                continue;
            };
            slot.child = None;
            // The sidecar serves the process: it goes with it, and comes back with the next.
            slot.end_sidecar(&mut self.orphans);
            let exit = Exit::of(status);
            let mut how = exit.map_or("unknown".to_string(), |e| e.to_string());
            // The kernel's OOM killer ended a process of its cgroup during this run.
            notice_oom_kills(self.kernel.as_mut(), &self.dir, &self.stack, &name, slot, &how);
            if std::mem::take(&mut slot.oom_in_run) {
                how = format!("oom_killed ({how})");
            }
            slot.oom_kills_seen = None;
            slot.log.note(&format!("exited: {how}"));
            events::record(&self.dir, &self.stack, &name, "exited", how.clone());
            if slot.replica.state() == ReplicaState::Stopping {
                // Stopped on purpose: what is left of its tree goes too (the sweep begun with
                // the stop spared the tree while its process ran, and may be over).
                self.sweeps
                    .entry(name.clone())
                    .or_insert_with(|| Sweep::of(slot.replica.spec()));
            }
            let after = slot.replica.exited(now, exit);
            self.dirty = true;
            self.settle(&name, after, &how);
        }
    }

    fn probe(&mut self, name: &str, now: Instant) {
        let Some(slot) = self.slots.get_mut(name) else { return };
        let spec = slot.replica.spec();
        let Some(health) = spec.health.clone() else { return };
        match self.probes.launch(name, slot.replica.epoch(), spec, health) {
            Ok(()) => slot.replica.probe_launched(),
            Err(_) => slot.replica.probe_not_launched(now),
        }
    }

    fn probe_results(&mut self, now: Instant) {
        for result in self.probes.results() {
            let Some(slot) = self.slots.get_mut(&result.container) else {
                continue;
            };
            if let Ok(mut times) = self.probe_times.lock() {
                times.insert(result.container.clone(), result.seconds);
            }
            let verdict = slot.replica.probe_result(now, result.epoch, result.healthy);
            match verdict {
                Verdict::Same => continue,
                Verdict::Now(health) => {
                    slot.log.note(&format!("health: {health}"));
                    events::record(&self.dir, &self.stack, &result.container, "health", health.to_string());
                }
                Verdict::Restart => {
                    slot.log.note("health: unhealthy");
                    events::record(&self.dir, &self.stack, &result.container, "health", "unhealthy");
                    slot.log.note("unhealthy with restart = \"always\": restarting");
                    self.stop(&result.container, AfterStop::Restart, now);
                }
            }
            self.dirty = true;
        }
    }

    /// Waits up to `timeout` for signals, output or probe results, and handles them.
    fn wait_events(&mut self, timeout: Duration) {
        let mut fds = vec![
            PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.probes.wake_fd(), PollFlags::POLLIN),
            PollFd::new(self.socket.fd(), PollFlags::POLLIN),
        ];
        fds.extend(self.pipes.fds().map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        if poll(&mut fds, PollTimeout::from(millis)).unwrap_or(0) <= 0 {
            return;
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        let slots = &mut self.slots;
        self.pipes.read(&ready[3..], |name, bytes| {
            if let Some(slot) = slots.get_mut(name) {
                slot.log.write(bytes);
            }
        });
        if ready[2] {
            self.socket.answer(&self.report());
        }
        let now = Instant::now();
        if ready[1] {
            self.probe_results(now);
        }
        if ready[0] {
            self.handle_signals(now);
        }
    }

    fn handle_signals(&mut self, now: Instant) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => self.reap(now),
                // A supervisor on its way out starts nothing new.
                Ok(Signal::SIGHUP) if !self.shutting_down => self.reload(now),
                Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => self.shutdown(now),
                _ => {}
            }
        }
    }

    /// Writes `status.json`. A failure (a full disk) is kept for the report, so `plumb ps`
    /// can tell the file is stale; the write is tried again at every turn of the loop.
    fn write_status(&mut self) {
        let replicas = self.slots.iter().map(|(name, slot)| {
            let pid = slot.child.as_ref().map(Child::id);
            (name, status::replica_status(&slot.replica, pid))
        });
        match status::write(&self.dir, self.generation, replicas) {
            Ok(()) => {
                self.dirty = false;
                self.status_written_ms = Some(runfile::unix_ms());
                if self.status_error.take().is_some() {
                    say("status.json is written again");
                }
            }
            Err(e) => {
                if self.status_error.as_deref() != Some(e.message.as_str()) {
                    say(&e.message);
                }
                self.status_error = Some(e.message);
            }
        }
    }

    /// What the socket tells whoever asks.
    fn report(&self) -> Report {
        Report {
            generation: self.generation,
            status_written_ms: self.status_written_ms,
            status_error: self.status_error.clone(),
            // STATE_DIR/stacks/STACK: the state directory is two folders up.
            state_dir: self
                .dir
                .parent()
                .and_then(Path::parent)
                .map(|d| d.display().to_string()),
        }
    }
}

/// Starts `slot`'s sidecar; its output goes to the replica's log.
fn start_sidecar(
    kernel: &mut dyn Kernel,
    dir: &Path,
    name: &str,
    slot: &mut Slot,
    pipes: &mut Pipes,
    now: Instant,
) -> Result<()> {
    slot.sidecar_started = Some(now);
    match spawn_sidecar(kernel, dir, slot.replica.spec()) {
        Ok(mut child) => {
            slot.log.note(&format!("started sidecar (pid {})", child.id()));
            pipes.add(&mut child, name);
            slot.sidecar = Some(child);
            Ok(())
        }
        Err(e) => {
            slot.log.note(&format!("cannot start the sidecar: {e}"));
            Err(e)
        }
    }
}

/// Records an `oom_killed` event if the replica's cgroup counts OOM kills not told yet;
/// `how`: how its process is (its exit, or still running).
fn notice_oom_kills(kernel: &mut dyn Kernel, dir: &Path, stack: &str, name: &str, slot: &mut Slot, how: &str) {
    let Some(seen) = slot.oom_kills_seen else { return };
    let path = spawn::cgroup_path(slot.replica.spec());
    let Some(now) = kernel.cgroup_usage(&path).map(|u| u.oom_kills) else {
        return;
    };
    if now <= seen {
        return;
    }
    let limit = match slot.memory_limit {
        Some(bytes) => format!("the memory limit is {bytes} bytes"),
        None => "the host ran out of memory".to_string(),
    };
    let detail = format!("{} process(es) killed out of memory: {limit} ({how})", now - seen);
    slot.log.note(&format!("oom_killed: {detail}"));
    events::record(dir, stack, name, "oom_killed", detail);
    slot.oom_kills_seen = Some(now);
    slot.oom_in_run = true;
}

/// The balancer's element edits, as one `Op` through the kernel (a netlink batch). The
/// change's ruleset holds only the table: the supervisor records nothing of what it leaves.
fn apply_nft(kernel: &mut dyn Kernel, table: &TableId, edits: &[ElementEdit]) -> std::result::Result<(), String> {
    let change = NftChange::Elements {
        ruleset: Ruleset {
            table: table.clone(),
            sets: Vec::new(),
            chains: Vec::new(),
        },
        edits: edits.to_vec(),
    };
    kernel
        .apply(&Op::Nft { changes: vec![change] })
        .and_then(|()| kernel.settle())
        .map_err(|e| e.to_string())
}

fn note_balancer_error(result: std::result::Result<(), String>) {
    if let Err(e) = result {
        say(&format!("load balancer: {e}"));
    }
}

/// A line in the supervisor's own log (its stderr, a file in the state directory). Unlike
/// `eprintln!`, a line that cannot be written (a full disk) is dropped, not a panic.
pub(super) fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
