//! The vote guard: a node that lost its data must not vote, nor campaign,
//! until it holds the committed log again.
//!
//! Raft's safety rests on two things a voter keeps on disk: the vote it cast
//! in each term, and every entry it acknowledged. A node restarted with a
//! wiped data directory has neither, yet the membership still counts it as
//! a voter. If it voted at once it could vote twice in one term, or help a
//! candidate that lacks entries committed with its own (forgotten)
//! acknowledgements win: both lose acknowledged writes.
//!
//! The rule (after Alagappan et al., "Protocol-Aware Recovery for
//! Consensus-Based Storage", FAST 2018, and etcd's procedure for a member
//! that lost its disk):
//!
//! - A node that starts on an empty directory is guarded. The node records
//!   that, synced, before Raft starts, and keeps it across restarts until
//!   the guard lifts, so a restart in the middle of catching up (with part
//!   of a log) is still guarded.
//! - While guarded it neither votes nor campaigns (openraft's `elect` is
//!   off).
//! - It lifts only on a commit index that the current leader confirmed with
//!   a majority of the membership (openraft's read index: the leader proves
//!   it still leads by a round of heartbeats, so a stale, partitioned leader
//!   cannot answer), once this node has applied up to it
//!   ([`VoteGuard::confirmed`], then [`VoteGuard::applied`]). One
//!   AppendEntries never lifts it: a deposed leader may still send one.
//! - Forming a cluster lifts it too ([`VoteGuard::allow`]): a node
//!   initialized with the first membership holds everything ever committed,
//!   which is nothing.
//! - While guarded it acknowledges no AppendEntries until a majority of the
//!   *other* members told it their terms ([`VoteGuard::learned_floor`]),
//!   and then only from a leader of at least the highest of those terms
//!   ([`VoteGuard::append_rule`]). The node forgot the newest term it knew;
//!   a deposed leader that never heard of a newer one would otherwise count
//!   its acknowledgement toward a commit and, with it, form a majority
//!   without entries the newer term committed. Every majority that
//!   committed anything shares a member with any majority of the others, so
//!   the highest term they report is at least the newest committed one.
//!   Until then the node still appends what a leader sends (to learn the
//!   log and the membership it probes) but answers as if unreachable. The
//!   simulator found this (`crates/sim`, story "stale leader").
//! - Until then it answers no *empty* AppendEntries with a conflict either:
//!   openraft 0.9's read index sends empty ones and counts every answer but
//!   a higher vote as a confirmation, so a deposed leader and a freshly
//!   wiped member would confirm a stale read (the node-layer simulator
//!   found this, `tests/nodesim.rs`). The refusal carries
//!   [`ENTRIES_WANTED_KEY`]; the leader's [`EntriesWanted`] turns it into
//!   one no-op entry, whose AppendEntries is not empty, so an idle leader
//!   still learns where the logs meet and the node catches up.
//!
//! While it waits, a cluster that needs its vote has no majority and stays
//! unavailable (never inconsistent) until a node with the log returns.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// `target` before any leader confirmed a commit index.
const NO_TARGET: u64 = u64::MAX;
/// `floor` before a majority of the other members reported their terms.
const NO_FLOOR: u64 = u64::MAX;

/// The metadata key of a guarded node's refusal of an empty AppendEntries
/// whose answer would have been a conflict: the leader should send entries.
pub const ENTRIES_WANTED_KEY: &str = "lockstep-entries-wanted";

/// Set on a leader when a guarded member refused an empty AppendEntries it
/// would have answered with a conflict (see the module docs); the node's
/// ticker takes it and proposes one no-op entry. Cheap to clone: clones
/// share the flag.
#[derive(Clone, Debug, Default)]
pub struct EntriesWanted(Arc<AtomicBool>);

impl EntriesWanted {
    /// A guarded member asked for entries.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether a guarded member asked for entries since the last take.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

/// What a guarded node does with an AppendEntries ([`VoteGuard::append_rule`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendRule {
    /// Append and acknowledge, as any follower.
    Acknowledge,
    /// Append, to learn the log and the membership, but acknowledge
    /// nothing: the newest term is not known yet.
    AppendOnly,
    /// Refuse: the leader's term is below the newest the other members
    /// reported, so it is deposed.
    Stale { floor: u64 },
}

/// Whether this node may vote and campaign yet; see the module docs.
#[derive(Debug)]
pub struct VoteGuard {
    allowed: AtomicBool,
    /// The highest commit index a leader confirmed with a majority.
    target: AtomicU64,
    /// The highest term a majority of the other members reported.
    floor: AtomicU64,
    /// Terms reported so far, by member: a leader's AppendEntries reports
    /// its own. Read by the node's guard task with the probes' answers.
    reports: Mutex<BTreeMap<u64, u64>>,
}

impl VoteGuard {
    /// `guarded`: this node started on an empty directory, or was guarded
    /// when it stopped.
    pub fn new(guarded: bool) -> VoteGuard {
        VoteGuard {
            allowed: AtomicBool::new(!guarded),
            target: AtomicU64::new(NO_TARGET),
            floor: AtomicU64::new(NO_FLOOR),
            reports: Mutex::new(BTreeMap::new()),
        }
    }

    /// Member `node` holds a vote of `term` (it said so, or it sent an
    /// AppendEntries as the leader of `term`).
    pub fn report_term(&self, node: u64, term: u64) {
        let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        let seen = reports.entry(node).or_insert(term);
        *seen = (*seen).max(term);
    }

    /// Every term reported so far, by member.
    pub fn reported_terms(&self) -> BTreeMap<u64, u64> {
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A majority of the other members reported terms up to `term`; only
    /// the highest such report counts.
    pub fn learned_floor(&self, term: u64) {
        let mut seen = self.floor.load(Ordering::Acquire);
        while seen == NO_FLOOR || term > seen {
            match self
                .floor
                .compare_exchange(seen, term, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => seen = now,
            }
        }
    }

    /// Whether a majority of the other members reported their terms yet.
    pub fn floor(&self) -> Option<u64> {
        let floor = self.floor.load(Ordering::Acquire);
        (floor != NO_FLOOR).then_some(floor)
    }

    /// What to do with an AppendEntries from a leader of `term`.
    pub fn append_rule(&self, term: u64) -> AppendRule {
        if self.allowed() {
            return AppendRule::Acknowledge;
        }
        match self.floor() {
            None => AppendRule::AppendOnly,
            Some(floor) if term < floor => AppendRule::Stale { floor },
            Some(_) => AppendRule::Acknowledge,
        }
    }

    /// Whether the guard is lifted.
    pub fn allowed(&self) -> bool {
        self.allowed.load(Ordering::Acquire)
    }

    /// Lifts the guard for good. The caller has recorded the lift on disk
    /// first, or lifts it because the node formed the cluster.
    pub fn allow(&self) {
        if !self.allowed.swap(true, Ordering::AcqRel) {
            tracing::info!("vote guard lifted: this node has the committed log and may vote");
        }
    }

    /// A leader confirmed `commit_index` with a majority of the current
    /// membership (its read index). Only the highest one counts.
    pub fn confirmed(&self, commit_index: u64) {
        let mut seen = self.target.load(Ordering::Acquire);
        while seen == NO_TARGET || commit_index > seen {
            match self.target.compare_exchange(
                seen,
                commit_index,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => seen = now,
            }
        }
    }

    /// Whether this node, having applied up to `applied_index`, holds every
    /// entry a leader confirmed as committed: the guard may lift (the
    /// caller records that, synced, then calls [`VoteGuard::allow`]).
    pub fn may_lift(&self, applied_index: Option<u64>) -> bool {
        if self.allowed() {
            return false;
        }
        let target = self.target.load(Ordering::Acquire);
        target != NO_TARGET && applied_index.is_some_and(|a| a >= target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guarded_node_may_lift_only_once_it_applied_a_confirmed_commit_index() {
        let guard = VoteGuard::new(true);
        assert!(!guard.allowed());
        assert!(
            !guard.may_lift(Some(1_000)),
            "no leader confirmed anything yet"
        );
        guard.confirmed(11);
        assert!(!guard.may_lift(Some(10)), "one entry short");
        assert!(!guard.may_lift(None), "nothing applied at all");
        assert!(guard.may_lift(Some(11)));
        guard.confirmed(5);
        assert!(
            guard.may_lift(Some(11)),
            "a lower confirmation never lowers the bar"
        );
        guard.confirmed(20);
        assert!(!guard.may_lift(Some(11)), "a higher one raises it");
        guard.allow();
        assert!(guard.allowed());
        assert!(
            !guard.may_lift(Some(20)),
            "once lifted, nothing left to lift"
        );
    }

    #[test]
    fn a_guarded_node_acknowledges_only_leaders_of_the_newest_term_its_peers_report() {
        let guard = VoteGuard::new(true);
        assert_eq!(
            guard.append_rule(9),
            AppendRule::AppendOnly,
            "no term known yet"
        );
        guard.learned_floor(7);
        assert_eq!(guard.append_rule(6), AppendRule::Stale { floor: 7 });
        assert_eq!(guard.append_rule(7), AppendRule::Acknowledge);
        guard.learned_floor(5);
        assert_eq!(guard.floor(), Some(7), "a lower report never lowers it");
        guard.allow();
        assert_eq!(guard.append_rule(1), AppendRule::Acknowledge, "lifted");
        assert_eq!(
            VoteGuard::new(false).append_rule(0),
            AppendRule::Acknowledge
        );
    }

    #[test]
    fn a_node_with_data_votes_from_the_start() {
        assert!(VoteGuard::new(false).allowed());
    }
}
