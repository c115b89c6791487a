//! What one asker may take of the server, so no container starves the others or floods the
//! host's resolvers: TCP connections open at once (per asker and in all) and questions sent
//! upstream (a token bucket per asker). No I/O: the caller passes the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Open TCP connections at once, over all askers and addresses; more are closed at once.
pub const TCP_CONNECTIONS: usize = 64;
/// Open TCP connections at once from one asker address; more are closed at once.
pub const TCP_PER_ASKER: usize = 8;
/// The longest a TCP connection lives, however busy: a connection trickling bytes is not idle,
/// but it is closed at this age all the same.
pub const TCP_LIFETIME: Duration = Duration::from_secs(10);
/// Questions one asker may send upstream per second, sustained (cached answers are free).
pub const FORWARD_RATE: f64 = 100.0;
/// Questions one asker may send upstream at once, after a quiet spell.
pub const FORWARD_BURST: f64 = 200.0;
/// Askers whose buckets are kept; past that, full buckets are forgotten (a full bucket is
/// what a new asker gets anyway).
const MAX_BUCKETS: usize = 4096;

/// The TCP connections open now, per asker.
#[derive(Debug)]
pub struct Connections {
    total: usize,
    per_asker: usize,
    open: HashMap<IpAddr, usize>,
}

impl Connections {
    /// At most `total` connections at once, at most `per_asker` of them from one address.
    pub fn new(total: usize, per_asker: usize) -> Connections {
        Connections {
            total,
            per_asker,
            open: HashMap::new(),
        }
    }

    /// Counts a new connection from `asker`, or says it must be closed (`false`).
    pub fn admit(&mut self, asker: IpAddr) -> bool {
        let in_all: usize = self.open.values().sum();
        let mine = self.open.entry(asker).or_insert(0);
        if *mine >= self.per_asker || in_all >= self.total {
            if *mine == 0 {
                self.open.remove(&asker);
            }
            return false;
        }
        *mine += 1;
        true
    }

    /// A connection `admit`ted from `asker` has closed.
    pub fn release(&mut self, asker: IpAddr) {
        if let Some(mine) = self.open.get_mut(&asker) {
            *mine -= 1;
            if *mine == 0 {
                self.open.remove(&asker);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    filled: Instant,
}

/// A token bucket per asker: each question upstream takes a token; tokens come back at
/// `rate` per second up to `burst`.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimit {
    pub fn new(rate: f64, burst: f64) -> RateLimit {
        RateLimit {
            rate,
            burst,
            buckets: HashMap::new(),
        }
    }

    /// Whether `asker` may send one more question upstream at `now` (taking a token if so).
    pub fn allow(&mut self, asker: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&asker) {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, b| refilled(b, rate, burst, now) < burst);
        }
        let (rate, burst) = (self.rate, self.burst);
        let bucket = self.buckets.entry(asker).or_insert(Bucket {
            tokens: burst,
            filled: now,
        });
        bucket.tokens = refilled(bucket, rate, burst, now);
        bucket.filled = now;
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }
}

/// The tokens `bucket` holds at `now`.
fn refilled(bucket: &Bucket, rate: f64, burst: f64, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.filled).as_secs_f64();
    (bucket.tokens + elapsed * rate).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_asker_gets_its_share_of_connections_and_the_others_still_get_theirs() {
        let mut c = Connections::new(5, 2);
        assert!(c.admit(ip(2)) && c.admit(ip(2)));
        assert!(!c.admit(ip(2)), "a third from the same asker");
        assert!(c.admit(ip(3)) && c.admit(ip(3)) && c.admit(ip(4)));
        assert!(!c.admit(ip(5)), "past the total");
        c.release(ip(2));
        assert!(c.admit(ip(2)), "a closed connection frees its slot");
        // Releasing what was never admitted changes nothing.
        c.release(ip(9));
        assert!(!c.admit(ip(9)));
        assert_eq!(c.open.get(&ip(9)), None, "a refused asker leaves no entry");
    }

    #[test]
    fn a_bucket_lets_a_burst_through_then_the_rate_and_each_asker_has_its_own() {
        let mut r = RateLimit::new(10.0, 5.0);
        let t0 = Instant::now();
        let allowed = (0..20).filter(|_| r.allow(ip(2), t0)).count();
        assert_eq!(allowed, 5);
        assert!(r.allow(ip(3), t0), "another asker is not limited by the first");
        // 10 per second: after 0.35 s, three more.
        let t1 = t0 + Duration::from_millis(350);
        assert_eq!((0..20).filter(|_| r.allow(ip(2), t1)).count(), 3);
        // A long quiet spell refills up to the burst, no more.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| r.allow(ip(2), t2)).count(), 5);
    }

    #[test]
    fn full_buckets_are_forgotten_when_too_many_askers_are_kept() {
        let mut r = RateLimit::new(10.0, 5.0);
        let t0 = Instant::now();
        for i in 0..MAX_BUCKETS {
            let a = IpAddr::from((i as u32 + 0x0a00_0000).to_be_bytes());
            assert!(r.allow(a, t0));
        }
        assert!(r.allow(IpAddr::from([192, 0, 2, 1]), t0 + Duration::from_secs(1)));
        assert_eq!(r.buckets.len(), 1);
    }
}
