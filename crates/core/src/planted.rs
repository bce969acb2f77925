//! Planted bugs: switches that break a safety rule on purpose, so a test can
//! show that the chaos checker notices (a checker that finds nothing in a
//! broken build proves nothing about a correct one).
//!
//! Compiled only with the `planted-bugs` feature, which `scripts/test`
//! turns on for the test build, and refused in any build without debug
//! assertions: a release binary cannot contain them. Off unless a node is
//! started with `LOCKSTEP_PLANTED_BUG` (see `lockstep_node::run`).
//!
//! The switch is a process-wide atomic: every node of a test cluster is its
//! own process and gets the same setting, so `apply` stays a function of
//! its inputs within a run.

#[cfg(not(debug_assertions))]
compile_error!("the planted-bugs feature is for debug builds only; never build a release with it");

use std::sync::atomic::{AtomicU8, Ordering};

/// A rule to break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Bug {
    /// Ack, nack, extend, release and dead-letter accept any fence of a
    /// live lease, not only the latest grant's (the checker's F).
    SkipFence = 1,
    /// Enqueue stores a job again under an id it already holds (D).
    IgnoreDedup = 2,
    /// The log store answers an append before its write is durable; the
    /// write-ahead log is synced only about once a second (L after every
    /// node is killed at once). Implemented in `lockstep-store`.
    AckBeforeFsync = 3,
    /// The payload store answers "no such payload" for every job, as if
    /// its payloads were lost, so a test can show a broken invariant is
    /// loud (a fetch answers INTERNAL, with a log line and a metric).
    /// Implemented in `lockstep-store`.
    LosePayload = 4,
    /// A re-run bootstrap initializes a node that lost its data even though
    /// other members hold a log, which lifts its vote guard: with a lagging
    /// member it can elect a leader without acknowledged jobs (L).
    /// Implemented in `lockstep-node` (`bootstrap::form`).
    GuardLiftedByBootstrap = 5,
    /// The vote guard is not kept across a restart: a node restarted in the
    /// middle of catching up (a vote, part of a log) votes at once (L).
    /// Implemented in `lockstep-node` (`guard::Guard::open`).
    GuardNotPersisted = 6,
    /// Cluster time is the leader's wall clock: a clock step forward ends
    /// every lease early and gives a held group to a second consumer (T).
    /// Implemented in `lockstep-node` (`clock::ClusterClock::now_ms`).
    WallClockTime = 7,
    /// Apply ignores the session reply cache: a retried request whose
    /// first try committed is applied again (orphaned leases, attempts no
    /// delivery explains: A).
    RetriesWithoutReplyCache = 8,
    /// A leader's refusal from its precheck is final without the read-index
    /// round, so a deposed or lagging leader refuses valid requests from a
    /// stale state (NOT_FOUND for a queue whose creation was acknowledged).
    /// Implemented in `lockstep-node` (`Node::execute_local`).
    PrecheckOnStaleState = 9,
    /// A guarded node (one that lost its data) acknowledges AppendEntries
    /// from any leader, before it learned the newest term from a majority
    /// of the other members: a deposed leader that never heard of the
    /// newer term commits over entries that term committed (L). Found by
    /// the simulator. Implemented in `lockstep-raft`'s peer service.
    GuardAcksStaleLeader = 10,
}

impl Bug {
    pub const ALL: [Bug; 10] = [
        Bug::SkipFence,
        Bug::IgnoreDedup,
        Bug::AckBeforeFsync,
        Bug::LosePayload,
        Bug::GuardLiftedByBootstrap,
        Bug::GuardNotPersisted,
        Bug::WallClockTime,
        Bug::RetriesWithoutReplyCache,
        Bug::PrecheckOnStaleState,
        Bug::GuardAcksStaleLeader,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::SkipFence => "skip-fence",
            Bug::IgnoreDedup => "ignore-dedup",
            Bug::AckBeforeFsync => "ack-before-fsync",
            Bug::LosePayload => "lose-payload",
            Bug::GuardLiftedByBootstrap => "guard-lifted-by-bootstrap",
            Bug::GuardNotPersisted => "guard-not-persisted",
            Bug::WallClockTime => "wall-clock-time",
            Bug::RetriesWithoutReplyCache => "retries-without-reply-cache",
            Bug::PrecheckOnStaleState => "precheck-on-stale-state",
            Bug::GuardAcksStaleLeader => "guard-acks-stale-leader",
        }
    }

    pub fn parse(text: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == text)
    }
}

static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// Turns `bug` on for this process.
pub fn plant(bug: Bug) {
    ACTIVE.store(bug as u8, Ordering::SeqCst);
}

/// Turns every planted bug off again (the simulator's tests plant one
/// after another in one process).
pub fn clear() {
    ACTIVE.store(0, Ordering::SeqCst);
}

/// Whether `bug` is on.
pub fn active(bug: Bug) -> bool {
    ACTIVE.load(Ordering::Relaxed) == bug as u8
}
