//! The public gRPC services `lockstep.v1.Queue`, `Admin` and `Cluster`.
//!
//! Each call becomes a core [`Command`] or a [`Read`], runs through
//! [`Node::execute`] (locally on the leader, or forwarded to it), and its
//! answer is turned back into protobuf. Core errors keep their gRPC code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lockstep_core::{self as core, AckItem, Command, JobBlob, PurgeSelector, Reply};
use lockstep_store::NodeInfo;
use tonic::{Request, Response, Status};

use crate::auth::{Auth, Caller, Permission};
use crate::convert;
use crate::node::{self, Node, Read, ReadReply};
use crate::pb;

#[derive(Clone, Debug)]
pub struct Services {
    pub node: Arc<Node>,
    id_seq: Arc<std::sync::atomic::AtomicU64>,
    /// Checked first in every call, before the request becomes a command.
    auth: Arc<Auth>,
    /// TLS for the calls this node makes to other nodes' client ports
    /// (passing a bootstrap on); `None`: plaintext.
    client_tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Services {
    pub fn new(node: Arc<Node>) -> Services {
        Services {
            node,
            id_seq: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            auth: Arc::new(Auth::off()),
            client_tls: None,
        }
    }

    /// The same services, checking callers with `auth`.
    pub fn with_auth(self, auth: Arc<Auth>) -> Services {
        Services { auth, ..self }
    }

    /// The same services, speaking TLS to other nodes' client ports.
    pub fn with_client_tls(self, tls: Option<tonic::transport::ClientTlsConfig>) -> Services {
        Services {
            client_tls: tls,
            ..self
        }
    }

    /// A server-made job id: node id, start time and a counter, unique
    /// across restarts (the start time moves) and nodes.
    fn make_id(&self) -> String {
        static START_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let start = *START_MS.get_or_init(crate::batcher::wall_clock_ms);
        let n = self
            .id_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("lockstep-{}-{start}-{n}", self.node.id)
    }

    async fn write(&self, command: Command) -> Result<(Reply, Vec<Option<JobBlob>>), Status> {
        match self.node.execute(node::Request::Write(command)).await? {
            node::Response::Write {
                reply: Ok(reply),
                blobs,
            } => Ok((reply, blobs)),
            node::Response::Write { reply: Err(e), .. } => Err(convert::status(&e)),
            other => Err(unexpected(other)),
        }
    }

    async fn read(
        &self,
        read: Read,
        options: Option<pb::ReadOptions>,
    ) -> Result<ReadReply, Status> {
        let result = if options.is_some_and(|o| o.stale) {
            self.node.read_local(read)?
        } else {
            match self.node.execute(node::Request::Read(read)).await? {
                node::Response::Read(result) => result,
                other => return Err(unexpected(other)),
            }
        };
        result.map_err(|e| convert::status(&e))
    }
}

/// Deadline of passing a bootstrap on to one other member.
const BOOTSTRAP_CALL_MS_MAX: u64 = 5_000;

fn unexpected(response: node::Response) -> Status {
    match response {
        node::Response::Unavailable(message) => Status::unavailable(format!(
            "outcome unknown: {message}; retry with the same ids"
        )),
        other => Status::internal(format!("unexpected answer {other:?}")),
    }
}

fn wrong_reply(reply: Reply) -> Status {
    Status::internal(format!("unexpected reply {reply:?}"))
}

#[tonic::async_trait]
impl pb::queue_server::Queue for Services {
    async fn enqueue(
        &self,
        request: Request<pb::EnqueueRequest>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Produce, &req.queue)?;
        let jobs = req
            .jobs
            .into_iter()
            .enumerate()
            .map(|(i, job)| convert::new_job(job, i, &mut || self.make_id()))
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        match self
            .write(Command::Enqueue {
                queue: req.queue,
                jobs,
            })
            .await?
            .0
        {
            Reply::Enqueued(results) => Ok(Response::new(pb::EnqueueResponse {
                results: results
                    .into_iter()
                    .zip(ids)
                    .map(|(r, id)| convert::enqueue_result(r, id))
                    .collect(),
            })),
            other => Err(wrong_reply(other)),
        }
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Consume, &req.queue)?;
        let wait_ms = req.wait_ms.min(self.node.config.limits.fetch_wait_ms_max);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        let mut applied = self.node.applied_watch();
        loop {
            let command = Command::Fetch {
                queue: req.queue.clone(),
                consumer: req.consumer.clone(),
                max: req.max,
                lease_ms: req.lease_ms,
            };
            let (reply, blobs) = self.write(command).await?;
            let Reply::Fetched(deliveries) = reply else {
                return Err(wrong_reply(reply));
            };
            if !deliveries.is_empty() || tokio::time::Instant::now() >= deadline {
                let deliveries = deliveries
                    .into_iter()
                    .zip(blobs)
                    .filter_map(|(d, blob)| blob.map(|b| convert::delivery(d, b)))
                    .collect();
                return Ok(Response::new(pb::FetchResponse { deliveries }));
            }
            // Long poll: wait for this node to apply something new (an
            // enqueue, an ack that frees a group, a tick), then try again.
            // The local state says whether anything could be ready.
            loop {
                match tokio::time::timeout_at(deadline, applied.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(Status::unavailable("the node is shutting down")),
                    Err(_) => break,
                }
                let ready = self
                    .node
                    .state
                    .read(|s| s.stats(&req.queue).map(|st| st.ready))
                    .ok();
                if !matches!(ready, Some(Ok(0))) {
                    break;
                }
            }
        }
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Consume, &req.queue)?;
        let items: Vec<AckItem> = req
            .items
            .iter()
            .map(|i| AckItem {
                offset: i.offset,
                fence: i.fence,
            })
            .collect();
        let offsets: Vec<u64> = items.iter().map(|i| i.offset).collect();
        match self
            .write(Command::Ack {
                queue: req.queue,
                items,
            })
            .await?
            .0
        {
            Reply::Acked(results) => Ok(Response::new(pb::AckResponse {
                results: offsets
                    .into_iter()
                    .zip(results.iter())
                    .map(|(o, r)| convert::ack_result(o, r))
                    .collect(),
            })),
            other => Err(wrong_reply(other)),
        }
    }

    async fn nack(
        &self,
        request: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Consume, &r.queue)?;
        let command = Command::Nack {
            queue: r.queue,
            offset: r.offset,
            fence: r.fence,
            delay_ms: r.delay_ms,
        };
        match self.write(command).await?.0 {
            Reply::Nacked {
                dead,
                not_before_ms,
            } => Ok(Response::new(pb::NackResponse {
                dead,
                not_before_ms,
            })),
            other => Err(wrong_reply(other)),
        }
    }

    async fn extend(
        &self,
        request: Request<pb::ExtendRequest>,
    ) -> Result<Response<pb::ExtendResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Consume, &r.queue)?;
        let command = Command::Extend {
            queue: r.queue,
            offset: r.offset,
            fence: r.fence,
            lease_ms: r.lease_ms,
        };
        match self.write(command).await?.0 {
            Reply::Extended { deadline_ms } => Ok(Response::new(pb::ExtendResponse {
                lease_deadline_ms: deadline_ms,
            })),
            other => Err(wrong_reply(other)),
        }
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Consume, &r.queue)?;
        match self
            .write(Command::Release {
                queue: r.queue,
                offset: r.offset,
                fence: r.fence,
            })
            .await?
            .0
        {
            Reply::Released => Ok(Response::new(pb::ReleaseResponse {})),
            other => Err(wrong_reply(other)),
        }
    }

    async fn dead_letter(
        &self,
        request: Request<pb::DeadLetterRequest>,
    ) -> Result<Response<pb::DeadLetterResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Consume, &r.queue)?;
        let command = Command::DeadLetter {
            queue: r.queue,
            offset: r.offset,
            fence: r.fence,
            reason: r.reason,
        };
        match self.write(command).await?.0 {
            Reply::DeadLettered => Ok(Response::new(pb::DeadLetterResponse {})),
            other => Err(wrong_reply(other)),
        }
    }
}

fn stats_to_pb(s: &core::QueueStats) -> pb::QueueStats {
    pb::QueueStats {
        ready: s.ready,
        delayed: s.delayed,
        leased: s.leased,
        dead: s.dead,
        bytes: s.bytes,
        ack_floor: s.ack_floor,
        next_offset: s.next_offset,
        oldest_ready_age_ms: s.oldest_ready_age_ms,
        groups: s.groups,
    }
}

fn queue_to_pb(q: core::QueueInfo) -> pb::QueueInfo {
    pb::QueueInfo {
        config: Some(convert::queue_config_to_pb(&q.config)),
        stats: Some(stats_to_pb(&q.stats)),
        name: q.name,
    }
}

fn outcome_name(outcome: core::AttemptOutcome) -> &'static str {
    match outcome {
        core::AttemptOutcome::Expired => "expired",
        core::AttemptOutcome::Nacked => "nacked",
        core::AttemptOutcome::DeadLettered => "dead_lettered",
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Services {
    async fn create_queue(
        &self,
        request: Request<pb::CreateQueueRequest>,
    ) -> Result<Response<pb::CreateQueueResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth.authorize(&metadata, Permission::Admin, &r.name)?;
        let config = convert::queue_config(r.config)?;
        match self
            .write(Command::CreateQueue {
                name: r.name,
                config,
            })
            .await?
            .0
        {
            Reply::QueueCreated { created, .. } => {
                Ok(Response::new(pb::CreateQueueResponse { created }))
            }
            other => Err(wrong_reply(other)),
        }
    }

    async fn update_queue(
        &self,
        request: Request<pb::UpdateQueueRequest>,
    ) -> Result<Response<pb::UpdateQueueResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth.authorize(&metadata, Permission::Admin, &r.name)?;
        let config = convert::queue_config(r.config)?;
        match self
            .write(Command::UpdateQueue {
                name: r.name,
                config,
            })
            .await?
            .0
        {
            Reply::QueueUpdated => Ok(Response::new(pb::UpdateQueueResponse {})),
            other => Err(wrong_reply(other)),
        }
    }

    async fn delete_queue(
        &self,
        request: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth.authorize(&metadata, Permission::Admin, &r.name)?;
        match self.write(Command::DeleteQueue { name: r.name }).await?.0 {
            Reply::QueueDeleted => Ok(Response::new(pb::DeleteQueueResponse {})),
            other => Err(wrong_reply(other)),
        }
    }

    async fn get_queue(
        &self,
        request: Request<pb::GetQueueRequest>,
    ) -> Result<Response<pb::GetQueueResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth.authorize_read(&metadata, &r.name)?;
        match self.read(Read::Queue { name: r.name }, r.read).await? {
            ReadReply::Queue(q) => Ok(Response::new(pb::GetQueueResponse {
                queue: Some(queue_to_pb(q)),
            })),
            _ => Err(Status::internal("unexpected read reply")),
        }
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        let caller: Caller<'_> = self.auth.authenticate(&metadata)?;
        match self.read(Read::ListQueues, r.read).await? {
            // A token lists only the queues it has some permission on.
            ReadReply::Queues(qs) => Ok(Response::new(pb::ListQueuesResponse {
                queues: qs
                    .into_iter()
                    .filter(|q| caller.sees(&q.name))
                    .map(queue_to_pb)
                    .collect(),
            })),
            _ => Err(Status::internal("unexpected read reply")),
        }
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth.authorize_read(&metadata, &r.queue)?;
        let status = match pb::GroupStatus::try_from(r.status) {
            Ok(pb::GroupStatus::Any) => core::GroupStatus::Any,
            Ok(pb::GroupStatus::Leased) => core::GroupStatus::Leased,
            Ok(pb::GroupStatus::Paused) => core::GroupStatus::Paused,
            Ok(pb::GroupStatus::Waiting) => core::GroupStatus::Waiting,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "invalid argument `status`: unknown value {}",
                    r.status
                )))
            }
        };
        let read = Read::Groups {
            queue: r.queue,
            filter: core::GroupFilter {
                key_prefix: r.key_prefix,
                status,
            },
            after: (!r.after.is_empty()).then_some(r.after),
            limit: r.limit,
        };
        match self.read(read, r.read).await? {
            ReadReply::Groups(page) => Ok(Response::new(pb::ListGroupsResponse {
                groups: page
                    .groups
                    .into_iter()
                    .map(|g| pb::GroupInfo {
                        key: g.key,
                        backlog: g.backlog,
                        head_offset: g.head_offset,
                        head_age_ms: g.head_age_ms,
                        lease_holder: g.lease_holder.unwrap_or_default(),
                        attempts: g.attempts,
                        paused: g.paused,
                        parked_reason: g.parked_reason.unwrap_or_default(),
                    })
                    .collect(),
                next_after: page.next_after.unwrap_or_default(),
            })),
            _ => Err(Status::internal("unexpected read reply")),
        }
    }

    async fn pause_group(
        &self,
        request: Request<pb::PauseGroupRequest>,
    ) -> Result<Response<pb::PauseGroupResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Admin, &r.queue)?;
        match self
            .write(Command::PauseGroup {
                queue: r.queue,
                group: r.group,
            })
            .await?
            .0
        {
            Reply::GroupPaused => Ok(Response::new(pb::PauseGroupResponse {})),
            other => Err(wrong_reply(other)),
        }
    }

    async fn resume_group(
        &self,
        request: Request<pb::ResumeGroupRequest>,
    ) -> Result<Response<pb::ResumeGroupResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Admin, &r.queue)?;
        match self
            .write(Command::ResumeGroup {
                queue: r.queue,
                group: r.group,
            })
            .await?
            .0
        {
            Reply::GroupResumed => Ok(Response::new(pb::ResumeGroupResponse {})),
            other => Err(wrong_reply(other)),
        }
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth.authorize_read(&metadata, &r.queue)?;
        match self
            .read(
                Read::DeadLetters {
                    queue: r.queue,
                    after: r.after,
                    limit: r.limit,
                },
                r.read,
            )
            .await?
        {
            ReadReply::DeadLetters(page, blobs) => Ok(Response::new(pb::ListDeadLettersResponse {
                dead_letters: page
                    .dead_letters
                    .into_iter()
                    .zip(blobs)
                    .map(|(d, blob)| {
                        let blob = blob.unwrap_or(JobBlob {
                            id: String::new(),
                            headers: vec![],
                            payload: vec![],
                        });
                        pb::DeadLetter {
                            offset: d.offset,
                            id: blob.id,
                            group: d.group.unwrap_or_default(),
                            payload: blob.payload,
                            attempts: d.attempts,
                            reason: d.reason,
                            history: d
                                .history
                                .iter()
                                .map(|a| pb::Attempt {
                                    attempt: a.attempt,
                                    fence: a.fence,
                                    at_ms: a.at_ms,
                                    outcome: outcome_name(a.outcome).into(),
                                })
                                .collect(),
                            enqueued_ms: d.enqueued_ms,
                            dead_ms: d.dead_ms,
                        }
                    })
                    .collect(),
                next_after: page.next_after,
            })),
            _ => Err(Status::internal("unexpected read reply")),
        }
    }

    async fn requeue_dead_letter(
        &self,
        request: Request<pb::RequeueDeadLetterRequest>,
    ) -> Result<Response<pb::RequeueDeadLetterResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Admin, &r.queue)?;
        match self
            .write(Command::RequeueDeadLetter {
                queue: r.queue,
                offset: r.offset,
            })
            .await?
            .0
        {
            Reply::Requeued { offset } => {
                Ok(Response::new(pb::RequeueDeadLetterResponse { offset }))
            }
            other => Err(wrong_reply(other)),
        }
    }

    async fn purge_dead_letters(
        &self,
        request: Request<pb::PurgeDeadLettersRequest>,
    ) -> Result<Response<pb::PurgeDeadLettersResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        self.auth
            .authorize(&metadata, Permission::Admin, &r.queue)?;
        let which = if r.offsets.is_empty() {
            PurgeSelector::All
        } else {
            PurgeSelector::Offsets(r.offsets)
        };
        match self
            .write(Command::PurgeDeadLetters {
                queue: r.queue,
                which,
            })
            .await?
            .0
        {
            Reply::Purged { count } => Ok(Response::new(pb::PurgeDeadLettersResponse { count })),
            other => Err(wrong_reply(other)),
        }
    }
}

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
        let initialized = crate::run::initialize_local(&self.node, members)
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
        self.membership(node::MembershipChange::Join { id: r.id, info })
            .await?;
        Ok(Response::new(pb::JoinResponse {}))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        self.auth.authorize_cluster(request.metadata())?;
        let id = request.into_inner().id;
        self.membership(node::MembershipChange::Remove { id })
            .await?;
        Ok(Response::new(pb::RemoveResponse {}))
    }
}

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
    async fn membership(&self, change: node::MembershipChange) -> Result<(), Status> {
        match self.node.execute(node::Request::Membership(change)).await? {
            node::Response::Membership(result) => result.map_err(Status::from),
            other => Err(unexpected(other)),
        }
    }
}
