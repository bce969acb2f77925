//! Gathers concurrent client commands into one Raft entry.
//!
//! openraft 0.9 fsyncs once per entry and serially, so throughput comes from
//! putting many commands in each entry: the first command of a batch waits
//! up to `linger_us` for company, up to `commands_max` commands or
//! `bytes_max` bytes. Up to `in_flight_max` entries are proposed at once, so
//! the next batch fills while the previous one commits. Every caller gets
//! the answer to its own command.
//!
//! The batcher stamps each entry with cluster time from the node's
//! [`ClusterClock`]: the leader's monotonic elapsed time from the cluster
//! time it found applied, never its wall clock (see `crate::clock`); the
//! core takes the maximum across leaders.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_core::{Command, Error, Reply};
use lockstep_types::{Batch, NodeId, NodeInfo, TypeConfig};
use openraft::Raft;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::clock::ClusterClock;
use crate::config::BatchConfig;
use crate::metrics::registry::Metrics;

/// Why a write did not produce an answer from the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteFailure {
    /// This node was not the leader when the batch was to be proposed, so
    /// nothing was proposed; the leader it knows, if any.
    NotLeader { leader: Option<(NodeId, NodeInfo)> },
    /// Nothing was proposed: the node is shutting down.
    Refused(String),
    /// Proposed, and no answer: the leader stepped down or failed after
    /// taking the entry, which a new leader may still commit. openraft
    /// answers `ForwardToLeader` both before and after appending, so that
    /// answer, once proposed, is this one too.
    Unknown(String),
}

pub type WriteResult = Result<Result<Reply, Error>, WriteFailure>;

#[derive(Debug)]
struct Pending {
    command: Command,
    reply: oneshot::Sender<WriteResult>,
    /// The caller's span, parent of this command's `commit` span.
    caller: tracing::Span,
    /// Open from submission until the batch is sealed: the wait for
    /// company and for a proposal slot.
    batch: tracing::Span,
}

/// A handle to submit commands; cheap to clone.
#[derive(Clone, Debug)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

/// Bytes a command adds to an entry, roughly: what the bound is about is
/// payloads, the rest is small.
fn weight(command: &Command) -> u64 {
    const COMMAND_BYTES_BASE: u64 = 64;
    match command {
        Command::Enqueue { jobs, .. } => jobs
            .iter()
            .map(|j| COMMAND_BYTES_BASE + j.payload.len() as u64 + j.id.len() as u64)
            .sum(),
        Command::Sequenced { command, .. } => weight(command),
        _ => COMMAND_BYTES_BASE,
    }
}

impl Batcher {
    /// Starts the batching task. `queue_max` bounds the commands waiting to
    /// be batched; a full queue makes callers wait (backpressure). Entries
    /// are stamped with `clock`.
    pub fn start(
        raft: Raft<TypeConfig>,
        config: BatchConfig,
        queue_max: usize,
        clock: Arc<ClusterClock>,
        metrics: Arc<Metrics>,
    ) -> Batcher {
        let (tx, rx) = mpsc::channel(queue_max.max(1));
        tokio::spawn(run(raft, config, rx, clock, metrics));
        Batcher { tx }
    }

    /// Proposes `command` in the next entry and waits for its answer.
    pub async fn submit(&self, command: Command) -> WriteResult {
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            command,
            reply,
            caller: tracing::Span::current(),
            batch: tracing::info_span!("batch"),
        };
        if self.tx.send(pending).await.is_err() {
            return Err(WriteFailure::Refused("the node is shutting down".into()));
        }
        rx.await.unwrap_or_else(|_| {
            Err(WriteFailure::Unknown(
                "the write was dropped by the batcher".into(),
            ))
        })
    }
}

async fn run(
    raft: Raft<TypeConfig>,
    config: BatchConfig,
    mut rx: mpsc::Receiver<Pending>,
    clock: Arc<ClusterClock>,
    metrics: Arc<Metrics>,
) {
    let in_flight = Arc::new(Semaphore::new(config.in_flight_max as usize));
    let linger = Duration::from_micros(config.linger_us);
    // Ends when every Batcher handle is dropped.
    while let Some(first) = rx.recv().await {
        let mut bytes = weight(&first.command);
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + linger;
        while (batch.len() as u64) < config.commands_max && bytes < config.bytes_max {
            // Take what is already queued without waiting, then linger.
            let next = match rx.try_recv() {
                Ok(p) => Some(p),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // A timeout means the linger is over.
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
            };
            let Some(p) = next else { break };
            bytes += weight(&p.command);
            batch.push(p);
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // A caller that gave up (its write deadline passed while the batch
        // waited) is not proposed for: nobody would learn its outcome.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        // Proposing while another node leads is refused by openraft with
        // the same error as an entry lost after it was appended; checked
        // here, the refusal is certain and the caller may retry anywhere.
        let leading = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.current_leader != Some(m.id)).then(|| {
                m.current_leader.and_then(|id| {
                    m.membership_config
                        .membership()
                        .get_node(&id)
                        .map(|n| (id, n.clone()))
                })
            })
        };
        if let Some(leader) = leading {
            for p in batch {
                let _ = p.reply.send(Err(WriteFailure::NotLeader {
                    leader: leader.clone(),
                }));
            }
            continue;
        }
        // Stamped once it may be proposed, so the stamp is as late as the
        // proposal: the ticker's reading that asked for a Tick is below it.
        let time_ms = clock.now_ms();
        let raft = raft.clone();
        let metrics = metrics.clone();
        let commands_in_entry = batch.len();
        tokio::spawn(async move {
            let mut commands = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            // Each caller's `batch` span closes here, and its `commit`
            // span covers the proposal until the answer: replication, the
            // fsync on a majority and the apply (openraft 0.9 answers a
            // write once it is applied on the leader).
            let mut spans = Vec::with_capacity(batch.len());
            for p in batch {
                drop(p.batch);
                commands.push(p.command);
                replies.push(p.reply);
                spans.push(tracing::info_span!(
                    parent: &p.caller,
                    "commit",
                    commands = commands_in_entry
                ));
            }
            let started = Instant::now();
            let result = raft.client_write(Batch { time_ms, commands }).await;
            drop(permit);
            metrics.observe_batch(replies.len(), result.is_ok().then(|| started.elapsed()));
            match result {
                Ok(response) => {
                    let answers = response.data.0;
                    debug_assert_eq!(answers.len(), replies.len());
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Err(err) => {
                    let failure = WriteFailure::Unknown(err.to_string());
                    for reply in replies {
                        let _ = reply.send(Err(failure.clone()));
                    }
                }
            }
            drop(spans);
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use lockstep_core::{NewJob, Sequence};

    #[test]
    fn a_sequenced_enqueue_weighs_its_payloads() {
        let enqueue = Command::Enqueue {
            queue: "q".into(),
            jobs: vec![NewJob {
                id: "a".into(),
                group: None,
                payload: vec![0; 10_000],
                headers: Vec::new(),
                priority: 0,
                delay_ms: 0,
                fairness_key: None,
            }],
        };
        let sequenced = Command::Sequenced {
            sequence: Sequence {
                session: 1,
                seq: 1,
                floor: 1,
                try_number: lockstep_core::TryNumber::default(),
            },
            command: Box::new(enqueue.clone()),
        };
        assert!(weight(&enqueue) > 10_000);
        assert_eq!(weight(&sequenced), weight(&enqueue));
    }
}
