//! Forming a cluster: initializing Raft with the first membership, and
//! telling a node that never took part in one (or lost its data) from one
//! that did.

use lockstep_types::{NodeInfo, TypeConfig};
use openraft::Raft;

use crate::error::RunError;
use crate::node::Node;

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

/// Forms the cluster from `members` if this Raft has never been
/// initialized; harmless otherwise.
pub async fn bootstrap(
    raft: &Raft<TypeConfig>,
    members: Vec<(u64, NodeInfo)>,
) -> Result<bool, RunError> {
    let members: std::collections::BTreeMap<u64, NodeInfo> = members.into_iter().collect();
    match raft.initialize(members).await {
        Ok(()) => Ok(true),
        Err(e) => match e.api_error() {
            Some(openraft::error::InitializeError::NotAllowed(_)) => Ok(false),
            _ => Err(RunError::Raft(e.to_string())),
        },
    }
}

/// Initializes this node alone with the cluster's first membership
/// `members`; every initial member must be initialized with the same one.
/// Harmless (false) if this node was initialized before.
pub async fn initialize_local(
    node: &Node,
    members: Vec<(u64, NodeInfo)>,
) -> Result<bool, RunError> {
    let initialized = bootstrap(&node.raft, members).await?;
    if initialized {
        // Initialized with the first membership: nothing was ever committed
        // without this node, so it may vote (see VoteGuard).
        node.vote_guard.allow();
    }
    Ok(initialized)
}
