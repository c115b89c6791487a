//! The supervisor's event loop: one thread waiting on a signalfd (SIGCHLD, SIGHUP for a new
//! `run.json`, SIGTERM/SIGINT to stop), the processes' output pipes and the probes' wake pipe.
//! Each event becomes a replica transition; the loop carries out what the transition asks.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use plumb_core::services::RunSpec;
use plumb_linux::netns;

use super::logs::{LogWriter, Pipes};
use super::plan::{self, Change};
use super::probe::Probes;
use super::replica::{dependencies_ready, AfterExit, AfterStop, Due, Replica, StopStep, Verdict};
use super::spawn::{signal_group, spawn_replica};
use super::status;
use crate::failure::{Failure, Result};
use crate::runfile::{self, Exit};

/// The loop wakes at least this often, whatever is due.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// A replica with what the loop holds for it: its process and its log.
struct Slot {
    replica: Replica,
    /// Some exactly while `replica.has_process()`.
    child: Option<Child>,
    log: LogWriter,
}

pub struct Supervisor {
    dir: PathBuf,
    /// The generation of `run.json` applied.
    generation: u64,
    slots: BTreeMap<String, Slot>,
    pipes: Pipes,
    signals: SignalFd,
    probes: Probes,
    shutting_down: bool,
    /// Something changed since `status.json` was written.
    dirty: bool,
}

impl Supervisor {
    /// Prepares a supervisor for the stack whose state folder is `dir`. Blocks the signals it
    /// handles; call from the main thread before any other thread starts.
    pub fn new(dir: &Path) -> Result<Self> {
        let mut mask = SigSet::empty();
        for s in [Signal::SIGCHLD, Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT] {
            mask.add(s);
        }
        mask.thread_block()
            .map_err(|e| Failure::new(format!("cannot block signals: {e}")))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| Failure::new(format!("signalfd: {e}")))?;
        std::fs::create_dir_all(runfile::logs_dir(dir))?;
        Ok(Supervisor {
            dir: dir.to_path_buf(),
            generation: 0,
            slots: BTreeMap::new(),
            pipes: Pipes::default(),
            signals,
            probes: Probes::new()?,
            shutting_down: false,
            dirty: true,
        })
    }

    /// Runs until asked to stop (SIGTERM or SIGINT), then stops every process and returns.
    pub fn run(mut self) -> Result<()> {
        std::fs::write(runfile::pid_path(&self.dir), runfile::pid_file_content())?;
        self.kill_orphans();
        self.reload(Instant::now());
        loop {
            let now = Instant::now();
            self.tick(now);
            if self.shutting_down && self.slots.values().all(|s| s.child.is_none()) {
                break;
            }
            if self.dirty {
                self.write_status();
            }
            let sleep = self
                .slots
                .values()
                .filter_map(|s| s.replica.next_deadline())
                .min()
                .map_or(MAX_SLEEP, |t| t.saturating_duration_since(Instant::now()));
            self.wait_events(sleep.min(MAX_SLEEP));
        }
        self.slots.clear();
        self.write_status();
        let _ = std::fs::remove_file(runfile::pid_path(&self.dir));
        Ok(())
    }

    /// A previous supervisor that died leaves its processes running: end them (by PID) so
    /// restarting the stack never runs a service twice.
    fn kill_orphans(&self) {
        let run = runfile::read_run(&self.dir);
        netns::end_processes(run.specs.iter().map(|s| s.netns.as_str()), Duration::ZERO);
    }

    /// Applies the current `run.json`.
    fn reload(&mut self, now: Instant) {
        let run = runfile::read_run(&self.dir);
        let changes = plan::changes(self.slots.iter().map(|(n, s)| (n, &s.replica)), &run, netns::inode);
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
    }

    /// Takes `spec` as its replica's definition, adding the replica if it is new.
    fn adopt(&mut self, spec: &RunSpec, restart_token: u64) {
        let name = &spec.container;
        if let Some(slot) = self.slots.get_mut(name) {
            if slot.replica.spec().hosts != spec.hosts {
                // Rewritten in place: the container's bind mount shows the new content.
                let _ = std::fs::write(self.dir.join("hosts").join(name), &spec.hosts);
            }
            slot.replica.update(spec.clone(), restart_token);
            return;
        }
        let slot = Slot {
            replica: Replica::new(spec.clone(), restart_token),
            child: None,
            log: LogWriter::new(runfile::logs_dir(&self.dir).join(format!("{name}.log"))),
        };
        self.slots.insert(name.clone(), slot);
    }

    /// Starts what may start, restarts what is due, probes, and escalates slow stops.
    fn tick(&mut self, now: Instant) {
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in &names {
            let Some(slot) = self.slots.get(name) else { continue };
            match slot.replica.due(now) {
                Some(Due::StartAfterDependencies)
                    if !self.shutting_down
                        && dependencies_ready(slot.replica.spec(), self.slots.values().map(|s| &s.replica)) =>
                {
                    self.start(name, now)
                }
                Some(Due::Restart) if !self.shutting_down => self.start(name, now),
                Some(Due::Kill) => self.kill(name, now),
                Some(Due::Probe) => self.probe(name, now),
                _ => {}
            }
        }
    }

    fn start(&mut self, name: &str, now: Instant) {
        let hosts_dir = self.dir.join("hosts");
        let Some(slot) = self.slots.get_mut(name) else { return };
        self.dirty = true;
        match spawn_replica(slot.replica.spec(), &hosts_dir) {
            Ok((mut child, inode)) => {
                let command = slot.replica.spec().command.join(" ");
                slot.log.note(&format!("started {command} (pid {})", child.id()));
                self.pipes.add(&mut child, name);
                slot.replica.started(now, runfile::unix_ms(), inode);
                slot.child = Some(child);
            }
            Err(e) => {
                let error = format!("cannot start: {e}");
                slot.log.note(&error);
                let after = slot.replica.start_failed(now, error);
                self.settle(name, after);
            }
        }
    }

    /// Carries out what follows an exit (or a failed start).
    fn settle(&mut self, name: &str, after: AfterExit) {
        match after {
            AfterExit::RestartIn(delay) => {
                if let Some(slot) = self.slots.get_mut(name) {
                    slot.log.note(&format!("restarting in {delay:?}"));
                }
            }
            AfterExit::Remove => {
                self.slots.remove(name);
            }
            AfterExit::Settled => {}
        }
    }

    fn stop(&mut self, name: &str, then: AfterStop, now: Instant) {
        let Some(slot) = self.slots.get_mut(name) else { return };
        self.dirty = true;
        match slot.replica.stop(now, then) {
            StopStep::Terminate => slot.child.iter().for_each(|c| signal_group(c, Signal::SIGTERM)),
            StopStep::Remove => {
                self.slots.remove(name);
            }
            StopStep::Wait | StopStep::Done => {}
        }
    }

    fn kill(&mut self, name: &str, now: Instant) {
        if let Some(slot) = self.slots.get_mut(name) {
            slot.child.iter().for_each(|c| signal_group(c, Signal::SIGKILL));
            slot.replica.kill_sent(now);
        }
    }

    fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            self.stop(&name, AfterStop::Stop, now);
        }
    }

    /// Collects every process that exited.
    fn reap(&mut self, now: Instant) {
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            let Some(slot) = self.slots.get_mut(&name) else {
                continue;
            };
            let Some(Ok(Some(status))) = slot.child.as_mut().map(Child::try_wait) else {
                continue;
            };
            slot.child = None;
            let exit = Exit::of(status);
            slot.log.note(&format!(
                "exited: {}",
                exit.map_or("unknown".to_string(), |e| e.to_string())
            ));
            let after = slot.replica.exited(now, exit);
            self.dirty = true;
            self.settle(&name, after);
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
            let verdict = slot.replica.probe_result(now, result.epoch, result.healthy);
            match verdict {
                Verdict::Same => continue,
                Verdict::Now(health) => slot.log.note(&format!("health: {health}")),
                Verdict::Restart => {
                    slot.log.note("health: unhealthy");
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
        ];
        fds.extend(self.pipes.fds().map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        if poll(&mut fds, PollTimeout::from(millis)).unwrap_or(0) <= 0 {
            return;
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        let slots = &mut self.slots;
        self.pipes.read(&ready[2..], |name, bytes| {
            if let Some(slot) = slots.get_mut(name) {
                slot.log.write(bytes);
            }
        });
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

    fn write_status(&mut self) {
        let replicas = self.slots.iter().map(|(name, slot)| {
            let pid = slot.child.as_ref().map(Child::id);
            (name, status::replica_status(&slot.replica, pid))
        });
        if status::write(&self.dir, self.generation, replicas).is_ok() {
            self.dirty = false;
        }
    }
}
