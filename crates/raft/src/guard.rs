//! The vote guard: a node that lost its data must not vote until it has the
//! committed log again.
//!
//! Raft's safety rests on two things a voter keeps on disk: the vote it cast
//! in each term, and every entry it acknowledged. A node restarted with a
//! wiped data directory has neither, yet the membership still counts it as
//! a voter. If it voted at once it could vote twice in one term, or help a
//! candidate that lacks entries committed with its own (forgotten)
//! acknowledgements win — both lose acknowledged writes.
//!
//! So a node that starts with no vote and no log ("fresh") refuses vote
//! requests until an AppendEntries from a leader shows that its log covers
//! that leader's commit index. From then on it holds every entry committed
//! before the wipe, and the leader's term is saved as its vote, so it is as
//! safe a voter as one that never lost its disk. While it waits, a cluster
//! that needs its vote has no majority and stays unavailable (never
//! inconsistent) until the old leader returns.
//!
//! A fresh node that takes part in the first bootstrap is initialized with
//! the same membership as the others, which lifts the guard ([`VoteGuard::allow`]).
//! A joining node catches up as a learner first, which lifts it too.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// `commit_seen` before any AppendEntries succeeded.
const NO_COMMIT: u64 = u64::MAX;

#[derive(Debug)]
pub struct VoteGuard {
    allowed: AtomicBool,
    /// The highest leader commit index a successful AppendEntries carried.
    commit_seen: AtomicU64,
}

impl VoteGuard {
    /// `fresh`: this node started with no vote and no log.
    pub fn new(fresh: bool) -> VoteGuard {
        VoteGuard {
            allowed: AtomicBool::new(!fresh),
            commit_seen: AtomicU64::new(NO_COMMIT),
        }
    }

    pub fn allowed(&self) -> bool {
        self.allowed.load(Ordering::Acquire)
    }

    /// Lifts the guard for good.
    pub fn allow(&self) {
        if !self.allowed.swap(true, Ordering::AcqRel) {
            tracing::info!("vote guard lifted: this node has the committed log and may vote");
        }
    }

    /// After a successful AppendEntries: remembers the leader's commit
    /// index and lifts the guard if the local log already reaches it.
    /// `last_log_index` comes from Raft's metrics, which may trail the
    /// append just made; [`VoteGuard::recheck`] looks again later.
    pub fn observe(&self, last_log_index: Option<u64>, leader_commit: Option<u64>) {
        if self.allowed() {
            return;
        }
        if let Some(commit) = leader_commit {
            let seen = self.commit_seen.load(Ordering::Acquire);
            if seen == NO_COMMIT || commit > seen {
                self.commit_seen.store(commit, Ordering::Release);
            }
        }
        self.recheck(last_log_index);
    }

    /// Lifts the guard if the local log reaches the highest leader commit
    /// seen. Called again when a vote request arrives, when the metrics
    /// have long caught up with the last append.
    pub fn recheck(&self, last_log_index: Option<u64>) {
        if self.allowed() {
            return;
        }
        let seen = self.commit_seen.load(Ordering::Acquire);
        tracing::debug!(?last_log_index, seen, "vote guard: checking catch-up");
        if let Some(last) = last_log_index {
            if seen != NO_COMMIT && last >= seen {
                self.allow();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_node_votes_only_once_its_log_covers_the_leader_commit() {
        let guard = VoteGuard::new(true);
        assert!(!guard.allowed());
        guard.observe(Some(10), Some(11));
        assert!(!guard.allowed(), "one entry short");
        guard.observe(None, Some(3));
        assert!(!guard.allowed(), "no log at all");
        guard.observe(Some(11), Some(11));
        assert!(guard.allowed());
        guard.observe(Some(0), Some(100));
        assert!(guard.allowed(), "once lifted, stays lifted");
    }

    #[test]
    fn a_later_recheck_lifts_the_guard_when_the_metrics_trailed_the_append() {
        let guard = VoteGuard::new(true);
        guard.recheck(Some(50));
        assert!(!guard.allowed(), "no leader commit seen yet");
        guard.observe(Some(159), Some(164));
        assert!(!guard.allowed());
        guard.recheck(Some(163));
        assert!(!guard.allowed());
        guard.recheck(Some(164));
        assert!(guard.allowed());
    }

    #[test]
    fn a_node_with_data_votes_from_the_start() {
        assert!(VoteGuard::new(false).allowed());
    }
}
