//! What a sidecar counts per route, as it writes it for the supervisor's metrics and
//! `plumb top`: requests, responses by status class, a latency histogram, retries and
//! ejections.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The latency histogram's upper bounds, in seconds (Prometheus' `le`).
pub const BUCKETS: [f64; 12] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Counts of one route, seen from one side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteStats {
    pub requests: u64,
    /// Responses by class: `2xx`, `4xx`, ..., and `none` (no response: the proxy's own error).
    pub responses: BTreeMap<String, u64>,
    /// Per bucket of [`BUCKETS`] (not cumulative), then one past the last.
    pub latency_buckets: Vec<u64>,
    pub latency_sum_seconds: f64,
    pub retries: u64,
    pub ejections: u64,
}

impl RouteStats {
    /// Counts one request: its status (`None`: no response) and how long it took.
    pub fn observe(&mut self, status: Option<u16>, seconds: f64) {
        self.requests += 1;
        let class = status.map_or_else(|| "none".to_string(), |s| format!("{}xx", s / 100));
        *self.responses.entry(class).or_default() += 1;
        if self.latency_buckets.len() != BUCKETS.len() + 1 {
            self.latency_buckets = vec![0; BUCKETS.len() + 1];
        }
        let i = BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(BUCKETS.len());
        self.latency_buckets[i] += 1;
        self.latency_sum_seconds += seconds;
    }

    /// The latency below which `q` (0..1) of the requests fell, as the bucket bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.latency_buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        None
    }
}

/// One route's key: direction (`outbound`, `inbound`), the service called, the route's path
/// prefix (`/` for the whole service).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RouteKey {
    pub direction: String,
    pub service: String,
    pub route: String,
}

/// What one sidecar writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SidecarStats {
    pub container: String,
    pub service: String,
    pub routes: Vec<(RouteKey, RouteStats)>,
    /// Replicas this sidecar has ejected, and until when (Unix milliseconds): the supervisor
    /// takes them out of the VIP's ready set until then too.
    #[serde(default)]
    pub ejected: BTreeMap<String, u64>,
}

/// The replicas some sidecar has ejected at `now_ms` (Unix milliseconds).
pub fn ejected_now(all: &[SidecarStats], now_ms: u64) -> std::collections::BTreeSet<String> {
    all.iter()
        .flat_map(|s| s.ejected.iter())
        .filter(|(_, until)| **until > now_ms)
        .map(|(c, _)| c.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_their_class_and_bucket() {
        let mut s = RouteStats::default();
        s.observe(Some(200), 0.0005);
        s.observe(Some(503), 0.03);
        s.observe(None, 20.0);
        assert_eq!(s.requests, 3);
        assert_eq!(s.responses["2xx"], 1);
        assert_eq!(s.responses["5xx"], 1);
        assert_eq!(s.responses["none"], 1);
        assert_eq!(s.latency_buckets[0], 1);
        assert_eq!(s.latency_buckets[5], 1, "30 ms is under 50 ms");
        assert_eq!(s.latency_buckets[12], 1, "past the last bound");
        assert_eq!(s.quantile(0.5), Some(0.05));
        assert_eq!(s.quantile(1.0), Some(f64::INFINITY));
        assert_eq!(RouteStats::default().quantile(0.5), None);
    }

    #[test]
    fn an_ejection_counts_until_its_time() {
        let mut a = SidecarStats::default();
        a.ejected.insert("api-2".into(), 2_000);
        let mut b = SidecarStats::default();
        b.ejected.insert("api-3".into(), 1_000);
        let now: Vec<String> = ejected_now(&[a, b], 1_500).into_iter().collect();
        assert_eq!(now, ["api-2"]);
    }
}
