//! The typed Rust client of Lockstep, a Raft-replicated job queue.
//!
//! - [`Client`] covers every call of the `lockstep.v1` Queue, Admin and
//!   Cluster services. Give it any nodes' client addresses: it talks to
//!   whichever answers (followers forward to the leader), learns the leader
//!   to save that hop, and retries what another try can cure with bounded,
//!   jittered exponential backoff ([`RetryPolicy`]).
//! - Enqueue never duplicates on retry: the client gives every job without
//!   an id a random 128-bit one *before* the first try, and each retry
//!   carries the same ids, which the cluster's dedup index recognises
//!   ([`Client::enqueue`], [`fill_missing_ids`]).
//! - [`EnqueueBatcher`] and [`AckBatcher`] gather items from many tasks into
//!   one call per batch, each caller getting its own result.
//! - [`Worker`] runs a handler over a queue with bounded concurrency, keeps
//!   leases alive while handlers run, drops (never acks) a job whose lease
//!   was lost, and shuts down gracefully, releasing what it could not
//!   finish.
//! - [`trace`] carries the producer's W3C trace context to the worker, in
//!   each job's `traceparent` header and each call's gRPC metadata.
//! - Every error is an [`Error`] that keeps the gRPC code and message
//!   ([`Error::is_lease_lost`], [`Error::is_retryable`]).
//!
//! Architecture invariant: this crate links the generated API
//! (`lockstep-proto`) and nothing of the node: no `lockstep-node`,
//! `lockstep-store` or RocksDB.
//!
//! ```no_run
//! use lockstep_client::{pb, Client, ClientConfig, EnqueueOutcome};
//!
//! # async fn example() -> Result<(), lockstep_client::Error> {
//! let client = Client::connect(ClientConfig::new(["127.0.0.1:7100", "127.0.0.2:7100"]))?;
//! client.create_queue("emails", pb::QueueConfig::default()).await?;
//! let results = client
//!     .enqueue(
//!         "emails",
//!         vec![pb::Job {
//!             group: "customer-42".into(),
//!             payload: b"welcome".to_vec(),
//!             ..Default::default() // no id: the client makes one, once
//!         }],
//!     )
//!     .await?;
//! assert!(matches!(results[0].outcome, EnqueueOutcome::Created | EnqueueOutcome::Duplicate { .. }));
//!
//! let lease = std::time::Duration::from_secs(30);
//! let wait = std::time::Duration::from_secs(5);
//! for job in client.fetch("emails", "me", 10, lease, wait).await? {
//!     // ... do the work, then:
//!     client.ack_one("emails", job.offset, job.fence).await?;
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod batch;
mod breaker;
mod client;
mod config;
mod consume;
mod error;
mod ids;
mod session;
pub mod trace;
mod worker;

/// The generated `lockstep.v1` messages, for requests and answers that the
/// client passes through unchanged.
pub use lockstep_proto as pb;
/// The token a [`Worker`] handler receives and `Worker::run` stops on.
pub use tokio_util::sync::CancellationToken;
/// The gRPC status codes that [`Error::code`] returns.
pub use tonic::Code;

pub use batch::{
    AckBatcher, BatchConfig, EnqueueBatcher, BATCH_BUFFER_MAX_DEFAULT, BATCH_IN_FLIGHT_MAX_DEFAULT,
    BATCH_ITEMS_LIMIT, BATCH_ITEMS_MAX_DEFAULT, BATCH_LINGER_DEFAULT,
};
pub use breaker::{
    BreakerConfig, BreakerState, BREAKER_COOL_DOWN_DEFAULT, BREAKER_FAILURES_LIMIT,
    BREAKER_FAILURES_MAX_DEFAULT, BREAKER_WINDOW_DEFAULT,
};
pub use client::{ChainedAck, Client, Consistency, EnqueueOutcome, Enqueued};
pub use config::{
    ClientConfig, ClientTls, RetryPolicy, Token, ATTEMPTS_MAX_DEFAULT, BACKOFF_MAX_DEFAULT,
    BACKOFF_MIN_DEFAULT, CALL_TIMEOUT_DEFAULT, CONNECT_TIMEOUT_DEFAULT, ENDPOINTS_MAX,
    MEMBERSHIP_CALL_TIMEOUT_DEFAULT, MESSAGE_BYTES_MAX_DEFAULT, RETRY_ELAPSED_MAX_DEFAULT,
    SILENCE_TIMEOUT_DEFAULT, TOKEN_BYTES_MAX,
};
pub use consume::{Consumer, CONSUME_CLOSE_WAIT, CONSUME_SEND_BUFFER};
pub use error::{Error, LEADER_METADATA_KEY};
pub use ids::{fill_missing_ids, new_job_id};
pub use worker::{
    ConsumeMode, Job, Outcome, Worker, WorkerConfig, WorkerReport, ACK_ITEMS_MAX_DEFAULT,
    ACK_LINGER_DEFAULT, CONCURRENCY_DEFAULT, CONCURRENCY_MAX, EMPTY_FETCH_FAST,
    EXTEND_DIVISOR_DEFAULT, EXTEND_INTERVAL_MIN, FETCH_BACKOFF_MAX_DEFAULT,
    FETCH_BACKOFF_MIN_DEFAULT, LEASE_DEFAULT, RELEASE_TIMEOUT_DEFAULT, SHUTDOWN_GRACE_DEFAULT,
    WAIT_DEFAULT,
};
