//! The server side: the `Peer` gRPC service of one node.

use std::fmt;
use std::sync::Arc;

use lockstep_core::codec;
use lockstep_types::TypeConfig;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use openraft::Raft;
use serde::{de::DeserializeOwned, Serialize};
use tonic::{Request, Response, Status};

use crate::guard::AppendRule;
use crate::pb::peer_server::{Peer, PeerServer};
use crate::pb::PeerMessage;
use crate::{Method, VoteGuard, ENTRIES_WANTED_KEY, PEER_MESSAGE_BYTES_MAX};

/// Runs a client request that another node forwarded to this one (the
/// leader). The node decides the payload format on both sides; this crate
/// only carries the bytes.
#[tonic::async_trait]
pub trait ForwardHandler: Send + Sync + 'static {
    /// Runs one forwarded request and returns its encoded answer. An error
    /// status is relayed to the forwarding node as is.
    /// `traceparent` is the forwarding node's W3C trace context of the
    /// request, when it sent one.
    async fn forward(
        &self,
        request: Vec<u8>,
        traceparent: Option<String>,
    ) -> Result<Vec<u8>, Status>;
}

/// The `Peer` gRPC service: hands Raft RPCs to the local [`Raft`] and
/// forwarded requests to the node's [`ForwardHandler`].
#[derive(Clone)]
pub struct PeerService {
    raft: Raft<TypeConfig>,
    forward: Arc<dyn ForwardHandler>,
    guard: Arc<VoteGuard>,
}

impl fmt::Debug for PeerService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerService").finish_non_exhaustive()
    }
}

impl PeerService {
    /// The service itself, without a gRPC server around it: what a
    /// [`Transport`](crate::Transport) that is not gRPC hands messages to.
    pub fn new(
        raft: Raft<TypeConfig>,
        forward: Arc<dyn ForwardHandler>,
        guard: Arc<VoteGuard>,
    ) -> PeerService {
        PeerService {
            raft,
            forward,
            guard,
        }
    }

    /// Answers one encoded message for `method` exactly as the gRPC server
    /// does (the same handlers, guard and codec), with no socket between.
    pub async fn handle(
        &self,
        method: Method,
        data: Vec<u8>,
        traceparent: Option<String>,
    ) -> Result<Vec<u8>, Status> {
        let mut request = Request::new(PeerMessage { data });
        if let Some(value) =
            traceparent.and_then(|t| tonic::metadata::AsciiMetadataValue::try_from(t).ok())
        {
            request.metadata_mut().insert(crate::TRACEPARENT_KEY, value);
        }
        let response = match method {
            Method::AppendEntries => self.append_entries(request).await,
            Method::Vote => self.vote(request).await,
            Method::InstallSnapshot => self.install_snapshot(request).await,
            Method::Forward => self.forward(request).await,
        };
        Ok(response?.into_inner().data)
    }
}

/// Wraps `service` as the gRPC service the node adds to its peer server,
/// with [`PEER_MESSAGE_BYTES_MAX`] enforced in both directions.
pub fn peer_service(service: PeerService) -> PeerServer<PeerService> {
    PeerServer::new(service)
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
}

/// Decodes a request body. Bad bytes come from a broken or foreign peer, not
/// from this node, so they are the caller's error and never a panic.
fn decode_request<T: DeserializeOwned>(
    rpc: &str,
    request: Request<PeerMessage>,
) -> Result<T, Status> {
    codec::decode(&request.into_inner().data).map_err(|e| {
        tracing::warn!(rpc, error = %e, "undecodable peer request");
        Status::invalid_argument(format!("{rpc}: undecodable peer message: {e}"))
    })
}

/// Encodes the whole `Result` of the local Raft call: the remote side turns
/// an `Err` into openraft's `RemoteError`, which openraft handles (a higher
/// vote, a stopped node), while a gRPC status would read as a network fault.
fn encode_reply<T: Serialize>(rpc: &str, value: &T) -> Result<Response<PeerMessage>, Status> {
    let data = codec::encode(value)
        .map_err(|e| Status::internal(format!("{rpc}: cannot encode the reply: {e}")))?;
    Ok(Response::new(PeerMessage { data }))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode_request("AppendEntries", request)?;
        // No AppendEntries lifts the vote guard: a deposed leader may still
        // send one, with an old commit index. While the guard is up, none is
        // acknowledged from a leader that may be deposed (see `guard`); the
        // refusal reads as an unreachable follower.
        match self.guard.append_rule(rpc.vote.leader_id().get_term()) {
            AppendRule::Acknowledge => {}
            AppendRule::AppendOnly => {
                let leader = rpc.vote.leader_id();
                self.guard
                    .report_term(leader.voted_for().unwrap_or_default(), leader.get_term());
                let empty = rpc.entries.is_empty();
                let taken = self.raft.append_entries(rpc).await;
                return match taken {
                    // Only a success would count toward a commit.
                    Ok(
                        AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_),
                    ) => Err(Status::unavailable(
                        "this node restarted without its data and acknowledges appends once \
                             a majority of the other members told it the newest term",
                    )),
                    // openraft's read index sends empty AppendEntries and
                    // counts a conflict as a confirmation: a deposed leader
                    // must not confirm a read with this node. The leader
                    // is asked for an entry instead, whose conflict passes.
                    Ok(AppendEntriesResponse::Conflict) if empty => {
                        let mut metadata = tonic::metadata::MetadataMap::new();
                        metadata.insert(
                            ENTRIES_WANTED_KEY,
                            tonic::metadata::MetadataValue::from_static("1"),
                        );
                        Err(Status::with_metadata(
                            tonic::Code::Unavailable,
                            "this node restarted without its data and answers an empty \
                             AppendEntries once a majority of the other members told it the \
                             newest term; send entries",
                            metadata,
                        ))
                    }
                    // A conflict on entries or a higher vote confirms
                    // nothing and lets the leader find where the logs meet
                    // (so the first entries, with the membership to probe,
                    // arrive).
                    other => encode_reply("AppendEntries", &other),
                };
            }
            AppendRule::Stale { floor } => {
                return Err(Status::unavailable(format!(
                    "this node restarted without its data; the other members report term \
                     {floor}, newer than this leader's {}",
                    rpc.vote.leader_id().get_term()
                )));
            }
        }
        encode_reply("AppendEntries", &self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<PeerMessage>) -> Result<Response<PeerMessage>, Status> {
        let rpc: VoteRequest<lockstep_types::NodeId> = decode_request("Vote", request)?;
        if !self.guard.allowed() {
            // Read by the candidate as an unreachable voter; see `guard`.
            return Err(Status::unavailable(
                "this node restarted without its data and votes again once it has the committed log",
            ));
        }
        encode_reply("Vote", &self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_request("InstallSnapshot", request)?;
        encode_reply("InstallSnapshot", &self.raft.install_snapshot(rpc).await)
    }

    async fn forward(
        &self,
        request: Request<PeerMessage>,
    ) -> Result<Response<PeerMessage>, Status> {
        let traceparent = request
            .metadata()
            .get(crate::TRACEPARENT_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let data = self
            .forward
            .forward(request.into_inner().data, traceparent)
            .await?;
        Ok(Response::new(PeerMessage { data }))
    }
}
