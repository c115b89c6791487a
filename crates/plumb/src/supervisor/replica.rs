//! One replica's life as a pure state machine: start, exit, back-off, stop, restart by policy
//! or for failing its health check, and when its dependencies let it start. It owns no process
//! and reads no clock: the event loop passes the time in and carries out what it is told.

use std::time::{Duration, Instant};

use plumb_core::services::RunSpec;
use plumb_core::spec::{Condition, RestartPolicy};

use crate::runfile::{Exit, Health, ReplicaState};

/// A process that ran at least this long starts the back-off sequence over.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A process still there this long after SIGKILL is signalled again.
const KILL_RECHECK: Duration = Duration::from_secs(1);
/// The first probe runs this soon after a start at the latest, whatever the interval.
const FIRST_PROBE_WITHIN: Duration = Duration::from_millis(500);

/// Why a process is being stopped: decides what happens once it has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// Start it again (its definition changed, `plumb restart`, or it turned unhealthy).
    Restart,
    /// Leave it stopped.
    Stop,
    /// Forget the replica: it is no longer in `run.json`.
    Remove,
}

/// What the event loop should do for a replica now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Start it, once its dependencies are ready.
    StartAfterDependencies,
    /// Its back-off is over: start it again.
    Restart,
    /// It outlived its stop grace period: SIGKILL its process group.
    Kill,
    /// Its health probe is due.
    Probe,
}

/// What the event loop does after `Replica::stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopStep {
    /// Send SIGTERM to the process group, then wait for the exit.
    Terminate,
    /// Already signalled: keep waiting for the exit.
    Wait,
    /// No process was running: the stop is complete.
    Done,
    /// No process was running and the replica is to be forgotten.
    Remove,
}

/// What follows a process's exit (or a failed start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// Its restart policy starts it again after this back-off.
    RestartIn(Duration),
    /// It stays down: stopped, exited for good, or waiting to start again.
    Settled,
    /// The replica is to be forgotten.
    Remove,
}

/// What a probe result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No change (or a late result for an earlier process).
    Same,
    /// The health is now this.
    Now(Health),
    /// Turned unhealthy under `restart = "always"`: stop it and start it again.
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Running,
    Stopping { then: AfterStop, deadline: Instant },
    Backoff { until: Instant },
    Exited,
    Stopped,
}

/// The delays between restarts: 500 ms after the first failure, doubling, at most 30 s; a
/// process that ran 10 s or more counts as the first failure of a new sequence.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures_in_row: u32,
}

impl Backoff {
    /// The delay before the next start, after a process that ran for `ran` (None: it never
    /// started).
    pub fn after(&mut self, ran: Option<Duration>) -> Duration {
        let stable = ran.is_some_and(|d| d >= STABLE_AFTER);
        self.failures_in_row = if stable {
            1
        } else {
            self.failures_in_row.saturating_add(1)
        };
        let doublings = (self.failures_in_row - 1).min(10);
        BACKOFF_START.saturating_mul(1 << doublings).min(BACKOFF_CAP)
    }
}

#[derive(Debug, Clone, Default)]
struct Probing {
    /// Failed probes in a row.
    failures: u32,
    next: Option<Instant>,
    /// A probe runs now; its result has not come back.
    in_flight: bool,
}

#[derive(Debug, Clone)]
pub struct Replica {
    spec: RunSpec,
    phase: Phase,
    /// Starts after the first one.
    restarts: u32,
    backoff: Backoff,
    /// When the current process started: for the back-off, and as Unix milliseconds for `ps`.
    started: Option<(Instant, u64)>,
    health: Option<Health>,
    probing: Probing,
    /// Counts starts, so a late probe result of an earlier process is ignored.
    epoch: u64,
    last_exit: Option<Exit>,
    error: Option<String>,
    /// The service's `plumb restart` counter this replica last applied.
    restart_token: u64,
    /// The inode of the namespace the process was started in: a rebuilt container has another.
    netns_inode: Option<u64>,
}

impl Replica {
    /// A replica not started yet.
    pub fn new(spec: RunSpec, restart_token: u64) -> Self {
        Replica {
            spec,
            phase: Phase::Waiting,
            restarts: 0,
            backoff: Backoff::default(),
            started: None,
            health: None,
            probing: Probing::default(),
            epoch: 0,
            last_exit: None,
            error: None,
            restart_token,
            netns_inode: None,
        }
    }

    pub fn spec(&self) -> &RunSpec {
        &self.spec
    }

    pub fn state(&self) -> ReplicaState {
        match self.phase {
            Phase::Waiting => ReplicaState::Waiting,
            Phase::Running => ReplicaState::Running,
            Phase::Stopping { .. } => ReplicaState::Stopping,
            Phase::Backoff { .. } => ReplicaState::Backoff,
            Phase::Exited => ReplicaState::Exited,
            Phase::Stopped => ReplicaState::Stopped,
        }
    }

    /// Its process is alive (running, or asked to stop and not gone yet).
    pub fn has_process(&self) -> bool {
        matches!(self.phase, Phase::Running | Phase::Stopping { .. })
    }

    pub fn health(&self) -> Option<Health> {
        self.health
    }

    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    pub fn last_exit(&self) -> Option<Exit> {
        self.last_exit
    }

    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    pub fn restart_token(&self) -> u64 {
        self.restart_token
    }

    pub fn netns_inode(&self) -> Option<u64> {
        self.netns_inode
    }

    /// Unix milliseconds when the current process started; None without a process.
    pub fn started_at_ms(&self) -> Option<u64> {
        self.started.filter(|_| self.has_process()).map(|(_, ms)| ms)
    }

    /// The epoch of the process a probe result must belong to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Takes a new definition from `run.json` (the caller decided it may keep running).
    pub fn update(&mut self, spec: RunSpec, restart_token: u64) {
        self.spec = spec;
        self.restart_token = restart_token;
    }

    /// What is due at `now`, if anything.
    pub fn due(&self, now: Instant) -> Option<Due> {
        match self.phase {
            Phase::Waiting => Some(Due::StartAfterDependencies),
            Phase::Backoff { until } if until <= now => Some(Due::Restart),
            Phase::Stopping { deadline, .. } if deadline <= now => Some(Due::Kill),
            Phase::Running if !self.probing.in_flight && self.probing.next.is_some_and(|t| t <= now) => {
                Some(Due::Probe)
            }
            _ => None,
        }
    }

    /// The earliest time something becomes due.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Backoff { until } => Some(until),
            Phase::Stopping { deadline, .. } => Some(deadline),
            Phase::Running if !self.probing.in_flight => self.probing.next,
            _ => None,
        }
    }

    /// Its process was started at `now` in the namespace with inode `netns_inode`.
    pub fn started(&mut self, now: Instant, unix_ms: u64, netns_inode: Option<u64>) {
        self.count_start();
        self.phase = Phase::Running;
        self.started = Some((now, unix_ms));
        self.netns_inode = netns_inode;
        self.error = None;
        self.health = self.spec.health.as_ref().map(|_| Health::Starting);
        self.probing = Probing {
            next: self
                .spec
                .health
                .as_ref()
                .map(|h| now + h.interval.min(FIRST_PROBE_WITHIN)),
            ..Probing::default()
        };
    }

    /// Its process could not be started: handled like a failed exit.
    pub fn start_failed(&mut self, now: Instant, error: String) -> AfterExit {
        self.count_start();
        self.error = Some(error);
        self.started = None;
        self.restart_by_policy(now, None, None)
    }

    fn count_start(&mut self) {
        if self.epoch > 0 {
            self.restarts += 1;
        }
        self.epoch += 1;
    }

    /// Its process exited at `now` (`exit` None: in a way that has no name).
    pub fn exited(&mut self, now: Instant, exit: Option<Exit>) -> AfterExit {
        self.last_exit = exit;
        self.health = None;
        self.probing = Probing::default();
        let ran = self.started.take().map(|(t, _)| now.saturating_duration_since(t));
        match self.phase {
            Phase::Stopping { then, .. } => self.finish_stop(then),
            _ => self.restart_by_policy(now, ran, exit),
        }
    }

    /// After an unplanned exit: back off and start again, or stay down, as the policy says.
    /// `ran`: how long the process ran; `exit`: how it ended (None for both: it never started).
    fn restart_by_policy(&mut self, now: Instant, ran: Option<Duration>, exit: Option<Exit>) -> AfterExit {
        let succeeded = exit.is_some_and(Exit::is_success);
        let again = match self.spec.restart {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure => !succeeded,
            RestartPolicy::Always => true,
        };
        if !again {
            self.phase = Phase::Exited;
            return AfterExit::Settled;
        }
        let delay = self.backoff.after(ran);
        self.phase = Phase::Backoff { until: now + delay };
        AfterExit::RestartIn(delay)
    }

    /// Asks it to stop; `then` says what happens once it has.
    pub fn stop(&mut self, now: Instant, then: AfterStop) -> StopStep {
        self.probing.next = None;
        match self.phase {
            Phase::Running => {
                let deadline = now + Duration::from_millis(self.spec.stop_grace_ms);
                self.phase = Phase::Stopping { then, deadline };
                StopStep::Terminate
            }
            // Signalled already: the newest reason wins, the grace period does not restart.
            Phase::Stopping { deadline, .. } => {
                self.phase = Phase::Stopping { then, deadline };
                StopStep::Wait
            }
            _ => match self.finish_stop(then) {
                AfterExit::Remove => StopStep::Remove,
                _ => StopStep::Done,
            },
        }
    }

    fn finish_stop(&mut self, then: AfterStop) -> AfterExit {
        self.health = None;
        match then {
            AfterStop::Remove => return AfterExit::Remove,
            AfterStop::Stop => self.phase = Phase::Stopped,
            AfterStop::Restart => self.phase = Phase::Waiting,
        }
        AfterExit::Settled
    }

    /// SIGKILL was sent at `now`: check back a little later rather than spin until it is reaped.
    pub fn kill_sent(&mut self, now: Instant) {
        if let Phase::Stopping { then, .. } = self.phase {
            self.phase = Phase::Stopping {
                then,
                deadline: now + KILL_RECHECK,
            };
        }
    }

    /// A stopped or exited replica is wanted again (a new `run.json` still lists it).
    pub fn resume(&mut self) {
        if matches!(self.phase, Phase::Stopped | Phase::Exited) {
            self.phase = Phase::Waiting;
        }
    }

    /// A probe has been launched for the current process.
    pub fn probe_launched(&mut self) {
        self.probing.in_flight = true;
    }

    /// The probe could not be launched: try again at its next interval.
    pub fn probe_not_launched(&mut self, now: Instant) {
        self.probing.in_flight = false;
        if let Some(h) = &self.spec.health {
            self.probing.next = Some(now + h.interval);
        }
    }

    /// A probe of the process of `epoch` came back at `now`.
    pub fn probe_result(&mut self, now: Instant, epoch: u64, healthy: bool) -> Verdict {
        self.probing.in_flight = false;
        let Some(spec) = self.spec.health.as_ref().filter(|_| epoch == self.epoch) else {
            return Verdict::Same;
        };
        if self.phase != Phase::Running {
            return Verdict::Same;
        }
        self.probing.next = Some(now + spec.interval);
        let before = self.health;
        let in_start_period = self
            .started
            .is_some_and(|(t, _)| now.saturating_duration_since(t) < spec.start_period);
        if healthy {
            self.probing.failures = 0;
            self.health = Some(Health::Healthy);
        } else if in_start_period && before != Some(Health::Healthy) {
            // Failures during the start period do not count.
        } else {
            self.probing.failures += 1;
            if self.probing.failures >= spec.retries.max(1) {
                self.health = Some(Health::Unhealthy);
            }
        }
        match self.health {
            health if health == before => Verdict::Same,
            Some(Health::Unhealthy) if self.spec.restart == RestartPolicy::Always => Verdict::Restart,
            health => Verdict::Now(health.unwrap_or(Health::Starting)),
        }
    }

    /// Started, and passing its health check where `condition` asks for it.
    fn satisfies(&self, condition: Condition) -> bool {
        self.phase == Phase::Running
            && match condition {
                Condition::Started => true,
                Condition::Healthy => self.spec.health.is_none() || self.health == Some(Health::Healthy),
            }
    }
}

/// Whether `spec` may start: every replica of each service it depends on satisfies the
/// dependency's condition.
pub fn dependencies_ready<'a>(spec: &RunSpec, replicas: impl Iterator<Item = &'a Replica> + Clone) -> bool {
    spec.depends_on.iter().all(|dep| {
        replicas
            .clone()
            .filter(|r| r.spec.service == dep.service)
            .all(|r| r.satisfies(dep.condition))
    })
}
