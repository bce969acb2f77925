//! The types every Lockstep node crate shares, and nothing that needs RocksDB
//! or a network: openraft's type configuration ([`TypeConfig`], [`Batch`],
//! [`NodeInfo`]), the snapshot file openraft streams, and the wire types of a
//! client request that a follower forwards to the leader.
//!
//! Architecture invariant: this crate depends on the pure core, openraft,
//! serde and tokio's file type only. The store (RocksDB), the peer transport
//! (tonic) and the node all build on it, so none of them needs another to
//! name a Raft type (`scripts/check-boundaries` enforces it).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod forward;
mod snapshot_file;
mod type_config;

pub use snapshot_file::SnapshotFile;
pub use type_config::{
    Batch, BatchReply, Entry, LogId, NodeId, NodeInfo, Snapshot, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig, Vote,
};
