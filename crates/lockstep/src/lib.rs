//! # Lockstep
//!
//! Lockstep is a job queue that needs no broker. Three or more of your
//! application's own processes each embed a node; the nodes replicate one
//! queue state machine through Raft (openraft) and store it in RocksDB,
//! fsynced before any write is acknowledged.
//!
//! - Jobs with the same **group key** run strictly one at a time, in order;
//!   different groups run in parallel on any worker.
//! - **Leases carry fences**, so group ownership survives a leader failover
//!   and a late worker can never ack a job it lost.
//! - **Idempotent ids**: retrying an enqueue with the same id never creates
//!   a second job.
//!
//! This crate is all an application needs: the embedding builder
//! ([`Embedded`]), the client ([`Client`]) and the worker ([`Worker`]).
//!
//! ## Embed a node
//!
//! Each of three processes starts its node with the same first members.
//! [`EmbeddedBuilder::bootstrap`] forms the cluster the first time; a node
//! that is already part of a cluster ignores it.
//!
//! ```no_run
//! use lockstep::{Embedded, Member};
//!
//! # async fn start(id: u64) -> Result<(), lockstep::EmbeddedError> {
//! let members: Vec<Member> = (1..=3)
//!     .map(|i| Member {
//!         id: i,
//!         peer_addr: format!("127.0.0.{i}:7201"),
//!         client_addr: String::new(),
//!     })
//!     .collect();
//! let node = Embedded::builder(id, format!("/var/lib/app/lockstep-{id}"), &format!("127.0.0.{id}:7201"))
//!     .bootstrap(members)
//!     .start()
//!     .await?;
//! let client = node.client().clone(); // calls to this node cross no socket
//! # let _ = client;
//! node.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! ## Produce
//!
//! ```no_run
//! use lockstep::{pb, Client};
//!
//! # async fn produce(client: &Client) -> Result<(), lockstep::Error> {
//! client.create_queue("emails", pb::QueueConfig::default()).await?;
//! client
//!     .enqueue(
//!         "emails",
//!         vec![pb::Job {
//!             id: Some("welcome-42".into()), // a retry with this id is stored once
//!             group: "customer-42".into(),
//!             payload: b"welcome".to_vec(),
//!             ..Default::default()
//!         }],
//!     )
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! ## Work
//!
//! A [`Worker`] fetches with bounded concurrency, keeps leases alive while a
//! handler runs, acks on success and drops a job whose lease was lost.
//!
//! ```no_run
//! use lockstep::{CancellationToken, Client, Outcome, Worker, WorkerConfig};
//!
//! # async fn work(client: Client) -> Result<(), lockstep::Error> {
//! let stop = CancellationToken::new();
//! let worker = Worker::new(client, WorkerConfig::new("emails"), |job, _cancel| async move {
//!     println!("{} #{}: {} bytes", job.group, job.offset, job.payload.len());
//!     Outcome::Ack
//! })?;
//! let report = worker.run(stop).await?;
//! # let _ = report;
//! # Ok(()) }
//! ```
//!
//! ## Where to go next
//!
//! - [`Client`] has every call of the `lockstep.v1` API ([`pb`]).
//! - [`EmbeddedBuilder`] lists every setting an embedded node takes.
//! - The repository's `README.md` shows the standalone `lockstep` binary,
//!   and `ARCHITECTURE.md` the code map and the invariants.
//!
//! Architecture invariant: this facade re-exports the node library and the
//! client; it never links the command line (`lockstep-cli`), so an
//! application pulls in no argument parser, progress bar, bench or chaos
//! harness (`scripts/check-boundaries` enforces it).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use lockstep_client::{
    pb, AckBatcher, BatchConfig, BreakerConfig, CancellationToken, Client, ClientConfig, ClientTls,
    Code, Consistency, EnqueueBatcher, EnqueueOutcome, Enqueued, Error, Job, Outcome, RetryPolicy,
    Token, Worker, WorkerConfig, WorkerReport,
};
pub use lockstep_node::embedded::{Embedded, EmbeddedBuilder, EmbeddedError, Member};
