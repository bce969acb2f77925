//! The client side: openraft's network factory and per-target network, and
//! the forwarding call, all over one reused tonic channel per peer.

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lockstep_core::codec;
use lockstep_types::{NodeId, NodeInfo, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{de::DeserializeOwned, Serialize};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use crate::pb::peer_client::PeerClient as GrpcPeerClient;
use crate::pb::PeerMessage;
use crate::{EntriesWanted, ENTRIES_WANTED_KEY, PEER_MESSAGE_BYTES_MAX, TRACEPARENT_KEY};

/// How long one TCP connection attempt to a peer may take, in milliseconds.
/// A peer behind a partition drops the SYN; without this bound the attempt
/// would take the kernel's minutes-long SYN retry schedule.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// How often an HTTP/2 ping checks a peer connection, in milliseconds.
/// A partitioned or stopped peer never closes its connection; the ping is
/// what notices, so the channel drops it and reconnects after the fault.
const KEEPALIVE_INTERVAL_MS: u64 = 2_000;
/// How long an HTTP/2 ping may go unanswered before the connection is
/// dropped, in milliseconds.
const KEEPALIVE_TIMEOUT_MS: u64 = 2_000;

/// The four RPCs of the `Peer` service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// openraft's AppendEntries.
    AppendEntries,
    /// openraft's Vote.
    Vote,
    /// openraft's InstallSnapshot.
    InstallSnapshot,
    /// A client request forwarded to the leader.
    Forward,
}

/// What carries one encoded peer message to a peer and its answer back,
/// instead of a tonic channel: the seam the simulator (`lockstep-nodesim`)
/// puts its simulated network in. Everything on either side of it stays
/// the real code: the codec, openraft's error mapping in [`PeerClient`],
/// and the receiving node's [`PeerService`](crate::PeerService).
///
/// An implementation answers as the gRPC call would: the peer's answer
/// bytes, or a status (`UNAVAILABLE` for a peer it cannot reach,
/// `DEADLINE_EXCEEDED` past `timeout`, the peer service's own status
/// otherwise), and never waits past `timeout`.
#[tonic::async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Sends `data` to `target` for `method` and waits at most `timeout`
    /// for its answer. `traceparent` goes with a forwarded request.
    async fn call(
        &self,
        target: NodeId,
        method: Method,
        data: Vec<u8>,
        timeout: Duration,
        traceparent: Option<String>,
    ) -> Result<Vec<u8>, Status>;
}

/// A cached channel and the address it was made for.
#[derive(Debug)]
struct Cached {
    addr: String,
    channel: Channel,
}

#[derive(Debug)]
struct Inner {
    local_id: NodeId,
    local_ip: Option<IpAddr>,
    /// Mutual TLS towards peers: the cluster CA and this node's identity.
    /// `None`: plaintext.
    tls: Option<ClientTlsConfig>,
    /// One entry per peer this node has talked to: at most the members and
    /// learners it has seen, since the key is the node id.
    channels: Mutex<HashMap<NodeId, Cached>>,
    /// Carries every message instead of the channels, when set.
    transport: Option<Arc<dyn Transport>>,
    /// Set when a guarded member asks this node, as leader, for entries.
    entries_wanted: EntriesWanted,
}

/// openraft's network factory, and the forwarding client, of one node.
/// Cheap to clone: clones share the channels.
///
/// It keeps ONE tonic channel per peer (HTTP/2 multiplexes concurrent calls
/// on it), keyed by node id and address: a peer whose address changed gets a
/// new channel, and openraft's per-target [`PeerClient`]s and
/// [`forward`](Self::forward) share the same ones.
///
/// Every channel's TCP connections are bound to this node's own IP. On
/// loopback the kernel would otherwise give every connection the source
/// 127.0.0.1, whatever 127.0.0.x the node listens on, and a partition test
/// that drops packets between two 127.0.0.x addresses would cut nothing.
#[derive(Clone, Debug)]
pub struct PeerNetworkFactory {
    inner: Arc<Inner>,
}

impl PeerNetworkFactory {
    /// The factory of node `local_id`, whose outgoing connections use
    /// `local_ip` as their source address: the IP its peer server listens on.
    /// Pass `None` only when the node listens on an unspecified address
    /// (`0.0.0.0`), where the kernel's choice is the right one.
    pub fn new(local_id: NodeId, local_ip: Option<IpAddr>) -> PeerNetworkFactory {
        let local_ip = local_ip.filter(|ip| !ip.is_unspecified());
        PeerNetworkFactory {
            inner: Arc::new(Inner {
                local_id,
                local_ip,
                tls: None,
                channels: Mutex::default(),
                transport: None,
                entries_wanted: EntriesWanted::default(),
            }),
        }
    }

    /// The factory of node `local_id` whose every message, Raft RPCs and
    /// forwarded requests alike, goes through `transport` (a simulated
    /// network) instead of gRPC.
    pub fn with_transport(local_id: NodeId, transport: Arc<dyn Transport>) -> PeerNetworkFactory {
        PeerNetworkFactory {
            inner: Arc::new(Inner {
                local_id,
                local_ip: None,
                tls: None,
                channels: Mutex::default(),
                transport: Some(transport),
                entries_wanted: EntriesWanted::default(),
            }),
        }
    }

    /// The same factory speaking mutual TLS to every peer: `tls` holds the
    /// cluster CA that a peer's certificate must chain to, and the identity
    /// this node shows. Call before the first channel is made.
    pub fn with_tls(self, tls: ClientTlsConfig) -> PeerNetworkFactory {
        PeerNetworkFactory {
            inner: Arc::new(Inner {
                local_id: self.inner.local_id,
                local_ip: self.inner.local_ip,
                tls: Some(tls),
                channels: Mutex::default(),
                transport: self.inner.transport.clone(),
                entries_wanted: self.inner.entries_wanted.clone(),
            }),
        }
    }

    /// The flag a guarded member's request for entries sets (see
    /// `lockstep_raft::guard`); the node's ticker takes it.
    pub fn entries_wanted(&self) -> EntriesWanted {
        self.inner.entries_wanted.clone()
    }

    /// Sends a forwarded client request to `target` at `addr` (its peer
    /// address) and returns its answer. Waits at most `timeout`, then fails
    /// with `DEADLINE_EXCEEDED`; the remote's error status is relayed as is.
    /// `traceparent`, the caller's W3C trace context, goes in the metadata
    /// so the leader's spans of the request continue the caller's trace;
    /// this crate only carries the text.
    pub async fn forward(
        &self,
        target: NodeId,
        addr: &str,
        bytes: Vec<u8>,
        timeout: Duration,
        traceparent: Option<String>,
    ) -> Result<Vec<u8>, Status> {
        if let Some(transport) = &self.inner.transport {
            return transport
                .call(target, Method::Forward, bytes, timeout, traceparent)
                .await;
        }
        let channel = self.channel(target, addr)?;
        let metadata = traceparent
            .and_then(|t| tonic::metadata::AsciiMetadataValue::try_from(t).ok())
            .map(|v| (TRACEPARENT_KEY, v));
        call(channel, Method::Forward, bytes, timeout, metadata).await
    }

    /// The channel to `target` at `addr`: the cached one, or a new lazily
    /// connected one that replaces a channel made for another address.
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, Status> {
        // The map is never left half-updated (each change is one insert), so
        // a panic elsewhere while holding the lock leaves it usable.
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = channels.get(&target) {
            if cached.addr == addr {
                return Ok(cached.channel.clone());
            }
            tracing::info!(target, old = %cached.addr, new = addr, "peer address changed");
        }
        let channel = self.endpoint(addr)?.connect_lazy();
        channels.insert(
            target,
            Cached {
                addr: addr.to_string(),
                channel: channel.clone(),
            },
        );
        Ok(channel)
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint, Status> {
        let bare = addr
            .strip_prefix("http://")
            .or_else(|| addr.strip_prefix("https://"))
            .unwrap_or(addr);
        let scheme = if self.inner.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{bare}"))
            .map_err(|e| Status::invalid_argument(format!("peer address `{addr}`: {e}")))?;
        if let Some(tls) = &self.inner.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| Status::invalid_argument(format!("peer `{addr}`: TLS: {e}")))?;
        }
        let endpoint = endpoint
            .local_address(self.inner.local_ip)
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
            .keep_alive_timeout(Duration::from_millis(KEEPALIVE_TIMEOUT_MS))
            .keep_alive_while_idle(true)
            // Raft messages are small and latency-bound; Nagle would hold
            // a heartbeat back behind the previous one's ACK.
            .tcp_nodelay(true);
        Ok(endpoint)
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        // A bad address cannot be reported here; every RPC reports it instead,
        // as `Unreachable`, so openraft backs off rather than spins.
        let channel = match &self.inner.transport {
            Some(transport) => Ok(Route::Transport(transport.clone())),
            None => self
                .channel(target, &node.peer_addr)
                .map(Route::Channel)
                .map_err(|status| status.message().to_string()),
        };
        PeerClient {
            local_id: self.inner.local_id,
            target,
            node: node.clone(),
            channel,
            entries_wanted: self.inner.entries_wanted.clone(),
        }
    }
}

/// openraft's network to one target node.
pub struct PeerClient {
    local_id: NodeId,
    target: NodeId,
    node: NodeInfo,
    /// The factory's shared channel (or its transport), or why no channel
    /// could be made.
    channel: Result<Route, String>,
    entries_wanted: EntriesWanted,
}

/// How a [`PeerClient`] reaches its target.
#[derive(Clone, Debug)]
enum Route {
    Channel(Channel),
    Transport(Arc<dyn Transport>),
}

impl fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerClient")
            .field("local_id", &self.local_id)
            .field("target", &self.target)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// The error type of a Raft RPC whose remote API error is `E`.
type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>;

impl PeerClient {
    /// Sends one Raft RPC and decodes the remote `Raft`'s `Result`.
    async fn raft_call<Req, Resp, E>(
        &self,
        action: RPCTypes,
        method: Method,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        self.raft_call_split(action, method, request, timeout, 1)
            .await
    }

    /// [`Self::raft_call`] for a request of `entries` log entries: when it
    /// encodes to more than [`APPEND_ENTRIES_BYTES_BUDGET`] and holds more
    /// than one entry, nothing is sent and openraft is asked for fewer.
    ///
    /// Why: openraft 0.9 gives every AppendEntries the heartbeat interval
    /// (150 ms by default) to finish, sending and the follower's fsync
    /// included, and retries a timed-out one unchanged. A catching-up
    /// follower was sent megabytes at a time, every try timed out, and with
    /// both followers behind the cluster stopped committing (found by
    /// `lockstep bench` loading 1M jobs of 1 KiB).
    async fn raft_call_split<Req, Resp, E>(
        &self,
        action: RPCTypes,
        method: Method,
        request: &Req,
        timeout: Duration,
        entries: u64,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let channel = match &self.channel {
            Ok(channel) => channel.clone(),
            Err(why) => {
                return Err(RPCError::Unreachable(Unreachable::new(
                    &Status::unavailable(why.clone()),
                )))
            }
        };
        let data = codec::encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if entries > 1 && data.len() > APPEND_ENTRIES_BYTES_BUDGET {
            let fit = (entries as u128 * APPEND_ENTRIES_BYTES_BUDGET as u128 / data.len() as u128)
                .max(1) as u64;
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit),
            ));
        }
        let sent = match channel {
            Route::Channel(channel) => call(channel, method, data, timeout, None).await,
            Route::Transport(transport) => {
                transport
                    .call(self.target, method, data, timeout, None)
                    .await
            }
        };
        let bytes = sent.map_err(|status| {
            if status.metadata().get(ENTRIES_WANTED_KEY).is_some() {
                self.entries_wanted.set();
            }
            self.transport_error(action, timeout, status)
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }

    /// Maps a gRPC failure to what openraft should do about it: back off
    /// (`Unreachable`: the peer is down or refuses connections), or retry at
    /// once (`Timeout`, `NetworkError`).
    fn transport_error<E: Error>(
        &self,
        action: RPCTypes,
        timeout: Duration,
        status: Status,
    ) -> RpcError<E> {
        match status.code() {
            Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            Code::DeadlineExceeded => RPCError::Timeout(Timeout {
                action,
                id: self.local_id,
                target: self.target,
                timeout,
            }),
            _ => RPCError::Network(NetworkError::new(&status)),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        let entries = rpc.entries.len() as u64;
        let result = self
            .raft_call_split(
                RPCTypes::AppendEntries,
                Method::AppendEntries,
                &rpc,
                option.hard_ttl(),
                entries,
            )
            .await;
        match result {
            // Too large for one message: openraft resends fewer entries (or,
            // for a single entry, treats the target as unreachable).
            Err(RPCError::Network(_)) | Err(RPCError::Unreachable(_))
                if encoded_too_large(&rpc) =>
            {
                Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint((entries / 2).max(1)),
                ))
            }
            other => other,
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        // openraft gives each chunk its own `RPCOption`, whose hard TTL is
        // the config's `install_snapshot_timeout`, not the heartbeat-sized
        // TTL of AppendEntries: a chunk of megabytes gets the time it needs.
        self.raft_call(
            RPCTypes::InstallSnapshot,
            Method::InstallSnapshot,
            &rpc,
            option.hard_ttl(),
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.raft_call(RPCTypes::Vote, Method::Vote, &rpc, option.hard_ttl())
            .await
    }
}

/// Largest AppendEntries sent with more than one entry: small enough that
/// sending it and the follower's fsync fit in openraft's heartbeat-long
/// timeout on a loaded machine. A single larger entry is still sent alone.
pub const APPEND_ENTRIES_BYTES_BUDGET: usize = 1 << 20;

/// Whether `rpc`'s encoding exceeds [`PEER_MESSAGE_BYTES_MAX`]. Only called
/// after a send failed, so the common path encodes once.
fn encoded_too_large<T: Serialize>(rpc: &T) -> bool {
    codec::encode(rpc).is_ok_and(|bytes| bytes.len() > PEER_MESSAGE_BYTES_MAX)
}

/// One unary call on `channel`, bounded by `timeout` on both ends: the
/// deadline travels as `grpc-timeout` so the peer stops working on a call
/// nobody waits for, and the local timer bounds the wait whatever the peer
/// does.
async fn call(
    channel: Channel,
    method: Method,
    data: Vec<u8>,
    timeout: Duration,
    metadata: Option<(&'static str, tonic::metadata::AsciiMetadataValue)>,
) -> Result<Vec<u8>, Status> {
    if data.len() > PEER_MESSAGE_BYTES_MAX {
        return Err(Status::resource_exhausted(format!(
            "{method:?}: message of {} bytes exceeds PEER_MESSAGE_BYTES_MAX ({PEER_MESSAGE_BYTES_MAX})",
            data.len()
        )));
    }
    let mut client = GrpcPeerClient::new(channel)
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
    let mut request = Request::new(PeerMessage { data });
    request.set_timeout(timeout);
    if let Some((key, value)) = metadata {
        request.metadata_mut().insert(key, value);
    }
    let response = async {
        match method {
            Method::AppendEntries => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::InstallSnapshot => client.install_snapshot(request).await,
            Method::Forward => client.forward(request).await,
        }
    };
    match tokio::time::timeout(timeout, response).await {
        Ok(response) => Ok(response?.into_inner().data),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "{method:?}: no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::error::SnapshotMismatch;
    use openraft::{SnapshotSegmentId, Vote};

    /// The errors a remote Raft answers with must survive the codec, or the
    /// sender would see a network fault where openraft expects, say, a
    /// snapshot mismatch (which restarts the transfer).
    #[test]
    fn remote_raft_errors_round_trip_through_the_codec() {
        let mismatch: Result<
            InstallSnapshotResponse<NodeId>,
            RaftError<NodeId, InstallSnapshotError>,
        > = Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
            SnapshotMismatch {
                expect: SnapshotSegmentId {
                    id: "a".into(),
                    offset: 0,
                },
                got: SnapshotSegmentId {
                    id: "b".into(),
                    offset: 7,
                },
            },
        )));
        let bytes = codec::encode(&mismatch).expect("encode");
        let back: Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> =
            codec::decode(&bytes).expect("decode");
        assert_eq!(back, mismatch);

        let stopped: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            Err(RaftError::Fatal(openraft::error::Fatal::Stopped));
        let back: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            codec::decode(&codec::encode(&stopped).expect("encode")).expect("decode");
        assert_eq!(back, stopped);

        let ok: Result<VoteResponse<NodeId>, RaftError<NodeId>> = Ok(VoteResponse {
            vote: Vote::new(3, 2),
            vote_granted: true,
            last_log_id: None,
        });
        let back: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            codec::decode(&codec::encode(&ok).expect("encode")).expect("decode");
        assert_eq!(back, ok);
    }

    #[tokio::test]
    async fn a_changed_address_replaces_the_channel_and_a_bad_one_is_an_error() {
        let factory = PeerNetworkFactory::new(1, Some("127.0.0.1".parse().expect("ip")));
        factory.channel(2, "127.0.0.2:1").expect("channel");
        factory.channel(2, "127.0.0.2:1").expect("same channel");
        factory.channel(2, "127.0.0.2:2").expect("new channel");
        let channels = factory.inner.channels.lock().expect("lock");
        assert_eq!(channels.len(), 1);
        assert_eq!(channels[&2].addr, "127.0.0.2:2");
        drop(channels);
        let err = factory
            .channel(3, "not an address")
            .expect_err("bad address");
        assert_eq!(err.code(), Code::InvalidArgument);
    }
}
