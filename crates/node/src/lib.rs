//! The Lockstep node library: one node of a Lockstep cluster, as a
//! `lockstep node` process runs it and as an application embeds it.
//!
//! - [`config`]: the node's settings (TOML, `LOCKSTEP_*`, flags).
//! - [`run`]: start and stop a node: stores, Raft, the peer and client
//!   servers, the ticker; [`embedded`] runs the same node in-process.
//! - Inside (not public): `node`, the rule that any node accepts any call
//!   (forwarding to the leader), and the batcher that gathers writes into
//!   Raft entries; `clock`, the leader's cluster clock (monotonic, the
//!   wall clock only a bounded hint) that the batcher stamps with and the
//!   ticker reads, behind a `Clock` trait a simulator can implement;
//!   `service`, the public gRPC services `lockstep.v1.Queue`, `Admin` and
//!   `Cluster`; `metrics`, which counts them.
//! - [`parts`]: the same node made of parts a simulator supplies (stores,
//!   peer transport, clock), without its servers.
//! - [`auth`] and [`tls`] guard the services; their helpers are public for
//!   the `lockstep token` and `lockstep dev-certs` commands.
//!
//! Architecture invariant: this is the only crate that wires the core, the
//! store and Raft together, and it links no command-line crate (clap,
//! indicatif, hdrhistogram, rcgen) and no chaos harness, so an embedding
//! application pulls in none of them (`scripts/check-boundaries`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
mod batcher;
mod bootstrap;
mod clock;
mod compact;
pub mod config;
mod convert;
mod disk;
mod elector;
pub mod embedded;
mod error;
mod every;
mod guard;
mod hint;
mod metrics;
mod node;
pub mod parts;
pub mod run;
mod service;
mod start;
pub mod telemetry;
mod ticker;
pub mod tls;
mod ui;

/// Whether the planted bug `name` is on (`lockstep_core::planted`; tests
/// only): always false in a build without the `planted-bugs` feature, so
/// every check compiles away.
#[inline]
pub(crate) fn planted(name: &str) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        lockstep_core::planted::Bug::parse(name).is_some_and(lockstep_core::planted::active)
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = name;
        false
    }
}

/// The generated `lockstep.v1` messages, clients and servers.
pub use lockstep_proto as pb;
