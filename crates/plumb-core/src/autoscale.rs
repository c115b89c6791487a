//! The autoscaler's recommender: Kubernetes' HorizontalPodAutoscaler (autoscaling/v2 with its
//! default behaviour) as a pure state machine. Each tick the controller hands it the time,
//! the service's replica count and what each replica measured; it answers the count the
//! service should run and why, in words. The scale-down window and the recent scale events
//! live in its state; nothing here measures, sleeps or scales.
//!
//! What carries over from Kubernetes (pkg/controller/podautoscaler, replica_calculator.go and
//! horizontal.go), facts not code:
//! - each target proposes `ceil(ratio × replicas counted)`, ratio = average / target, and
//!   nothing when the ratio is within 10% of 1; the highest proposal wins;
//! - a ready replica without a sample counts as at the target (CPU: at 100%) when the
//!   metric asks to scale down, as 0 when it asks to scale up; a replica that is not ready
//!   counts as 0 on a scale up and not at all otherwise; if that filling makes the change
//!   small or turns its direction, the count stays;
//! - a target no ready replica reported stops any scale down (a scale up still goes);
//! - a scale down takes the highest recommendation of the last `scale_down_window` (300s);
//!   a scale up is not stabilized, but adds at most max(4 replicas, 100%) per
//!   `scale_up_period` (15s), counted from the scale events within that period;
//! - a count outside `min..=max` goes to the nearest bound first, whatever the metrics say.
//!
//! One difference: Kubernetes ignores readiness for targets other than CPU (only pending
//! pods are left out); here a replica that is not ready counts as described for every target,
//! since what it reports while starting or failing its health check is not its load.

use std::time::Duration;

use serde::Serialize;

use crate::spec::AutoscaleSpec;

/// No change while the ratio of a metric to its target is within this of 1 (Kubernetes'
/// `--horizontal-pod-autoscaler-tolerance` default).
pub const TOLERANCE: f64 = 0.1;
/// A scale up may add this many replicas per `scale_up_period` ...
pub const SCALE_UP_REPLICAS: u32 = 4;
/// ... or this percentage of the count at the period's start, whichever is more.
pub const SCALE_UP_PERCENT: u32 = 100;

/// What a target measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Percent of the replica's `cpus` limit (a resource metric, as Kubernetes' CPU).
    Cpu,
    /// New connections per second at the VIP, per replica.
    RequestsPerSecond,
    /// Open connections at the VIP, per replica.
    Connections,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cpu => "cpu",
            Metric::RequestsPerSecond => "requests_per_second",
            Metric::Connections => "connections",
        }
    }

    /// A value of this metric as status lines write it.
    pub fn show(self, value: f64) -> String {
        match self {
            Metric::Cpu => format!("{value}%"),
            Metric::RequestsPerSecond => format!("{}/s", round3(value)),
            Metric::Connections => format!("{}", round3(value)),
        }
    }

    /// The average Kubernetes compares with the target: CPU in whole percent (its
    /// utilization is an integer), the others in thousandths (its milli-values), truncated.
    fn average(self, values: &[f64]) -> f64 {
        let n = values.len() as f64;
        match self {
            Metric::Cpu => (values.iter().sum::<f64>() / n).floor(),
            _ => {
                let milli: i64 = values.iter().map(|v| (v * 1000.0).round() as i64).sum();
                (milli / values.len() as i64) as f64 / 1000.0
            }
        }
    }

    /// What a ready replica without a sample counts as when the metric asks to scale down:
    /// its whole CPU request for CPU, the target for the others (as Kubernetes).
    fn missing_on_scale_down(self, target: f64) -> f64 {
        match self {
            Metric::Cpu => 100.0,
            _ => target,
        }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// One replica of the service this tick: whether it is ready (running, and passing its
/// health check if it has one) and what it measured; `None` where it has no sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReplicaSample {
    pub ready: bool,
    pub cpu_percent: Option<f64>,
    pub requests_per_second: Option<f64>,
    pub connections: Option<f64>,
}

impl ReplicaSample {
    /// The sample, if it is one: a negative or non-finite number (a counter that went
    /// back, a division by a zero interval) counts as no sample, never as load.
    fn value(&self, metric: Metric) -> Option<f64> {
        let v = match metric {
            Metric::Cpu => self.cpu_percent,
            Metric::RequestsPerSecond => self.requests_per_second,
            Metric::Connections => self.connections,
        };
        v.filter(|v| v.is_finite() && *v >= 0.0)
    }
}

/// What the controller saw at one tick. `replicas` lists every replica of the service,
/// ready or not (one still starting too), so that those without samples count.
#[derive(Debug, Clone, Copy)]
pub struct Tick<'a> {
    /// Time since any fixed start (the controller's clock); it must not go back.
    pub now: Duration,
    /// The replica count the service runs at (its spec), which the decision changes.
    pub current: u32,
    pub replicas: &'a [ReplicaSample],
}

/// What one target proposes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Proposal {
    pub metric: Metric,
    pub target: f64,
    /// The average over the ready replicas that reported it; `None` if none did.
    pub average: Option<f64>,
    /// The count it asks for; `None` when it cannot say (no ready replica reported it).
    pub replicas: Option<u32>,
    pub why: String,
}

/// One tick's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub now: Duration,
    pub current: u32,
    /// The highest proposal, before the scale-down window, the rate limit and the bounds.
    pub recommended: Option<u32>,
    /// The count the service should run at; `current` if nothing changes.
    pub desired: u32,
    pub proposals: Vec<Proposal>,
    /// Why, in words (what `plumb autoscale status` shows).
    pub reason: String,
}

impl Decision {
    pub fn scales(&self) -> bool {
        self.desired != self.current
    }
}

/// A scale this autoscaler decided, for the scale-up rate limit.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ScaleEvent {
    at: Duration,
    from: u32,
    to: u32,
}

/// The recommender of one service, with its memory: the recommendations of the scale-down
/// window and the scale events of the last `scale_up_period`.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    spec: AutoscaleSpec,
    /// (when, the highest proposal then), oldest first.
    recommendations: Vec<(Duration, u32)>,
    events: Vec<ScaleEvent>,
}

impl Autoscaler {
    pub fn new(spec: AutoscaleSpec) -> Self {
        Autoscaler {
            spec,
            recommendations: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn spec(&self) -> &AutoscaleSpec {
        &self.spec
    }

    /// The targets the spec sets, as (metric, target per replica).
    fn targets(&self) -> Vec<(Metric, f64)> {
        [
            (Metric::Cpu, self.spec.cpu_percent),
            (Metric::RequestsPerSecond, self.spec.requests_per_second),
            (Metric::Connections, self.spec.connections),
        ]
        .into_iter()
        .filter_map(|(m, t)| t.map(|t| (m, f64::from(t))))
        .collect()
    }

    /// Decides one tick. A decision that scales is taken as applied (its event counts
    /// towards the scale-up rate limit); if applying it fails, the next tick's `current`
    /// says so and the limit only errs on the careful side.
    pub fn decide(&mut self, tick: Tick) -> Decision {
        let Tick { now, current, .. } = tick;
        let (min, max) = (self.spec.min, self.spec.max);
        let decision = |recommended, desired, proposals, reason| Decision {
            now,
            current,
            recommended,
            desired,
            proposals,
            reason,
        };
        // Out of bounds (a manual scale, a changed file): back within them first.
        if current > max {
            let d = decision(
                None,
                max,
                Vec::new(),
                format!("{current} replicas are more than max = {max}"),
            );
            return self.record(d);
        }
        if current < min {
            let d = decision(
                None,
                min,
                Vec::new(),
                format!("{current} replicas are fewer than min = {min}"),
            );
            return self.record(d);
        }
        let proposals: Vec<Proposal> = self
            .targets()
            .into_iter()
            .map(|(metric, target)| propose(metric, target, current, tick.replicas))
            .collect();
        let best = proposals
            .iter()
            .filter(|p| p.replicas.is_some())
            .max_by_key(|p| p.replicas);
        let Some(best) = best else {
            let whys: Vec<&str> = proposals.iter().map(|p| p.why.as_str()).collect();
            let reason = format!("keeping {current}: no target can be measured ({})", whys.join("; "));
            return decision(None, current, proposals, reason);
        };
        let recommended = best.replicas.unwrap_or(current);
        let best_why = best.why.clone();
        if recommended < current {
            if let Some(blind) = proposals.iter().find(|p| p.replicas.is_none()) {
                let reason = format!(
                    "keeping {current}: {best_why}, but {} cannot be measured ({}), and a scale down needs every target",
                    blind.metric.as_str(),
                    blind.why
                );
                return decision(Some(recommended), current, proposals, reason);
            }
        }
        let (desired, reason) = self.normalize(now, current, recommended, &best_why);
        let d = decision(Some(recommended), desired, proposals, reason);
        self.record(d)
    }

    /// The recommendation through the scale-down window, the scale-up rate limit and the
    /// bounds (horizontal.go's normalizeDesiredReplicasWithBehaviors).
    fn normalize(&mut self, now: Duration, current: u32, recommended: u32, why: &str) -> (u32, String) {
        let window = self.spec.scale_down_window;
        self.recommendations.retain(|(at, _)| within(now, *at, window));
        // A scale up is not stabilized (its window is 0); a scale down goes no lower than the
        // highest recommendation of the window.
        let highest = self
            .recommendations
            .iter()
            .map(|(_, r)| *r)
            .chain([recommended])
            .max()
            .unwrap_or(recommended);
        let stabilized = current.max(recommended).min(highest);
        self.recommendations.push((now, recommended));
        let window_text = humantime::format_duration(window);
        if stabilized > current {
            let limit = self.scale_up_limit(now, current).max(current);
            let period = humantime::format_duration(self.spec.scale_up_period);
            let max = self.spec.max;
            if stabilized > max.min(limit) {
                return if limit < max {
                    (
                        limit,
                        format!("{why}; a scale up adds at most {SCALE_UP_REPLICAS} replicas or {SCALE_UP_PERCENT}% per {period}: scaling to {limit}"),
                    )
                } else {
                    (max, format!("{why}; that is more than max = {max}: scaling to {max}"))
                };
            }
            return (stabilized, format!("{why}: scaling up to {stabilized}"));
        }
        if stabilized < current {
            let min = self.spec.min;
            if stabilized < min {
                return (min, format!("{why}; that is fewer than min = {min}: scaling to {min}"));
            }
            if stabilized > recommended {
                return (
                    stabilized,
                    format!("{why}; the highest recommendation of the last {window_text} is {stabilized}: scaling down to {stabilized}"),
                );
            }
            return (stabilized, format!("{why}: scaling down to {stabilized}"));
        }
        if recommended < current {
            return (
                current,
                format!("{why}; the last {window_text} recommended up to {highest}: keeping {current}"),
            );
        }
        (current, format!("{why}: keeping {current}"))
    }

    /// The most replicas a scale up may reach now: from the count at the start of the
    /// period, max(+4, +100%) (horizontal.go's calculateScaleUpLimitWithScalingRules with
    /// the default policies).
    fn scale_up_limit(&self, now: Duration, current: u32) -> u32 {
        let period = self.spec.scale_up_period;
        let (mut added, mut removed) = (0u32, 0u32);
        for e in self.events.iter().filter(|e| within(now, e.at, period)) {
            if e.to > e.from {
                added += e.to - e.from;
            } else {
                removed += e.from - e.to;
            }
        }
        let start = (current + removed).saturating_sub(added);
        let by_replicas = start + SCALE_UP_REPLICAS;
        let by_percent = (f64::from(start) * (1.0 + f64::from(SCALE_UP_PERCENT) / 100.0)).ceil() as u32;
        by_replicas.max(by_percent)
    }

    fn record(&mut self, decision: Decision) -> Decision {
        if decision.scales() {
            let period = self.spec.scale_up_period;
            let now = decision.now;
            self.events.retain(|e| within(now, e.at, period));
            self.events.push(ScaleEvent {
                at: now,
                from: decision.current,
                to: decision.desired,
            });
        }
        decision
    }
}

/// True if `at` lies within `span` before `now` (Kubernetes: after now − span, strictly).
fn within(now: Duration, at: Duration, span: Duration) -> bool {
    now.saturating_sub(at) < span
}

/// What one target proposes (replica_calculator.go's GetResourceReplicas for CPU and
/// calcPlainMetricReplicas for the others, as one).
fn propose(metric: Metric, target: f64, current: u32, replicas: &[ReplicaSample]) -> Proposal {
    let name = metric.as_str();
    let mut values = Vec::new();
    let (mut missing, mut not_ready) = (0usize, 0usize);
    for r in replicas {
        match (r.ready, r.value(metric)) {
            (false, _) => not_ready += 1,
            (true, Some(v)) => values.push(v),
            (true, None) => missing += 1,
        }
    }
    let mut proposal = Proposal {
        metric,
        target,
        average: None,
        replicas: None,
        why: format!("no ready replica reported {name}"),
    };
    if values.is_empty() {
        return proposal;
    }
    let average = metric.average(&values);
    let ratio = average / target;
    proposal.average = Some(average);
    let against = format!(
        "{name} {} per ready replica against a target of {}",
        metric.show(average),
        metric.show(target)
    );
    let rebalance = not_ready > 0 && ratio > 1.0;
    if !rebalance && missing == 0 {
        if (1.0 - ratio).abs() <= TOLERANCE {
            proposal.replicas = Some(current);
            proposal.why = format!("{against} (within {}%) asks for {current}", TOLERANCE * 100.0);
        } else {
            let n = (ratio * values.len() as f64).ceil() as u32;
            proposal.replicas = Some(n);
            proposal.why = format!("{against} asks for {n}");
        }
        return proposal;
    }
    // Count the replicas without a sample, and on a scale up those not ready, the careful
    // way: they may not push the change further than the measured ones do.
    let mut filled = values.clone();
    let mut counted = Vec::new();
    if missing > 0 {
        let fill = if ratio < 1.0 {
            Some(metric.missing_on_scale_down(target))
        } else if ratio > 1.0 {
            Some(0.0)
        } else {
            None
        };
        if let Some(fill) = fill {
            filled.extend(std::iter::repeat_n(fill, missing));
            counted.push(format!("{missing} without a sample as {}", metric.show(fill)));
        }
    }
    if rebalance {
        filled.extend(std::iter::repeat_n(0.0, not_ready));
        counted.push(format!("{not_ready} not ready as {}", metric.show(0.0)));
    }
    let new_ratio = metric.average(&filled) / target;
    let counting = match counted.is_empty() {
        true => String::new(),
        false => format!(", counting {}", counted.join(" and ")),
    };
    let flips = (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0);
    let n = (new_ratio * filled.len() as f64).ceil() as u32;
    let keep = (1.0 - new_ratio).abs() <= TOLERANCE
        || flips
        || (new_ratio < 1.0 && n > current)
        || (new_ratio > 1.0 && n < current);
    let n = if keep { current } else { n };
    proposal.replicas = Some(n);
    proposal.why = format!("{against}{counting}, asks for {n}");
    proposal
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{DEFAULT_SCALE_DOWN_WINDOW, DEFAULT_SCALE_UP_PERIOD};

    fn spec(min: u32, max: u32) -> AutoscaleSpec {
        AutoscaleSpec {
            min,
            max,
            cpu_percent: None,
            requests_per_second: Some(100),
            connections: None,
            scale_down_window: DEFAULT_SCALE_DOWN_WINDOW,
            scale_up_period: DEFAULT_SCALE_UP_PERIOD,
        }
    }

    fn rps(values: &[f64]) -> Vec<ReplicaSample> {
        values
            .iter()
            .map(|v| ReplicaSample {
                ready: true,
                requests_per_second: Some(*v),
                ..Default::default()
            })
            .collect()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn decide(a: &mut Autoscaler, at: u64, current: u32, replicas: &[ReplicaSample]) -> Decision {
        a.decide(Tick {
            now: secs(at),
            current,
            replicas,
        })
    }

    /// The count one tick of a fresh autoscaler asks for.
    fn once(spec: AutoscaleSpec, current: u32, replicas: &[ReplicaSample]) -> Decision {
        decide(&mut Autoscaler::new(spec), 0, current, replicas)
    }

    #[test]
    fn within_ten_percent_of_the_target_nothing_changes() {
        for load in [91.0, 100.0, 109.0] {
            let d = once(spec(1, 20), 4, &rps(&[load; 4]));
            assert_eq!(d.desired, 4, "{load}: {d:?}");
            assert!(d.reason.contains("within 10%"), "{}", d.reason);
        }
        // Just outside the band, both ways.
        assert_eq!(once(spec(1, 20), 4, &rps(&[112.0; 4])).desired, 5);
        assert_eq!(once(spec(1, 20), 4, &rps(&[70.0; 4])).desired, 3);
    }

    #[test]
    fn the_count_is_the_ceiling_of_replicas_times_the_ratio() {
        // 3 × 250/200 = 3.75 -> 4; 3 × 130/100 = 3.9 -> 4; 3 × 140/100 = 4.2 -> 5.
        let mut s = spec(1, 20);
        s.requests_per_second = Some(200);
        let d = once(s, 3, &rps(&[250.0; 3]));
        assert_eq!((d.recommended, d.desired), (Some(4), 4), "{d:?}");
        assert_eq!(
            d.reason,
            "requests_per_second 250/s per ready replica against a target of 200/s asks for 4: scaling up to 4"
        );
        assert_eq!(once(spec(1, 20), 3, &rps(&[130.0; 3])).desired, 4);
        assert_eq!(once(spec(1, 20), 3, &rps(&[140.0; 3])).desired, 5);
        // The average is over the replicas: uneven load asks for the same as even.
        assert_eq!(once(spec(1, 20), 3, &rps(&[40.0, 100.0, 280.0])).desired, 5);
    }

    #[test]
    fn with_several_targets_the_highest_proposal_wins() {
        let mut s = spec(1, 20);
        s.connections = Some(10);
        let replicas: Vec<ReplicaSample> = (0..2)
            .map(|_| ReplicaSample {
                ready: true,
                requests_per_second: Some(200.0), // asks for 4
                connections: Some(30.0),          // asks for 6
                ..Default::default()
            })
            .collect();
        let d = once(s.clone(), 2, &replicas);
        assert_eq!(d.desired, 6, "{d:?}");
        assert_eq!(
            d.proposals.iter().map(|p| p.replicas).collect::<Vec<_>>(),
            [Some(4), Some(6)]
        );
        assert!(d.reason.starts_with("connections 30 per ready replica"), "{}", d.reason);
        // One target under, one over: no scale down while another asks for more.
        let replicas: Vec<ReplicaSample> = replicas
            .iter()
            .map(|r| ReplicaSample {
                requests_per_second: Some(10.0),
                connections: Some(10.5),
                ..*r
            })
            .collect();
        assert_eq!(once(s.clone(), 2, &replicas).desired, 2);
        // The tolerance is Kubernetes' float test: 11/10 is 1.1000000000000001, just outside.
        let replicas: Vec<ReplicaSample> = replicas
            .iter()
            .map(|r| ReplicaSample {
                connections: Some(11.0),
                ..*r
            })
            .collect();
        assert_eq!(once(s, 2, &replicas).desired, 3);
    }

    #[test]
    fn replicas_without_samples_hold_back_a_scale_down() {
        // Two report 20/s, two report nothing: alone the two would ask for 1; counted at the
        // target the missing ones make it (20+20+100+100)/4 = 60 -> ceil(0.6 × 4) = 3.
        let mut replicas = rps(&[20.0, 20.0]);
        replicas.extend(
            [ReplicaSample {
                ready: true,
                ..Default::default()
            }; 2],
        );
        let d = once(spec(1, 20), 4, &replicas);
        assert_eq!(d.desired, 3, "{d:?}");
        assert!(
            d.reason.contains("counting 2 without a sample as 100/s"),
            "{}",
            d.reason
        );
        // For CPU the missing count at 100% of the limit, not at the target: 10% and 10% with
        // two missing is (10+10+100+100)/4 = 55% against 50%, the other way: keep 4.
        let mut s = spec(1, 20);
        s.requests_per_second = None;
        s.cpu_percent = Some(50);
        let mut cpu = vec![
            ReplicaSample {
                ready: true,
                cpu_percent: Some(10.0),
                ..Default::default()
            };
            2
        ];
        cpu.extend(
            [ReplicaSample {
                ready: true,
                ..Default::default()
            }; 2],
        );
        let d = once(s, 4, &cpu);
        assert_eq!(d.desired, 4, "{d:?}");
    }

    #[test]
    fn replicas_without_samples_never_turn_a_scale_up_into_a_scale_down() {
        // One replica at 150/s and three silent: alone it would ask for ceil(1.5) = 2 of 4;
        // the silent ones count as 0, the ratio falls below 1, and the count stays.
        let mut replicas = rps(&[150.0]);
        replicas.extend(
            [ReplicaSample {
                ready: true,
                ..Default::default()
            }; 3],
        );
        let d = once(spec(1, 20), 4, &replicas);
        assert_eq!(d.desired, 4, "{d:?}");
        assert!(d.reason.contains("counting 3 without a sample as 0/s"), "{}", d.reason);
        // Nonsense numbers are no samples either.
        let nonsense = rps(&[150.0, f64::NAN, f64::INFINITY, -5.0]);
        let d = once(spec(1, 20), 4, &nonsense);
        assert_eq!(d.desired, 4, "{d:?}");
        assert!(d.reason.contains("counting 3 without a sample"), "{}", d.reason);
        // With enough load the scale up still happens: (300+300+300+0)/4 = 225 -> 9, which
        // the rate limit makes 8.
        let mut replicas = rps(&[300.0; 3]);
        replicas.push(ReplicaSample {
            ready: true,
            ..Default::default()
        });
        let d = once(spec(1, 20), 4, &replicas);
        assert_eq!((d.recommended, d.desired), (Some(9), 8), "{d:?}");
    }

    #[test]
    fn replicas_not_ready_count_as_zero_on_a_scale_up_and_not_on_a_scale_down() {
        let not_ready = ReplicaSample {
            ready: false,
            requests_per_second: Some(500.0), // a starting replica's numbers are not its load
            ..Default::default()
        };
        // Scale up: one ready at 150/s, three starting: 150/4 < target, keep 4.
        let mut replicas = rps(&[150.0]);
        replicas.extend([not_ready; 3]);
        let d = once(spec(1, 20), 4, &replicas);
        assert_eq!(d.desired, 4, "{d:?}");
        assert!(d.reason.contains("counting 3 not ready as 0/s"), "{}", d.reason);
        // Scale up with enough load: (400+400+0+0)/4 = 200 -> 8.
        let d = once(spec(1, 20), 4, &{
            let mut r = rps(&[400.0, 400.0]);
            r.extend([not_ready; 2]);
            r
        });
        assert_eq!(d.recommended, Some(8), "{d:?}");
        let mut replicas = rps(&[400.0, 400.0]);
        replicas.extend([not_ready; 2]);
        assert_eq!(once(spec(1, 20), 4, &replicas).desired, 8);
        // Scale down: the starting replicas are left out, as Kubernetes does: 2 × 0.2 -> 1.
        let mut replicas = rps(&[20.0, 20.0]);
        replicas.extend([not_ready; 2]);
        assert_eq!(once(spec(1, 20), 4, &replicas).desired, 1);
    }

    #[test]
    fn a_target_nobody_measures_stops_scale_downs_but_not_scale_ups() {
        let mut s = spec(1, 20);
        s.connections = Some(10);
        let only_rps = |v: f64| ReplicaSample {
            ready: true,
            requests_per_second: Some(v),
            ..Default::default()
        };
        let d = once(s.clone(), 4, &[only_rps(10.0); 4]);
        assert_eq!((d.recommended, d.desired), (Some(1), 4), "{d:?}");
        assert!(d.reason.contains("connections cannot be measured"), "{}", d.reason);
        assert_eq!(once(s.clone(), 4, &[only_rps(200.0); 4]).desired, 8);
        // Nothing measured at all: keep.
        let d = once(s, 4, &[ReplicaSample::default(); 4]);
        assert_eq!((d.recommended, d.desired), (None, 4), "{d:?}");
        assert!(
            d.reason.starts_with("keeping 4: no target can be measured"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn a_scale_up_adds_at_most_four_replicas_or_doubles_per_period() {
        let mut a = Autoscaler::new(spec(1, 100));
        let flood = |n: usize| rps(&vec![10_000.0; n]);
        // From 1: max(1+4, 2) = 5.
        let d = decide(&mut a, 0, 1, &flood(1));
        assert_eq!((d.recommended, d.desired), (Some(100), 5), "{d:?}");
        assert!(d.reason.contains("at most 4 replicas or 100% per 15s"), "{}", d.reason);
        // Within the same 15s: the period started at 1, so still 5 at most.
        assert_eq!(decide(&mut a, 10, 5, &flood(5)).desired, 5);
        // 15s later the scale up of t=0 has left the period: max(5+4, 10) = 10.
        assert_eq!(decide(&mut a, 15, 5, &flood(5)).desired, 10);
        assert_eq!(decide(&mut a, 30, 10, &flood(10)).desired, 20);
        assert_eq!(decide(&mut a, 45, 20, &flood(20)).desired, 40);
        assert_eq!(decide(&mut a, 60, 40, &flood(40)).desired, 80);
        let d = decide(&mut a, 75, 80, &flood(80));
        assert_eq!(d.desired, 100, "{d:?}");
        assert!(d.reason.contains("more than max = 100"), "{}", d.reason);
        // The period starts from the count before any scale within it, downs included: after
        // 8 -> 1, a scale up may go back to max(8+4, 16) = 16 at once.
        let mut s = spec(1, 100);
        s.scale_down_window = Duration::ZERO;
        let mut a = Autoscaler::new(s);
        assert_eq!(decide(&mut a, 0, 8, &rps(&[0.0; 8])).desired, 1);
        assert_eq!(decide(&mut a, 5, 1, &flood(1)).desired, 16);
        // A longer period slows it down.
        let mut s = spec(1, 100);
        s.scale_up_period = secs(60);
        let mut a = Autoscaler::new(s);
        assert_eq!(decide(&mut a, 0, 1, &flood(1)).desired, 5);
        assert_eq!(decide(&mut a, 30, 5, &flood(5)).desired, 5);
        assert_eq!(decide(&mut a, 60, 5, &flood(5)).desired, 10);
    }

    #[test]
    fn a_scale_down_takes_the_highest_recommendation_of_its_window() {
        let mut a = Autoscaler::new(spec(1, 20));
        // t=0: 8 replicas at target. Then the load falls: 8 × 0.5 -> 4, later 8 × 0.25 -> 2.
        assert_eq!(decide(&mut a, 0, 8, &rps(&[100.0; 8])).desired, 8);
        let d = decide(&mut a, 60, 8, &rps(&[50.0; 8]));
        assert_eq!((d.recommended, d.desired), (Some(4), 8), "{d:?}");
        assert!(
            d.reason.contains("the last 5m recommended up to 8: keeping 8"),
            "{}",
            d.reason
        );
        assert_eq!(decide(&mut a, 120, 8, &rps(&[25.0; 8])).desired, 8);
        assert_eq!(decide(&mut a, 299, 8, &rps(&[25.0; 8])).desired, 8);
        // t=300: the 8 of t=0 has left the window; the highest left is the 4 of t=60.
        let d = decide(&mut a, 300, 8, &rps(&[25.0; 8]));
        assert_eq!(d.desired, 4, "{d:?}");
        assert!(
            d.reason
                .contains("the highest recommendation of the last 5m is 4: scaling down to 4"),
            "{}",
            d.reason
        );
        // From 4 at 50/s the recommendation is 2; the window still holds the 4 of t=60 ...
        assert_eq!(decide(&mut a, 330, 4, &rps(&[50.0; 4])).desired, 4);
        // ... until t=360.
        assert_eq!(decide(&mut a, 360, 4, &rps(&[50.0; 4])).desired, 2);
    }

    #[test]
    fn a_short_window_scales_down_sooner_and_scale_ups_are_never_held() {
        let mut s = spec(1, 20);
        s.scale_down_window = secs(30);
        let mut a = Autoscaler::new(s);
        assert_eq!(decide(&mut a, 0, 8, &rps(&[100.0; 8])).desired, 8);
        assert_eq!(decide(&mut a, 29, 8, &rps(&[25.0; 8])).desired, 8);
        assert_eq!(decide(&mut a, 30, 8, &rps(&[25.0; 8])).desired, 2);
        // A scale up right after goes at once, whatever the window holds.
        assert_eq!(decide(&mut a, 31, 2, &rps(&[300.0; 2])).desired, 6);
        // With no window at all, a scale down follows the load at once.
        let mut s = spec(1, 20);
        s.scale_down_window = Duration::ZERO;
        let mut a = Autoscaler::new(s);
        assert_eq!(decide(&mut a, 0, 8, &rps(&[100.0; 8])).desired, 8);
        assert_eq!(decide(&mut a, 1, 8, &rps(&[25.0; 8])).desired, 2);
    }

    #[test]
    fn counts_stay_within_min_and_max() {
        // Outside the bounds: back to the nearest first, metrics unread.
        let d = once(spec(2, 5), 9, &rps(&[1000.0; 9]));
        assert_eq!((d.recommended, d.desired), (None, 5), "{d:?}");
        assert_eq!(d.reason, "9 replicas are more than max = 5");
        let d = once(spec(2, 5), 0, &[]);
        assert_eq!(d.desired, 2, "{d:?}");
        assert_eq!(d.reason, "0 replicas are fewer than min = 2");
        // Recommendations beyond them are cut.
        let d = once(spec(2, 5), 4, &rps(&[500.0; 4]));
        assert_eq!((d.recommended, d.desired), (Some(20), 5), "{d:?}");
        let d = once(spec(2, 5), 4, &rps(&[1.0; 4]));
        assert_eq!((d.recommended, d.desired), (Some(1), 2), "{d:?}");
        assert!(d.reason.contains("fewer than min = 2: scaling to 2"), "{}", d.reason);
        // At min with no load: nothing to do.
        let d = once(spec(2, 5), 2, &rps(&[0.0; 2]));
        assert!(!d.scales(), "{d:?}");
    }

    #[test]
    fn cpu_is_compared_in_whole_percent() {
        let mut s = spec(1, 20);
        s.requests_per_second = None;
        s.cpu_percent = Some(70);
        let cpu = |v: f64| ReplicaSample {
            ready: true,
            cpu_percent: Some(v),
            ..Default::default()
        };
        // 76.9% is 76% to Kubernetes: within 10% of 70 (76/70 = 1.086).
        assert_eq!(once(s.clone(), 4, &[cpu(76.9); 4]).desired, 4);
        // 98/70 = 1.4 on 2 replicas -> ceil(2.8) = 3.
        let d = once(s, 2, &[cpu(98.0); 2]);
        assert_eq!(d.desired, 3, "{d:?}");
        assert_eq!(d.proposals[0].average, Some(98.0));
        assert!(
            d.reason
                .starts_with("cpu 98% per ready replica against a target of 70%"),
            "{}",
            d.reason
        );
    }
}
