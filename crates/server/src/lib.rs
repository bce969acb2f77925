//! The Lockstep node: configuration, the public gRPC API (`lockstep.v1`),
//! and the wiring of the core, the RocksDB store and Raft.
//!
//! Architecture invariant: this is the only crate that wires the others
//! together; `lockstep-core` and `lockstep-store` know nothing of gRPC.

pub mod auth;
pub mod batcher;
pub mod bench;
pub mod bench_plot;
pub mod chaos_plot;
pub mod cli;
pub mod commands;
pub mod config;
pub mod convert;
pub mod devcerts;
pub mod embedded;
pub mod hint;
pub mod metrics;
pub mod node;
pub mod run;
pub mod service;
pub mod tls;

/// The generated `lockstep.v1` messages, clients and servers.
pub use lockstep_proto as pb;
