//! When this host's lease counts as lost: longer than the TTL since the store last renewed
//! it. [`LeaseClock`] owns that judgement; the machine's clocks are read through [`Clocks`]
//! so a test can step one clock and not the other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The machine's two clocks: the wall clock (set by NTP or by hand, may jump either way)
/// and the monotonic clock (only moves forward, at the rate time passes).
pub trait Clocks {
    /// Milliseconds since the Unix epoch. [`LeaseClock`] must not judge by it; it is here so
    /// that the tests can step it and show that it is not.
    #[allow(dead_code)]
    fn wall_ms(&self) -> u64;
    /// Time since an arbitrary fixed origin.
    fn monotonic(&self) -> Duration;
}

/// The real clocks.
pub struct System {
    origin: Instant,
}

impl Default for System {
    fn default() -> Self {
        System { origin: Instant::now() }
    }
}

impl Clocks for System {
    fn wall_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// The last renewal of a lease, shared between the thread that keeps it alive and the
/// loop that asks whether it is lost.
pub struct LeaseClock<C: Clocks = System> {
    clocks: C,
    /// When the store last renewed the lease, in milliseconds of the monotonic clock plus
    /// one; 0: never, or the store said it is gone. Never the wall clock: a step of it
    /// would fence every stack (forward) or keep a dead lease (backward).
    renewed: AtomicU64,
}

impl Default for LeaseClock {
    fn default() -> Self {
        LeaseClock::new(System::default())
    }
}

impl<C: Clocks> LeaseClock<C> {
    pub fn new(clocks: C) -> Self {
        LeaseClock {
            clocks,
            renewed: AtomicU64::new(0),
        }
    }

    /// The store renewed the lease now.
    pub fn renewed(&self) {
        self.renewed.store(self.monotonic_ms() + 1, Ordering::SeqCst);
    }

    /// The store says the lease is gone: make it look expired.
    pub fn expire(&self) {
        self.renewed.store(0, Ordering::SeqCst);
    }

    /// Longer than `ttl` since the last renewal (or never renewed).
    pub fn lost(&self, ttl: Duration) -> bool {
        match self.renewed.load(Ordering::SeqCst) {
            0 => true,
            renewed => (self.monotonic_ms() + 1).saturating_sub(renewed) > ttl.as_millis() as u64,
        }
    }

    fn monotonic_ms(&self) -> u64 {
        self.clocks.monotonic().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Clocks a test sets by hand.
    #[derive(Default)]
    struct Manual {
        wall_ms: Cell<u64>,
        monotonic: Cell<Duration>,
    }

    impl Manual {
        fn at(wall_ms: u64) -> Self {
            let m = Manual::default();
            m.wall_ms.set(wall_ms);
            m.monotonic.set(Duration::from_secs(100));
            m
        }

        /// Time passes: both clocks move.
        fn pass(&self, d: Duration) {
            self.wall_ms.set(self.wall_ms.get() + d.as_millis() as u64);
            self.monotonic.set(self.monotonic.get() + d);
        }
    }

    impl Clocks for &Manual {
        fn wall_ms(&self) -> u64 {
            self.wall_ms.get()
        }
        fn monotonic(&self) -> Duration {
            self.monotonic.get()
        }
    }

    const TTL: Duration = Duration::from_secs(3);
    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn lost_once_the_ttl_passes_without_renewal() {
        let clocks = Manual::at(NOW);
        let lease = LeaseClock::new(&clocks);
        lease.renewed();
        clocks.pass(Duration::from_secs(2));
        assert!(!lease.lost(TTL));
        lease.renewed();
        clocks.pass(Duration::from_secs(2));
        assert!(!lease.lost(TTL));
        clocks.pass(Duration::from_millis(1_500));
        assert!(lease.lost(TTL));
    }

    #[test]
    fn never_renewed_or_expired_is_lost() {
        let clocks = Manual::at(NOW);
        let lease = LeaseClock::new(&clocks);
        clocks.pass(Duration::from_secs(10));
        assert!(lease.lost(TTL));
        lease.renewed();
        assert!(!lease.lost(TTL));
        lease.expire();
        assert!(lease.lost(TTL));
    }

    #[test]
    fn a_forward_wall_clock_step_does_not_lose_the_lease() {
        let clocks = Manual::at(NOW);
        let lease = LeaseClock::new(&clocks);
        lease.renewed();
        // NTP steps the wall clock an hour forward; one second really passes.
        clocks.wall_ms.set(clocks.wall_ms.get() + 3_600_000);
        clocks.pass(Duration::from_secs(1));
        assert!(!lease.lost(TTL));
    }

    #[test]
    fn a_backward_wall_clock_step_does_not_keep_a_dead_lease() {
        let clocks = Manual::at(NOW);
        let lease = LeaseClock::new(&clocks);
        lease.renewed();
        // The wall clock steps an hour back; five seconds really pass without a renewal.
        clocks.wall_ms.set(clocks.wall_ms.get() - 3_600_000);
        clocks.pass(Duration::from_secs(5));
        assert!(lease.lost(TTL));
    }
}
