//! Prometheus metrics over HTTP (`GET /metrics`, OpenMetrics text) and the
//! per-request span of the public gRPC services.
//!
//! - [`registry`]: events this node observes as they happen, which the node
//!   owns ([`Metrics`]).
//! - [`scrape`]: state read at scrape time from Raft and the applied state.
//! - [`layer`]: the per-call span and latency of the client API.
//! - [`http`]: the server that answers `GET /metrics`.
//!
//! Every family is named `lockstep_*` and has HELP text; README.md lists
//! them.

pub mod http;
pub mod layer;
pub mod registry;
pub mod scrape;
#[cfg(test)]
mod tests;
