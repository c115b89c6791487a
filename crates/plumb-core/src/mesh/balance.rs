//! How a sidecar picks an endpoint: power of two choices over an exponentially weighted
//! moving average of latency (as linkerd2-proxy), with endpoints ejected after failures in a
//! row (circuit breaking), and a retry budget. Pure: time is passed in.

use std::time::{Duration, Instant};

/// How fast the latency average forgets: the weight of a sample decays with this time
/// constant (linkerd's default decay is 10 s).
pub const EWMA_DECAY: Duration = Duration::from_secs(10);

/// One endpoint as the balancer sees it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Latency estimate in seconds.
    ewma: f64,
    updated: Option<Instant>,
    /// Requests in flight (the estimate is multiplied by this plus one, as linkerd's
    /// peak-EWMA load).
    pub pending: u32,
    /// Failures in a row.
    pub failures: u32,
    /// Ejected until then.
    pub ejected_until: Option<Instant>,
    /// Times ejected so far (a metric).
    pub ejections: u64,
    /// Back from an ejection and not yet answered well (the circuit is half open): the next
    /// request goes to it, and one failure ejects it again.
    pub probation: bool,
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint {
            // Unknown counts as fastest: a new replica gets the next request, and so a latency.
            ewma: 0.0,
            updated: None,
            pending: 0,
            failures: 0,
            ejected_until: None,
            ejections: 0,
            probation: false,
        }
    }
}

/// What a finished request did to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Connect error, reset, timeout or 5xx.
    Failure,
}

impl Endpoint {
    pub fn load(&self) -> f64 {
        self.ewma * f64::from(self.pending + 1)
    }

    pub fn available(&self, now: Instant) -> bool {
        self.ejected_until.is_none_or(|t| now >= t)
    }

    /// Records a request's latency and outcome; returns true if this failure ejects it.
    pub fn record(
        &mut self,
        now: Instant,
        rtt: Duration,
        outcome: Outcome,
        eject_after: u32,
        eject_for: Duration,
    ) -> bool {
        let sample = rtt.as_secs_f64();
        self.ewma = match self.updated {
            None => sample,
            Some(then) => {
                let dt = now.saturating_duration_since(then).as_secs_f64();
                let w = (-dt / EWMA_DECAY.as_secs_f64()).exp();
                // Peak-EWMA: a worse sample counts at once, a better one blends in.
                if sample > self.ewma {
                    sample
                } else {
                    self.ewma * w + sample * (1.0 - w)
                }
            }
        };
        self.updated = Some(now);
        match outcome {
            Outcome::Success => {
                self.failures = 0;
                self.probation = false;
                false
            }
            Outcome::Failure => {
                self.failures += 1;
                let limit = if self.probation { 1 } else { eject_after };
                if eject_after > 0 && self.failures >= limit && self.available(now) {
                    self.ejected_until = Some(now + eject_for);
                    self.failures = 0;
                    self.ejections += 1;
                    self.probation = true;
                    // Back from the ejection it is tried first (a trial request).
                    self.ewma = 0.0;
                    self.updated = None;
                    true
                } else {
                    false
                }
            }
        }
    }
}

/// Picks an endpoint index by power of two choices: two distinct available endpoints drawn
/// with `random` (two numbers), the one with the lower load wins. With none available, the
/// one whose ejection ends first is tried (failing open: a request is better than none).
pub fn pick(endpoints: &[Endpoint], now: Instant, random: (u64, u64)) -> Option<usize> {
    let up: Vec<usize> = (0..endpoints.len()).filter(|&i| endpoints[i].available(now)).collect();
    match up.len() {
        0 => (0..endpoints.len()).min_by_key(|&i| endpoints[i].ejected_until),
        1 => Some(up[0]),
        n => {
            let a = (random.0 % n as u64) as usize;
            let mut b = (random.1 % (n as u64 - 1)) as usize;
            if b >= a {
                b += 1;
            }
            let (a, b) = (up[a], up[b]);
            Some(if endpoints[b].load() < endpoints[a].load() {
                b
            } else {
                a
            })
        }
    }
}

/// The retry budget: retries may add at most `percent` of the requests seen (plus a few, so
/// a quiet service can still retry), counted over a sliding window of requests.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    percent: u32,
    requests: f64,
    retries: f64,
}

/// Retries always allowed on top of the percentage (per window), as linkerd's `minRetriesPerSecond`.
const MIN_RETRIES: f64 = 10.0;
/// The window: counts decay by half every this many requests.
const WINDOW: f64 = 1000.0;

impl RetryBudget {
    pub fn new(percent: u32) -> Self {
        RetryBudget {
            percent,
            requests: 0.0,
            retries: 0.0,
        }
    }

    pub fn request(&mut self) {
        self.requests += 1.0;
        if self.requests > WINDOW {
            self.requests /= 2.0;
            self.retries /= 2.0;
        }
    }

    /// Takes one retry from the budget if there is one left.
    pub fn try_retry(&mut self) -> bool {
        let allowed = MIN_RETRIES + self.requests * f64::from(self.percent) / 100.0;
        if self.retries + 1.0 <= allowed {
            self.retries += 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p2c_prefers_the_faster_of_two_and_skips_ejected_endpoints() {
        let now = Instant::now();
        let mut eps = vec![Endpoint::default(), Endpoint::default(), Endpoint::default()];
        eps[0].record(
            now,
            Duration::from_millis(100),
            Outcome::Success,
            5,
            Duration::from_secs(1),
        );
        eps[1].record(
            now,
            Duration::from_millis(1),
            Outcome::Success,
            5,
            Duration::from_secs(1),
        );
        // Whichever pair is drawn, endpoint 0 (slow) loses to the other.
        for r in 0..6u64 {
            let got = pick(&eps, now, (r, r / 3)).unwrap();
            assert!(got != 0 || eps.len() == 1, "picked the slow one for {r}");
        }
        for _ in 0..3 {
            eps[1].record(
                now,
                Duration::from_millis(1),
                Outcome::Failure,
                3,
                Duration::from_secs(5),
            );
        }
        assert!(!eps[1].available(now) && eps[1].ejections == 1);
        for r in 0..6u64 {
            assert_ne!(
                pick(&eps, now, (r, r + 1)),
                Some(1),
                "an ejected endpoint is not picked"
            );
        }
        let later = now + Duration::from_secs(5);
        assert!(eps[1].available(later), "the ejection ends after its time");
        assert_eq!(
            pick(&eps, later, (1, 0)),
            Some(1),
            "and it gets the next request (half open)"
        );
        eps[1].record(
            later,
            Duration::from_millis(1),
            Outcome::Failure,
            3,
            Duration::from_secs(5),
        );
        assert!(!eps[1].available(later), "one failure on trial ejects it again");
    }

    #[test]
    fn with_every_endpoint_ejected_the_first_to_return_is_tried() {
        let now = Instant::now();
        let mut eps = vec![Endpoint::default(), Endpoint::default()];
        eps[0].record(now, Duration::ZERO, Outcome::Failure, 1, Duration::from_secs(9));
        eps[1].record(now, Duration::ZERO, Outcome::Failure, 1, Duration::from_secs(3));
        assert_eq!(pick(&eps, now, (0, 0)), Some(1));
        assert_eq!(pick(&[], now, (0, 0)), None);
    }

    #[test]
    fn a_success_resets_the_failures_in_a_row() {
        let now = Instant::now();
        let mut e = Endpoint::default();
        for _ in 0..4 {
            e.record(now, Duration::ZERO, Outcome::Failure, 5, Duration::from_secs(1));
        }
        e.record(now, Duration::ZERO, Outcome::Success, 5, Duration::from_secs(1));
        e.record(now, Duration::ZERO, Outcome::Failure, 5, Duration::from_secs(1));
        assert!(e.available(now));
    }

    #[test]
    fn the_retry_budget_allows_a_share_of_requests() {
        let mut b = RetryBudget::new(20);
        for _ in 0..100 {
            b.request();
        }
        let granted = (0..100).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 30, "10 always, plus 20% of 100 requests");
    }
}
