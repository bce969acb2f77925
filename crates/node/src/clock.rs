//! The leader's cluster clock: the time the batcher stamps on every Raft
//! entry, and the time the ticker compares due leases and delays against.
//!
//! Cluster time advances by the leader's **monotonic** elapsed time, from
//! the cluster time last applied when it became leader. A wall clock steps
//! (an NTP correction, an operator, a VM resumed), and a cluster clock that
//! followed it would move every lease deadline, delay and dedup window with
//! it: a step forward on the leader expired a 60 s lease after 2 s and gave
//! its group to a second consumer; a step back, or a new leader whose wall
//! clock was behind the old one's, froze cluster time until the wall clock
//! caught up. The monotonic clock never steps.
//!
//! A new leader starts from the last applied cluster time, once the entry
//! of its own term is applied (so every entry of earlier leaders is too),
//! and adds only its own elapsed time. The time between the old leader's
//! last stamp and the new leader's first is not counted, so an election
//! extends every lease by its gap and never shortens one (as etcd's lessor
//! renews leases on a leader change). A node never expires a lease before
//! its deadline in cluster time, and cluster time never runs faster than the
//! leader's monotonic clock plus the slew below.
//!
//! The wall clock is only a hint, within `clock.skew_ms_max`: while it is
//! that close, cluster time follows it by at most [`SLEW_PPM_MAX`] of the
//! elapsed time (so the time lost to elections is made up slowly, and
//! `enqueued_ms` and the like stay near the real time of day); further away,
//! cluster time ignores it, and the leader counts the excursion in
//! `lockstep_clock_skew_exceeded` and logs a warning. A step of any node's
//! wall clock therefore moves no deadline, delay or dedup window by more
//! than the bound, and never freezes time.
//!
//! [`ClusterTime`] is the pure arithmetic, tested alone; [`ClusterClock`]
//! feeds it this node's term, applied state and [`Clock`], the seam through
//! which a simulator can supply time.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lockstep_store::StateHandle;
use lockstep_types::{NodeId, TypeConfig};
use openraft::RaftMetrics;
use tokio::sync::watch;

use crate::metrics::registry::Metrics;

/// How fast cluster time may move toward the wall clock while the two are
/// within `clock.skew_ms_max`, in parts per million of elapsed time: 1 %,
/// so a lease is shortened by at most 1 % of its length while time lost to
/// an election is made up (3 s in 5 minutes).
pub const SLEW_PPM_MAX: u64 = 10_000;
/// While the wall clock stays beyond the bound, the warning is repeated
/// at most this often.
const SKEW_WARN_EVERY: Duration = Duration::from_secs(60);

const US_PER_MS: u64 = 1_000;
const PPM: u128 = 1_000_000;

/// Where a node reads time. The only clock reads of the node's time logic
/// go through this trait, so a simulator can inject time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Time since an origin fixed for the clock's life, on a clock that
    /// never steps (`CLOCK_MONOTONIC`).
    fn monotonic(&self) -> Duration;
    /// The wall clock, ms since the Unix epoch. Only a hint: it can step
    /// either way at any time.
    fn wall_ms(&self) -> u64;
}

/// The operating system's clocks.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }

    fn wall_ms(&self) -> u64 {
        wall_clock_ms()
    }
}

/// The wall clock in ms since the Unix epoch (0 before it).
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the applied state says about time: the term of the last applied
/// entry and the core's cluster time after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub term: u64,
    pub clock_ms: u64,
}

/// One reading of cluster time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// Cluster time, ms.
    pub now_ms: u64,
    /// The wall clock minus cluster time, ms.
    pub skew_ms: i64,
    /// The wall clock is more than the bound away from cluster time.
    pub exceeded: bool,
    /// It is, and was not at the previous reading of this leadership: a
    /// new excursion, counted once.
    pub excursion_began: bool,
}

/// Where cluster time stood at the last reading of one leadership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Anchor {
    /// The term it was taken in.
    term: u64,
    /// The applied state has reached this term: it holds every stamp of
    /// earlier leaders, so cluster time may run from it.
    settled: bool,
    /// Cluster time at the last reading, µs (ms would round the slew away).
    cluster_us: u64,
    /// The monotonic clock at the last reading, µs.
    monotonic_us: u64,
}

/// The arithmetic of cluster time, free of clocks and locks: each reading
/// is given the term, the applied state and both clocks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterTime {
    anchor: Option<Anchor>,
    exceeded: bool,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl ClusterTime {
    /// Cluster time now, for a node in `term` whose applied state is
    /// `applied`, with the monotonic clock at `monotonic` and the wall
    /// clock at `wall_ms`; `skew_ms_max` is `clock.skew_ms_max`.
    ///
    /// Within one leadership readings never decrease. Across leaderships a
    /// reading may be below an earlier one that was never applied; the
    /// core's `clock = max(clock, stamp)` keeps cluster time monotonic.
    pub fn read(
        &mut self,
        term: u64,
        applied: Applied,
        monotonic: Duration,
        wall_ms: u64,
        skew_ms_max: u64,
    ) -> Reading {
        // An applied entry of a later term than the node knows means
        // another leader stamped since: never run on from an old anchor.
        let term = term.max(applied.term);
        let monotonic_us = micros(monotonic);
        let applied_us = applied.clock_ms.saturating_mul(US_PER_MS);
        let mut anchor = match self.anchor {
            Some(a) if a.term == term && a.settled => a,
            previous => {
                if previous.map(|a| a.term) != Some(term) {
                    self.exceeded = false;
                }
                // Until the applied state reaches this term, time stands at
                // the applied time: entries of the old leader may still be
                // unapplied, and their stamps are the floor.
                let settled = applied.term >= term;
                // Before the first command is applied nothing depends on
                // time (no lease, delay or dedup id), so a fresh cluster
                // starts at the wall clock rather than at 1970.
                let start_ms = if settled && applied.clock_ms == 0 {
                    wall_ms
                } else {
                    applied.clock_ms
                };
                Anchor {
                    term,
                    settled,
                    cluster_us: start_ms.saturating_mul(US_PER_MS),
                    monotonic_us,
                }
            }
        };
        let elapsed_us = monotonic_us.saturating_sub(anchor.monotonic_us);
        let mut cluster_us = anchor.cluster_us.saturating_add(elapsed_us);
        let wall_us = wall_ms.saturating_mul(US_PER_MS);
        let skew_us = i128::from(wall_us) - i128::from(cluster_us);
        let bound_us = u128::from(skew_ms_max) * u128::from(US_PER_MS);
        let exceeded = anchor.settled && skew_us.unsigned_abs() > bound_us;
        if anchor.settled && !exceeded {
            // Follow the wall clock, slowly: at most SLEW_PPM_MAX of the
            // elapsed time, so time neither jumps nor stops (the slew is
            // below the elapsed time it is taken from).
            let slew_max = (u128::from(elapsed_us) * u128::from(SLEW_PPM_MAX) / PPM) as i128;
            let slew = skew_us.clamp(-slew_max, slew_max);
            cluster_us = u64::try_from(i128::from(cluster_us) + slew).unwrap_or(cluster_us);
        }
        // Our own stamps, applied, never exceed this; a higher applied time
        // is another leader's, which we must not go below.
        cluster_us = cluster_us.max(applied_us);
        anchor.cluster_us = cluster_us;
        anchor.monotonic_us = monotonic_us;
        self.anchor = Some(anchor);
        let excursion_began = exceeded && !self.exceeded;
        if anchor.settled {
            self.exceeded = exceeded;
        }
        let skew_ms = (skew_us / i128::from(US_PER_MS))
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        Reading {
            now_ms: cluster_us / US_PER_MS,
            skew_ms,
            exceeded,
            excursion_began,
        }
    }
}

/// The cluster clock of one node: [`ClusterTime`] fed with this node's
/// term, applied state and [`Clock`]. Shared by the batcher, which stamps
/// entries with it, and the ticker, which compares due times to it.
pub struct ClusterClock {
    clock: Arc<dyn Clock>,
    raft_metrics: watch::Receiver<RaftMetrics<NodeId, lockstep_types::NodeInfo>>,
    state: StateHandle,
    skew_ms_max: u64,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    time: ClusterTime,
    /// The monotonic time of the last skew warning.
    warned: Option<Duration>,
}

impl fmt::Debug for ClusterClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterClock")
            .field("clock", &self.clock)
            .field("skew_ms_max", &self.skew_ms_max)
            .finish_non_exhaustive()
    }
}

impl ClusterClock {
    pub fn new(
        clock: Arc<dyn Clock>,
        raft: &openraft::Raft<TypeConfig>,
        state: StateHandle,
        skew_ms_max: u64,
        metrics: Arc<Metrics>,
    ) -> ClusterClock {
        ClusterClock {
            clock,
            raft_metrics: raft.metrics(),
            state,
            skew_ms_max,
            metrics,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Cluster time now. Meaningful on the leader; elsewhere it stands at
    /// the applied time.
    pub fn now_ms(&self) -> u64 {
        let term = self.raft_metrics.borrow().current_term;
        let applied = match self.state.applied_clock() {
            Ok((log_id, clock_ms)) => Applied {
                term: log_id.map_or(0, |l| l.leader_id.term),
                clock_ms,
            },
            Err(e) => {
                // Time then runs on from the anchor; the core's max keeps
                // it monotonic.
                tracing::warn!(error = %e, "cannot read the applied cluster time");
                Applied {
                    term: 0,
                    clock_ms: 0,
                }
            }
        };
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Read under the lock, so concurrent readers see the clocks in the
        // order they update the anchor.
        let monotonic = self.clock.monotonic();
        let wall_ms = self.clock.wall_ms();
        if crate::planted("wall-clock-time") {
            // Planted bug (tests only): the leader's wall clock is cluster
            // time, steps and all (never below the applied time).
            return wall_ms.max(applied.clock_ms);
        }
        let reading = inner
            .time
            .read(term, applied, monotonic, wall_ms, self.skew_ms_max);
        if reading.excursion_began {
            self.metrics.observe_clock_skew_exceeded();
        }
        let warn_due = inner
            .warned
            .is_none_or(|at| monotonic.saturating_sub(at) >= SKEW_WARN_EVERY);
        if reading.exceeded && (reading.excursion_began || warn_due) {
            inner.warned = Some(monotonic);
            tracing::warn!(
                skew_ms = reading.skew_ms,
                skew_ms_max = self.skew_ms_max,
                cluster_ms = reading.now_ms,
                wall_ms,
                "this leader's wall clock is further from cluster time than clock.skew_ms_max; \
                 cluster time keeps to the monotonic clock (check the node's time sync)"
            );
        }
        reading.now_ms
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BOUND_MS: u64 = 5_000;
    /// A wall clock of an ordinary day, ms since the epoch.
    const DAY_MS: u64 = 1_700_000_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn applied(term: u64, clock_ms: u64) -> Applied {
        Applied { term, clock_ms }
    }

    #[test]
    fn a_fresh_cluster_starts_at_the_wall_clock() {
        let mut t = ClusterTime::default();
        let r = t.read(1, applied(1, 0), ms(0), DAY_MS, BOUND_MS);
        assert_eq!(r.now_ms, DAY_MS);
        assert!(!r.exceeded);
    }

    #[test]
    fn time_follows_the_monotonic_clock_whatever_the_wall_clock_does() {
        let mut t = ClusterTime::default();
        let start = DAY_MS;
        t.read(1, applied(1, start), ms(10), start, BOUND_MS);
        // The wall clock steps 10 minutes ahead: 2 s later, cluster time
        // has moved 2 s.
        let r = t.read(1, applied(1, start), ms(2_010), start + 602_000, BOUND_MS);
        assert_eq!(r.now_ms, start + 2_000);
        assert!(r.exceeded && r.excursion_began);
        assert_eq!(r.skew_ms, 600_000);
        // Then an hour back: time still moves 1 s per second, no freeze.
        let r = t.read(1, applied(1, start), ms(3_010), start - 3_600_000, BOUND_MS);
        assert_eq!(r.now_ms, start + 3_000);
        assert!(r.exceeded);
        assert!(!r.excursion_began, "one excursion is counted once");
    }

    #[test]
    fn a_new_leader_starts_from_the_applied_time_and_loses_the_gap() {
        let mut t = ClusterTime::default();
        // Leader of term 2 (its wall clock an hour behind); the old leader
        // stamped up to `last`. The election took 3 s of monotonic time
        // before this node's first reading, which is not counted.
        let last = DAY_MS;
        let r = t.read(2, applied(2, last), ms(50_000), last - 3_600_000, BOUND_MS);
        assert_eq!(r.now_ms, last);
        let r = t.read(2, applied(2, last), ms(52_000), last - 3_598_000, BOUND_MS);
        assert_eq!(r.now_ms, last + 2_000);
    }

    #[test]
    fn until_its_term_is_applied_a_new_leader_stands_at_the_applied_time() {
        let mut t = ClusterTime::default();
        let r = t.read(3, applied(2, 1_000), ms(0), DAY_MS, BOUND_MS);
        assert_eq!(
            r.now_ms, 1_000,
            "not the wall clock: entries may be unapplied"
        );
        assert!(!r.exceeded, "no skew is judged before the state is current");
        // The old leader's last entries apply; still term 2.
        let r = t.read(3, applied(2, 5_000), ms(500), DAY_MS, BOUND_MS);
        assert_eq!(r.now_ms, 5_000, "no elapsed time is added while unsettled");
        // Our blank entry applies: time runs from the applied time.
        let r = t.read(3, applied(3, 5_000), ms(600), DAY_MS, BOUND_MS);
        assert_eq!(r.now_ms, 5_000);
        let r = t.read(3, applied(3, 5_000), ms(1_600), DAY_MS, BOUND_MS);
        assert_eq!(r.now_ms, 6_000);
        assert!(r.exceeded, "the wall clock is far from this cluster time");
    }

    #[test]
    fn a_leader_again_does_not_run_on_from_its_old_anchor() {
        let mut t = ClusterTime::default();
        t.read(1, applied(1, 10_000), ms(0), 10_000, BOUND_MS);
        t.read(1, applied(1, 10_000), ms(1_000), 11_000, BOUND_MS);
        // Another leader (term 2) ran for a while, losing 5 s to its
        // election; its last stamp 20_000 is applied. Leading again in
        // term 3 this node starts there, not at its old anchor plus 30 s.
        let r = t.read(3, applied(3, 20_000), ms(31_000), 41_000, 100_000);
        assert_eq!(r.now_ms, 20_000);
        // Even if the node still believes it is in term 1 (stale metrics),
        // an applied entry of a later term re-anchors it.
        let mut t = ClusterTime::default();
        t.read(1, applied(1, 10_000), ms(0), 10_000, BOUND_MS);
        let r = t.read(1, applied(2, 20_000), ms(31_000), 41_000, 100_000);
        assert_eq!(r.now_ms, 20_000);
    }

    #[test]
    fn readings_never_go_below_the_applied_time() {
        let mut t = ClusterTime::default();
        t.read(1, applied(1, 10_000), ms(0), 10_000, BOUND_MS);
        let r = t.read(1, applied(1, 50_000), ms(100), 10_100, BOUND_MS);
        assert_eq!(r.now_ms, 50_000);
        let r = t.read(1, applied(1, 50_000), ms(200), 10_200, BOUND_MS);
        assert_eq!(r.now_ms, 50_100, "and run on from it");
    }

    #[test]
    fn within_the_bound_time_follows_the_wall_clock_slowly() {
        let mut t = ClusterTime::default();
        let start = DAY_MS;
        t.read(1, applied(1, start), ms(0), start, BOUND_MS);
        // The wall clock is 3 s ahead (time lost to an election). Over
        // 10 s cluster time moves 10 s plus 1 % of it.
        let r = t.read(1, applied(1, start), ms(10_000), start + 13_000, BOUND_MS);
        assert_eq!(r.now_ms, start + 10_100);
        assert!(!r.exceeded);
        // 3 s behind: 1 % slower, never stopped.
        let mut t = ClusterTime::default();
        t.read(1, applied(1, start), ms(0), start, BOUND_MS);
        let r = t.read(1, applied(1, start), ms(10_000), start + 7_000, BOUND_MS);
        assert_eq!(r.now_ms, start + 9_900);
        // Close to the wall clock, it lands on it.
        let r = t.read(1, applied(1, start), ms(11_000), start + 10_905, BOUND_MS);
        assert_eq!(r.now_ms, start + 10_905);
    }

    #[test]
    fn slew_is_not_lost_to_rounding_between_frequent_readings() {
        let mut t = ClusterTime::default();
        let start = DAY_MS;
        t.read(1, applied(1, start), ms(0), start, BOUND_MS);
        // Readings every 50 ms (the ticker) for 10 s, the wall 3 s ahead.
        let mut last = 0;
        for k in 1..=200 {
            last = t
                .read(
                    1,
                    applied(1, start),
                    ms(50 * k),
                    start + 3_000 + 50 * k,
                    BOUND_MS,
                )
                .now_ms;
        }
        assert_eq!(last, start + 10_100);
    }

    #[test]
    fn beyond_the_bound_a_step_moves_time_not_at_all() {
        for step_ms in [-3_600_000i64, -600_000, -5_001, 5_002, 600_000, 36_000_000] {
            let mut t = ClusterTime::default();
            let start = DAY_MS;
            t.read(1, applied(1, start), ms(0), start, BOUND_MS);
            let wall = start.checked_add_signed(step_ms).unwrap();
            let r = t.read(1, applied(1, start), ms(1), wall, BOUND_MS);
            assert_eq!(r.now_ms, start + 1, "step {step_ms} ms");
            assert!(r.exceeded && r.excursion_began, "step {step_ms} ms");
            let r = t.read(1, applied(1, start), ms(2_001), wall + 2_000, BOUND_MS);
            assert_eq!(r.now_ms, start + 2_001, "step {step_ms} ms");
        }
    }

    #[test]
    fn an_excursion_that_ends_and_begins_again_is_counted_again() {
        let mut t = ClusterTime::default();
        let start = DAY_MS;
        t.read(1, applied(1, start), ms(0), start, BOUND_MS);
        assert!(
            t.read(1, applied(1, start), ms(1), start + 600_000, BOUND_MS)
                .excursion_began
        );
        let back = t.read(1, applied(1, start), ms(2), start + 2, BOUND_MS);
        assert!(!back.exceeded);
        assert!(
            t.read(1, applied(1, start), ms(3), start + 600_000, BOUND_MS)
                .excursion_began
        );
    }

    #[test]
    fn the_system_clock_is_monotonic() {
        let c = SystemClock::new();
        let a = c.monotonic();
        let b = c.monotonic();
        assert!(b >= a);
        assert!(c.wall_ms() > 0);
    }
}
