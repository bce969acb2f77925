//! One Lockstep node: Raft, the stores, the batcher, the leader's ticker,
//! and the rule that any node accepts any call.
//!
//! A write or a linearizable read runs on the leader. A node that is not the
//! leader forwards the request over the peer channel and relays the answer;
//! while no leader is known (an election) it retries with backoff, up to
//! `limits.forward_retry_ms_max`, then answers UNAVAILABLE with the leader
//! hint it has. The leader fills in payloads before answering, because it is
//! the node that has applied the entry.

use std::sync::Arc;
use std::time::Duration;

use lockstep_core::{self as core, codec, Command, JobBlob, Reply};
use lockstep_store::{NodeId, NodeInfo, StateHandle, TypeConfig};
use openraft::Raft;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::Status;
use tracing::Instrument;

use crate::batcher::{wall_clock_ms, Batcher, WriteFailure};
use crate::config::NodeConfig;
use crate::metrics::Metrics;

/// What a node executes for a client, locally or forwarded to the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    Write(Command),
    Read(Read),
    /// A membership change; only the leader can propose one.
    Membership(MembershipChange),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add as a learner, wait for it to catch up, then promote to voter.
    Join {
        id: NodeId,
        info: NodeInfo,
    },
    Remove {
        id: NodeId,
    },
}

/// A gRPC status that crosses the peer channel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireStatus {
    pub code: i32,
    pub message: String,
}

impl From<WireStatus> for Status {
    fn from(w: WireStatus) -> Status {
        Status::new(tonic::Code::from_i32(w.code), w.message)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Read {
    Queue {
        name: String,
    },
    ListQueues,
    Groups {
        queue: String,
        filter: core::GroupFilter,
        after: Option<String>,
        limit: u32,
    },
    DeadLetters {
        queue: String,
        after: Option<u64>,
        limit: u32,
    },
}

impl Request {
    /// The queue a request addresses, if any (for the request's span).
    pub fn queue(&self) -> Option<&str> {
        match self {
            Request::Write(command) => command.queue(),
            Request::Read(read) => read.queue(),
            Request::Membership(_) => None,
        }
    }
}

impl Read {
    pub fn queue(&self) -> Option<&str> {
        match self {
            Read::Queue { name } => Some(name),
            Read::ListQueues => None,
            Read::Groups { queue, .. } | Read::DeadLetters { queue, .. } => Some(queue),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ReadReply {
    Queue(core::QueueInfo),
    Queues(Vec<core::QueueInfo>),
    Groups(core::GroupPage),
    /// The page, and the stored job of each dead letter, in order.
    DeadLetters(core::DeadLetterPage, Vec<Option<JobBlob>>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// A write's answer and, for a fetch, each delivery's stored job.
    Write {
        reply: Result<Reply, core::Error>,
        blobs: Vec<Option<JobBlob>>,
    },
    Read(Result<ReadReply, core::Error>),
    Membership(Result<(), WireStatus>),
    /// The receiving node is not the leader.
    NotLeader {
        leader: Option<(NodeId, NodeInfo)>,
    },
    /// The outcome is unknown (the leader failed mid-write); the message says why.
    Unavailable(String),
}

/// How often the leader's ticker checks for due leases and delays. A lease
/// expires at most this much after its deadline (plus a commit).
const TICK_CHECK_MS: u64 = 50;
/// First and largest pause between tries to reach a leader.
const RETRY_BACKOFF_MS_MIN: u64 = 20;
const RETRY_BACKOFF_MS_MAX: u64 = 500;

/// How a node reaches another node's peer service to forward a request.
#[tonic::async_trait]
pub trait Forwarder: Send + Sync + 'static {
    async fn forward(
        &self,
        target: NodeId,
        node: &NodeInfo,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, Status>;
}

pub struct Node {
    pub id: NodeId,
    pub config: NodeConfig,
    pub raft: Raft<TypeConfig>,
    pub state: StateHandle,
    /// This node's event metrics (RPC and commit latency, forwards).
    pub metrics: Arc<Metrics>,
    batcher: Batcher,
    forwarder: Arc<dyn Forwarder>,
    /// Whether this node may vote yet (see `lockstep_raft::VoteGuard`).
    pub vote_guard: Arc<lockstep_raft::VoteGuard>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn store_status(e: lockstep_store::StoreError) -> Status {
    Status::internal(format!("storage: {e}"))
}

impl Node {
    pub fn new(
        config: NodeConfig,
        raft: Raft<TypeConfig>,
        state: StateHandle,
        forwarder: Arc<dyn Forwarder>,
        vote_guard: Arc<lockstep_raft::VoteGuard>,
    ) -> Node {
        let metrics = Arc::new(Metrics::new());
        let batcher = Batcher::start(
            raft.clone(),
            config.batch.clone(),
            config.limits.requests_in_flight_max as usize,
            metrics.clone(),
        );
        Node {
            id: config.id,
            config,
            raft,
            state,
            metrics,
            batcher,
            forwarder,
            vote_guard,
        }
    }

    /// Runs a request that arrived here, wherever the leader is.
    pub async fn execute(&self, request: Request) -> Result<Response, Status> {
        record_queue(request.queue());
        let wait_ms = match request {
            Request::Membership(_) => self.config.limits.membership_ms_max,
            _ => self.config.limits.forward_retry_ms_max,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        let mut backoff = RETRY_BACKOFF_MS_MIN;
        let encoded = codec::encode(&request).map_err(|e| Status::internal(e.to_string()))?;
        let mut hint: Option<NodeInfo> = None;
        loop {
            let leader = self.raft.current_leader().await;
            let attempt: Result<(), Option<(NodeId, NodeInfo)>> = match leader {
                Some(id) if id == self.id => match self.execute_local(request.clone()).await? {
                    Response::NotLeader { leader } => Err(leader),
                    other => return Ok(other),
                },
                Some(id) => match self.leader_info(id) {
                    Some(node) => {
                        let remaining =
                            deadline.saturating_duration_since(tokio::time::Instant::now());
                        hint = Some(node.clone());
                        let forwarded = self
                            .forwarder
                            .forward(id, &node, encoded.clone(), remaining)
                            .await;
                        self.metrics.observe_forward(forwarded.is_ok());
                        match forwarded {
                            Ok(bytes) => match codec::decode::<Response>(&bytes) {
                                Ok(Response::NotLeader { leader }) => Err(leader),
                                Ok(other) => return Ok(other),
                                Err(e) => {
                                    return Err(Status::internal(format!("forwarded answer: {e}")))
                                }
                            },
                            // The leader may be gone; look again after a pause.
                            Err(status) => {
                                tracing::debug!(%status, leader = id, "forward failed");
                                Err(None)
                            }
                        }
                    }
                    None => Err(None),
                },
                None => Err(None),
            };
            if let Err(Some((_, node))) = attempt {
                hint = Some(node);
            }
            if tokio::time::Instant::now() + Duration::from_millis(backoff) >= deadline {
                let hint = hint.map_or_else(
                    || "no leader known".to_string(),
                    |n| format!("last known leader at {}", n.client_addr),
                );
                let mut status = Status::unavailable(format!(
                    "no leader answered within limits.forward_retry_ms_max = {} ms ({hint}); retry with the same ids",
                    self.config.limits.forward_retry_ms_max
                ));
                if let Some(leader) = self
                    .raft
                    .current_leader()
                    .await
                    .and_then(|id| self.leader_info(id))
                {
                    if let Ok(value) = leader.client_addr.parse() {
                        status.metadata_mut().insert("x-lockstep-leader", value);
                    }
                }
                return Err(status);
            }
            tokio::time::sleep(Duration::from_millis(backoff)).await;
            backoff = (backoff * 2).min(RETRY_BACKOFF_MS_MAX);
        }
    }

    /// The leader's client address when another node leads and has one.
    pub fn other_leader_client_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader.filter(|id| *id != self.id)?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.client_addr.clone())
            .filter(|a| !a.is_empty())
    }

    fn leader_info(&self, id: NodeId) -> Option<NodeInfo> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    }

    /// Runs a request on this node, which must be the leader; answers
    /// `NotLeader` otherwise. This is also what a forwarded request runs.
    pub async fn execute_local(&self, request: Request) -> Result<Response, Status> {
        match request {
            Request::Write(command) => {
                // Malformed or hostile input never reaches the log. Only a
                // node that leads answers from its own state: a deposed one
                // may not have applied what the new leader did.
                let leading = self.raft.metrics().borrow().current_leader == Some(self.id);
                let checked = self
                    .state
                    .read(|s| s.precheck(&command))
                    .map_err(store_status)?;
                if let (true, Err(e)) = (leading, checked) {
                    return Ok(Response::Write {
                        reply: Err(e),
                        blobs: Vec::new(),
                    });
                }
                self.submit_write(command).await
            }
            Request::Read(read) => {
                if let Err(err) = self.raft.ensure_linearizable().await {
                    return Ok(match err.forward_to_leader() {
                        Some(f) => Response::NotLeader {
                            leader: f.leader_id.zip(f.leader_node.clone()),
                        },
                        None => Response::Unavailable(err.to_string()),
                    });
                }
                Ok(Response::Read(self.read_state(read)?))
            }
            Request::Membership(change) => Ok(self.change_membership(change).await),
        }
    }

    /// Proposes a write through the batcher and fills in the payloads of a
    /// fetch's deliveries.
    async fn submit_write(&self, command: Command) -> Result<Response, Status> {
        match self.batcher.submit(command).await {
            Ok(reply) => {
                let blobs = match &reply {
                    Ok(Reply::Fetched(deliveries)) => deliveries
                        .iter()
                        .map(|d| {
                            self.state
                                .get_blob(d.queue_id, d.blob)
                                .map_err(store_status)
                        })
                        .collect::<Result<_, _>>()?,
                    _ => Vec::new(),
                };
                Ok(Response::Write { reply, blobs })
            }
            Err(WriteFailure::NotLeader { leader }) => Ok(Response::NotLeader { leader }),
            Err(WriteFailure::Unavailable(message)) => Ok(Response::Unavailable(message)),
        }
    }

    /// Runs a join or remove on this node, which must lead. Joins catch the
    /// new node up as a learner first, so a slow joiner never counts toward
    /// the quorum before it has the log.
    async fn change_membership(&self, change: MembershipChange) -> Response {
        use openraft::error::{ClientWriteError, RaftError};
        fn refused(
            e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>,
            what: &str,
        ) -> Response {
            if let Some(f) = e.forward_to_leader() {
                return Response::NotLeader {
                    leader: f.leader_id.zip(f.leader_node.clone()),
                };
            }
            let code = match e.api_error() {
                Some(ClientWriteError::ChangeMembershipError(_)) => tonic::Code::FailedPrecondition,
                _ => tonic::Code::Unavailable,
            };
            Response::Membership(Err(WireStatus {
                code: code as i32,
                message: format!("{what}: {e}"),
            }))
        }
        let voters = || -> std::collections::BTreeSet<NodeId> {
            self.raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect()
        };
        match change {
            MembershipChange::Join { id, info } => {
                // Not openraft's blocking add_learner: it counts a learner
                // as caught up while its lag is under
                // `replication_lag_threshold` (5,000 entries by default),
                // so in a young cluster it promoted a node that had
                // received nothing, even one it could not reach at all.
                let added = match self.raft.add_learner(id, info, false).await {
                    Ok(added) => added.log_id,
                    Err(e) => return refused(e, &format!("add node {id} as a learner")),
                };
                // Three quarters of the caller's bound: the rest is for the
                // promotion, or for taking the learner out again.
                let bound = Duration::from_millis(self.config.limits.membership_ms_max * 3 / 4);
                let caught_up = self
                    .raft
                    .wait(Some(bound))
                    .metrics(
                        |m| {
                            m.replication
                                .as_ref()
                                .and_then(|r| r.get(&id))
                                .and_then(|matched| matched.as_ref())
                                .is_some_and(|matched| matched.index >= added.index)
                        },
                        "new learner has the entry that added it",
                    )
                    .await;
                if caught_up.is_err() {
                    let removed = self
                        .raft
                        .change_membership(
                            openraft::ChangeMembers::RemoveNodes([id].into_iter().collect()),
                            false,
                        )
                        .await;
                    return Response::Membership(Err(WireStatus {
                        code: tonic::Code::DeadlineExceeded as i32,
                        message: format!(
                            "node {id} did not catch up as a learner within {} ms: is its peer \
                             address reachable from the leader, and does its certificate chain \
                             to the cluster CA? It was not made a voter{}",
                            bound.as_millis(),
                            match removed {
                                Ok(_) => ", and was taken out again as a learner".to_string(),
                                Err(e) => format!(" (taking it out as a learner failed: {e})"),
                            }
                        ),
                    }));
                }
                let mut members = voters();
                members.insert(id);
                if let Err(e) = self.raft.change_membership(members, false).await {
                    return refused(e, &format!("promote node {id} to voter"));
                }
            }
            MembershipChange::Remove { id } => {
                let mut members = voters();
                if !members.remove(&id) {
                    return Response::Membership(Err(WireStatus {
                        code: tonic::Code::NotFound as i32,
                        message: format!("node {id} is not a voter"),
                    }));
                }
                if members.is_empty() {
                    return Response::Membership(Err(WireStatus {
                        code: tonic::Code::FailedPrecondition as i32,
                        message: "cannot remove the last voter".into(),
                    }));
                }
                if let Err(e) = self.raft.change_membership(members, false).await {
                    return refused(e, &format!("remove node {id}"));
                }
            }
        }
        Response::Membership(Ok(()))
    }

    /// Answers a read from this node's applied state, which may be stale on
    /// a follower.
    pub fn read_local(&self, read: Read) -> Result<Result<ReadReply, core::Error>, Status> {
        record_queue(read.queue());
        self.read_state(read)
    }

    fn read_state(&self, read: Read) -> Result<Result<ReadReply, core::Error>, Status> {
        let reply = self
            .state
            .read(|s| match read {
                Read::Queue { name } => s.queue_info(&name).map(ReadReply::Queue),
                Read::ListQueues => Ok(ReadReply::Queues(s.list_queues())),
                Read::Groups {
                    queue,
                    filter,
                    after,
                    limit,
                } => s
                    .list_groups(&queue, &filter, after.as_deref(), limit)
                    .map(ReadReply::Groups),
                Read::DeadLetters {
                    queue,
                    after,
                    limit,
                } => s
                    .list_dead_letters(&queue, after, limit)
                    .map(|page| ReadReply::DeadLetters(page, Vec::new())),
            })
            .map_err(store_status)?;
        // Payloads are read outside the state lock.
        Ok(match reply {
            Ok(ReadReply::DeadLetters(page, _)) => {
                let blobs = page
                    .dead_letters
                    .iter()
                    .map(|d| {
                        self.state
                            .get_blob(d.queue_id, d.blob)
                            .map_err(store_status)
                    })
                    .collect::<Result<_, _>>()?;
                Ok(ReadReply::DeadLetters(page, blobs))
            }
            other => other,
        })
    }

    /// A watch that changes whenever this node applies an entry, for long
    /// polls.
    pub fn applied_watch(&self) -> watch::Receiver<openraft::RaftMetrics<NodeId, NodeInfo>> {
        self.raft.metrics()
    }

    /// While this node leads, proposes a `Tick` whenever a lease or a delay
    /// is due, so expiry happens without client traffic. Ends with `stop`.
    pub async fn run_ticker(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(Duration::from_millis(TICK_CHECK_MS));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            let leading = self.raft.metrics().borrow().current_leader == Some(self.id);
            if !leading {
                continue;
            }
            let due = self.state.read(|s| s.next_due_ms()).ok().flatten();
            if due.is_some_and(|t| t <= wall_clock_ms()) {
                if let Err(failure) = self.batcher.submit(Command::Tick).await {
                    tracing::debug!(?failure, "tick not applied");
                }
            }
        }
    }
}

/// Names the queue on the current request's span (the `rpc` span of
/// `metrics::RpcLayer`, or `forwarded`); a span without the field ignores it.
fn record_queue(queue: Option<&str>) {
    if let Some(queue) = queue {
        tracing::Span::current().record("queue", tracing::field::display(queue));
    }
}

/// The peer-side entry point of a forwarded request.
pub async fn handle_forwarded(node: &Node, bytes: &[u8]) -> Result<Vec<u8>, Status> {
    let request: Request = codec::decode(bytes)
        .map_err(|e| Status::invalid_argument(format!("forwarded request: {e}")))?;
    let queue = request.queue().map(tracing::field::display);
    let span = tracing::info_span!("forwarded", node = node.id, queue);
    let response = node.execute_local(request).instrument(span).await?;
    codec::encode(&response).map_err(|e| Status::internal(e.to_string()))
}
