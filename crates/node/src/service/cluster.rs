//! `lockstep.v1.Cluster`: bootstrap, status, join and remove.

use std::collections::BTreeMap;

use lockstep_types::forward as fwd;
use lockstep_types::NodeInfo;
use tonic::{Request, Response, Status};

use super::{unexpected, Services};
use crate::pb;

/// `StatusResponse.commit_index`: the highest log index this node knows
/// is committed (Raft's commit index, `committed`, as the leader last told
/// it), never below what it applied. `None` when Raft did not answer in
/// time; the applied index is then the best lower bound.
fn commit_index(committed: Option<u64>, applied: u64) -> u64 {
    committed.unwrap_or(0).max(applied)
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Services {
    async fn bootstrap(
        &self,
        request: Request<pb::BootstrapRequest>,
    ) -> Result<Response<pb::BootstrapResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        self.auth.authorize_cluster(&metadata)?;
        let members: Vec<(u64, NodeInfo)> = request
            .members
            .iter()
            .map(|m| {
                (
                    m.id,
                    NodeInfo {
                        peer_addr: m.peer_addr.clone(),
                        client_addr: m.client_addr.clone(),
                    },
                )
            })
            .collect();
        if members.is_empty() {
            return Err(Status::invalid_argument(
                "invalid argument `members`: must not be empty",
            ));
        }
        if !members.iter().any(|(id, _)| *id == self.node.id) {
            return Err(Status::invalid_argument(format!(
                "invalid argument `members`: does not include this node (id {})",
                self.node.id
            )));
        }
        // Probes every member first and changes nothing anywhere unless
        // the cluster never formed (see `crate::bootstrap`).
        let formed = crate::bootstrap::form(&self.node, &members).await?;
        let initialized = formed == crate::bootstrap::Formed::Now;
        Ok(Response::new(pb::BootstrapResponse { initialized }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.auth.authenticate(request.metadata())?;
        let m = self.node.raft.metrics().borrow().clone();
        // One read: the digest must be of the state at `applied`. It is
        // O(state), so it is computed on a blocking thread, once per
        // applied index, and awaited here without blocking a worker.
        let (applied, digest) = self
            .node
            .state
            .applied_digest_cached()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let last_index = m.last_log_index.unwrap_or(0);
        let replication: BTreeMap<u64, u64> = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log)| (*id, log.map_or(0, |l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, info)| {
                let role = if Some(*id) == m.current_leader {
                    "leader"
                } else if voters.contains(id) {
                    "follower"
                } else {
                    "learner"
                };
                let matched = replication.get(id).copied().unwrap_or(0);
                pb::Member {
                    id: *id,
                    peer_addr: info.peer_addr.clone(),
                    client_addr: info.client_addr.clone(),
                    role: role.into(),
                    matched_index: matched,
                    lag: if replication.is_empty() {
                        0
                    } else {
                        last_index.saturating_sub(matched)
                    },
                }
            })
            .collect();
        Ok(Response::new(pb::StatusResponse {
            node_id: self.node.id,
            leader_id: m.current_leader,
            term: m.current_term,
            commit_index: commit_index(self.node.committed().await, applied.map_or(0, |l| l.index)),
            applied_index: applied.map_or(0, |l| l.index),
            members,
            state_digest: format!("{digest:032x}"),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            vote_guarded: self.node.guard.is_up(),
        }))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth.authorize_cluster(&metadata)?;
        if r.id == 0 {
            return Err(Status::invalid_argument(
                "invalid argument `id`: must not be 0",
            ));
        }
        let info = NodeInfo {
            peer_addr: r.peer_addr,
            client_addr: r.client_addr,
        };
        self.membership(fwd::MembershipChange::Join { id: r.id, info })
            .await?;
        Ok(Response::new(pb::JoinResponse {}))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        self.auth.authorize_cluster(request.metadata())?;
        let id = request.into_inner().id;
        self.membership(fwd::MembershipChange::Remove { id })
            .await?;
        Ok(Response::new(pb::RemoveResponse {}))
    }
}

impl Services {
    /// A join or remove, run on the leader wherever it arrived.
    async fn membership(&self, change: fwd::MembershipChange) -> Result<(), Status> {
        match self.node.execute(fwd::Request::Membership(change)).await? {
            fwd::Response::Membership(result) => result.map_err(lockstep_raft::wire_status),
            other => Err(unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::commit_index;

    #[test]
    fn commit_index_is_raft_s_not_the_applied_index() {
        // A follower told of entry 12 as committed that has applied 10.
        assert_eq!(commit_index(Some(12), 10), 12);
        assert_eq!(commit_index(Some(10), 10), 10);
        // Raft did not answer in time: the applied index is a lower bound.
        assert_eq!(commit_index(None, 10), 10);
        // A fresh node: nothing committed.
        assert_eq!(commit_index(Some(0), 0), 0);
    }
}
