//! The two files through which `plumb` and a stack's supervisor talk: `run.json` (what to run,
//! written by plumb; a new generation, then SIGHUP) and `status.json` (what runs, written by
//! the supervisor, naming the generation it has applied). The supervisor itself is found
//! through its socket (`supervisor_socket`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use plumb_core::services::RunSpec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::failure::{Failure, Result};
use crate::state::write_atomically;
use crate::supervisor_socket;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunFile {
    pub generation: u64,
    pub specs: Vec<RunSpec>,
    /// Services stopped by `plumb stop`.
    pub stopped: BTreeSet<String>,
    /// Bumped by `plumb restart SVC`.
    pub restarts: BTreeMap<String, u64>,
    /// The stack as `up` made it: what its DNS server answers (None from an older plumb).
    #[serde(default)]
    pub desired: Option<plumb_core::desired::Desired>,
    /// Replicas on their way out (`plumb scale` down, the autoscaler): they keep running but
    /// take no new connection (out of their VIP and DNS) while their connections drain.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub draining: BTreeSet<String>,
}

impl RunFile {
    pub fn is_stopped(&self, service: &str) -> bool {
        self.stopped.contains(service)
    }

    /// How often `plumb restart` named this service: a replica restarts when it changes.
    pub fn restart_token(&self, service: &str) -> u64 {
        self.restarts.get(service).copied().unwrap_or(0)
    }
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
    pub state: ReplicaState,
    /// None without a health check.
    pub health: Option<Health>,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Unix time in milliseconds when the current process started.
    pub started_at_ms: Option<u64>,
    /// How the last process ended. A status written by an older plumb had this as text: it
    /// reads as unknown rather than making the whole file unreadable.
    #[serde(default, deserialize_with = "unknown_if_unreadable")]
    pub last_exit: Option<Exit>,
    pub error: Option<String>,
}

impl ReplicaStatus {
    /// Its process runs, or ran to completion (exit code 0) and is not restarted.
    pub fn has_started(&self) -> bool {
        match self.state {
            ReplicaState::Running => true,
            ReplicaState::Exited => self.last_exit.is_some_and(Exit::is_success),
            _ => false,
        }
    }

    /// Its process ended with a failure and is not restarted.
    pub fn has_failed(&self) -> bool {
        self.state == ReplicaState::Exited && !self.last_exit.is_some_and(Exit::is_success)
    }

    /// How the last process ended, for messages: `exit code 3`, or `?` before any ended.
    pub fn last_exit_text(&self) -> String {
        self.last_exit.map_or_else(|| "?".to_string(), |e| e.to_string())
    }

    /// How long its current process has been running at `now_ms` (None without one).
    pub fn up_for(&self, now_ms: u64) -> Option<Duration> {
        self.started_at_ms
            .map(|t| Duration::from_millis(now_ms.saturating_sub(t)))
    }

    pub fn is_healthy(&self) -> bool {
        self.health == Some(Health::Healthy)
    }

    /// May take new connections through its service's name and VIP: its process runs and its
    /// health check, if it has one, passes.
    pub fn is_ready(&self) -> bool {
        self.state == ReplicaState::Running && matches!(self.health, None | Some(Health::Healthy))
    }
}

impl StatusFile {
    /// The containers of `desired` that may not take new connections: those with a process
    /// that is not ready (or not reported yet). A container without a process is always ready.
    pub fn unready(&self, desired: &plumb_core::desired::Desired) -> BTreeSet<String> {
        desired
            .containers
            .iter()
            .filter(|c| c.process.is_some())
            .filter(|c| !self.replicas.get(&c.name).is_some_and(ReplicaStatus::is_ready))
            .map(|c| c.name.clone())
            .collect()
    }
}

/// Where a replica's process is in its life, as the supervisor reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Not started yet: waits for its dependencies.
    #[default]
    Waiting,
    Running,
    /// Asked to stop; waits for the process to exit.
    Stopping,
    /// Exited and restarts after a back-off.
    Backoff,
    /// Exited and stays down (its restart policy says so).
    Exited,
    /// Stopped by `plumb stop` or by the supervisor stopping.
    Stopped,
}

impl ReplicaState {
    /// The name users see, in `ps` and in `status.json` alike.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Waiting => "waiting",
            ReplicaState::Running => "running",
            ReplicaState::Stopping => "stopping",
            ReplicaState::Backoff => "backoff",
            ReplicaState::Exited => "exited",
            ReplicaState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a replica's health check says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No verdict yet.
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal (by number) ended it.
    Signal(i32),
}

impl Exit {
    /// None for a status that is neither (a stopped or continued process).
    pub fn of(status: ExitStatus) -> Option<Exit> {
        status.code().map(Exit::Code).or(status.signal().map(Exit::Signal))
    }

    pub fn is_success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(number) => match Signal::try_from(number) {
                Ok(signal) => write!(f, "killed by {signal}"),
                Err(_) => write!(f, "killed by signal {number}"),
            },
        }
    }
}

fn unknown_if_unreadable<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    d: D,
) -> std::result::Result<Option<T>, D::Error> {
    Ok(serde_json::from_value(serde_json::Value::deserialize(d)?).ok())
}

/// Now as Unix milliseconds: the clock of `started_at_ms`.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn run_path(stack_dir: &Path) -> PathBuf {
    stack_dir.join("run.json")
}

pub fn status_path(stack_dir: &Path) -> PathBuf {
    stack_dir.join("status.json")
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

/// What the supervisor's autoscaler saw and decided last (`autoscale.json`), for `plumb
/// autoscale status` and the metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AutoscaleFile {
    /// Unix milliseconds of its last tick.
    pub updated_ms: u64,
    pub services: Vec<AutoscaleStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AutoscaleStatus {
    pub service: String,
    pub min: u32,
    pub max: u32,
    /// The replicas it runs (its spec's count).
    pub current: u32,
    /// The count the last tick decided.
    pub desired: u32,
    pub metrics: Vec<AutoscaleMetric>,
    /// Why the last tick decided what it did.
    pub reason: String,
    /// A scale under way (`plumb scale` started by the supervisor): the count it goes to.
    pub scaling_to: Option<u32>,
    /// The last decisions that changed the count, newest last.
    pub decisions: Vec<AutoscaleDecision>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AutoscaleMetric {
    /// `cpu`, `requests_per_second` or `connections`.
    pub metric: String,
    /// The average per ready replica that reported it; None if none did.
    pub value: Option<f64>,
    pub target: f64,
    /// The count this target asks for, if it can say.
    pub replicas: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AutoscaleDecision {
    pub ts_ms: u64,
    pub from: u32,
    pub to: u32,
    pub reason: String,
    /// How applying it went: `scaling`, `done`, or `failed: WHY`.
    pub outcome: String,
}

pub fn autoscale_path(stack_dir: &Path) -> PathBuf {
    stack_dir.join("autoscale.json")
}

pub fn read_autoscale(stack_dir: &Path) -> AutoscaleFile {
    read_json(&autoscale_path(stack_dir))
}

pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Failure::new(e.to_string()))?;
    write_atomically(path, &bytes)
}

/// The stack's supervisor, if one runs (found through its socket, whatever is left of the
/// state directory).
pub fn live_supervisor(stack_dir: &Path) -> Option<Pid> {
    supervisor_socket::find(stack_dir)
}

/// Asks the supervisor to apply `generation` (SIGHUP) and waits until its status says so.
pub fn signal_and_wait(stack_dir: &Path, pid: Pid, generation: u64, timeout: Duration) -> Result<StatusFile> {
    kill(pid, Signal::SIGHUP).map_err(|e| Failure::new(format!("cannot signal the supervisor (pid {pid}): {e}")))?;
    wait_generation(stack_dir, generation, timeout)
}

pub fn wait_generation(stack_dir: &Path, generation: u64, timeout: Duration) -> Result<StatusFile> {
    let mut status = StatusFile::default();
    let answered = wait_for_status(stack_dir, timeout, |s| {
        status = s;
        status.generation >= generation
    });
    if answered {
        Ok(status)
    } else {
        Err(Failure::new("the supervisor did not answer in time")
            .hint(format!("see {}", stack_dir.join("supervisor.log").display())))
    }
}

/// Polls `done` every 20 ms until it holds (true) or `timeout` has passed (false).
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

/// Reads `status.json` until `done` holds for it (true) or `timeout` has passed (false): at
/// once, then after 1 ms, 2 ms, then every [`QUICK_RECHECK`] for the first second (a
/// supervisor applies a new generation in a few milliseconds), then every
/// [`SLOW_RECHECK`] (health checks take seconds). Not inotify: closing an inotify descriptor
/// waits for an RCU grace period (synchronize_srcu), 8-20 ms measured, more than it saves.
pub fn wait_for_status(stack_dir: &Path, timeout: Duration, mut done: impl FnMut(StatusFile) -> bool) -> bool {
    let start = Instant::now();
    let mut nap = Duration::from_millis(1);
    loop {
        if done(read_status(stack_dir)) {
            return true;
        }
        let waited = start.elapsed();
        let Some(left) = timeout.checked_sub(waited).filter(|l| !l.is_zero()) else {
            return false;
        };
        std::thread::sleep(nap.min(left));
        let cap = if waited < Duration::from_secs(1) {
            QUICK_RECHECK
        } else {
            SLOW_RECHECK
        };
        nap = (nap * 2).min(cap);
    }
}

/// How often [`wait_for_status`] reads the status in its first second, and after.
const QUICK_RECHECK: Duration = Duration::from_millis(4);
const SLOW_RECHECK: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_read_as_users_know_them() {
        assert_eq!(Exit::Code(3).to_string(), "exit code 3");
        assert_eq!(Exit::Signal(9).to_string(), "killed by SIGKILL");
        assert_eq!(Exit::Signal(200).to_string(), "killed by signal 200");
        assert!(Exit::Code(0).is_success());
        assert!(!Exit::Code(1).is_success() && !Exit::Signal(15).is_success());
    }

    #[test]
    fn the_status_file_names_states_in_snake_case() {
        let status = ReplicaStatus {
            service: "web".into(),
            state: ReplicaState::Backoff,
            health: Some(Health::Unhealthy),
            last_exit: Some(Exit::Signal(9)),
            ..Default::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["state"], "backoff");
        assert_eq!(json["health"], "unhealthy");
        assert_eq!(json["last_exit"], serde_json::json!({ "signal": 9 }));
        assert_eq!(serde_json::from_value::<ReplicaStatus>(json).unwrap(), status);
    }

    #[test]
    fn display_names_are_the_serialized_ones() {
        use ReplicaState::*;
        for state in [Waiting, Running, Stopping, Backoff, Exited, Stopped] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        for health in [Health::Starting, Health::Healthy, Health::Unhealthy] {
            assert_eq!(serde_json::to_value(health).unwrap(), health.as_str());
        }
    }

    #[test]
    fn a_status_from_an_older_plumb_still_reads() {
        let old = r#"{"service":"s","state":"exited","health":null,"pid":null,"restarts":2,
            "started_at_ms":null,"last_exit":"exit code 1","error":null}"#;
        let status: ReplicaStatus = serde_json::from_str(old).unwrap();
        assert_eq!(
            (status.state, status.restarts, status.last_exit),
            (ReplicaState::Exited, 2, None)
        );
        assert!(status.has_failed() && !status.has_started());
    }

    #[test]
    fn a_process_that_ran_to_completion_counts_as_started() {
        let done = |exit| ReplicaStatus {
            state: ReplicaState::Exited,
            last_exit: Some(exit),
            ..Default::default()
        };
        assert!(done(Exit::Code(0)).has_started() && !done(Exit::Code(0)).has_failed());
        assert!(!done(Exit::Code(2)).has_started() && done(Exit::Code(2)).has_failed());
        assert_eq!(done(Exit::Code(2)).last_exit_text(), "exit code 2");
    }
}
