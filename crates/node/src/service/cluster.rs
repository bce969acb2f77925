//! `lockstep.v1.Cluster`: bootstrap, status, join and remove.

use std::collections::BTreeMap;
use std::time::Duration;

use lockstep_types::forward as fwd;
use lockstep_types::NodeInfo;
use tonic::{Request, Response, Status};

use super::{unexpected, Services};
use crate::pb;

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Services {
    async fn bootstrap(
        &self,
        request: Request<pb::BootstrapRequest>,
    ) -> Result<Response<pb::BootstrapResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        self.auth.authorize_cluster(&metadata)?;
        // Passed on with the bootstrap, so the other members check it too.
        let authorization = metadata.get("authorization").cloned();
        let this_node_only = request.this_node_only;
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
        let initialized = crate::bootstrap::initialize_local(&self.node, members)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        if !this_node_only {
            // Every initial member is initialized with the same membership,
            // so none of them starts as a fresh node that may not vote.
            let local = self.node.config.peer_socket().ip();
            let mut calls = tokio::task::JoinSet::new();
            for m in request.members.iter().filter(|m| m.id != self.node.id) {
                let forwarded = pb::BootstrapRequest {
                    members: request.members.clone(),
                    this_node_only: true,
                };
                let (id, addr) = (m.id, m.client_addr.clone());
                let mut forwarded = Request::new(forwarded);
                if let Some(value) = &authorization {
                    forwarded
                        .metadata_mut()
                        .insert("authorization", value.clone());
                }
                let tls = self.client_tls.clone();
                calls.spawn(
                    async move { (id, bootstrap_member(local, addr, tls, forwarded).await) },
                );
            }
            let mut reached = 1;
            let mut failures = Vec::new();
            while let Some(joined) = calls.join_next().await {
                match joined {
                    Ok((_, Ok(()))) => reached += 1,
                    Ok((id, Err(e))) => failures.push(format!("node {id}: {e}")),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            let majority = request.members.len() / 2 + 1;
            if reached < majority {
                return Err(Status::unavailable(format!(
                    "bootstrap reached {reached} of {} members, fewer than a majority ({}); start them and run bootstrap again",
                    request.members.len(),
                    failures.join("; ")
                )));
            }
        }
        Ok(Response::new(pb::BootstrapResponse { initialized }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.auth.authenticate(request.metadata())?;
        let m = self.node.raft.metrics().borrow().clone();
        // One read: the digest must be of the state at `applied`.
        let (applied, digest) = self
            .node
            .state
            .applied_digest()
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
            commit_index: m
                .last_applied
                .map_or(0, |l| l.index)
                .max(applied.map_or(0, |l| l.index)),
            applied_index: applied.map_or(0, |l| l.index),
            members,
            state_digest: format!("{digest:032x}"),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
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

/// Deadline of passing a bootstrap on to one other member.
const BOOTSTRAP_CALL_MS_MAX: u64 = 5_000;

/// Passes a bootstrap on to another member's client port, from this
/// node's own address.
async fn bootstrap_member(
    local: std::net::IpAddr,
    addr: String,
    tls: Option<tonic::transport::ClientTlsConfig>,
    request: Request<pb::BootstrapRequest>,
) -> Result<(), String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| e.to_string())?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let endpoint = endpoint
        .local_address(Some(local))
        .connect_timeout(Duration::from_millis(BOOTSTRAP_CALL_MS_MAX))
        .timeout(Duration::from_millis(BOOTSTRAP_CALL_MS_MAX));
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    pb::cluster_client::ClusterClient::new(channel)
        .bootstrap(request)
        .await
        .map(|_| ())
        .map_err(|s| s.message().to_string())
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
