//! One Lockstep node: Raft, the state, the batcher, and what the leader runs
//! for a request, whichever node received it.
//!
//! A write or a linearizable read runs on the leader; a node that is not
//! the leader forwards it ([`lockstep_raft::Forwarding`], up to
//! `limits.forward_retry_ms_max`). The leader fills in payloads before
//! answering, because it is the node that has applied the entry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lockstep_core::{self as core, codec, Command, Reply};
use lockstep_raft::{EntriesWanted, Forwarder, Forwarding};
use lockstep_store::StateHandle;
use lockstep_types::forward::{
    MembershipChange, Probed, Read, ReadReply, Request, Response, WireStatus,
};
use lockstep_types::{NodeId, NodeInfo, TypeConfig};
use openraft::Raft;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tracing::Instrument;

use crate::batcher::{Batcher, WriteFailure};
use crate::clock::{Clock, ClusterClock};
use crate::config::NodeConfig;
use crate::error::RunError;
use crate::guard::Guard;
use crate::metrics::registry::Metrics;

/// Longest a status call or a scrape waits for the Raft core to report its
/// commit index; a node whose core is busy or stuck still answers the rest.
const RAFT_STATE_WAIT_MS_MAX: u64 = 1_000;

/// One node: its Raft, its applied state and how it reaches the leader.
pub struct Node {
    /// This node's Raft id.
    pub id: NodeId,
    /// The settings it started with.
    pub config: NodeConfig,
    /// Its Raft.
    pub raft: Raft<TypeConfig>,
    /// Its applied state.
    pub state: StateHandle,
    /// This node's event metrics (RPC and commit latency, forwards).
    pub metrics: Arc<Metrics>,
    pub(crate) batcher: Batcher,
    /// Cluster time as this node would stamp it as leader; the batcher
    /// stamps with it and the ticker compares due times to it.
    pub(crate) clock: Arc<ClusterClock>,
    pub(crate) forwarding: Forwarding,
    /// Whether this node may vote yet, and what raising and lifting that
    /// touch (see `lockstep_raft::VoteGuard`).
    pub(crate) guard: Guard,
    /// Set when a guarded member asked this node, as leader, for entries;
    /// the ticker answers with one `Tick` (see `lockstep_raft::guard`).
    pub(crate) entries_wanted: EntriesWanted,
    /// The data directory's free space against its reserve.
    pub(crate) disk: Arc<crate::disk::DiskSpace>,
    /// Client requests served at once (`limits.requests_in_flight_max`).
    client_slots: Arc<Semaphore>,
    /// Requests forwarded by other nodes served at once (the same bound,
    /// counted apart so one side cannot starve the other).
    forward_slots: Arc<Semaphore>,
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

/// Longest the elector or a pre-vote waits for Raft's state.
const SEEN_WAIT_MS_MAX: u64 = 1_000;

/// What the elector and a pre-vote read of openraft's state.
pub(crate) struct Seen {
    pub(crate) leading: bool,
    pub(crate) committed: bool,
    /// When the vote last changed or a leader was last heard from (at
    /// first, when Raft started); `None` only if openraft has no time for
    /// it.
    pub(crate) touched: Option<tokio::time::Instant>,
}

impl Node {
    /// openraft's state as the elector and a pre-vote read it.
    /// `None` when Raft has stopped or did not answer within
    /// [`SEEN_WAIT_MS_MAX`].
    pub(crate) async fn seen(&self) -> Option<Seen> {
        let asked = self.raft.with_raft_state(|st| Seen {
            leading: st.server_state == openraft::ServerState::Leader,
            committed: st.vote_ref().is_committed(),
            touched: st.vote_last_modified(),
        });
        tokio::time::timeout(Duration::from_millis(SEEN_WAIT_MS_MAX), asked)
            .await
            .ok()?
            .ok()
    }

    /// Whether this node would vote (the elector's pre-vote, see
    /// `crate::elector`) for `candidate`, whose last log id is `last_log`,
    /// now: what openraft's vote handler would grant, but for the term.
    /// Changes nothing.
    pub(crate) async fn would_vote(
        &self,
        candidate: NodeId,
        last_log: Option<lockstep_types::LogId>,
    ) -> bool {
        if self.guard.is_up() || candidate == self.id {
            return false;
        }
        let Some(seen) = self.seen().await else {
            return false;
        };
        if seen.leading {
            return false;
        }
        let lease = self.lease();
        let fresh = seen.committed && seen.touched.is_some_and(|t| t.elapsed() <= lease);
        if fresh {
            return false;
        }
        match self.guard.last_log_id().await {
            Ok(mine) => last_log >= mine,
            Err(_) => false,
        }
    }

    /// openraft 0.9's follower lease: a voter that heard from a leader
    /// within it refuses a vote (its `EngineConfig::leader_lease` is
    /// `election_timeout_max`). The pre-vote grant and the elector's wait
    /// read it here, so both stay the lease openraft enforces.
    pub(crate) fn lease(&self) -> Duration {
        Duration::from_millis(self.raft.config().election_timeout_max)
    }

    /// A node over a started Raft and its state; writes go through a new
    /// batcher, requests for another leader through `forwarder`, and the
    /// cluster clock reads `clock`. `entries_wanted` is the network's flag
    /// for a guarded member that asks for entries.
    pub fn new(
        config: NodeConfig,
        raft: Raft<TypeConfig>,
        state: StateHandle,
        forwarder: Arc<dyn Forwarder>,
        guard: Guard,
        clock: Arc<dyn Clock>,
        entries_wanted: EntriesWanted,
    ) -> Node {
        let metrics = Arc::new(Metrics::new());
        let clock = Arc::new(ClusterClock::new(
            clock,
            &raft,
            state.clone(),
            config.clock.skew_ms_max,
            metrics.clone(),
        ));
        let slots = config.limits.requests_in_flight_max as usize;
        let batcher = Batcher::start(
            raft.clone(),
            config.batch.clone(),
            config.limits.requests_in_flight_max as usize,
            clock.clone(),
            metrics.clone(),
        );
        let disk =
            crate::disk::DiskSpace::new(config.data_dir.clone(), config.limits.disk_free_bytes_min);
        Node {
            id: config.id,
            disk,
            forwarding: Forwarding::new(config.id, raft.clone(), forwarder),
            config,
            raft,
            state,
            metrics,
            batcher,
            clock,
            guard,
            entries_wanted,
            client_slots: Arc::new(Semaphore::new(slots)),
            forward_slots: Arc::new(Semaphore::new(slots)),
        }
    }

    /// A slot for one request, or RESOURCE_EXHAUSTED naming the bound:
    /// shed at once rather than queued, so callers and their payloads
    /// never pile up behind a leader without quorum.
    fn slot(&self, slots: &Arc<Semaphore>, whose: &str) -> Result<OwnedSemaphorePermit, Status> {
        slots.clone().try_acquire_owned().map_err(|_| {
            self.metrics.observe_shed();
            Status::resource_exhausted(format!(
                "limits.requests_in_flight_max = {} {whose} requests are in flight on node {}; retry later",
                self.config.limits.requests_in_flight_max, self.id
            ))
        })
    }

    /// Runs a request that arrived here, wherever the leader is.
    pub async fn execute(&self, request: Request) -> Result<Response, Status> {
        record_queue(request.queue());
        let _slot = self.slot(&self.client_slots, "client")?;
        let (wait_ms, limit_key) = match request {
            Request::Membership(_) => (
                self.config.limits.membership_ms_max,
                "limits.membership_ms_max",
            ),
            _ => (
                self.config.limits.forward_retry_ms_max,
                "limits.forward_retry_ms_max",
            ),
        };
        let answer = self
            .forwarding
            .route(
                request,
                Duration::from_millis(wait_ms),
                limit_key,
                |ok| self.metrics.observe_forward(ok),
                |request| self.execute_local(request),
            )
            .await;
        lost_reply("client-reply-lost").await?;
        answer
    }

    /// The leader's client address when another node leads and has one.
    pub fn other_leader_client_addr(&self) -> Option<String> {
        self.forwarding.other_leader_client_addr()
    }

    /// Runs a request on this node, which must be the leader; answers
    /// `NotLeader` otherwise. This is also what a forwarded request runs.
    pub async fn execute_local(&self, request: Request) -> Result<Response, Status> {
        match request {
            Request::Write(command) => {
                if let Some(refused) = self.disk.refusal(&command) {
                    return Ok(Response::Write {
                        reply: Err(refused),
                        blobs: Vec::new(),
                    });
                }
                // Malformed or hostile input never reaches the log. A
                // refusal is final only from a state that holds everything
                // committed: a deposed leader that has not heard of its
                // successor, or a new one that has not yet applied its
                // predecessor's entries, would refuse a valid request
                // (NOT_FOUND for a queue just created). So a refusal is
                // checked again after a read-index round: the leader
                // confirms it still leads with a majority and waits until
                // it has applied everything committed before. Only bad
                // input pays for the round.
                let refused = self.precheck(&command)?;
                if let Err(e) = refused.clone() {
                    if crate::planted("precheck-on-stale-state") {
                        // Planted bug (tests only): final without the round.
                        return Ok(Response::Write {
                            reply: Err(e),
                            blobs: Vec::new(),
                        });
                    }
                }
                if refused.is_err() {
                    let limit_ms = self.config.limits.write_ms_max;
                    let confirmed = tokio::time::timeout(
                        Duration::from_millis(limit_ms),
                        self.raft.ensure_linearizable(),
                    )
                    .await;
                    match confirmed {
                        Ok(Ok(_)) => {
                            if let Err(e) = self.precheck(&command)? {
                                return Ok(Response::Write {
                                    reply: Err(e),
                                    blobs: Vec::new(),
                                });
                            }
                        }
                        Ok(Err(err)) => return Ok(unconfirmed(err)),
                        // Nothing was proposed: certainly not applied.
                        Err(_) => {
                            return Ok(Response::Unavailable(format!(
                                "leader {} could not confirm it leads within \
                                 limits.write_ms_max = {limit_ms} ms",
                                self.id
                            )))
                        }
                    }
                }
                self.submit_write(command).await
            }
            Request::Read(Read::ConfirmedCommit) => {
                // The read index: the leader proves it still leads with a
                // round of heartbeats to a majority, so a deposed leader
                // cannot answer (see `lockstep_raft::VoteGuard`).
                Ok(match self.raft.get_read_log_id().await {
                    Ok((read, _)) => {
                        Response::Read(Ok(ReadReply::ConfirmedCommit(read.map_or(0, |l| l.index))))
                    }
                    Err(err) => unconfirmed(err),
                })
            }
            Request::Read(read) => {
                if let Err(err) = self.raft.ensure_linearizable().await {
                    return Ok(unconfirmed(err));
                }
                Ok(Response::Read(self.read_state(read)?))
            }
            Request::Membership(change) => Ok(self.change_membership(change).await),
            // Answered by this node itself, wherever the leader is.
            Request::Probe => Ok(Response::Probe(self.probe())),
            Request::Initialize { members } => self
                .initialize(members)
                .await
                .map(Response::Initialized)
                .map_err(|e| Status::failed_precondition(e.to_string())),
            // Answered by this node itself, changing nothing.
            Request::PreVote {
                candidate,
                last_log,
            } => Ok(Response::PreVote(
                self.would_vote(candidate, last_log).await,
            )),
        }
    }

    /// The leader's check of `command` before it is proposed, from the
    /// lock-free copy of the queues' configurations, so no request waits
    /// on an apply or a whole-state read. A refused sequenced request asks
    /// the state (a few lookups under the lock) whether it was answered
    /// before: then a repeat gets that answer from apply.
    fn precheck(&self, command: &Command) -> Result<Result<(), core::Error>, Status> {
        let checked = self.state.precheck(command);
        if checked.is_err() && matches!(command, Command::Sequenced { .. }) {
            return self
                .state
                .read(|s| s.precheck(command))
                .map_err(store_status);
        }
        Ok(checked)
    }

    /// What this node holds, for a bootstrap's probe.
    pub(crate) fn probe(&self) -> Probed {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        Probed {
            last_log_index: m.last_log_index,
            vote_term: m.vote.leader_id().term,
            guarded: self.guard.is_up(),
        }
    }

    /// Initializes this node alone with the cluster's first membership
    /// `members`, as the node that probed the members asks
    /// (`Request::Initialize`, see `crate::bootstrap`). Harmless (false) if
    /// this node has a log or a vote.
    pub(crate) async fn initialize(
        &self,
        members: Vec<(NodeId, NodeInfo)>,
    ) -> Result<bool, RunError> {
        if !self.probe().is_empty() {
            return Ok(false);
        }
        let members: BTreeMap<NodeId, NodeInfo> = members.into_iter().collect();
        let initialized = match self.raft.initialize(members).await {
            Ok(()) => true,
            Err(e) => match e.api_error() {
                Some(openraft::error::InitializeError::NotAllowed(_)) => false,
                _ => return Err(RunError::Raft(e.to_string())),
            },
        };
        if initialized {
            // A node that forms the cluster holds everything ever committed,
            // which is nothing: it may vote.
            self.guard.lift().await?;
        }
        Ok(initialized)
    }

    /// Proposes a write through the batcher and fills in the payloads of a
    /// fetch's deliveries.
    async fn submit_write(&self, command: Command) -> Result<Response, Status> {
        let limit_ms = self.config.limits.write_ms_max;
        let submitted = tokio::time::timeout(
            Duration::from_millis(limit_ms),
            self.batcher.submit(command),
        )
        .await;
        let Ok(submitted) = submitted else {
            return Ok(Response::MayHaveApplied(format!(
                "no commit within limits.write_ms_max = {limit_ms} ms on leader {}",
                self.id
            )));
        };
        match submitted {
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
            Err(WriteFailure::Refused(message)) => Ok(Response::Unavailable(message)),
            Err(WriteFailure::Unknown(message)) => Ok(Response::MayHaveApplied(message)),
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
                Read::Queue { name } => s.queue_info(&name).map(|q| ReadReply::Queue(Box::new(q))),
                Read::ListQueues => Ok(ReadReply::Queues(s.list_queues())),
                // Only the leader answers it, in `execute_local`: a stale
                // local answer would defeat its purpose.
                Read::ConfirmedCommit => Err(core::Error::FailedPrecondition {
                    message: "the confirmed commit index is answered by the leader only".into(),
                }),
                Read::Groups {
                    queue,
                    filter,
                    after,
                    limit,
                    subscription,
                } => s
                    .list_groups_in(
                        &queue,
                        subscription.as_deref(),
                        &filter,
                        after.as_deref(),
                        limit,
                    )
                    .map(ReadReply::Groups),
                Read::DeadLetters {
                    queue,
                    after,
                    limit,
                    subscription,
                } => s
                    .list_dead_letters_in(&queue, subscription.as_deref(), after, limit)
                    .map(|page| ReadReply::DeadLetters(page, Vec::new())),
                Read::Group {
                    queue,
                    key,
                    subscription,
                } => s
                    .get_group_in(&queue, subscription.as_deref(), &key)
                    .map(ReadReply::Group),
                Read::TopGroups {
                    queue,
                    rank,
                    limit,
                    subscription,
                } => s
                    .top_groups_in(&queue, subscription.as_deref(), rank, limit)
                    .map(ReadReply::TopGroups),
                Read::Subscriptions { queue } => {
                    s.list_subscriptions(&queue).map(ReadReply::Subscriptions)
                }
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

    /// Raft's commit index on this node (the highest index it knows is
    /// committed), or `None` when the Raft core does not answer within
    /// `RAFT_STATE_WAIT_MS_MAX` (a busy or stuck core must not hold up a
    /// status call or a scrape).
    pub(crate) async fn committed(&self) -> Option<u64> {
        tokio::time::timeout(
            Duration::from_millis(RAFT_STATE_WAIT_MS_MAX),
            self.raft
                .with_raft_state(|st| st.committed.map_or(0, |l| l.index)),
        )
        .await
        .ok()
        .and_then(Result::ok)
    }

    /// A watch that changes whenever this node applies an entry, for long
    /// polls.
    pub fn applied_watch(&self) -> watch::Receiver<openraft::RaftMetrics<NodeId, NodeInfo>> {
        self.raft.metrics()
    }
}

/// The answer of a node whose read-index round failed: it does not lead
/// (the leader it knows, if any), or it could not confirm that it does.
/// Nothing was proposed either way.
fn unconfirmed(
    err: openraft::error::RaftError<NodeId, openraft::error::CheckIsLeaderError<NodeId, NodeInfo>>,
) -> Response {
    match err.forward_to_leader() {
        Some(f) => Response::NotLeader {
            leader: f.leader_id.zip(f.leader_node.clone()),
        },
        None => Response::Unavailable(err.to_string()),
    }
}

/// How long a reply dropped by a failpoint is held before the call fails,
/// unless the failpoint gives its own: past any chaos client's deadline, so
/// the caller hears nothing, as when a connection breaks.
#[cfg(feature = "planted-bugs")]
const LOST_REPLY_HOLD_MS: u64 = 5_000;

/// The chaos harness's `lost-reply` fault (test builds only): with the
/// failpoint `name` on (`name=50%return(4000)`), the request has run (and
/// may have committed) but its answer is dropped: held for the given
/// milliseconds, then answered ABORTED, "may have applied".
async fn lost_reply(name: &str) -> Result<(), Status> {
    #[cfg(feature = "planted-bugs")]
    {
        let held = fail::eval(name, |arg| {
            arg.and_then(|a| a.parse::<u64>().ok())
                .unwrap_or(LOST_REPLY_HOLD_MS)
        });
        if let Some(ms) = held {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return Err(Status::aborted(format!(
                "failpoint {name}: the answer was dropped after the request ran"
            )));
        }
    }
    let _ = name;
    Ok(())
}

/// Names the queue on the current request's span (the `rpc` span of
/// `metrics::RpcLayer`, or `forwarded`); a span without the field ignores it.
fn record_queue(queue: Option<&str>) {
    if let Some(queue) = queue {
        tracing::Span::current().record("queue", tracing::field::display(queue));
    }
}

/// The peer-side entry point of a forwarded request.
pub async fn handle_forwarded(
    node: &Node,
    bytes: &[u8],
    traceparent: Option<&str>,
) -> Result<Vec<u8>, Status> {
    let request: Request = codec::decode(bytes)
        .map_err(|e| Status::invalid_argument(format!("forwarded request: {e}")))?;
    let queue = request.queue().map(tracing::field::display);
    let span = tracing::info_span!("forwarded", node = node.id, queue);
    lockstep_client::trace::continue_trace(&span, traceparent);
    let _slot = node.slot(&node.forward_slots, "forwarded")?;
    let response = node.execute_local(request).instrument(span).await?;
    lost_reply("forward-reply-lost").await?;
    codec::encode(&response).map_err(|e| Status::internal(e.to_string()))
}
