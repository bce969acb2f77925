//! Each simulated node's clock: a monotonic clock on the run's simulated
//! time, and a wall clock the fault schedule steps and drifts.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use lockstep_node::parts::Clock;
use tokio::time::Instant;

/// The wall clock at the start of every run, ms since the Unix epoch
/// (2026-01-01): fixed, so a run never reads the machine's clock.
pub(crate) const EPOCH_MS: u64 = 1_767_225_600_000;

/// One node's clocks.
#[derive(Debug)]
pub(crate) struct SimClock {
    /// The run's start, on Tokio's paused (simulated) clock.
    start: Instant,
    /// The wall clock's error: steps add to it.
    offset_ms: AtomicI64,
    /// The wall clock's drift, in parts per million of simulated time.
    drift_ppm: AtomicI64,
}

impl SimClock {
    pub(crate) fn new(start: Instant) -> SimClock {
        SimClock {
            start,
            offset_ms: AtomicI64::new(0),
            drift_ppm: AtomicI64::new(0),
        }
    }

    /// Steps the wall clock by `ms` (either way).
    pub(crate) fn step(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Sets the wall clock's drift.
    pub(crate) fn drift(&self, ppm: i64) {
        self.drift_ppm.store(ppm, Ordering::Relaxed);
    }
}

impl Clock for SimClock {
    fn monotonic(&self) -> Duration {
        self.start.elapsed()
    }

    fn wall_ms(&self) -> u64 {
        let elapsed = self.start.elapsed().as_millis() as i64;
        let drift = elapsed.saturating_mul(self.drift_ppm.load(Ordering::Relaxed)) / 1_000_000;
        let wall = EPOCH_MS as i64 + elapsed + drift + self.offset_ms.load(Ordering::Relaxed);
        wall.max(0) as u64
    }
}
