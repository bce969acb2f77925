//! Forwarding a client request to the leader: the rule that any node
//! accepts any call.
//!
//! A write or a linearizable read runs on the leader. A node that is not the
//! leader forwards the request over the peer channel and relays the answer;
//! while no leader is known (an election) it retries with backoff until the
//! caller's deadline, then answers UNAVAILABLE with the leader hint it has.
//! A follower that has not heard from its leader for
//! [`LEADER_SILENCE_HEARTBEATS`] heartbeats holds a forward rather than send
//! it there (see [`Forwarding::route`]).
//! The request is encoded by [`lockstep_core::codec`] on its first forward
//! (not at all when this node leads), and reused by later tries, except a
//! sequenced write: each of its tries is marked newer than the last (see
//! `lockstep_core::TryNumber`), so it is encoded again: a forward that
//! broke after sending may still reach the log after its retry.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lockstep_core::codec;
use lockstep_types::forward::{Request, Response, WireStatus};
use lockstep_types::{NodeId, NodeInfo, TypeConfig};
use openraft::Raft;
use tonic::Status;

/// First and largest pause between tries to reach a leader. The pause
/// doubles after each failed try; it stays short because an election on
/// loopback settles within a few hundred milliseconds.
pub const RETRY_BACKOFF_MS_MIN: u64 = 20;
/// See [`RETRY_BACKOFF_MS_MIN`].
pub const RETRY_BACKOFF_MS_MAX: u64 = 500;

/// How many heartbeat intervals a follower may go without hearing from its
/// leader before it holds a forward instead of sending it there. A stopped
/// leader accepts the connection and answers nothing: a forward sent to it
/// waits for the peer channel's keep-alive (seconds) and its outcome is then
/// unknown, while a held one goes to the successor, or fails as certainly
/// not applied. Two, so one late heartbeat on a loaded machine holds
/// nothing, and well under the election timeout, so the hold starts before
/// the election it waits for.
pub const LEADER_SILENCE_HEARTBEATS: u64 = 2;

/// The least time left for which a forward is sent: less cannot see an
/// answer from a leader that syncs its log, and a forward that times out
/// after sending leaves its outcome unknown.
pub const FORWARD_MS_MIN: u64 = RETRY_BACKOFF_MS_MIN;

/// The metadata key of the leader's client address on an UNAVAILABLE
/// answer, so the caller can go straight to the leader next time.
pub const LEADER_HEADER: &str = "x-lockstep-leader";

/// How a node reaches another node's peer service to forward a request.
/// The node implements it over [`crate::PeerNetworkFactory::forward`], in a
/// span whose trace context it sends along; a simulated network may too.
#[tonic::async_trait]
pub trait Forwarder: Send + Sync + 'static {
    /// Sends the encoded `request` to `target` (described by `node`) and
    /// returns its encoded answer, waiting at most `timeout`.
    async fn forward(
        &self,
        target: NodeId,
        node: &NodeInfo,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, Status>;
}

/// Whether a failed forward certainly never reached the leader: the
/// connection could not be made. Any other failure (a reset, a deadline, an
/// error status relayed from the leader) may come after the leader applied
/// the request. The test reads the error chain's text, since tonic does not
/// type connect errors; a miss only makes an answer "may have applied"
/// where "unavailable" was true, never the reverse.
fn never_sent(status: &Status) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(status);
    while let Some(e) = source {
        let text = e.to_string();
        if text.contains("tcp connect error") || text.contains("error trying to connect") {
            return true;
        }
        source = e.source();
    }
    false
}

/// A gRPC status from one that crossed the peer channel.
pub fn wire_status(w: WireStatus) -> Status {
    Status::new(tonic::Code::from_i32(w.code), w.message)
}

/// Routes requests of one node to the leader, wherever it is.
#[derive(Clone)]
pub struct Forwarding {
    id: NodeId,
    raft: Raft<TypeConfig>,
    forwarder: Arc<dyn Forwarder>,
}

impl std::fmt::Debug for Forwarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarding")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Forwarding {
    /// Forwarding for node `id`, whose Raft is `raft`, over `forwarder`.
    pub fn new(id: NodeId, raft: Raft<TypeConfig>, forwarder: Arc<dyn Forwarder>) -> Forwarding {
        Forwarding {
            id,
            raft,
            forwarder,
        }
    }

    /// Runs `request` on the leader within `wait`: by `local` when this
    /// node leads, else forwarded. `limit_key` names the configuration key
    /// of `wait` in the UNAVAILABLE answer; `observe` learns whether each
    /// forward reached the leader (for metrics).
    pub async fn route<F, Fut>(
        &self,
        mut request: Request,
        wait: Duration,
        limit_key: &str,
        observe: impl Fn(bool),
        local: F,
    ) -> Result<Response, Status>
    where
        F: Fn(Request) -> Fut,
        Fut: Future<Output = Result<Response, Status>>,
    {
        let deadline = tokio::time::Instant::now() + wait;
        let mut backoff = RETRY_BACKOFF_MS_MIN;
        // Encoded only when it is to be forwarded: most requests land on
        // the leader, and encoding one is a copy of its payloads.
        let mut encoded: Option<Vec<u8>> = None;
        let retry_safe = request.retry_safe();
        let abandon_safe = request.abandon_safe();
        let mut hint: Option<NodeInfo> = None;
        // Why an earlier try may have applied the request: then the final
        // answer is "may have applied", never UNAVAILABLE.
        let mut unknown: Option<String> = None;
        let mut tries: u32 = 0;
        loop {
            // Every try after the first is marked newer, so an earlier one
            // still on its way cannot apply after it unnoticed.
            if tries > 0 && request.set_forward_try(tries) {
                encoded = None;
            }
            tries = tries.saturating_add(1);
            let leader = self.raft.current_leader().await;
            // Whether this try held its forward for a silent leader: then
            // the pause is a heartbeat at most, to look again soon.
            let mut held = false;
            let answer = match leader {
                Some(id) if id == self.id => Some(local(request.clone()).await?),
                Some(id) => match self.member(id) {
                    Some(node) if self.leader_silent(deadline).await => {
                        tracing::debug!(leader = id, "forward held: the leader is silent");
                        hint = Some(node);
                        held = true;
                        None
                    }
                    // The deadline (nearly) passed while the silence check
                    // waited on the Raft core. A forward with no time left
                    // can still leave before its timer fires, and would
                    // answer "may have applied" for a request that never
                    // had a chance (seen once in the gate's
                    // a_follower_holds_a_forward_to_a_silent_leader, a
                    // forward "within 0 ms"): not sent, so the answer
                    // below is UNAVAILABLE.
                    Some(_)
                        if tokio::time::Instant::now() + Duration::from_millis(FORWARD_MS_MIN)
                            >= deadline =>
                    {
                        None
                    }
                    Some(node) => {
                        let remaining =
                            deadline.saturating_duration_since(tokio::time::Instant::now());
                        hint = Some(node.clone());
                        let bytes = match &encoded {
                            Some(bytes) => bytes.clone(),
                            None => encoded
                                .insert(
                                    codec::encode(&request)
                                        .map_err(|e| Status::internal(e.to_string()))?,
                                )
                                .clone(),
                        };
                        self.forward_once(id, &node, bytes, remaining, abandon_safe, &observe)
                            .await?
                    }
                    None => None,
                },
                None => None,
            };
            match answer {
                None => {}
                Some(Response::NotLeader {
                    leader: Some((_, node)),
                }) => hint = Some(node),
                Some(Response::NotLeader { leader: None }) => {}
                Some(Response::MayHaveApplied(why)) => {
                    if !retry_safe {
                        return Ok(Response::MayHaveApplied(why));
                    }
                    unknown = Some(why);
                }
                Some(other) => return Ok(other),
            }
            let pause = if held {
                backoff.min(self.raft.config().heartbeat_interval)
            } else {
                backoff
            };
            if tokio::time::Instant::now() + Duration::from_millis(pause) >= deadline {
                if let Some(why) = unknown {
                    return Ok(Response::MayHaveApplied(format!(
                        "no answer within {limit_key} = {} ms; last: {why}",
                        wait.as_millis()
                    )));
                }
                return Err(self.unavailable(hint, wait, limit_key).await);
            }
            // The pause ends early when a leader other than the one just
            // tried becomes known: an election ends mid-pause, and its
            // leader is worth trying at once.
            tokio::select! {
                biased;
                () = tokio::time::sleep(Duration::from_millis(pause)) => {}
                true = self.leader_other_than(leader) => {}
            }
            backoff = (backoff * 2).min(RETRY_BACKOFF_MS_MAX);
        }
    }

    /// One forward of the encoded request to leader `id`, waiting at most
    /// `remaining`: its answer, or `None` when it certainly never reached
    /// the leader. With `abandon_safe` the forward is given up as soon as
    /// another leader is known, answered "may have applied", and retried
    /// there by the caller's loop at once (its pause ends when a leader
    /// other than `id` is known). Why: a leader that stopped (a pause)
    /// holds a forward until the peer channel's keep-alive, seconds after
    /// its successor took over.
    async fn forward_once(
        &self,
        id: NodeId,
        node: &NodeInfo,
        bytes: Vec<u8>,
        remaining: Duration,
        abandon_safe: bool,
        observe: &impl Fn(bool),
    ) -> Result<Option<Response>, Status> {
        let sent = self.forwarder.forward(id, node, bytes, remaining);
        let forwarded = if abandon_safe {
            tokio::select! {
                biased;
                forwarded = sent => forwarded,
                true = self.leader_other_than(Some(id)) => {
                    tracing::debug!(leader = id, "forward given up: another leader is known");
                    observe(false);
                    return Ok(Some(Response::MayHaveApplied(format!(
                        "the forward to leader {id} was given up when another leader was elected"
                    ))));
                }
            }
        } else {
            sent.await
        };
        observe(forwarded.is_ok());
        match forwarded {
            Ok(bytes) => match codec::decode::<Response>(&bytes) {
                Ok(answer) => Ok(Some(answer)),
                Err(e) => Err(Status::internal(format!("forwarded answer: {e}"))),
            },
            // Never sent: the leader may be gone; look again after a pause.
            Err(status) if never_sent(&status) => {
                tracing::debug!(%status, leader = id, "forward not sent");
                Ok(None)
            }
            // Sent, and no answer: the leader may have applied it before
            // the channel broke.
            Err(status) => {
                tracing::debug!(%status, leader = id, "forward failed");
                Ok(Some(Response::MayHaveApplied(format!(
                    "the forward to leader {id} failed after sending: {status}"
                ))))
            }
        }
    }

    /// Waits until this node knows a leader other than `than` (any leader
    /// when `None`): true then, false if the Raft shut down first.
    async fn leader_other_than(&self, than: Option<NodeId>) -> bool {
        let mut server = self.raft.server_metrics();
        let known = server
            .wait_for(|m| m.current_leader.is_some_and(|l| Some(l) != than))
            .await
            .is_ok();
        known
    }

    /// Whether this node, a follower, has not heard from its leader for
    /// [`LEADER_SILENCE_HEARTBEATS`] heartbeats, by the time openraft keeps
    /// of the last AppendEntries (the time its own election timer reads).
    /// Asking waits for the Raft core, so at most until `deadline`; a core
    /// that does not answer by then counts as not silent, as before the
    /// hold existed.
    async fn leader_silent(&self, deadline: tokio::time::Instant) -> bool {
        let silence = Duration::from_millis(
            self.raft
                .config()
                .heartbeat_interval
                .saturating_mul(LEADER_SILENCE_HEARTBEATS),
        );
        let asked = self.raft.with_raft_state(move |state| {
            state
                .vote_last_modified()
                .is_some_and(|heard| heard.elapsed() > silence)
        });
        matches!(tokio::time::timeout_at(deadline, asked).await, Ok(Ok(true)))
    }

    /// The UNAVAILABLE answer after `wait` with no leader answering, with
    /// the leader's address as metadata when one is known by now.
    async fn unavailable(&self, hint: Option<NodeInfo>, wait: Duration, limit_key: &str) -> Status {
        let hint = hint.map_or_else(
            || "no leader known".to_string(),
            |n| format!("last known leader at {}", n.client_addr),
        );
        let mut status = Status::unavailable(format!(
            "no leader answered within {limit_key} = {} ms ({hint}); retry with the same ids",
            wait.as_millis()
        ));
        if let Some(leader) = self
            .raft
            .current_leader()
            .await
            .and_then(|id| self.member(id))
        {
            if let Ok(value) = leader.client_addr.parse() {
                status.metadata_mut().insert(LEADER_HEADER, value);
            }
        }
        status
    }

    /// Sends `request` once to the leader this node knows of, when that is
    /// another node, waiting at most `timeout`; no retry. For questions
    /// only the leader can answer and that the caller repeats anyway.
    pub async fn to_leader_once(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, Status> {
        let leader = self
            .raft
            .current_leader()
            .await
            .filter(|id| *id != self.id)
            .ok_or_else(|| Status::unavailable("no other node is known to lead"))?;
        let node = self
            .member(leader)
            .ok_or_else(|| Status::unavailable(format!("leader {leader} is not a member")))?;
        self.to_node(leader, &node, request, timeout).await
    }

    /// Sends `request` once to node `id` at `node`, waiting at most
    /// `timeout`, and decodes its answer.
    pub async fn to_node(
        &self,
        id: NodeId,
        node: &NodeInfo,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, Status> {
        let encoded = codec::encode(request).map_err(|e| Status::internal(e.to_string()))?;
        let bytes = self.forwarder.forward(id, node, encoded, timeout).await?;
        codec::decode::<Response>(&bytes)
            .map_err(|e| Status::internal(format!("answer of node {id}: {e}")))
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

    /// What the membership says of node `id`.
    fn member(&self, id: NodeId) -> Option<NodeInfo> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    }
}
