//! The openraft type configuration of Lockstep.
//!
//! One Raft entry carries a [`Batch`] of client commands: the server gathers
//! concurrent requests into one entry so that one fsync on every node covers
//! many jobs (SPEC 7). The leader stamps the batch with the cluster time, and
//! the entry's log index is the [`lockstep_core::Stamp::index`] of every
//! command in it, so a lease's fence is the index of the entry that granted it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::snapshot_file::SnapshotFile;

/// The numeric id of a Raft member.
pub type NodeId = u64;

/// What the cluster knows about a member: where its peers and its clients
/// reach it. Stored in membership entries, so it is replicated and durable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Address of the peer (Raft) gRPC service, `host:port`.
    pub peer_addr: String,
    /// Address of the public client gRPC service, `host:port`.
    pub client_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer={} client={}", self.peer_addr, self.client_addr)
    }
}

/// The application data of one Raft entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Cluster time stamped by the leader when it proposed the entry. The
    /// core never lets time run backwards, whatever a new leader stamps.
    pub time_ms: u64,
    /// Applied in order, each with the same stamp, each answered on its own.
    pub commands: Vec<lockstep_core::Command>,
}

/// The answer to one entry: one result per command of its [`Batch`], in
/// order. Blank and membership entries get an empty reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReply(pub Vec<Result<lockstep_core::Reply, lockstep_core::Error>>);

openraft::declare_raft_types!(
    /// Lockstep's openraft type configuration.
    pub TypeConfig:
        D = Batch,
        R = BatchReply,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft log entry of Lockstep.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id (leader term and node, index).
pub type LogId = openraft::LogId<NodeId>;
/// A vote (term, candidate, committed flag).
pub type Vote = openraft::Vote<NodeId>;
/// The membership as of a log id.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
/// What describes a snapshot: its last log id, membership and id.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
/// A snapshot: its meta and a handle to its file.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// The error type every storage trait method returns.
pub type StorageError = openraft::StorageError<NodeId>;
