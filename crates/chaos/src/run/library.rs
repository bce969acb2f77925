//! The part of the workload that goes through the Rust client library
//! (`lockstep_client::Client`) instead of raw gRPC: its node choice, its
//! retries and its session (every call at most once across retries) run
//! under the same faults. Each library call is one operation in the
//! history, from before its first try to after its last; a call whose
//! retries all failed is indeterminate.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lockstep_client::{Client, ClientConfig, EnqueueOutcome as LibOutcome, RetryPolicy};
use lockstep_proto as pb;
use rand::rngs::StdRng;
use rand::Rng;

use super::common::now_ms;
use super::workload::{batch, fetch_op, Recorder, LIB_QUEUE as QUEUE};
use crate::history::{AckItem, Call, EndKind, EnqueueOutcome, EnqueueResult, Op, Outcome};

/// Deadline of one try of a library call.
const LIBRARY_CALL_MS_MAX: u64 = 3_000;
/// Tries of one library call, and the time after which it starts no new
/// try: a call ends within about `LIBRARY_RETRY_MS_MAX` plus one try, well
/// inside the run's wait for its tasks at the end.
const LIBRARY_TRIES_MAX: u32 = 4;
const LIBRARY_RETRY_MS_MAX: u64 = 4_000;
/// The lease a library worker asks for: longer than a library call can
/// take with its retries (`LIBRARY_RETRY_MS_MAX` plus a try, plus the
/// 4 s a lost answer is held), so a retry of a fetch whose answer was lost
/// still finds the first try's leases held and gets them back from the
/// reply cache. A shorter lease would expire first, and the retry's answer
/// would rightly leave out the lease it lost: an attempt no one saw.
const LIBRARY_LEASE_MS: u64 = 15_000;
/// Jobs one library fetch asks for.
const LIBRARY_FETCH_MAX: u32 = 2;
/// The "node" a library call is recorded against: the client picks.
const ANY_NODE: u64 = 0;

/// A client over every node, from `from` (so partitions between nodes
/// never cut it), with short, bounded retries.
pub(super) fn library_client(
    addrs: &[std::net::SocketAddr],
    from: Ipv4Addr,
) -> Result<Client, String> {
    let mut config = ClientConfig::new(addrs.iter().map(|a| a.to_string()));
    config.local_address = Some(from.into());
    config.call_timeout = Duration::from_millis(LIBRARY_CALL_MS_MAX);
    config.connect_timeout = Duration::from_millis(500);
    config.retry = RetryPolicy {
        attempts_max: LIBRARY_TRIES_MAX,
        retry_elapsed_max: Duration::from_millis(LIBRARY_RETRY_MS_MAX),
        ..RetryPolicy::default()
    };
    Client::connect(config).map_err(|e| e.to_string())
}

/// A producer through the library: each batch is one `Client::enqueue`,
/// whose retries and session are the library's.
pub(super) async fn library_producer(
    p: usize,
    mut rng: StdRng,
    client: Client,
    groups: u64,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (jobs, sent) = batch(&mut rng, &format!("l{p}-{n}"), groups);
        n += 1;
        let op = |outcome, results| Op {
            invoke_ms: 0,
            complete_ms: 0,
            node: ANY_NODE,
            process: p as u64,
            outcome,
            call: Call::Enqueue {
                queue: QUEUE.into(),
                jobs: sent.clone(),
                results,
            },
        };
        let t0 = now_ms();
        let slot = recorder.begin(Op {
            invoke_ms: t0,
            complete_ms: t0,
            ..op(Outcome::Indeterminate, Vec::new())
        });
        let (outcome, results) = match client.enqueue(QUEUE, jobs).await {
            Ok(done) => (
                Outcome::Ok,
                done.into_iter()
                    .map(|e| EnqueueResult {
                        id: e.id,
                        offset: e.offset,
                        outcome: match e.outcome {
                            LibOutcome::Created => EnqueueOutcome::Created,
                            LibOutcome::Duplicate { .. } => EnqueueOutcome::Duplicate,
                            LibOutcome::IdConflict => EnqueueOutcome::IdConflict,
                        },
                    })
                    .collect(),
            ),
            Err(_) => (Outcome::Indeterminate, Vec::new()),
        };
        recorder.complete(
            slot,
            Op {
                invoke_ms: t0,
                complete_ms: now_ms(),
                ..op(outcome, results)
            },
        );
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..50))).await;
    }
}

/// A worker through the library: `Client::fetch`, then `Client::ack` or
/// `Client::nack` of each job, each a library call with its own retries
/// under the client's session, so a fetch retried after a lost answer must
/// get back the leases the first try granted, and a nack retried so must
/// not count a second attempt.
pub(super) async fn library_worker(
    w: usize,
    mut rng: StdRng,
    client: Client,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
) {
    let process = 2_000 + w as u64;
    let consumer = format!("lw{w}");
    while !stop.load(Ordering::Relaxed) {
        let t0 = now_ms();
        let asked = (LIBRARY_LEASE_MS, LIBRARY_FETCH_MAX);
        let op = |outcome, ds| fetch_op(QUEUE, t0, 0, process, outcome, asked, ds);
        let slot = recorder.begin(op(Outcome::Indeterminate, Vec::new()));
        let fetched = client
            .fetch(
                QUEUE,
                &consumer,
                LIBRARY_FETCH_MAX,
                Duration::from_millis(LIBRARY_LEASE_MS),
                Duration::from_millis(300),
            )
            .await;
        let deliveries = match fetched {
            Ok(ds) => {
                recorder.complete(slot, op(Outcome::Ok, ds.clone()));
                ds
            }
            Err(_) => {
                recorder.complete(slot, op(Outcome::Indeterminate, Vec::new()));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        for d in deliveries {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
            let nack = rng.random_ratio(1, 5);
            let call = if nack {
                Call::EndLease {
                    queue: QUEUE.into(),
                    offset: d.offset,
                    fence: d.fence,
                    kind: EndKind::Nack,
                }
            } else {
                Call::Ack {
                    queue: QUEUE.into(),
                    items: vec![AckItem {
                        offset: d.offset,
                        fence: d.fence,
                        ok: false,
                    }],
                }
            };
            let t0 = now_ms();
            let slot = recorder.begin(Op {
                invoke_ms: t0,
                complete_ms: t0,
                node: ANY_NODE,
                process,
                outcome: Outcome::Indeterminate,
                call: call.clone(),
            });
            let (outcome, call) = if nack {
                let r = client.nack(QUEUE, d.offset, d.fence, None).await;
                (definite(r.is_ok()), call)
            } else {
                let r = client
                    .ack(
                        QUEUE,
                        vec![pb::AckItem {
                            offset: d.offset,
                            fence: d.fence,
                        }],
                    )
                    .await;
                let ok = matches!(r.as_deref(), Ok([Ok(())]));
                (
                    definite(r.is_ok()),
                    Call::Ack {
                        queue: QUEUE.into(),
                        items: vec![AckItem {
                            offset: d.offset,
                            fence: d.fence,
                            ok,
                        }],
                    },
                )
            };
            recorder.complete(
                slot,
                Op {
                    invoke_ms: t0,
                    complete_ms: now_ms(),
                    node: ANY_NODE,
                    process,
                    outcome,
                    call,
                },
            );
        }
    }
}

/// A library call that answered is `Ok`; one that failed after its
/// retries may have applied on any try.
fn definite(answered: bool) -> Outcome {
    if answered {
        Outcome::Ok
    } else {
        Outcome::Indeterminate
    }
}
