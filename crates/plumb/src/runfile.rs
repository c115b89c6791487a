//! The two files through which `plumb` and a stack's supervisor talk: `run.json` (what to run,
//! written by plumb; a new generation, then SIGHUP) and `status.json` (what runs, written by
//! the supervisor, naming the generation it has applied).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use plumb_core::services::RunSpec;
use serde::{Deserialize, Serialize};

use crate::failure::{Failure, Result};
use crate::state::write_atomically;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunFile {
    pub generation: u64,
    pub specs: Vec<RunSpec>,
    /// Services stopped by `plumb stop`.
    pub stopped: BTreeSet<String>,
    /// Bumped by `plumb restart SVC`.
    pub restarts: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusFile {
    pub generation: u64,
    pub supervisor_pid: u32,
    pub replicas: BTreeMap<String, ReplicaStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub service: String,
    /// waiting, running, stopping, backoff, exited, stopped
    pub state: String,
    /// starting, healthy, unhealthy; None without a health check.
    pub health: Option<String>,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Unix time in milliseconds when the current process started.
    pub started_at_ms: Option<u64>,
    pub last_exit: Option<String>,
    pub error: Option<String>,
}

pub fn run_path(stack_dir: &Path) -> PathBuf {
    stack_dir.join("run.json")
}

pub fn status_path(stack_dir: &Path) -> PathBuf {
    stack_dir.join("status.json")
}

pub fn pid_path(stack_dir: &Path) -> PathBuf {
    stack_dir.join("supervisor.pid")
}

pub fn logs_dir(stack_dir: &Path) -> PathBuf {
    stack_dir.join("logs")
}

fn read_json<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> T {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub fn read_run(stack_dir: &Path) -> RunFile {
    read_json(&run_path(stack_dir))
}

pub fn read_status(stack_dir: &Path) -> StatusFile {
    read_json(&status_path(stack_dir))
}

pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Failure::new(e.to_string()))?;
    write_atomically(path, &bytes)
}

/// The stack's supervisor, if one is alive: the PID file names a process that is still the
/// one that wrote it (same start time, so a reused PID does not count) and not a zombie.
pub fn live_supervisor(stack_dir: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(pid_path(stack_dir)).ok()?;
    let mut fields = text.split_whitespace();
    let pid: i32 = fields.next()?.parse().ok()?;
    let started: u64 = fields.next()?.parse().ok()?;
    let (state, start) = process_state(pid)?;
    (start == started && state != 'Z').then(|| Pid::from_raw(pid))
}

/// What the supervisor writes to its PID file: its PID and its start time.
pub fn pid_file_content() -> String {
    let pid = std::process::id() as i32;
    let start = process_state(pid).map_or(0, |(_, s)| s);
    format!("{pid} {start}\n")
}

/// A process's state letter and start time (clock ticks after boot), from /proc/PID/stat.
fn process_state(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields.first()?.chars().next()?, fields.get(19)?.parse().ok()?))
}

/// Asks the supervisor to apply `generation` (SIGHUP) and waits until its status says so.
pub fn signal_and_wait(stack_dir: &Path, pid: Pid, generation: u64, timeout: Duration) -> Result<StatusFile> {
    kill(pid, Signal::SIGHUP).map_err(|e| Failure::new(format!("cannot signal the supervisor (pid {pid}): {e}")))?;
    wait_generation(stack_dir, generation, timeout)
}

pub fn wait_generation(stack_dir: &Path, generation: u64, timeout: Duration) -> Result<StatusFile> {
    if wait_until(timeout, || read_status(stack_dir).generation >= generation) {
        Ok(read_status(stack_dir))
    } else {
        Err(Failure::new("the supervisor did not answer in time")
            .hint(format!("see {}", stack_dir.join("supervisor.log").display())))
    }
}

/// Polls `done` every 20 ms until it holds (true) or `timeout` has passed (false): how plumb
/// waits for the supervisor, whose answers are files.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}
