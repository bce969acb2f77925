//! The public API of Lockstep, `lockstep.v1`, generated from `proto/`.
//!
//! Its own crate so that a client links the messages without the node's
//! storage and Raft dependencies.

#![allow(
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations,
    unused_qualifications
)]

tonic::include_proto!("lockstep.v1");

/// The encoded descriptors of `proto/`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/lockstep_v1.bin"));
