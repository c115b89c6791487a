//! A stack's supervisor: one process per stack (`plumb supervise STACK`, or `plumb up
//! --foreground`) that starts each replica inside its container in dependency order, restarts
//! it by policy with exponential back-off, runs its health probe, and writes its output to
//! rotated log files. One thread runs an event loop over a signalfd (SIGCHLD, SIGHUP for a new
//! `run.json`, SIGTERM/SIGINT to stop), the processes' output pipes and probe results.

mod logs;
mod probe;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{pipe, Pid, User};
use plumb_core::services::RunSpec;
use plumb_core::spec::{Condition, RestartPolicy};
use plumb_linux::{netns, spawn};

use crate::failure::{Failure, Result};
use crate::runfile::{self, ReplicaStatus, RunFile, StatusFile};
use logs::LogWriter;

/// A process that ran at least this long has its back-off reset.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Stopping,
    Backoff,
    Exited,
    Stopped,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Backoff => "backoff",
            State::Exited => "exited",
            State::Stopped => "stopped",
        }
    }
}

/// Why a process is being stopped: decides what happens once it has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Restart,
    Stop,
    Remove,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

struct Replica {
    spec: RunSpec,
    state: State,
    child: Option<Child>,
    log: LogWriter,
    restarts: u32,
    failures_in_row: u32,
    started: Option<(Instant, u64)>,
    restart_at: Option<Instant>,
    stopping: Option<(Then, Instant)>,
    health: Option<Health>,
    probe_failures: u32,
    next_probe: Option<Instant>,
    probing: bool,
    /// Counts process starts, so a late probe result of an earlier process is ignored.
    epoch: u64,
    netns_inode: Option<u64>,
    restart_token: u64,
    last_exit: Option<String>,
    error: Option<String>,
}

struct ProbeResult {
    container: String,
    epoch: u64,
    healthy: bool,
}

pub struct Supervisor {
    dir: PathBuf,
    run: RunFile,
    replicas: BTreeMap<String, Replica>,
    /// Output pipes still open: fd → container.
    pipes: Vec<(OwnedFd, String)>,
    signals: SignalFd,
    probe_tx: Sender<ProbeResult>,
    probe_rx: Receiver<ProbeResult>,
    wake_read: OwnedFd,
    wake_write: std::sync::Arc<OwnedFd>,
    shutting_down: bool,
    dirty: bool,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
        let (wake_read, wake_write) = pipe().map_err(|e| Failure::new(format!("pipe: {e}")))?;
        for fd in [&wake_read, &wake_write] {
            set_flags(fd.as_fd());
        }
        let (probe_tx, probe_rx) = channel();
        std::fs::create_dir_all(runfile::logs_dir(dir))?;
        Ok(Supervisor {
            dir: dir.to_path_buf(),
            run: RunFile::default(),
            replicas: BTreeMap::new(),
            pipes: Vec::new(),
            signals,
            probe_tx,
            probe_rx,
            wake_read,
            wake_write: std::sync::Arc::new(wake_write),
            shutting_down: false,
            dirty: true,
        })
    }

    /// Runs until asked to stop (SIGTERM or SIGINT), then stops every process and returns.
    pub fn run(mut self) -> Result<()> {
        std::fs::write(runfile::pid_path(&self.dir), runfile::pid_file_content())?;
        self.kill_orphans();
        self.reload();
        loop {
            let now = Instant::now();
            self.tick(now);
            if self.shutting_down && self.replicas.values().all(|r| r.child.is_none()) {
                break;
            }
            if self.dirty {
                self.write_status();
            }
            let timeout = self
                .next_deadline(now)
                .map_or(Duration::from_secs(1), |d| d.saturating_duration_since(Instant::now()))
                .min(Duration::from_secs(1));
            self.wait_events(timeout);
        }
        self.replicas.clear();
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

    fn reload(&mut self) {
        let run = runfile::read_run(&self.dir);
        let mut wanted: BTreeMap<String, RunSpec> =
            run.specs.iter().map(|s| (s.container.clone(), s.clone())).collect();
        let names: Vec<String> = self.replicas.keys().cloned().collect();
        for name in names {
            let token = |spec: &RunSpec| run.restarts.get(&spec.service).copied().unwrap_or(0);
            match wanted.remove(&name) {
                None => self.stop(&name, Then::Remove),
                Some(spec) => {
                    let inode = netns::inode(&spec.netns);
                    let stopped = run.stopped.contains(&spec.service);
                    let r = self.replicas.get_mut(&name).expect("listed above");
                    let changed = !same_definition(&r.spec, &spec)
                        || r.restart_token != token(&spec)
                        || (r.child.is_some() && r.netns_inode != inode);
                    if r.spec.hosts != spec.hosts {
                        // Rewritten in place: the container's bind mount shows the new content.
                        let _ = std::fs::write(self.dir.join("hosts").join(&name), &spec.hosts);
                    }
                    r.restart_token = token(&spec);
                    r.spec = spec;
                    if stopped {
                        self.stop(&name, Then::Stop);
                    } else if changed {
                        self.stop(&name, Then::Restart);
                    } else if matches!(r.state, State::Stopped | State::Exited) {
                        r.state = State::Waiting;
                    }
                }
            }
        }
        for (name, spec) in wanted {
            let log = LogWriter::new(runfile::logs_dir(&self.dir).join(format!("{name}.log")));
            let state = if run.stopped.contains(&spec.service) {
                State::Stopped
            } else {
                State::Waiting
            };
            let restart_token = run.restarts.get(&spec.service).copied().unwrap_or(0);
            self.replicas.insert(
                name,
                Replica {
                    spec,
                    state,
                    child: None,
                    log,
                    restarts: 0,
                    failures_in_row: 0,
                    started: None,
                    restart_at: None,
                    stopping: None,
                    health: None,
                    probe_failures: 0,
                    next_probe: None,
                    probing: false,
                    epoch: 0,
                    netns_inode: None,
                    restart_token,
                    last_exit: None,
                    error: None,
                },
            );
        }
        self.run = run;
        self.dirty = true;
    }

    /// Starts what may start, restarts what is due, probes, and escalates slow stops.
    fn tick(&mut self, now: Instant) {
        let names: Vec<String> = self.replicas.keys().cloned().collect();
        for name in &names {
            let r = &self.replicas[name];
            match r.state {
                State::Waiting if !self.shutting_down && self.dependencies_met(&r.spec) => self.start(name),
                State::Backoff if !self.shutting_down && r.restart_at.is_some_and(|t| t <= now) => self.start(name),
                State::Stopping => {
                    if let (Some((then, deadline)), Some(child)) = (r.stopping, &r.child) {
                        if deadline <= now {
                            signal_group(child.id(), Signal::SIGKILL);
                            // Check again in a second rather than spinning until it is reaped.
                            let r = self.replicas.get_mut(name).expect("listed above");
                            r.stopping = Some((then, now + Duration::from_secs(1)));
                        }
                    }
                }
                State::Running if r.next_probe.is_some_and(|t| t <= now) && !r.probing => self.probe(name),
                _ => {}
            }
        }
    }

    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.replicas
            .values()
            .flat_map(|r| {
                [
                    r.restart_at,
                    r.stopping.map(|s| s.1),
                    r.next_probe.filter(|_| !r.probing),
                ]
            })
            .flatten()
            .map(|t| t.max(now))
            .min()
    }

    /// Every dependency's replicas have started (and pass their health check, where asked).
    fn dependencies_met(&self, spec: &RunSpec) -> bool {
        spec.depends_on.iter().all(|dep| {
            self.replicas
                .values()
                .filter(|r| r.spec.service == dep.service)
                .all(|r| {
                    r.state == State::Running
                        && match dep.condition {
                            Condition::Started => true,
                            Condition::Healthy => r.spec.health.is_none() || r.health == Some(Health::Healthy),
                        }
                })
        })
    }

    fn start(&mut self, name: &str) {
        let hosts_dir = self.dir.join("hosts");
        let r = self.replicas.get_mut(name).expect("known replica");
        r.restart_at = None;
        let result = spawn_replica(&r.spec, &hosts_dir);
        if r.epoch > 0 {
            r.restarts += 1;
        }
        r.epoch += 1;
        match result {
            Ok((mut child, inode)) => {
                r.log
                    .note(&format!("started {} (pid {})", r.spec.command.join(" "), child.id()));
                for pipe in [
                    child.stdout.take().map(OwnedFd::from),
                    child.stderr.take().map(OwnedFd::from),
                ]
                .into_iter()
                .flatten()
                {
                    set_flags(pipe.as_fd());
                    self.pipes.push((pipe, name.to_string()));
                }
                r.child = Some(child);
                r.state = State::Running;
                r.started = Some((Instant::now(), unix_ms()));
                r.netns_inode = inode;
                r.error = None;
                r.health = r.spec.health.as_ref().map(|_| Health::Starting);
                r.probe_failures = 0;
                r.next_probe = r
                    .spec
                    .health
                    .as_ref()
                    .map(|h| Instant::now() + h.interval.min(Duration::from_millis(500)));
            }
            Err(e) => {
                r.log.note(&format!("cannot start: {e}"));
                r.error = Some(format!("cannot start: {e}"));
                r.started = None;
                Self::schedule_restart(r, false);
            }
        }
        self.dirty = true;
    }

    /// After an unplanned exit: back off and start again, or stay down, as the policy says.
    fn schedule_restart(r: &mut Replica, succeeded: bool) {
        let again = match r.spec.restart {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure => !succeeded,
            RestartPolicy::Always => true,
        };
        if !again {
            r.state = State::Exited;
            return;
        }
        let stable = r.started.is_some_and(|(t, _)| t.elapsed() >= STABLE_AFTER);
        r.failures_in_row = if stable { 0 } else { r.failures_in_row + 1 };
        let backoff = BACKOFF_START
            .saturating_mul(1 << r.failures_in_row.saturating_sub(1).min(10))
            .min(BACKOFF_CAP);
        r.state = State::Backoff;
        r.restart_at = Some(Instant::now() + backoff);
        r.log.note(&format!("restarting in {backoff:?}"));
    }

    fn stop(&mut self, name: &str, then: Then) {
        let Some(r) = self.replicas.get_mut(name) else {
            return;
        };
        self.dirty = true;
        r.restart_at = None;
        r.next_probe = None;
        match &r.child {
            Some(child) => {
                if r.stopping.is_none() {
                    signal_group(child.id(), Signal::SIGTERM);
                    r.stopping = Some((then, Instant::now() + Duration::from_millis(r.spec.stop_grace_ms)));
                } else if let Some((_, deadline)) = r.stopping {
                    r.stopping = Some((then, deadline));
                }
                r.state = State::Stopping;
            }
            None => self.after_stop(name, then),
        }
    }

    fn after_stop(&mut self, name: &str, then: Then) {
        match then {
            Then::Remove => {
                self.replicas.remove(name);
            }
            Then::Stop => {
                if let Some(r) = self.replicas.get_mut(name) {
                    r.state = State::Stopped;
                    r.health = None;
                }
            }
            Then::Restart => {
                if let Some(r) = self.replicas.get_mut(name) {
                    r.state = if self.shutting_down {
                        State::Stopped
                    } else {
                        State::Waiting
                    };
                    r.health = None;
                }
            }
        }
        self.dirty = true;
    }

    fn probe(&mut self, name: &str) {
        let r = self.replicas.get_mut(name).expect("known replica");
        let Some(health) = r.spec.health.clone() else {
            return;
        };
        let Ok(fd) = netns::open(&r.spec.netns) else {
            return;
        };
        r.probing = true;
        let (tx, wake, container, epoch) = (
            self.probe_tx.clone(),
            self.wake_write.clone(),
            name.to_string(),
            r.epoch,
        );
        let spawned = std::thread::Builder::new().stack_size(256 * 1024).spawn(move || {
            let healthy = probe::check(&fd, &health.probe, health.timeout);
            let _ = tx.send(ProbeResult {
                container,
                epoch,
                healthy,
            });
            let _ = nix::unistd::write(wake.as_fd(), &[1]);
        });
        if spawned.is_err() {
            r.probing = false;
        }
    }

    fn probe_result(&mut self, result: ProbeResult) {
        let Some(r) = self.replicas.get_mut(&result.container) else {
            return;
        };
        r.probing = false;
        if r.epoch != result.epoch || r.state != State::Running {
            return;
        }
        let Some(spec) = r.spec.health.clone() else {
            return;
        };
        r.next_probe = Some(Instant::now() + spec.interval);
        let before = r.health;
        if result.healthy {
            r.probe_failures = 0;
            r.health = Some(Health::Healthy);
        } else if r.started.is_some_and(|(t, _)| t.elapsed() < spec.start_period) && r.health != Some(Health::Healthy) {
            // Failures during the start period do not count.
        } else {
            r.probe_failures += 1;
            if r.probe_failures >= spec.retries.max(1) {
                r.health = Some(Health::Unhealthy);
            }
        }
        if r.health != before {
            self.dirty = true;
            let text = match r.health {
                Some(Health::Healthy) => "healthy",
                Some(Health::Unhealthy) => "unhealthy",
                _ => "starting",
            };
            r.log.note(&format!("health: {text}"));
            if r.health == Some(Health::Unhealthy) && r.spec.restart == RestartPolicy::Always {
                r.log.note("unhealthy with restart = \"always\": restarting");
                let name = result.container.clone();
                self.stop(&name, Then::Restart);
            }
        }
    }

    fn reap(&mut self) {
        let names: Vec<String> = self.replicas.keys().cloned().collect();
        for name in names {
            let r = self.replicas.get_mut(&name).expect("listed above");
            let Some(child) = &mut r.child else { continue };
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            r.child = None;
            r.next_probe = None;
            let exit = describe(status);
            r.log.note(&format!("exited: {exit}"));
            r.last_exit = Some(exit);
            self.dirty = true;
            match r.stopping.take() {
                Some((then, _)) => self.after_stop(&name, then),
                None if self.shutting_down => self.after_stop(&name, Then::Stop),
                None => {
                    r.health = None;
                    Self::schedule_restart(r, status.success());
                }
            }
        }
    }

    fn shutdown(&mut self) {
        self.shutting_down = true;
        let names: Vec<String> = self.replicas.keys().cloned().collect();
        for name in names {
            self.stop(&name, Then::Stop);
        }
    }

    fn wait_events(&mut self, timeout: Duration) {
        let mut fds = vec![
            PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.wake_read.as_fd(), PollFlags::POLLIN),
        ];
        fds.extend(
            self.pipes
                .iter()
                .map(|(fd, _)| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
        );
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        if poll(&mut fds, PollTimeout::from(millis)).unwrap_or(0) <= 0 {
            return;
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        let pipe_ready: Vec<usize> = ready[2..]
            .iter()
            .enumerate()
            .filter(|(_, r)| **r)
            .map(|(i, _)| i)
            .collect();
        let mut closed = Vec::new();
        for i in pipe_ready {
            let (fd, name) = &self.pipes[i];
            let mut buffer = [0u8; 16 * 1024];
            match nix::unistd::read(fd.as_raw_fd(), &mut buffer) {
                Ok(0) => closed.push(i),
                Ok(n) => {
                    if let Some(r) = self.replicas.get_mut(name) {
                        r.log.write(&buffer[..n]);
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            self.pipes.remove(i);
        }
        if ready[1] {
            let mut drain = [0u8; 64];
            let _ = nix::unistd::read(self.wake_read.as_raw_fd(), &mut drain);
            while let Ok(result) = self.probe_rx.try_recv() {
                self.probe_result(result);
            }
        }
        if ready[0] {
            while let Ok(Some(info)) = self.signals.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => self.reap(),
                    Ok(Signal::SIGHUP) => self.reload(),
                    Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => self.shutdown(),
                    _ => {}
                }
            }
        }
    }

    fn write_status(&mut self) {
        let replicas = self
            .replicas
            .iter()
            .map(|(name, r)| {
                let status = ReplicaStatus {
                    service: r.spec.service.clone(),
                    state: r.state.name().to_string(),
                    health: r.health.map(|h| match h {
                        Health::Starting => "starting".to_string(),
                        Health::Healthy => "healthy".to_string(),
                        Health::Unhealthy => "unhealthy".to_string(),
                    }),
                    pid: r.child.as_ref().map(Child::id),
                    restarts: r.restarts,
                    started_at_ms: r.child.as_ref().and(r.started.map(|(_, ms)| ms)),
                    last_exit: r.last_exit.clone(),
                    error: r.error.clone(),
                };
                (name.clone(), status)
            })
            .collect();
        let status = StatusFile {
            generation: self.run.generation,
            supervisor_pid: std::process::id(),
            replicas,
        };
        if runfile::write_json(&runfile::status_path(&self.dir), &status).is_ok() {
            self.dirty = false;
        }
    }
}

/// True if two specs run the same thing. Other services' addresses (`PLUMB_ADDRS_*`, the
/// hosts file) do not count: a service added elsewhere must not restart this one. The hosts
/// file is updated in place; the variables take effect at the next start.
fn same_definition(a: &RunSpec, b: &RunSpec) -> bool {
    let own = |s: &RunSpec| {
        s.env
            .iter()
            .filter(|(k, _)| !k.starts_with("PLUMB_ADDRS_"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    RunSpec {
        hosts: String::new(),
        env: Default::default(),
        ..a.clone()
    } == RunSpec {
        hosts: String::new(),
        env: Default::default(),
        ..b.clone()
    } && own(a) == own(b)
}

/// Starts one replica's process inside its container; returns it and its namespace's inode.
fn spawn_replica(spec: &RunSpec, hosts_dir: &Path) -> Result<(Child, Option<u64>)> {
    let netns_fd = netns::open(&spec.netns)?;
    let inode = netns::inode(&spec.netns);
    std::fs::create_dir_all(hosts_dir)?;
    let hosts = hosts_dir.join(&spec.container);
    std::fs::write(&hosts, &spec.hosts)?;
    let (program, args) = spec
        .command
        .split_first()
        .ok_or_else(|| Failure::new("empty command"))?;
    let program = if program.contains('/') {
        spec.workdir.join(program)
    } else {
        PathBuf::from(program)
    };
    let mut command = Command::new(&program);
    command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("HOSTNAME", &spec.container)
        // Python buffers output sent to a pipe; logs should show up as they happen.
        .env("PYTHONUNBUFFERED", "1")
        .envs(&spec.env)
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let identity = match &spec.user {
        None => None,
        Some(name) => {
            let user = User::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| Failure::new(format!("unknown user {name:?}")))?;
            command.env("HOME", &user.dir);
            Some(spawn::Identity {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            })
        }
    };
    spawn::confine(&mut command, netns_fd, &spec.container, Some(&hosts), identity)?;
    let child = command
        .spawn()
        .map_err(|e| Failure::new(format!("{}: {e}", program.display())))?;
    Ok((child, inode))
}

/// Signals a replica's whole process group (it is a session leader: pgid = pid).
fn signal_group(pid: u32, signal: Signal) {
    let _ = kill(Pid::from_raw(-(pid as i32)), signal);
}

fn set_flags(fd: BorrowedFd) {
    let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => Signal::try_from(sig).map_or(format!("signal {sig}"), |s| format!("killed by {s}")),
        _ => "unknown".into(),
    }
}
