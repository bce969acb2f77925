//! Lockstep's peer network: openraft 0.9's RPCs and forwarded client
//! requests, node to node, over tonic gRPC (`proto/lockstep/peer/v1/peer.proto`).
//!
//! Every message is one `PeerMessage { bytes data }`. Its bytes are openraft's
//! own request and response types encoded by [`lockstep_core::codec`] (a
//! format-version byte, then bincode), so the Raft types need no protobuf
//! mirror and one module owns the encoding. A Raft RPC answers with the
//! encoded `Result<Response, RaftError>` of the remote `Raft`, so a remote
//! Raft error reaches the sender's openraft as [`RPCError::RemoteError`],
//! while a gRPC status always means the transport or the peer service failed.
//!
//! - Client side: [`PeerNetworkFactory`] (openraft's `RaftNetworkFactory`)
//!   keeps one lazily connected tonic channel per peer, bound to this node's
//!   own IP; [`PeerClient`] is openraft's `RaftNetwork` for one target.
//! - Server side: [`peer_service`] builds the gRPC service that hands the Raft
//!   RPCs to the local `Raft` and forwarded requests to a [`ForwardHandler`].
//! - Forwarding: [`Forwarding`] runs a client request on the leader, locally
//!   or over the peer channel, with its deadline and retry policy.
//! - [`VoteGuard`]: a node that lost its log does not vote until it has the
//!   committed log again.
//!
//! Architecture invariant: this crate names Raft types through
//! `lockstep-types` and never reaches RocksDB (`scripts/check-boundaries`).
//!
//! [`RPCError::RemoteError`]: openraft::error::RPCError::RemoteError

#![forbid(unsafe_code)]

mod client;
mod forward;
mod guard;
mod service;

pub use client::{Method, PeerClient, PeerNetworkFactory, Transport, CONNECT_TIMEOUT_MS};
pub use forward::{
    wire_status, Forwarder, Forwarding, LEADER_HEADER, RETRY_BACKOFF_MS_MAX, RETRY_BACKOFF_MS_MIN,
};
pub use guard::{EntriesWanted, VoteGuard, ENTRIES_WANTED_KEY};
pub use service::{peer_service, ForwardHandler, PeerService};

/// The generated gRPC code of `lockstep.peer.v1`.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("lockstep.peer.v1");
}

/// The largest peer message either end sends or accepts, in bytes: 64 MiB.
///
/// It bounds an AppendEntries request (openraft halves the batch of entries
/// when one would exceed it), a snapshot chunk (openraft's
/// `snapshot_max_chunk_size`, 3 MiB by default, must stay well below it) and
/// a forwarded request. Both the tonic encoder and decoder enforce it, so a
/// peer can never make this node buffer more than this for one message.
pub const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The metadata key of a forwarded request's W3C trace context (the same
/// key clients send on the client port).
pub const TRACEPARENT_KEY: &str = "traceparent";

// Every peer message body is decoded by the codec, whose own limit must not
// be the smaller one, or a message the transport accepted would fail to
// decode with a misleading error.
const _: () = assert!(PEER_MESSAGE_BYTES_MAX <= lockstep_core::codec::RECORD_BYTES_MAX);
