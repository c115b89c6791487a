//! How `plumb` drives a stack's supervisor: hand it a new generation of `run.json`, start it
//! when it is not running (in the background, or in this process with `--foreground`), wait
//! until the services are up, and stop it on `down`.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use plumb_core::desired::Desired;
use plumb_core::services::RunSpec;
use plumb_core::spec::Condition;

use crate::failure::{Failure, Result};
use crate::runfile::{self, ReplicaState, ReplicaStatus, RunFile, StatusFile};
use crate::state::{create_private_dir, write_error, StateDir, PRIVATE_FILE};
use crate::supervisor_socket;

/// Writes `specs` (and `desired`, if given; else the one there stays) as the next generation
/// of `run.json` and returns it. The generation is past
/// what the status file and the running supervisor name too, so a `run.json` lost with the
/// state directory never makes an old status look like an answer.
pub fn write_run(stack_dir: &Path, specs: Vec<RunSpec>, desired: Option<&Desired>) -> Result<RunFile> {
    let mut run = runfile::read_run(stack_dir);
    let applied = supervisor_socket::report(stack_dir).map_or(0, |(_, report)| report.generation);
    run.generation = run
        .generation
        .max(runfile::read_status(stack_dir).generation)
        .max(applied)
        + 1;
    run.specs = specs;
    if let Some(d) = desired {
        run.desired = Some(d.clone());
    }
    create_private_dir(stack_dir)?;
    runfile::write_json(&runfile::run_path(stack_dir), &run)?;
    Ok(run)
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
    runfile::wait_until(grace + Duration::from_secs(5), || {
        let status = runfile::read_status(stack_dir);
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
pub fn hand_over(state: &StateDir, stack: &str, run: &RunFile) -> Result<()> {
    let dir = state.stack_dir(stack);
    if let Some(pid) = runfile::live_supervisor(&dir) {
        runfile::signal_and_wait(&dir, pid, run.generation, Duration::from_secs(10))?;
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
    // SAFETY: setsid is async-signal-safe; it detaches the supervisor from our terminal and
    // process group, so it outlives this command and Ctrl-C here does not reach it.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    command
        .spawn()
        .map_err(|e| Failure::new(format!("cannot start the supervisor: {e}")))?;
    runfile::wait_generation(&dir, run.generation, Duration::from_secs(10))?;
    Ok(())
}

/// Stops the stack's supervisor (it stops every process first) and waits until it is gone.
pub fn stop_supervisor(stack_dir: &Path) -> Result<()> {
    let Some(pid) = runfile::live_supervisor(stack_dir) else {
        return Ok(());
    };
    let grace = max_grace(&runfile::read_run(stack_dir).specs);
    let _ = kill(pid, Signal::SIGTERM);
    if runfile::wait_until(grace + Duration::from_secs(10), || {
        runfile::live_supervisor(stack_dir).is_none()
    }) {
        Ok(())
    } else {
        Err(Failure::new(format!("the supervisor (pid {pid}) did not stop"))
            .hint(format!("see {}", stack_dir.join("supervisor.log").display())))
    }
}

/// Which replicas `wait_until_ready` also waits to see healthy (every one must have started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthWait {
    /// Those another service depends on with `condition = "healthy"` (what `up` promises).
    Dependencies,
    /// Every replica with a health check (`demo`, which then says "open the page").
    Everything,
}

/// Waits until every service that is not stopped has started, and is healthy where `health`
/// asks; fails as soon as one cannot get there (cannot start, keeps exiting, exited).
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
    let slowest = run
        .specs
        .iter()
        .filter_map(|s| s.health.as_ref())
        .map(|h| h.start_period + h.interval * (h.retries + 1))
        .max()
        .unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60) + slowest;
    let progress = Progress::start();
    loop {
        let status = runfile::read_status(stack_dir);
        let now_ms = runfile::unix_ms();
        let mut waiting = Vec::new();
        for spec in run.specs.iter().filter(|s| !run.is_stopped(&s.service)) {
            let needs_health = spec.health.is_some()
                && (health == HealthWait::Everything || healthy_needed.contains(spec.service.as_str()));
            match readiness(
                &spec.container,
                status.replicas.get(&spec.container),
                needs_health,
                now_ms,
            ) {
                Readiness::Ready => {}
                Readiness::Waiting(why) => waiting.push(why),
                Readiness::Failed(failure) => return Err(failure),
            }
        }
        if waiting.is_empty() {
            progress.clear();
            return Ok(status);
        }
        if Instant::now() > deadline {
            return Err(Failure::new(format!("services not ready: {}", waiting.join(", ")))
                .hint("`plumb ps` shows their state, `plumb logs SVC` their output"));
        }
        progress.show(&waiting);
        std::thread::sleep(Duration::from_millis(100));
    }
}

enum Readiness {
    Ready,
    /// Not yet: the container and what it is doing, such as `web-1 (running, starting)`.
    Waiting(String),
    /// It will not get there.
    Failed(Failure),
}

/// Where one replica stands at `now_ms`, from its status (None: the supervisor does not know
/// it yet).
fn readiness(container: &str, status: Option<&ReplicaStatus>, needs_health: bool, now_ms: u64) -> Readiness {
    let Some(r) = status else {
        return Readiness::Waiting(format!("{container} (not known to the supervisor)"));
    };
    let crash_looping = r.state == ReplicaState::Backoff && r.restarts >= CRASH_LOOP;
    let problem = if let Some(error) = &r.error {
        Some(error.clone())
    } else if crash_looping {
        Some(format!(
            "keeps exiting ({}, {} restarts)",
            r.last_exit_text(),
            r.restarts
        ))
    } else if r.has_failed() {
        Some(format!("exited ({})", r.last_exit_text()))
    } else {
        None
    };
    if let Some(problem) = problem {
        return Readiness::Failed(
            Failure::new(format!("{container}: {problem}")).hint(format!("`plumb logs {container}` shows its output")),
        );
    }
    // A process that dies at once is seen running for a moment: give it time to show it.
    let settled = r.state != ReplicaState::Running || r.up_for(now_ms).is_some_and(|t| t >= SETTLE);
    if r.has_started() && settled && (!needs_health || r.is_healthy()) {
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

/// A process counts as started once it has run this long (as long as its first back-off), so
/// one that fails at once is reported rather than declared started.
const SETTLE: Duration = Duration::from_millis(500);

fn max_grace(specs: &[RunSpec]) -> Duration {
    Duration::from_millis(specs.iter().map(|s| s.stop_grace_ms).max().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runfile::{Exit, Health};

    fn message(readiness: Readiness) -> String {
        match readiness {
            Readiness::Ready => "ready".into(),
            Readiness::Waiting(why) => format!("waiting: {why}"),
            Readiness::Failed(failure) => format!("failed: {}", failure.message),
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
        use ReplicaState::*;
        let cases = [
            (None, false, "waiting: w-1 (not known to the supervisor)"),
            (Some(status(Running, None, None, 0)), false, "ready"),
            (Some(status(Running, Some(Health::Starting), None, 0)), false, "ready"),
            (
                Some(status(Running, Some(Health::Starting), None, 0)),
                true,
                "waiting: w-1 (running, starting)",
            ),
            (Some(status(Running, Some(Health::Healthy), None, 0)), true, "ready"),
            (Some(status(Exited, None, Some(Exit::Code(0)), 0)), false, "ready"),
            (
                Some(status(Exited, None, Some(Exit::Code(1)), 0)),
                false,
                "failed: w-1: exited (exit code 1)",
            ),
            (
                Some(status(Backoff, None, Some(Exit::Code(3)), 2)),
                false,
                "waiting: w-1 (backoff)",
            ),
            (
                Some(status(Backoff, None, Some(Exit::Code(3)), 3)),
                false,
                "failed: w-1: keeps exiting (exit code 3, 3 restarts)",
            ),
        ];
        for (status, needs_health, expected) in cases {
            assert_eq!(message(readiness("w-1", status.as_ref(), needs_health, NOW)), expected);
        }
        let just_started = status(Running, None, None, 0);
        assert_eq!(
            message(readiness("w-1", Some(&just_started), false, NOW - 1)),
            "waiting: w-1 (running)"
        );
        let broken = ReplicaStatus {
            error: Some("cannot start: no such file".into()),
            ..ReplicaStatus::default()
        };
        assert_eq!(
            message(readiness("w-1", Some(&broken), false, NOW)),
            "failed: w-1: cannot start: no such file"
        );
    }
}
