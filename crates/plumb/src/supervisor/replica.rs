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
            // Stopped too, so nothing starts it before the loop has forgotten it.
            AfterStop::Remove => {
                self.phase = Phase::Stopped;
                AfterExit::Remove
            }
            AfterStop::Stop => {
                self.phase = Phase::Stopped;
                AfterExit::Settled
            }
            AfterStop::Restart => {
                self.phase = Phase::Waiting;
                AfterExit::Settled
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::fixtures::{depending_on, spec, with_health, with_restart};

    const SECOND: Duration = Duration::from_secs(1);

    fn millis(delays: &[Duration]) -> Vec<u128> {
        delays.iter().map(Duration::as_millis).collect()
    }

    #[test]
    fn back_off_starts_at_half_a_second_doubles_and_stops_at_thirty() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..9).map(|_| backoff.after(Some(SECOND))).collect();
        assert_eq!(
            millis(&delays),
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        // A start that failed counts like a quick exit; nothing overflows however long it goes.
        for _ in 0..100 {
            assert_eq!(backoff.after(None), BACKOFF_CAP);
        }
    }

    #[test]
    fn a_stable_run_starts_the_back_off_over() {
        let mut backoff = Backoff::default();
        for _ in 0..5 {
            backoff.after(Some(SECOND));
        }
        let delays = [
            backoff.after(Some(STABLE_AFTER)),
            backoff.after(Some(SECOND)),
            backoff.after(Some(STABLE_AFTER - Duration::from_millis(1))),
        ];
        assert_eq!(millis(&delays), [500, 1000, 2000]);
    }

    /// Starts `r` at `now`, lets it run for `ran`, and returns what its exit with `exit` brings.
    fn run_once(r: &mut Replica, now: &mut Instant, ran: Duration, exit: Exit) -> AfterExit {
        r.started(*now, 0, None);
        *now += ran;
        let after = r.exited(*now, Some(exit));
        if let AfterExit::RestartIn(delay) = after {
            assert_eq!(r.due(*now + delay - Duration::from_millis(1)), None);
            *now += delay;
            assert_eq!(r.due(*now), Some(Due::Restart));
        }
        after
    }

    #[test]
    fn a_crashing_replica_is_restarted_later_and_later_and_sooner_after_a_stable_run() {
        let mut r = Replica::new(spec("s", 1), 0);
        let mut now = Instant::now();
        assert_eq!(r.due(now), Some(Due::StartAfterDependencies));
        let mut delays = Vec::new();
        for ran in [SECOND, SECOND, SECOND, STABLE_AFTER, SECOND] {
            match run_once(&mut r, &mut now, ran, Exit::Code(1)) {
                AfterExit::RestartIn(delay) => delays.push(delay),
                other => panic!("{other:?}"),
            }
            assert_eq!(r.state(), ReplicaState::Backoff);
        }
        assert_eq!(millis(&delays), [500, 1000, 2000, 500, 1000]);
        assert_eq!((r.restarts(), r.last_exit()), (4, Some(Exit::Code(1))));
    }

    #[test]
    fn the_restart_policy_decides_who_comes_back() {
        let cases = [
            (RestartPolicy::No, Exit::Code(1), ReplicaState::Exited),
            (RestartPolicy::No, Exit::Signal(9), ReplicaState::Exited),
            (RestartPolicy::OnFailure, Exit::Code(0), ReplicaState::Exited),
            (RestartPolicy::OnFailure, Exit::Code(1), ReplicaState::Backoff),
            (RestartPolicy::OnFailure, Exit::Signal(9), ReplicaState::Backoff),
            (RestartPolicy::Always, Exit::Code(0), ReplicaState::Backoff),
        ];
        for (policy, exit, state) in cases {
            let mut r = Replica::new(with_restart(spec("s", 1), policy), 0);
            run_once(&mut r, &mut Instant::now(), SECOND, exit);
            assert_eq!(r.state(), state, "{policy:?} after {exit}");
        }
    }

    #[test]
    fn a_start_that_fails_backs_off_and_keeps_the_error() {
        let mut r = Replica::new(spec("s", 1), 0);
        let now = Instant::now();
        let after = r.start_failed(now, "cannot start: no such file".into());
        assert_eq!(after, AfterExit::RestartIn(BACKOFF_START));
        assert_eq!(
            (r.state(), r.error()),
            (ReplicaState::Backoff, Some("cannot start: no such file"))
        );
        r.started(now + SECOND, 0, None);
        assert_eq!((r.restarts(), r.error()), (1, None));
    }

    #[test]
    fn a_stop_terminates_then_kills_after_the_grace_period() {
        let mut r = Replica::new(spec("s", 1), 0);
        let now = Instant::now();
        r.started(now, 1_000, Some(7));
        assert_eq!(r.started_at_ms(), Some(1_000));
        assert_eq!(r.stop(now, AfterStop::Stop), StopStep::Terminate);
        assert_eq!(r.state(), ReplicaState::Stopping);
        // Asked again (say, to restart): the newest reason counts, the grace period runs on.
        assert_eq!(r.stop(now + SECOND, AfterStop::Restart), StopStep::Wait);
        let grace = Duration::from_millis(r.spec().stop_grace_ms);
        assert_eq!(r.due(now + grace - Duration::from_millis(1)), None);
        assert_eq!(r.due(now + grace), Some(Due::Kill));
        r.kill_sent(now + grace);
        assert_eq!(r.due(now + grace), None);
        assert_eq!(r.due(now + grace + KILL_RECHECK), Some(Due::Kill));
        assert_eq!(r.exited(now + grace, Some(Exit::Signal(9))), AfterExit::Settled);
        assert_eq!((r.state(), r.started_at_ms()), (ReplicaState::Waiting, None));
    }

    #[test]
    fn what_a_stop_leads_to() {
        let now = Instant::now();
        for (then, state) in [
            (AfterStop::Stop, Some(ReplicaState::Stopped)),
            (AfterStop::Restart, Some(ReplicaState::Waiting)),
            (AfterStop::Remove, None),
        ] {
            let mut running = Replica::new(spec("s", 1), 0);
            running.started(now, 0, None);
            running.stop(now, then);
            let after = running.exited(now, Some(Exit::Code(0)));
            assert_eq!(after == AfterExit::Remove, state.is_none(), "{then:?}");
            if let Some(state) = state {
                assert_eq!(running.state(), state, "{then:?}");
            }
            // Without a process the stop is complete at once; a back-off is cancelled.
            let mut backing_off = Replica::new(spec("s", 1), 0);
            backing_off.start_failed(now, "no".into());
            let step = backing_off.stop(now, then);
            assert_eq!(step == StopStep::Remove, state.is_none(), "{then:?}");
            assert_eq!(backing_off.due(now + BACKOFF_CAP).is_some(), then == AfterStop::Restart);
        }
        let mut stopped = Replica::new(spec("s", 1), 0);
        stopped.stop(now, AfterStop::Stop);
        stopped.resume();
        assert_eq!(stopped.state(), ReplicaState::Waiting);
    }

    #[test]
    fn health_follows_probe_results_and_restarts_under_always() {
        let now = Instant::now();
        for (policy, last) in [
            (RestartPolicy::Always, Verdict::Restart),
            (RestartPolicy::OnFailure, Verdict::Now(Health::Unhealthy)),
        ] {
            let mut r = Replica::new(with_restart(with_health(spec("s", 1)), policy), 0);
            r.started(now, 0, None);
            assert_eq!(r.health(), Some(Health::Starting));
            assert_eq!(r.due(now + FIRST_PROBE_WITHIN), Some(Due::Probe));
            r.probe_launched();
            assert_eq!(r.due(now + FIRST_PROBE_WITHIN), None, "one probe at a time");
            let epoch = r.epoch();
            assert_eq!(r.probe_result(now, epoch, true), Verdict::Now(Health::Healthy));
            assert_eq!(r.probe_result(now, epoch, true), Verdict::Same);
            // Three failures in a row (retries = 3) turn it unhealthy.
            assert_eq!(r.probe_result(now, epoch, false), Verdict::Same);
            assert_eq!(r.probe_result(now, epoch, false), Verdict::Same);
            assert_eq!(r.probe_result(now, epoch, false), last);
            // A late result for an earlier process changes nothing.
            assert_eq!(r.probe_result(now, epoch - 1, true), Verdict::Same);
        }
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let now = Instant::now();
        let mut spec = with_health(spec("s", 1));
        if let Some(h) = &mut spec.health {
            (h.retries, h.start_period) = (1, Duration::from_secs(5));
        }
        let mut r = Replica::new(spec, 0);
        r.started(now, 0, None);
        assert_eq!(r.probe_result(now + SECOND, 1, false), Verdict::Same);
        assert_eq!(r.health(), Some(Health::Starting));
        assert_eq!(r.probe_result(now + 5 * SECOND, 1, false), Verdict::Restart);
    }

    #[test]
    fn a_replica_waits_until_its_dependencies_are_started_or_healthy() {
        let now = Instant::now();
        let mut db = [1, 2].map(|i| Replica::new(with_health(spec("db", i)), 0));
        let mut cache = Replica::new(spec("cache", 1), 0);
        let after_start = depending_on(spec("web", 1), "db", Condition::Started);
        let after_health = depending_on(after_start.clone(), "db", Condition::Healthy);
        let after_cache = depending_on(spec("web", 1), "cache", Condition::Healthy);
        let ready =
            |spec: &RunSpec, db: &[Replica], cache: &Replica| dependencies_ready(spec, db.iter().chain([cache]));

        assert!(ready(&spec("web", 1), &db, &cache), "nothing to wait for");
        assert!(!ready(&after_start, &db, &cache));
        db[0].started(now, 0, None);
        assert!(!ready(&after_start, &db, &cache), "every replica counts");
        db[1].started(now, 0, None);
        assert!(ready(&after_start, &db, &cache));
        assert!(!ready(&after_health, &db, &cache));
        db[0].probe_result(now, 1, true);
        assert!(!ready(&after_health, &db, &cache));
        db[1].probe_result(now, 1, true);
        assert!(ready(&after_health, &db, &cache));
        db[1].exited(now, Some(Exit::Signal(9)));
        assert!(
            !ready(&after_start, &db, &cache),
            "a dependency that went down is waited for again"
        );

        // Without a health check, started counts as healthy.
        assert!(!ready(&after_cache, &db, &cache));
        cache.started(now, 0, None);
        assert!(ready(&after_cache, &db, &cache));
        // A service with no replicas to run holds nobody up.
        assert!(ready(
            &depending_on(spec("web", 1), "static", Condition::Healthy),
            &db,
            &cache
        ));
    }
}
