//! The elector: when to campaign, with a pre-vote first.
//!
//! openraft 0.9 has no pre-vote. A follower whose election timer fires
//! raises its term at once, even when it only lost touch for a moment (a
//! SIGSTOP, a GC pause, a partition of its own): its next answer to the
//! healthy leader carries the higher term, the leader steps down, and
//! writes stop until a new election ends (1.3-1.9 s in 7 of 14 trials of a
//! follower resumed after a 6 s pause).
//!
//! So openraft's own election timer is off (`Config::enable_elect` false)
//! and this loop decides instead, as etcd's `PreVote` does (Ongaro's thesis, 9.6):
//!
//! - It waits from the last change of its vote or contact with a leader:
//!   while the vote is committed, the leader lease (`election_timeout_max`)
//!   plus the part of an election timeout above `election_timeout_min`,
//!   the spread that keeps candidates apart (openraft's
//!   `handle_tick_election` waits the lease plus a whole timeout; the
//!   pre-vote asks the voters about their lease, so the rest of that wait
//!   protects nothing); otherwise one election timeout. A sole voter
//!   campaigns at once. The timeout is drawn again for every attempt,
//!   from the same range.
//! - Then it asks every other voter whether it would vote for this node
//!   now ([`Request::PreVote`], changing nothing anywhere). A node grants
//!   only what openraft's `handle_vote_req` would grant: it is not the
//!   leader, it has not heard from a leader within `election_timeout_max`
//!   (the lease), and the candidate's last log id is at least its own. A
//!   guarded node grants nothing.
//! - Only with grants from a majority of every configuration (itself
//!   counted) does it campaign (`trigger().elect()`), which raises the
//!   term, and only if no leader was heard from and its vote did not
//!   change during the round (a leader elected meanwhile must not be
//!   deposed on grants that are stale now). Otherwise nothing changed,
//!   and it tries again after a new timeout.
//!
//! The log comparison matters as much as the lease. openraft's own timer
//! makes a candidate that met a newer log wait longer (its
//! `smaller_log_timeout`), which this loop cannot see; without the
//! comparison, members with short logs and short timeouts raised the term
//! again and again, every higher term reset the timers of the members
//! with the newer log, and no leader was elected (the node-layer
//! simulator, seed 5 on five nodes). A guarded node never
//! campaigns (see `lockstep_raft::VoteGuard`): the loop skips while the
//! guard is up, which replaces toggling openraft's `elect`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lockstep_types::forward::{Request, Response};
use lockstep_types::NodeId;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::every::Every;
use crate::node::Node;

/// How often the elector looks whether its timeout passed.
const ELECTOR_CHECK_MS: u64 = 50;

/// While `node` runs: campaigns, after a pre-vote, when no leader was
/// heard from for an election timeout. Ends when `stop` turns true.
pub(crate) async fn run(node: Arc<Node>, stop: watch::Receiver<bool>) {
    let mut every = Every::new(Duration::from_millis(ELECTOR_CHECK_MS), stop);
    let mut attempt = 0u64;
    let mut timeout = election_timeout(&node, attempt);
    let mut last_try: Option<Instant> = None;
    loop {
        if !every.tick().await {
            return;
        }
        if node.guard.is_up() {
            continue;
        }
        let Some(seen) = node.seen().await else {
            continue;
        };
        if seen.leading {
            continue;
        }
        let Some(configs) = voter_configs(&node) else {
            continue;
        };
        // A sole voter campaigns at once, as openraft's own timer does.
        let alone = configs.iter().all(|c| c.len() == 1);
        // openraft waits the lease and then a whole timeout. The lease
        // alone keeps the voters of a leader they heard from refusing, and
        // the pre-vote asks them exactly that; after the lease, what the
        // timeout adds is the spread that keeps candidates apart, so only
        // its part above the minimum is waited. This takes
        // `election_timeout_min` (400 ms by default) off a failover.
        let after_contact = if seen.committed {
            let min = Duration::from_millis(node.raft.config().election_timeout_min);
            node.lease() + timeout.saturating_sub(min)
        } else {
            timeout
        };
        // The lease counts from the last leader contact; a failed pre-vote
        // changed nothing, so the next try waits one timeout from it.
        let waited = seen.touched.is_none_or(|t| t.elapsed() >= after_contact)
            && last_try.is_none_or(|t| t.elapsed() >= timeout);
        if !alone && !waited {
            continue;
        }
        attempt += 1;
        timeout = election_timeout(&node, attempt);
        last_try = Some(Instant::now());
        if !pre_vote(&node, &configs).await {
            tracing::debug!("pre-vote not granted by a majority: not campaigning");
            continue;
        }
        // The round took time: a leader elected meanwhile (whose first
        // AppendEntries had not reached the voters yet) must not be
        // deposed by a campaign on grants that are stale now.
        let Some(now) = node.seen().await else {
            continue;
        };
        if now.leading || now.touched != seen.touched {
            tracing::debug!("a leader or a vote appeared during the pre-vote: not campaigning");
            continue;
        }
        tracing::info!("pre-vote granted by a majority: campaigning");
        if let Err(e) = node.raft.trigger().elect().await {
            tracing::warn!(error = %e, "cannot start a campaign");
        }
    }
}

/// An election timeout in openraft's range, drawn anew for each attempt
/// from the node id and the attempt (no random source, so a simulated run
/// replays the same).
fn election_timeout(node: &Node, attempt: u64) -> Duration {
    let config = node.raft.config();
    let (min, max) = (config.election_timeout_min, config.election_timeout_max);
    let spread = max.saturating_sub(min).max(1);
    Duration::from_millis(min + splitmix64(node.id ^ attempt.rotate_left(32)) % spread)
}

/// SplitMix64's finalizer: spreads close inputs over the whole range.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The voter sets of the membership this node holds (two while joint),
/// when this node is a voter of it.
fn voter_configs(node: &Node) -> Option<Vec<BTreeSet<NodeId>>> {
    let metrics = node.raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    let configs = membership.get_joint_config().clone();
    configs
        .iter()
        .any(|c| c.contains(&node.id))
        .then_some(configs)
}

/// Asks every other voter, at once, whether it would vote for this node
/// now; true once every configuration has a majority of grants (this node
/// grants its own). Each question waits at most the smallest election
/// timeout.
async fn pre_vote(node: &Arc<Node>, configs: &[BTreeSet<NodeId>]) -> bool {
    let mut granted = BTreeSet::from([node.id]);
    let majority = |granted: &BTreeSet<NodeId>| {
        configs
            .iter()
            .all(|c| c.intersection(granted).count() > c.len() / 2)
    };
    if majority(&granted) {
        return true;
    }
    let others: BTreeSet<NodeId> = configs
        .iter()
        .flatten()
        .copied()
        .filter(|id| *id != node.id)
        .collect();
    let last_log = match node.guard.last_log_id().await {
        Ok(last_log) => last_log,
        Err(e) => {
            tracing::warn!(error = %e, "pre-vote: cannot read this node's last log id");
            return false;
        }
    };
    let timeout = Duration::from_millis(node.raft.config().election_timeout_min);
    let mut calls = tokio::task::JoinSet::new();
    for id in others {
        let info = node
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned();
        let Some(info) = info else {
            continue;
        };
        let forwarding = node.forwarding.clone();
        let request = Request::PreVote {
            candidate: node.id,
            last_log,
        };
        calls.spawn(async move {
            let answer = forwarding.to_node(id, &info, &request, timeout).await;
            (id, matches!(answer, Ok(Response::PreVote(true))))
        });
    }
    while let Some(answer) = calls.join_next().await {
        if let Ok((id, true)) = answer {
            granted.insert(id);
            if majority(&granted) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_spread_over_the_range_by_node_and_attempt() {
        let draws: BTreeSet<u64> = (1..=3u64)
            .flat_map(|id| (0..20u64).map(move |a| splitmix64(id ^ a.rotate_left(32)) % 1_000))
            .collect();
        assert!(draws.len() > 50, "{} distinct of 60", draws.len());
        assert_ne!(
            splitmix64(1) % 1_000,
            splitmix64(2) % 1_000,
            "two nodes' first attempts differ"
        );
    }
}
