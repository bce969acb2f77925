//! Forming a cluster, safely however often it is asked: probe every other
//! member first, change nothing anywhere unless the cluster is new, then
//! initialize every member with the same first membership.
//!
//! Raft cannot tell a new node from one that lost its data: both have no
//! log and no vote. Initializing a node that lost its data would lift its
//! vote guard and let it help elect a leader without entries it had
//! acknowledged. So a node may be initialized only when the probe shows
//! the cluster never formed: enough other members answer to cover every
//! majority that could hold a committed entry without this node, and none
//! of them (nor this node) has a log or a vote (see ARCHITECTURE.md,
//! "vote guard"). The same rule serves `Cluster.Bootstrap` and an embedded
//! node's `bootstrap(..)`, which may run at every start.

use std::time::Duration;

use lockstep_types::forward::{Request, Response};
use lockstep_types::{NodeId, NodeInfo};
use tonic::Status;

use crate::error::RunError;
use crate::node::Node;

/// Deadline of one probe or initialize call to another member.
pub(crate) const BOOTSTRAP_CALL_MS_MAX: u64 = 5_000;
/// Tries of passing the initialize on to one member before giving up.
const INITIALIZE_TRIES_MAX: u32 = 3;

/// A store with no vote and no log belongs to a node that never took part
/// in a cluster, or lost its data.
pub(crate) async fn is_fresh(log_store: &mut lockstep_store::LogStore) -> Result<bool, RunError> {
    use openraft::storage::RaftLogStorage;
    let vote = log_store
        .read_vote()
        .await
        .map_err(|e| RunError::Raft(e.to_string()))?;
    let state = log_store
        .get_log_state()
        .await
        .map_err(|e| RunError::Raft(e.to_string()))?;
    Ok(vote.is_none() && state.last_log_id.is_none())
}

/// How a bootstrap ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Formed {
    /// This node initialized the cluster.
    Now,
    /// This node already had a log or a vote: the cluster was formed.
    Before,
}

/// How many of `others` other members must answer a probe so that the
/// answers cover every majority of `n` members that might hold a committed
/// entry without this node (which may have lost its copy): more than
/// `others - (majority - 1)`.
fn probes_needed(n: usize, others: usize) -> usize {
    let majority = n / 2 + 1;
    (others + 2).saturating_sub(majority).min(others)
}

/// Forms the cluster from `members` (this node among them): probes the
/// other members, then initializes this node and passes the initialize on.
/// Changes nothing anywhere unless the probe shows a cluster that never
/// formed.
pub(crate) async fn form(node: &Node, members: &[(NodeId, NodeInfo)]) -> Result<Formed, Status> {
    if !node.probe().is_empty() {
        return Ok(Formed::Before);
    }
    let others: Vec<&(NodeId, NodeInfo)> =
        members.iter().filter(|(id, _)| *id != node.id).collect();
    let timeout = Duration::from_millis(BOOTSTRAP_CALL_MS_MAX);
    let mut calls = tokio::task::JoinSet::new();
    for (id, info) in others.iter().cloned().cloned() {
        let forwarding = node.forwarding.clone();
        calls.spawn(async move {
            let answer = forwarding
                .to_node(id, &info, &Request::Probe, timeout)
                .await;
            (id, answer)
        });
    }
    let mut answered = Vec::new();
    let mut failures = Vec::new();
    while let Some(joined) = calls.join_next().await {
        match joined {
            Ok((id, Ok(Response::Probe(probed)))) => answered.push((id, probed)),
            Ok((id, Ok(other))) => failures.push(format!("node {id}: unexpected {other:?}")),
            Ok((id, Err(status))) => failures.push(format!("node {id}: {}", status.message())),
            Err(e) => failures.push(e.to_string()),
        }
    }
    // Planted bug (tests only): an empty node initializes whatever the
    // probe found, as bootstrap did before it probed.
    let planted = crate::planted("guard-lifted-by-bootstrap");
    let formed = answered
        .iter()
        .find(|(_, p)| !p.is_empty())
        .filter(|_| !planted);
    if let Some((id, probed)) = formed {
        return Err(Status::failed_precondition(format!(
            "node {id} already has {} (the cluster is formed): this node has no data and must \
             not form a new cluster; it rejoins by itself, and votes again once it has applied \
             a commit index the leader confirmed (see `vote_guarded` in cluster status)",
            match probed.last_log_index {
                Some(last) => format!("a log up to index {last}"),
                None => format!("a vote in term {}", probed.vote_term),
            }
        )));
    }
    let needed = probes_needed(members.len(), others.len());
    if answered.len() < needed && !planted {
        failures.sort();
        return Err(Status::unavailable(format!(
            "bootstrap reached {} of the {} other members, fewer than the {needed} needed to \
             know the cluster is new ({}); nothing was changed. Start them and run bootstrap \
             again",
            answered.len(),
            others.len(),
            failures.join("; ")
        )));
    }
    node.initialize(members.to_vec())
        .await
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    // Every initial member gets the same membership, so none of them stays
    // guarded; a member that cannot be reached now is guarded when it
    // starts and catches up from the leader.
    let mut calls = tokio::task::JoinSet::new();
    for (id, info) in others.into_iter().cloned() {
        let forwarding = node.forwarding.clone();
        let request = Request::Initialize {
            members: members.to_vec(),
        };
        calls.spawn(async move {
            let mut last = None;
            for _ in 0..INITIALIZE_TRIES_MAX {
                match forwarding.to_node(id, &info, &request, timeout).await {
                    Ok(Response::Initialized(_)) => return,
                    Ok(other) => last = Some(format!("unexpected {other:?}")),
                    Err(status) => last = Some(status.message().to_string()),
                }
            }
            tracing::warn!(
                node = id,
                error = last.unwrap_or_default(),
                "bootstrap: could not initialize this member; it will catch up from the leader"
            );
        });
    }
    while calls.join_next().await.is_some() {}
    Ok(Formed::Now)
}

#[cfg(test)]
mod tests {
    use super::probes_needed;

    #[test]
    fn the_probe_covers_every_majority_without_this_node() {
        // 3 members: both others (a committed entry may sit on this node
        // and one other).
        assert_eq!(probes_needed(3, 2), 2);
        // 5 members: 3 of the 4 others.
        assert_eq!(probes_needed(5, 4), 3);
        // 1 member: nobody else to ask.
        assert_eq!(probes_needed(1, 0), 0);
        // 2 members: the other one.
        assert_eq!(probes_needed(2, 1), 1);
        // 4 members (majority 3): 2 of the 3 others.
        assert_eq!(probes_needed(4, 3), 2);
    }
}
