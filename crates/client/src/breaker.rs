//! The worker's circuit breaker: when its handler keeps failing, the
//! worker stops taking jobs for a while instead of burning every job's
//! attempts against a dependency that is down.
//!
//! - **Closed**: jobs run. A handler that answers `Retry` is a failure;
//!   `failures_max` failures within `window` open the breaker.
//! - **Open** for `cool_down`: no fetch. The jobs the worker holds are
//!   released, which gives them back without counting an attempt (only a
//!   nack or a lease that runs out counts one), and their handlers are
//!   cancelled.
//! - **Half-open** after the cool-down: one job at a time. Its handler
//!   acking closes the breaker; answering `Retry` opens it again.
//!
//! `Poison` is not a failure: the handler judged the job, not its
//! dependency. The logic here is pure (time is passed in), so it is tested
//! without a clock.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;

/// Default failures within [`BREAKER_WINDOW_DEFAULT`] that open the breaker.
pub const BREAKER_FAILURES_MAX_DEFAULT: u32 = 10;
/// Default window the failures are counted over.
pub const BREAKER_WINDOW_DEFAULT: Duration = Duration::from_secs(10);
/// Default time the breaker stays open.
pub const BREAKER_COOL_DOWN_DEFAULT: Duration = Duration::from_secs(30);
/// Largest `failures_max`: the failures kept in the window are bounded by it.
pub const BREAKER_FAILURES_LIMIT: u32 = 10_000;

/// The breaker's settings, part of the worker's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Handler failures (`Retry`) within `window` that open the breaker;
    /// 0 turns the breaker off. Default 10, at most
    /// [`BREAKER_FAILURES_LIMIT`].
    pub failures_max: u32,
    /// The window failures are counted over. Default 10 s; above zero.
    pub window: Duration,
    /// How long the breaker stays open before it lets one job through.
    /// Default 30 s; above zero.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures_max: BREAKER_FAILURES_MAX_DEFAULT,
            window: BREAKER_WINDOW_DEFAULT,
            cool_down: BREAKER_COOL_DOWN_DEFAULT,
        }
    }
}

impl BreakerConfig {
    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), Error> {
        if self.failures_max > BREAKER_FAILURES_LIMIT {
            return Err(Error::config(
                "worker.breaker.failures_max",
                format!("must be at most {BREAKER_FAILURES_LIMIT} (0 turns the breaker off)"),
            ));
        }
        if self.failures_max > 0 && self.window.is_zero() {
            return Err(Error::config("worker.breaker.window", "must be above zero"));
        }
        if self.failures_max > 0 && self.cool_down.is_zero() {
            return Err(Error::config(
                "worker.breaker.cool_down",
                "must be above zero",
            ));
        }
        Ok(())
    }
}

/// Where the breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Jobs run.
    Closed,
    /// No jobs are taken until the instant given.
    Open {
        /// When the cool-down ends.
        until: Instant,
    },
    /// One job at a time, to learn whether the handler works again.
    HalfOpen,
}

/// What a recorded outcome did to the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    /// It opened: release what the worker holds.
    Opened,
    /// It closed again after a half-open success.
    Closed,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    /// Instants of the failures within the window, oldest first; at most
    /// `failures_max` long.
    failures: VecDeque<Instant>,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: BreakerState::Closed,
            failures: VecDeque::new(),
        }
    }

    /// The state at `now`: an open breaker whose cool-down ended is
    /// half-open.
    pub(crate) fn state(&mut self, now: Instant) -> BreakerState {
        if let BreakerState::Open { until } = self.state {
            if now >= until {
                self.state = BreakerState::HalfOpen;
            }
        }
        self.state
    }

    /// A handler failed at `now`.
    pub(crate) fn failure(&mut self, now: Instant) -> Change {
        if self.config.failures_max == 0 {
            return Change::None;
        }
        match self.state(now) {
            BreakerState::Open { .. } => Change::None,
            BreakerState::HalfOpen => self.open(now),
            BreakerState::Closed => {
                while self
                    .failures
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.config.window)
                {
                    self.failures.pop_front();
                }
                self.failures.push_back(now);
                if self.failures.len() >= self.config.failures_max as usize {
                    self.open(now)
                } else {
                    Change::None
                }
            }
        }
    }

    /// A handler succeeded at `now`.
    pub(crate) fn success(&mut self, now: Instant) -> Change {
        if self.state(now) == BreakerState::HalfOpen {
            self.state = BreakerState::Closed;
            self.failures.clear();
            return Change::Closed;
        }
        Change::None
    }

    fn open(&mut self, now: Instant) -> Change {
        self.state = BreakerState::Open {
            until: now + self.config.cool_down,
        };
        self.failures.clear();
        Change::Opened
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn breaker(failures_max: u32) -> Breaker {
        Breaker::new(BreakerConfig {
            failures_max,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(30),
        })
    }

    #[test]
    fn failures_within_the_window_open_it_and_older_ones_do_not_count() {
        let t0 = Instant::now();
        let mut b = breaker(3);
        assert_eq!(b.failure(t0), Change::None);
        assert_eq!(b.failure(t0 + Duration::from_secs(5)), Change::None);
        // The first has left the window by now.
        assert_eq!(b.failure(t0 + Duration::from_secs(11)), Change::None);
        assert_eq!(b.state(t0 + Duration::from_secs(11)), BreakerState::Closed);
        assert_eq!(b.failure(t0 + Duration::from_secs(12)), Change::Opened);
        assert_eq!(
            b.state(t0 + Duration::from_secs(12)),
            BreakerState::Open {
                until: t0 + Duration::from_secs(42)
            }
        );
    }

    #[test]
    fn after_the_cool_down_one_success_closes_it_and_one_failure_reopens_it() {
        let t0 = Instant::now();
        let mut b = breaker(1);
        assert_eq!(b.failure(t0), Change::Opened);
        // Failures while open change nothing.
        assert_eq!(b.failure(t0 + Duration::from_secs(5)), Change::None);
        let later = t0 + Duration::from_secs(30);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert_eq!(b.failure(later), Change::Opened);
        let again = later + Duration::from_secs(30);
        assert_eq!(b.state(again), BreakerState::HalfOpen);
        assert_eq!(b.success(again), Change::Closed);
        assert_eq!(b.state(again), BreakerState::Closed);
    }

    #[test]
    fn zero_failures_max_turns_it_off() {
        let t0 = Instant::now();
        let mut b = breaker(0);
        for k in 0..100 {
            assert_eq!(b.failure(t0 + Duration::from_millis(k)), Change::None);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn bad_settings_name_their_key() {
        let bad = BreakerConfig {
            window: Duration::ZERO,
            ..BreakerConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("worker.breaker.window"));
        let bad = BreakerConfig {
            failures_max: BREAKER_FAILURES_LIMIT + 1,
            ..BreakerConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("worker.breaker.failures_max"));
    }
}
