//! How `plumb` drives a stack's supervisor: hand it a new generation of `run.json`, start it
//! when it is not running (in the background, or in this process with `--foreground`), wait
//! until the services are up, and stop it on `down`.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use plumb_core::desired::Desired;
use plumb_core::services::RunSpec;
use plumb_core::spec::Condition;

use crate::failure::{Failure, Result};
use crate::runfile::{self, ReplicaState, ReplicaStatus, RunFile, StatusFile};
use crate::state::{create_private_dir, write_error, Lock, StateDir, PRIVATE_FILE};
use crate::supervisor_socket;

/// Writes `specs` (and `desired`, if given; else the one there stays) as the next generation
/// of `run.json` and returns it. The generation is past
/// what the status file and the running supervisor name too, so a `run.json` lost with the
/// state directory never makes an old status look like an answer.
pub fn write_run(stack_dir: &Path, specs: Vec<RunSpec>, desired: Option<&Desired>) -> Result<RunFile> {
    write_run_with(stack_dir, |run| {
        run.specs = specs;
        if let Some(d) = desired {
            run.desired = Some(d.clone());
        }
        // A new generation from `up`, `scale` (its replicas removed) or an attach ends any
        // drain: one left behind by a scale that died would keep replicas out of their VIP.
        run.draining.clear();
    })
}

/// Writes the next generation of `run.json`, changed by `change` from the current one; a
/// draining replica that is no longer there is forgotten.
fn write_run_with(stack_dir: &Path, change: impl FnOnce(&mut RunFile)) -> Result<RunFile> {
    let mut run = runfile::read_run(stack_dir);
    let applied = supervisor_socket::report(stack_dir).map_or(0, |(_, report)| report.generation);
    run.generation = run
        .generation
        .max(runfile::read_status(stack_dir).generation)
        .max(applied)
        + 1;
    change(&mut run);
    let specs = &run.specs;
    run.draining.retain(|c| specs.iter().any(|s| &s.container == c));
    create_private_dir(stack_dir)?;
    runfile::write_json(&runfile::run_path(stack_dir), &run)?;
    Ok(run)
}

/// The longest a drain waits for a leaving replica's connections to end (its `stop_grace`
/// if that is shorter).
const DRAIN_MOST: Duration = Duration::from_secs(10);
/// ... and the least, for a connection whose first packet the load balancer sent on just
/// before the replica left it.
const DRAIN_LEAST: Duration = Duration::from_millis(200);

/// Before the engine removes or rebuilds the containers of `netns` (a scale down, an `up`
/// with fewer replicas or a changed container): the running supervisor takes their replicas
/// out of their VIPs and DNS while they keep running (`run.json`'s `draining`), then this
/// waits until no TCP connection to them is opening or established, at least `DRAIN_LEAST`
/// and at most their `stop_grace` (at most `DRAIN_MOST`). Only then are they stopped: no
/// request fails because its replica went away. `undrain` takes them back if the change
/// fails.
pub fn drain(stack_dir: &Path, netns: &BTreeSet<String>, kernel: &mut dyn plumb_core::kernel::Kernel) -> Result<()> {
    let Some(pid) = runfile::live_supervisor(stack_dir) else {
        return Ok(());
    };
    let current = runfile::read_run(stack_dir);
    let (containers, addresses, grace) = leaving(&current, netns);
    if containers.is_empty() {
        return Ok(());
    }
    let run = write_run_with(stack_dir, |run| run.draining.extend(containers.iter().cloned()))?;
    runfile::signal_and_wait(stack_dir, pid, run.generation, Duration::from_secs(10))?;
    let grace = grace.min(DRAIN_MOST);
    let start = Instant::now();
    loop {
        let open = kernel.conntrack().map_or(0, |flows| {
            flows
                .iter()
                .filter(|f| f.protocol == "tcp" && ["SYN_SENT", "SYN_RECV", "ESTABLISHED"].contains(&f.state.as_str()))
                .filter(|f| addresses.contains(&f.reply.src))
                .count()
        });
        let waited = start.elapsed();
        if waited >= grace || (open == 0 && waited >= DRAIN_LEAST) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The replicas `run` holds in the namespaces `netns`, their addresses, and the longest of
/// their stop grace periods.
fn leaving(run: &RunFile, netns: &BTreeSet<String>) -> (BTreeSet<String>, BTreeSet<std::net::Ipv4Addr>, Duration) {
    let specs: Vec<&RunSpec> = run.specs.iter().filter(|s| netns.contains(&s.netns)).collect();
    let containers: BTreeSet<String> = specs.iter().map(|s| s.container.clone()).collect();
    let addresses = (run.desired.iter())
        .flat_map(|d| d.containers.iter())
        .filter(|c| containers.contains(&c.name))
        .flat_map(|c| c.interfaces.iter().map(|i| i.address))
        .collect();
    (
        containers,
        addresses,
        max_grace(&specs.into_iter().cloned().collect::<Vec<_>>()),
    )
}

/// Takes replicas out of draining (a change that failed after `drain`).
pub fn undrain(stack_dir: &Path) -> Result<()> {
    let Some(pid) = runfile::live_supervisor(stack_dir) else {
        return Ok(());
    };
    if runfile::read_run(stack_dir).draining.is_empty() {
        return Ok(());
    }
    let run = write_run_with(stack_dir, |run| run.draining.clear())?;
    runfile::signal_and_wait(stack_dir, pid, run.generation, Duration::from_secs(10)).map(|_| ())
}

/// Before containers are deleted or rebuilt: have a running supervisor stop their processes
/// gracefully (their `stop_grace`), so nothing is restarted into a namespace going away.
pub fn release_containers(stack_dir: &Path, netns: &BTreeSet<String>) -> Result<()> {
    let Some(pid) = runfile::live_supervisor(stack_dir) else {
        return Ok(());
    };
    let current = runfile::read_run(stack_dir);
    if !current.specs.iter().any(|s| netns.contains(&s.netns)) {
        return Ok(());
    }
    let keep: Vec<RunSpec> = current
        .specs
        .iter()
        .filter(|s| !netns.contains(&s.netns))
        .cloned()
        .collect();
    let grace = max_grace(&current.specs);
    let run = write_run(stack_dir, keep, None)?;
    runfile::signal_and_wait(stack_dir, pid, run.generation, Duration::from_secs(5))?;
    // The supervisor acknowledged; wait until those processes are really gone.
    runfile::wait_for_status(stack_dir, grace + Duration::from_secs(5), |status| {
        !status.replicas.keys().any(|c| {
            current
                .specs
                .iter()
                .any(|s| &s.container == c && netns.contains(&s.netns))
        })
    });
    Ok(())
}

/// Makes the supervisor run `run`: signals the live one, or starts one in the background.
///
/// A supervisor started here inherits `lock` (the state directory's, taken by the caller) and
/// lets it go once its socket is bound and its signals are blocked: the caller returns at
/// once, and the next command that takes the lock (`up`, `down`, `stop`, ...) finds the
/// supervisor and may signal it. So a stack without processes never waits for its supervisor
/// (nor its DNS server, which listens a few milliseconds later). A live supervisor is waited for
/// only when processes are to be reported (it ran some, or `run` has some); the caller waits
/// for those with [`wait_until_ready`].
pub fn hand_over(state: &StateDir, stack: &str, run: &RunFile, lock: Option<Lock>) -> Result<()> {
    let dir = state.stack_dir(stack);
    if let Some(pid) = runfile::live_supervisor(&dir) {
        let had_processes = !runfile::read_status(&dir).replicas.is_empty();
        if had_processes || !run.specs.is_empty() {
            runfile::signal_and_wait(&dir, pid, run.generation, Duration::from_secs(10))?;
        } else {
            kill(pid, Signal::SIGHUP)
                .map_err(|e| Failure::new(format!("cannot signal the supervisor (pid {pid}): {e}")))?;
        }
        return Ok(());
    }
    let log_path = dir.join("supervisor.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(PRIVATE_FILE)
        .open(&log_path)
        .map_err(|e| write_error(&log_path, e))?;
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command
        .arg("--state-dir")
        .arg(&state.root)
        .args(["supervise", stack])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let lock = lock.map(Lock::into_fd);
    if let Some(fd) = &lock {
        let raw = fd.as_raw_fd();
        command.arg("--lock-fd").arg(raw.to_string());
        // SAFETY: fcntl(2) is async-signal-safe; it clears close-on-exec on the child's own
        // copy of the descriptor, so the supervisor holds the lock across exec.
        unsafe {
            command.pre_exec(move || {
                if nix::libc::fcntl(raw, nix::libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    // SAFETY: setsid is async-signal-safe; it detaches the supervisor from our terminal and
    // process group, so it outlives this command and Ctrl-C here does not reach it.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    command
        .spawn()
        .map_err(|e| Failure::new(format!("cannot start the supervisor: {e}")))?;
    if lock.is_none() {
        runfile::wait_generation(&dir, run.generation, Duration::from_secs(10))?;
    }
    // Our copy closes here without unlocking: the supervisor's copy holds the lock.
    Ok(())
}

/// Stops the stack's supervisor (it stops every process first) and waits until it is gone.
pub fn stop_supervisor(stack_dir: &Path) -> Result<()> {
    let Some(pid) = runfile::live_supervisor(stack_dir) else {
        return Ok(());
    };
    let grace = max_grace(&runfile::read_run(stack_dir).specs);
    let timeout = grace + Duration::from_secs(10);
    // Opened before the signal, so the descriptor names this process, not a later one.
    let exit = ProcessExit::watch(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let start = Instant::now();
    if let Some(exit) = exit {
        exit.wait(timeout);
    }
    let left = timeout.saturating_sub(start.elapsed());
    if runfile::wait_until(left, || runfile::live_supervisor(stack_dir).is_none()) {
        Ok(())
    } else {
        Err(Failure::new(format!("the supervisor (pid {pid}) did not stop"))
            .hint(format!("see {}", stack_dir.join("supervisor.log").display())))
    }
}

/// A process's end, as a pidfd (pidfd_open(2), Linux 5.3): it becomes readable when the
/// process has exited, whoever its parent is (the supervisor is not ours: no SIGCHLD).
struct ProcessExit(OwnedFd);

impl ProcessExit {
    /// None if the process is gone already, or pidfds are not supported.
    fn watch(pid: Pid) -> Option<ProcessExit> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid.as_raw(), 0) };
        let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
        Some(ProcessExit(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Waits until the process has exited (true) or `timeout` has passed (false).
    fn wait(&self, timeout: Duration) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(n) if n > 0 => return true,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return false,
                Ok(_) if left.is_zero() => return false,
                Ok(_) => continue,
            }
        }
    }
}

/// What `wait_until_ready` waits for beyond every replica having started (its program
/// executed: the supervisor knows that as soon as it has spawned it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthWait {
    /// Replicas another service depends on with `condition = "healthy"` healthy too (what
    /// `up` promises). A process that exits soon after its start shows in `ps` and `events`.
    Dependencies,
    /// Every replica ready: healthy where it has a health check, else still running
    /// [`SETTLE`] after its start (`up --wait`, as Compose's; `demo`).
    Everything,
}

/// What one replica must reach to count as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Its program executed: only a failed start (exec) is a failure; what the process does
    /// after is for `ps` and `events` to tell.
    Started,
    /// Started, and still running [`SETTLE`] later; exiting for good or in a loop fails.
    StayedUp,
    /// Started, and passing its health check (waiting through an unhealthy spell, as a
    /// dependency that is slow to listen has); exiting for good or in a loop fails.
    Healthy,
    /// Healthy, and unhealthy fails at once (`up --wait`, as Compose's).
    HealthyOrFail,
}

/// Waits until the supervisor has applied `run` and every service that is not stopped has
/// started, and is healthy or stayed up where `health` asks; fails as soon as one cannot get
/// there (cannot start, keeps exiting, exited, unhealthy where health is waited for), naming
/// every replica that is not ready.
pub fn wait_until_ready(stack_dir: &Path, run: &RunFile, health: HealthWait) -> Result<StatusFile> {
    let healthy_needed: BTreeSet<&str> = run
        .specs
        .iter()
        .flat_map(|s| {
            s.depends_on
                .iter()
                .filter(|d| d.condition == Condition::Healthy)
                .map(|d| d.service.as_str())
        })
        .collect();
    let need = |spec: &RunSpec| match (health, spec.health.is_some()) {
        (HealthWait::Everything, true) => Need::HealthyOrFail,
        (HealthWait::Everything, false) => Need::StayedUp,
        (HealthWait::Dependencies, true) if healthy_needed.contains(spec.service.as_str()) => Need::Healthy,
        (HealthWait::Dependencies, _) => Need::Started,
    };
    let slowest = run
        .specs
        .iter()
        .filter_map(|s| s.health.as_ref())
        .map(|h| h.start_period + h.interval * (h.retries + 1))
        .max()
        .unwrap_or_default();
    let start = Instant::now();
    let timeout = Duration::from_secs(60) + slowest;
    let progress = Progress::start();
    let mut outcome: Option<Result<StatusFile>> = None;
    let mut waiting = Vec::new();
    runfile::wait_for_status(stack_dir, timeout, |status| {
        waiting.clear();
        if status.generation < run.generation {
            if start.elapsed() > SUPERVISOR_PATIENCE {
                outcome = Some(Err(Failure::new("the supervisor did not answer in time")
                    .hint(format!("see {}", stack_dir.join("supervisor.log").display()))));
                return true;
            }
            waiting.push("the supervisor (starting)".to_string());
            return false;
        }
        let now_ms = runfile::unix_ms();
        let mut failed = Vec::new();
        for spec in run.specs.iter().filter(|s| !run.is_stopped(&s.service)) {
            let replica = status.replicas.get(&spec.container);
            match readiness(&spec.container, replica, need(spec), now_ms) {
                Readiness::Ready => {}
                Readiness::Waiting(why) => waiting.push(why),
                Readiness::Failed(problem) => failed.push((spec.container.as_str(), problem)),
            }
        }
        if !failed.is_empty() {
            outcome = Some(Err(not_ready(&failed, &waiting)));
            return true;
        }
        if waiting.is_empty() {
            outcome = Some(Ok(status));
            return true;
        }
        progress.show(&waiting);
        false
    });
    progress.clear();
    outcome.unwrap_or_else(|| {
        Err(Failure::new(format!("services not ready: {}", waiting.join(", ")))
            .hint("`plumb ps` shows their state, `plumb logs SVC` their output"))
    })
}

/// The error naming each replica that will not get ready, and why (and those still on the way).
fn not_ready(failed: &[(&str, String)], waiting: &[String]) -> Failure {
    let mut message: Vec<String> = failed.iter().map(|(c, problem)| format!("{c}: {problem}")).collect();
    if !waiting.is_empty() {
        message.push(format!("not ready yet: {}", waiting.join(", ")));
    }
    let logs: Vec<String> = failed
        .iter()
        .take(3)
        .map(|(c, _)| format!("`plumb logs {c}`"))
        .collect();
    let verb = if logs.len() == 1 { "shows its" } else { "show their" };
    Failure::new(message.join("; ")).hint(format!("{} {verb} output", logs.join(", ")))
}

enum Readiness {
    Ready,
    /// Not yet: the container and what it is doing, such as `web-1 (running, starting)`.
    Waiting(String),
    /// It will not get there, because of this.
    Failed(String),
}

/// Where one replica stands at `now_ms` against what it `need`s, from its status (None: the
/// supervisor does not know it yet).
fn readiness(container: &str, status: Option<&ReplicaStatus>, need: Need, now_ms: u64) -> Readiness {
    let Some(r) = status else {
        return Readiness::Waiting(format!("{container} (not known to the supervisor)"));
    };
    let crash_looping = r.state == ReplicaState::Backoff && r.restarts >= CRASH_LOOP;
    let problem = if let Some(error) = &r.error {
        Some(error.clone())
    } else if need == Need::Started {
        None
    } else if crash_looping {
        Some(format!(
            "keeps exiting ({}, {} restarts)",
            r.last_exit_text(),
            r.restarts
        ))
    } else if r.has_failed() {
        Some(format!("exited ({})", r.last_exit_text()))
    } else if need == Need::HealthyOrFail && r.health == Some(crate::runfile::Health::Unhealthy) {
        Some("unhealthy (its health check keeps failing)".to_string())
    } else {
        None
    };
    if let Some(problem) = problem {
        return Readiness::Failed(problem);
    }
    let ready = match need {
        // Its program ran: it runs, or it has exited since (and is not waiting to start).
        Need::Started => {
            r.state == ReplicaState::Running
                || (matches!(r.state, ReplicaState::Exited | ReplicaState::Backoff) && r.last_exit.is_some())
        }
        Need::StayedUp => {
            r.has_started() && (r.state != ReplicaState::Running || r.up_for(now_ms).is_some_and(|t| t >= SETTLE))
        }
        Need::Healthy | Need::HealthyOrFail => r.has_started() && r.is_healthy(),
    };
    if ready {
        return Readiness::Ready;
    }
    let health = r.health.map(|h| format!(", {h}")).unwrap_or_default();
    Readiness::Waiting(format!("{container} ({}{health})", r.state))
}

/// The "waiting for N replica(s)" line on a terminal, once waiting takes more than a second.
struct Progress {
    tty: bool,
    start: Instant,
}

impl Progress {
    fn start() -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            start: Instant::now(),
        }
    }

    fn shown(&self) -> bool {
        self.tty && self.start.elapsed() > Duration::from_secs(1)
    }

    fn show(&self, waiting: &[String]) {
        if self.shown() {
            let first: Vec<&str> = waiting.iter().take(3).map(String::as_str).collect();
            eprint!(
                "\r\x1b[K  waiting for {} replica(s): {}",
                waiting.len(),
                first.join(", ")
            );
        }
    }

    fn clear(&self) {
        if self.shown() {
            eprint!("\r\x1b[K");
        }
    }
}

/// After this many restarts in a row during `up`, a replica is reported as failing.
const CRASH_LOOP: u32 = 3;

/// With `up --wait`, a process without a health check counts as ready once it has run this
/// long (as long as its first back-off), so one that fails at once is reported rather than
/// declared ready. Without `--wait`, a replica counts as started as soon as its program runs.
const SETTLE: Duration = Duration::from_millis(500);

/// How long a supervisor may take to apply a new `run.json`.
const SUPERVISOR_PATIENCE: Duration = Duration::from_secs(10);

fn max_grace(specs: &[RunSpec]) -> Duration {
    Duration::from_millis(specs.iter().map(|s| s.stop_grace_ms).max().unwrap_or(0))
}

/// Removes a replica's cgroup if it is there, killing (by PID) what is still inside: a
/// process that left its group and its namespace, or one a crashed supervisor left.
pub fn remove_cgroup(kernel: &mut dyn plumb_core::kernel::Kernel, path: &str) {
    for _ in 0..50 {
        let pids = kernel.cgroup_pids(path);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if let Err(e) = kernel.cgroup_remove(path) {
        eprintln!("plumb: cannot remove a cgroup: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runfile::{Exit, Health};

    #[test]
    fn a_drain_takes_the_replicas_of_the_namespaces_going_with_their_addresses() {
        let text = "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n\
            [services.web]\nreplicas = 3\nexpose = [80]\ncommand = \"x\"\nstop_grace = \"3s\"\n\
            [services.db]\ncommand = \"y\"\n[services.bare]\n";
        let parsed = plumb_core::spec::parse("f", text).unwrap();
        let desired = plumb_core::desired::resolve(&parsed, &Default::default()).unwrap().0;
        let run = RunFile {
            specs: plumb_core::services::run_specs(&desired, Path::new("/")),
            desired: Some(desired.clone()),
            ..RunFile::default()
        };
        let netns = |names: &[&str]| -> BTreeSet<String> {
            names
                .iter()
                .map(|n| desired.container(n).unwrap().netns.clone())
                .collect()
        };
        let (containers, addresses, grace) = leaving(&run, &netns(&["web-3", "bare-1"]));
        // A container without a process has nothing to drain.
        assert_eq!(containers, BTreeSet::from(["web-3".to_string()]));
        let address = desired.container("web-3").unwrap().interfaces[0].address;
        assert_eq!(addresses, BTreeSet::from([address]));
        assert_eq!(grace, Duration::from_secs(3));
        assert_eq!(leaving(&run, &BTreeSet::new()).0, BTreeSet::new());
    }

    fn message(readiness: Readiness) -> String {
        match readiness {
            Readiness::Ready => "ready".into(),
            Readiness::Waiting(why) => format!("waiting: {why}"),
            Readiness::Failed(problem) => format!("failed: {problem}"),
        }
    }

    #[test]
    fn readiness_names_what_each_replica_waits_for_or_why_it_failed() {
        const NOW: u64 = 1_000_000;
        let status = |state, health, last_exit, restarts| ReplicaStatus {
            state,
            health,
            last_exit,
            restarts,
            started_at_ms: (state == Running).then_some(NOW - SETTLE.as_millis() as u64),
            ..ReplicaStatus::default()
        };
        use Need::*;
        use ReplicaState::*;
        let cases = [
            (None, Started, "waiting: w-1 (not known to the supervisor)"),
            (Some(status(Running, None, None, 0)), Started, "ready"),
            (Some(status(Running, Some(Health::Starting), None, 0)), Started, "ready"),
            (
                Some(status(Running, Some(Health::Starting), None, 0)),
                Healthy,
                "waiting: w-1 (running, starting)",
            ),
            (Some(status(Running, Some(Health::Healthy), None, 0)), Healthy, "ready"),
            (
                Some(status(Running, Some(Health::Unhealthy), None, 0)),
                HealthyOrFail,
                "failed: unhealthy (its health check keeps failing)",
            ),
            (
                Some(status(Running, Some(Health::Unhealthy), None, 0)),
                Healthy,
                "waiting: w-1 (running, unhealthy)",
            ),
            (
                Some(status(Running, Some(Health::Unhealthy), None, 0)),
                Started,
                "ready",
            ),
            (Some(status(Exited, None, Some(Exit::Code(0)), 0)), Started, "ready"),
            (Some(status(Exited, None, Some(Exit::Code(0)), 0)), StayedUp, "ready"),
            // A crash after the program ran is not up's to report, unless it waits for more.
            (Some(status(Exited, None, Some(Exit::Code(1)), 0)), Started, "ready"),
            (Some(status(Backoff, None, Some(Exit::Code(3)), 3)), Started, "ready"),
            (
                Some(status(Waiting, None, Some(Exit::Code(3)), 0)),
                Started,
                "waiting: w-1 (waiting)",
            ),
            (
                Some(status(Exited, None, Some(Exit::Code(1)), 0)),
                StayedUp,
                "failed: exited (exit code 1)",
            ),
            (
                Some(status(Exited, None, Some(Exit::Code(1)), 0)),
                Healthy,
                "failed: exited (exit code 1)",
            ),
            (
                Some(status(Backoff, None, Some(Exit::Code(3)), 2)),
                StayedUp,
                "waiting: w-1 (backoff)",
            ),
            (
                Some(status(Backoff, None, Some(Exit::Code(3)), 3)),
                StayedUp,
                "failed: keeps exiting (exit code 3, 3 restarts)",
            ),
        ];
        for (status, need, expected) in cases {
            assert_eq!(message(readiness("w-1", status.as_ref(), need, NOW)), expected);
        }
        // Started as soon as it runs; with --wait, once it has stayed up SETTLE.
        let just_started = status(Running, None, None, 0);
        assert_eq!(
            message(readiness("w-1", Some(&just_started), Started, NOW - 1)),
            "ready"
        );
        assert_eq!(
            message(readiness("w-1", Some(&just_started), StayedUp, NOW - 1)),
            "waiting: w-1 (running)"
        );
        assert_eq!(message(readiness("w-1", Some(&just_started), StayedUp, NOW)), "ready");
        let broken = ReplicaStatus {
            error: Some("cannot start: no such file".into()),
            ..ReplicaStatus::default()
        };
        assert_eq!(
            message(readiness("w-1", Some(&broken), Started, NOW)),
            "failed: cannot start: no such file"
        );
    }

    #[test]
    fn the_error_names_every_replica_not_ready() {
        let failed = [
            ("a-1", "exited (exit code 1)".to_string()),
            ("b-1", "unhealthy".to_string()),
        ];
        let e = not_ready(&failed, &["c-1 (running, starting)".to_string()]);
        assert_eq!(
            e.message,
            "a-1: exited (exit code 1); b-1: unhealthy; not ready yet: c-1 (running, starting)"
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("`plumb logs a-1`, `plumb logs b-1` show their output")
        );
    }
}
