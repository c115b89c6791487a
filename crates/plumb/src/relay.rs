//! The chaos relay (`plumb chaos-relay STACK ID`, started by `plumb chaos`): a userspace
//! netem. tc redirects the frames a container sends to a tap; the relay reads them, drops,
//! damages or copies some, holds each for its delay (and its turn at the rate), and writes it
//! back to the tap, a quiet port of the same bridge, which forwards it on as if it came
//! straight from the container. One relay per fault, one tap per container interface.
//!
//! Why not the kernel's netem qdisc: the kernels plumb meets do not all have it (this
//! project's CI kernel is built without `CONFIG_NET_SCH_NETEM` and `CONFIG_NET_SCH_PRIO`),
//! while tun/tap, `clsact`, u32 and `mirred` are everywhere containers run.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use plumb_core::chaos::{FaultKind, Impairment};
use plumb_core::kernel::Kernel;
use rand::rngs::StdRng;
use rand::{Rng as _, RngExt};

use crate::failure::{Failure, Result};
use crate::{faults, runfile};

/// Frames held at once; more are dropped (as netem's default `limit 1000`, but roomier).
const QUEUE_LIMIT: usize = 20_000;
/// Headers left intact by corruption (Ethernet + IPv4), so the frame still gets delivered
/// and its transport checksum catches the damage.
const HEADERS: usize = 34;

/// Draws for loss, corruption, duplication and jitter: rand's StdRng, seeded by the OS (or,
/// in tests, by a number).
struct Rng(StdRng);

impl Rng {
    fn seeded() -> Rng {
        Rng(rand::make_rng())
    }

    #[cfg(test)]
    fn from_seed(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }

    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// True with probability `ppm` per million.
    fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.0.random_ratio(ppm.min(1_000_000), 1_000_000)
    }

    /// Uniform in `-span..=span` microseconds.
    fn spread(&mut self, span: u64) -> i64 {
        let span = span.min(i64::MAX as u64) as i64;
        self.0.random_range(-span..=span)
    }
}

/// A frame waiting for its time: when it leaves, its arrival number (first come, first out
/// among equals), its tap, its bytes.
type Held = Reverse<(Instant, u64, usize, Vec<u8>)>;

/// What happens to each frame: pure, given the dice.
struct Shaper {
    impairment: Impairment,
    rng: Rng,
    /// Per tap: when the link is free again (the rate's serialization).
    free_at: Vec<Instant>,
    seq: u64,
    queue: BinaryHeap<Held>,
}

impl Shaper {
    fn take(&mut self, tap: usize, mut frame: Vec<u8>, now: Instant) {
        let imp = self.impairment;
        if self.rng.chance(imp.loss_ppm) {
            return;
        }
        if frame.len() > HEADERS && self.rng.chance(imp.corrupt_ppm) {
            let at = HEADERS + (self.rng.next() as usize) % (frame.len() - HEADERS);
            frame[at] ^= 1 << (self.rng.next() % 8);
        }
        let copies = if self.rng.chance(imp.duplicate_ppm) { 2 } else { 1 };
        for _ in 0..copies {
            if self.queue.len() >= QUEUE_LIMIT {
                return;
            }
            let mut leaves = now;
            let bits = frame.len() as u64 * 8;
            if let Some(nanos) = (bits * 1_000_000_000).checked_div(imp.rate_bps) {
                let start = self.free_at[tap].max(now);
                self.free_at[tap] = start + Duration::from_nanos(nanos);
                leaves = self.free_at[tap];
            }
            let delay = (imp.delay_us as i64 + self.rng.spread(imp.jitter_us)).max(0) as u64;
            self.seq += 1;
            self.queue.push(Reverse((
                leaves + Duration::from_micros(delay),
                self.seq,
                tap,
                frame.clone(),
            )));
        }
    }
}

pub fn run(stack_dir: &Path, id: u32) -> Result<()> {
    let recorded = faults::read(stack_dir)?;
    let fault = recorded
        .faults
        .iter()
        .find(|f| f.id == id)
        .ok_or_else(|| Failure::new(format!("no fault {id} recorded")))?;
    let FaultKind::Impair { impairment } = fault.kind else {
        return Err(Failure::new(format!("fault {id} has nothing to relay")));
    };
    let mut kernel = crate::apply::kernel()?;
    let mut taps: Vec<File> = Vec::new();
    for d in &fault.detours {
        let fd = kernel.open_tap(&d.tap)?;
        taps.push(File::from(fd));
    }
    let expires = fault.expires_ms.map(|e| {
        let left = e.saturating_sub(runfile::unix_ms());
        Instant::now() + Duration::from_millis(left)
    });
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut shaper = Shaper {
        impairment,
        rng: Rng::seeded(),
        free_at: vec![Instant::now(); taps.len()],
        seq: 0,
        queue: BinaryHeap::new(),
    };
    let mut buf = vec![0u8; 65_536];
    loop {
        let now = Instant::now();
        while let Some(Reverse((due, _, _, _))) = shaper.queue.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, _, tap, frame))) = shaper.queue.pop() else {
                break;
            };
            // A full tap queue drops the frame, as a full link would.
            let _ = taps[tap].write(&frame);
        }
        if expires.is_some_and(|e| e <= now) {
            // Time is up: remove the fault (this relay included) as anyone else would.
            let _ = faults::tend(stack_dir);
            return Ok(());
        }
        let next = shaper.queue.peek().map(|Reverse((due, ..))| *due);
        let wake = [next, expires].into_iter().flatten().min();
        let timeout = wake.map_or(Duration::from_secs(1), |w| w.saturating_duration_since(now));
        // poll counts milliseconds: round up, so a frame is never sent early.
        let millis = timeout.as_micros().div_ceil(1000).min(1000) as u16;
        let mut fds: Vec<PollFd> = taps.iter().map(|t| PollFd::new(t.as_fd(), PollFlags::POLLIN)).collect();
        if poll(&mut fds, PollTimeout::from(millis)).unwrap_or(0) <= 0 {
            continue;
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        let now = Instant::now();
        for (i, tap) in taps.iter_mut().enumerate().filter(|(i, _)| ready[*i]) {
            loop {
                match tap.read(&mut buf) {
                    Ok(n) if n > 0 => shaper.take(i, buf[..n].to_vec(), now),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    // The tap was deleted (the fault was cleared): nothing left to relay.
                    _ => return Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaper(impairment: Impairment) -> Shaper {
        Shaper {
            impairment,
            rng: Rng::from_seed(42),
            free_at: vec![Instant::now()],
            seq: 0,
            queue: BinaryHeap::new(),
        }
    }

    #[test]
    fn draws_stay_in_their_bounds() {
        let mut rng = Rng::from_seed(7);
        assert!((0..1000).all(|_| !rng.chance(0)));
        assert!((0..1000).all(|_| rng.chance(1_000_000)));
        assert_eq!(rng.spread(0), 0);
        let spreads: Vec<i64> = (0..10_000).map(|_| rng.spread(3)).collect();
        assert!(spreads.iter().all(|s| (-3..=3).contains(s)));
        assert!((-3..=3).all(|v| spreads.contains(&v)), "every value comes up");
    }

    #[test]
    fn a_delay_holds_each_frame_and_loss_drops_about_its_share() {
        let now = Instant::now();
        let mut s = shaper(Impairment {
            delay_us: 100_000,
            ..Default::default()
        });
        s.take(0, vec![0; 60], now);
        let Reverse((due, ..)) = s.queue.pop().unwrap();
        assert_eq!(due - now, Duration::from_millis(100));
        let mut s = shaper(Impairment {
            loss_ppm: 100_000,
            ..Default::default()
        });
        for _ in 0..10_000 {
            s.take(0, vec![0; 60], now);
        }
        assert!((8_700..9_300).contains(&s.queue.len()), "{}", s.queue.len());
    }

    #[test]
    fn a_rate_spaces_frames_by_their_size() {
        let now = Instant::now();
        let mut s = shaper(Impairment {
            rate_bps: 1_000_000,
            ..Default::default()
        });
        s.free_at = vec![now];
        // 1250 bytes = 10,000 bits = 10 ms at 1 mbit/s.
        for _ in 0..3 {
            s.take(0, vec![0; 1250], now);
        }
        let dues: Vec<Duration> = std::iter::from_fn(|| s.queue.pop().map(|Reverse((d, ..))| d - now)).collect();
        assert_eq!(dues, [10, 20, 30].map(Duration::from_millis));
    }

    #[test]
    fn jitter_stays_within_its_span() {
        let now = Instant::now();
        let mut s = shaper(Impairment {
            delay_us: 50_000,
            jitter_us: 10_000,
            ..Default::default()
        });
        for _ in 0..1000 {
            s.take(0, vec![0; 60], now);
        }
        let dues: Vec<Duration> = std::iter::from_fn(|| s.queue.pop().map(|Reverse((d, ..))| d - now)).collect();
        assert!(dues.iter().all(|d| (40..=60).contains(&d.as_millis())));
        assert!(dues.first() < dues.last());
    }
}
