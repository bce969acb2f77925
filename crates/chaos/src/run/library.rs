//! The part of the workload that goes through the Rust client library
//! (`lockstep_client::Client`) instead of raw gRPC: its node choice, its
//! retries and its session (every call at most once across retries) run
//! under the same faults. Each library call is one operation in the
//! history, from before its first try to after its last; a call whose
//! retries all failed is indeterminate.
//!
//! The library's own `Worker` runs too ([`client_worker`]), on a queue of
//! its own: its fetches, extends, acks and releases happen inside it, so
//! the history records what its handler sees (a fetch of unknown send time
//! per job) and what the handler decides (an ack, nack or dead-letter of
//! unknown outcome).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::sync::Mutex;

use lockstep_client::{
    CancellationToken, Client, ClientConfig, ConsumeMode, EnqueueOutcome as LibOutcome, Job,
    Outcome as Decision, RetryPolicy, Worker, WorkerConfig,
};
use lockstep_proto as pb;
use rand::rngs::StdRng;
use rand::Rng;

use super::common::now_ms;
use super::workload::{batch, fetch_op, Recorder, CHAIN_QUEUE, LIB_QUEUE as QUEUE, WORKER_QUEUE};
use crate::history::{
    AckItem, Call, Delivery, EndKind, EnqueueOutcome, EnqueueResult, Op, Outcome, SentJob,
};

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

/// The queue producer `p` of `producers` (plus one) feeds through the
/// library, if any: producer 0 the library worker's, the one numbered after
/// the others the client `Worker`'s; the rest enqueue over raw gRPC.
pub(super) fn library_queue_of(p: usize, producers: usize) -> Option<&'static str> {
    if p == producers {
        Some(WORKER_QUEUE)
    } else if p == 0 {
        Some(QUEUE)
    } else {
        None
    }
}

/// A producer through the library into `queue`: each batch is one
/// `Client::enqueue`, whose retries and session are the library's.
pub(super) async fn library_producer(
    p: usize,
    queue: &'static str,
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
                queue: queue.into(),
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
        let (outcome, results) = match client.enqueue(queue, jobs).await {
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
        let op = |outcome, ds| fetch_op((QUEUE, &consumer), t0, 0, process, outcome, asked, ds);
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

/// The lease the client's `Worker` asks for: short, so a slow handler
/// ([`WORKER_SLOW_MS`]) outlives it and the `Worker` must extend it (every
/// third of it) through the faults, or drop the job when it cannot.
const WORKER_LEASE_MS: u64 = 3_000;
/// A slow handler's work: half a lease longer than the lease.
const WORKER_SLOW_MS: u64 = WORKER_LEASE_MS * 3 / 2;
/// A quick handler's work is below this.
const WORKER_QUICK_MS_MAX: u64 = 150;
/// One handler in this many is slow.
const WORKER_SLOW_ONE_IN: u32 = 10;
/// One handler in this many can never succeed: the job is dead-lettered at
/// once.
const WORKER_POISON_ONE_IN: u32 = 25;
/// Of the others, one in this many fails for now: the job is nacked and
/// runs again (dead-lettered by the server after the queue's
/// `max_attempts`).
const WORKER_RETRY_ONE_IN: u32 = 6;
/// Jobs the `Worker` runs at once: with one handler in ten holding its
/// slot past a lease, fewer leave most of its queue to the drain.
const WORKER_CONCURRENCY: usize = 8;
/// The `Worker`'s long poll (the client adds it to a fetch's deadline).
const WORKER_WAIT_MS: u64 = 1_000;
/// The `Worker`'s shutdown grace: well past any handler, so it never gives
/// up on a running handler and releases its job, a lease end the history
/// could not record (the `Worker` never polls that handler again). A
/// `Worker` still finishing calls when the run stops waiting for its tasks
/// is aborted instead, which ends no lease early.
const WORKER_GRACE_MS: u64 = 2 * WORKER_SLOW_MS;
const _: () = assert!(WORKER_SLOW_MS < WORKER_GRACE_MS && WORKER_QUICK_MS_MAX < WORKER_SLOW_MS);
/// The name the `Worker`'s leases are granted to.
const WORKER_CONSUMER: &str = "cw0";
/// The process the history records the `Worker`'s operations under.
const WORKER_PROCESS: u64 = 4_000;

/// What a handler does with one job: how long it works, then what it
/// decides.
#[derive(Clone, Debug, PartialEq)]
struct Plan {
    work_ms: u64,
    decision: Decision,
}

/// A seeded plan: mostly quick and acked, some slower than the lease, some
/// nacked, a few dead-lettered.
fn draw_plan(rng: &mut StdRng) -> Plan {
    let work_ms = if rng.random_ratio(1, WORKER_SLOW_ONE_IN) {
        WORKER_SLOW_MS
    } else {
        rng.random_range(0..WORKER_QUICK_MS_MAX)
    };
    let decision = if rng.random_ratio(1, WORKER_POISON_ONE_IN) {
        Decision::Poison("chaos: poison".into())
    } else if rng.random_ratio(1, WORKER_RETRY_ONE_IN) {
        Decision::Retry
    } else {
        Decision::Ack
    };
    Plan { work_ms, decision }
}

/// How the client `Worker` of a run takes its jobs: on a consume stream
/// (its default) in even seeds, with long polls in odd ones, so both paths
/// meet every fault profile.
pub fn worker_consume_mode(seed: u64) -> ConsumeMode {
    if seed % 2 == 0 {
        ConsumeMode::Stream
    } else {
        ConsumeMode::Fetch
    }
}

/// The client library's own `Worker` (`lockstep_client::Worker`) on
/// [`WORKER_QUEUE`] until `stop`: its fetches with long poll and retries,
/// lease extension, ack batching and graceful release under the faults.
/// Built here, so a bad configuration fails the run before it starts.
///
/// The history sees only the handler: a fetch of unknown send time per job
/// handed over ([`worker_fetch_op`]) and the decision the `Worker` then
/// acts on ([`worker_decision_op`]). Its extends are not recorded: they
/// only lengthen a lease, so the recorded deadline stays a lower bound.
pub(super) fn client_worker(
    rng: StdRng,
    consume: ConsumeMode,
    client: Client,
    recorder: Recorder,
    stop: CancellationToken,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, String> {
    let mut config = WorkerConfig::new(WORKER_QUEUE);
    config.consumer = WORKER_CONSUMER.into();
    config.concurrency = WORKER_CONCURRENCY;
    config.lease = Duration::from_millis(WORKER_LEASE_MS);
    config.wait = Duration::from_millis(WORKER_WAIT_MS);
    config.shutdown_grace = Duration::from_millis(WORKER_GRACE_MS);
    config.consume = consume;
    let rng = Arc::new(Mutex::new(rng));
    let chained = Arc::new(AtomicU64::new(0));
    // The token is not watched: the `Worker` cancels it only as it drops
    // the handler (lease lost, or shutdown past the grace), which it never
    // polls again, so nothing the handler did after could be recorded.
    let handler = move |job: Job, _cancel: CancellationToken| {
        let plan = draw_plan(
            &mut rng
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        recorder.push(worker_fetch_op(&job, now_ms()));
        let recorder = recorder.clone();
        let chained = chained.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(plan.work_ms)).await;
            let decision = match plan.decision {
                Decision::Ack if chains(&job.id) => {
                    let n = chained.fetch_add(1, Ordering::Relaxed);
                    let (decision, op) = chained_ack(&job, n, now_ms());
                    recorder.push(op);
                    decision
                }
                other => other,
            };
            recorder.push(worker_decision_op(&job, &decision, now_ms()));
            decision
        }
    };
    let worker = Worker::new(client, config, handler).map_err(|e| e.to_string())?;
    // A `Worker` that stopped on an error it cannot cure (the queue not
    // found) leaves its jobs to the drain; the summary's count of the jobs
    // it handled shows it.
    Ok(async move {
        let _ = worker.run(stop).await;
    })
}

/// Whether the `Worker` hands off every ack of this job to a next step
/// (about half the jobs, by their id, so all acks of one job agree: the C
/// check reads a finished job's ack as its chained one).
fn chains(id: &str) -> bool {
    id.bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 2
        == 0
}

/// A chained ack of `job`: its decision, and the enqueue the history
/// records for the next step (of unknown outcome: it lands exactly when
/// the ack does). Each chained ack gets an id of its own (`n` counts them),
/// so a step enqueued twice shows as two jobs rather than a duplicate.
fn chained_ack(job: &Job, n: u64, at_ms: u64) -> (Decision, Op) {
    let id = format!("{}>{n}", job.id);
    let next = pb::Job {
        id: Some(id.clone()),
        group: job.group.clone(),
        payload: job.id.clone().into_bytes(),
        ..Default::default()
    };
    let decision = Decision::AckThen(vec![pb::ChainedJobs {
        queue: CHAIN_QUEUE.into(),
        jobs: vec![next],
    }]);
    let op = Op {
        invoke_ms: at_ms,
        complete_ms: at_ms,
        node: ANY_NODE,
        process: WORKER_PROCESS,
        outcome: Outcome::Indeterminate,
        call: Call::Enqueue {
            queue: CHAIN_QUEUE.into(),
            jobs: vec![SentJob {
                id,
                group: job.group.clone(),
                chained_from: Some((job.queue.clone(), job.id.clone())),
            }],
            results: Vec::new(),
        },
    };
    (decision, op)
}

/// The fetch the history records for a job the `Worker` handed its
/// handler at `at_ms`: answered OK with that job, for the `Worker`'s lease,
/// sent at an unknown time (`invoke_unknown`) and asking for an unknown
/// number of jobs (`max` 0): the `Worker` asks for as many as it has free
/// slots, and may have leased jobs the handler never saw (given back at
/// shutdown, or lost with a retried fetch's lost answer).
fn worker_fetch_op(job: &Job, at_ms: u64) -> Op {
    Op {
        invoke_ms: at_ms,
        complete_ms: at_ms,
        node: ANY_NODE,
        process: WORKER_PROCESS,
        outcome: Outcome::Ok,
        call: Call::Fetch {
            queue: job.queue.clone(),
            consumer: WORKER_CONSUMER.into(),
            deliveries: vec![Delivery {
                offset: job.offset,
                id: job.id.clone(),
                group: job.group.clone(),
                fence: job.fence,
                lease_deadline_ms: job.lease_deadline_ms,
                attempt: job.attempt,
            }],
            lease_ms: WORKER_LEASE_MS,
            invoke_unknown: true,
            max: 0,
            // Whether the `Worker`'s client retried is not seen; an unknown
            // send time and capacity already allow for jobs not listed.
            retried: false,
        },
    }
}

/// What the history records of the handler's decision on `job` at `at_ms`,
/// just before the `Worker` acts on it: the ack, nack or dead-letter it
/// then makes, of unknown outcome (the `Worker` does not say whether it
/// landed, and makes none if it found the lease lost first).
fn worker_decision_op(job: &Job, decision: &Decision, at_ms: u64) -> Op {
    let (offset, fence) = (job.offset, job.fence);
    let queue = job.queue.clone();
    let call = match decision {
        // A chained ack is an ack; its chained job is recorded apart
        // (`chained_ack`).
        Decision::Ack | Decision::AckThen(_) => Call::Ack {
            queue,
            items: vec![AckItem {
                offset,
                fence,
                ok: false,
            }],
        },
        Decision::Retry | Decision::Poison(_) => Call::EndLease {
            queue,
            offset,
            fence,
            kind: if *decision == Decision::Retry {
                EndKind::Nack
            } else {
                EndKind::DeadLetter
            },
        },
    };
    Op {
        invoke_ms: at_ms,
        complete_ms: at_ms,
        node: ANY_NODE,
        process: WORKER_PROCESS,
        outcome: Outcome::Indeterminate,
        call,
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::history::{DeadJob, SentJob};

    fn job(queue: &str, offset: u64, group: &str, attempt: u32, fence: u64, at_ms: u64) -> Job {
        Job {
            queue: queue.into(),
            offset,
            id: format!("j{offset}"),
            group: group.into(),
            payload: Vec::new(),
            headers: Vec::new(),
            priority: 0,
            attempt,
            fence,
            lease_deadline_ms: at_ms + WORKER_LEASE_MS,
        }
    }

    fn enqueued(queue: &str, groups: &[&str], at_ms: u64) -> Op {
        let ids = (0..groups.len()).map(|o| format!("j{o}"));
        Op {
            invoke_ms: at_ms,
            complete_ms: at_ms + 10,
            node: ANY_NODE,
            process: 4,
            outcome: Outcome::Ok,
            call: Call::Enqueue {
                queue: queue.into(),
                jobs: ids
                    .clone()
                    .zip(groups)
                    .map(|(id, g)| SentJob {
                        id,
                        group: (*g).into(),
                        chained_from: None,
                    })
                    .collect(),
                results: ids
                    .enumerate()
                    .map(|(offset, id)| EnqueueResult {
                        id,
                        offset: offset as u64,
                        outcome: EnqueueOutcome::Created,
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn producer_0_and_the_one_after_the_raw_ones_go_through_the_library() {
        let queues: Vec<_> = (0..=4).map(|p| library_queue_of(p, 4)).collect();
        assert_eq!(
            queues,
            [Some(QUEUE), None, None, None, Some(WORKER_QUEUE)],
            "four producers, and one more for the Worker's queue"
        );
        assert_eq!(library_queue_of(0, 0), Some(WORKER_QUEUE));
    }

    #[test]
    fn plans_are_seeded_mostly_acks_and_every_handler_ends_within_the_grace() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..2_000).map(|_| draw_plan(&mut rng)).collect::<Vec<_>>()
        };
        let plans = draw(7);
        assert_eq!(plans, draw(7), "the same seed, the same plans");
        let count = |f: &dyn Fn(&Plan) -> bool| plans.iter().filter(|p| f(p)).count();
        let acks = count(&|p| p.decision == Decision::Ack);
        let retries = count(&|p| p.decision == Decision::Retry);
        let poisons = count(&|p| matches!(p.decision, Decision::Poison(_)));
        let slow = count(&|p| p.work_ms > WORKER_LEASE_MS);
        assert!(acks > plans.len() * 3 / 4, "{acks}");
        assert!(
            retries > 0 && poisons > 0 && slow > 0,
            "{retries} {poisons} {slow}"
        );
        assert!(plans.iter().all(|p| p.work_ms <= WORKER_SLOW_MS));
    }

    #[test]
    fn a_handed_over_job_is_a_fetch_of_unknown_send_time_and_its_decision_indeterminate() {
        let j = job(WORKER_QUEUE, 5, "g1", 2, 9, 1_000);
        let fetch = worker_fetch_op(&j, 1_000);
        assert_eq!((fetch.invoke_ms, fetch.complete_ms), (1_000, 1_000));
        assert_eq!(fetch.outcome, Outcome::Ok);
        let Call::Fetch {
            queue,
            deliveries,
            lease_ms,
            invoke_unknown,
            max,
            retried,
            ..
        } = &fetch.call
        else {
            panic!("{fetch:?}");
        };
        assert_eq!(queue, WORKER_QUEUE);
        assert_eq!(
            (*lease_ms, *invoke_unknown, *max, *retried),
            (WORKER_LEASE_MS, true, 0, false)
        );
        assert_eq!(
            deliveries,
            &[Delivery {
                offset: 5,
                id: "j5".into(),
                group: "g1".into(),
                fence: 9,
                lease_deadline_ms: 1_000 + WORKER_LEASE_MS,
                attempt: 2,
            }]
        );
        let ends = [
            (Decision::Ack, None),
            (Decision::Retry, Some(EndKind::Nack)),
            (Decision::Poison("no".into()), Some(EndKind::DeadLetter)),
        ];
        for (decision, kind) in ends {
            let op = worker_decision_op(&j, &decision, 1_200);
            assert_eq!(op.outcome, Outcome::Indeterminate, "{decision:?}");
            match (&op.call, kind) {
                (Call::Ack { items, .. }, None) => {
                    assert_eq!((items[0].offset, items[0].fence), (5, 9));
                }
                (
                    Call::EndLease {
                        offset,
                        fence,
                        kind: k,
                        ..
                    },
                    Some(kind),
                ) => {
                    assert_eq!((*offset, *fence, *k), (5, 9, kind));
                }
                (call, _) => panic!("{decision:?}: {call:?}"),
            }
        }
    }

    /// A nack and a redelivery, a handler past its lease (extended by the
    /// `Worker`), the next job of the group after its ack, a lease no
    /// handler saw (attempt 1 of `j2`) and a dead-letter: no anomaly.
    #[test]
    fn the_checker_finds_nothing_in_what_the_worker_records() {
        let q = WORKER_QUEUE;
        let seen = |j: &Job, at| worker_fetch_op(j, at);
        let decided = |j: &Job, d: Decision, at| worker_decision_op(j, &d, at);
        let a1 = job(q, 0, "g1", 1, 1, 1_000);
        let a2 = job(q, 0, "g1", 2, 2, 1_200);
        let b1 = job(q, 1, "g1", 1, 3, 5_750);
        let c2 = job(q, 2, "g2", 2, 5, 9_000);
        let mut history = vec![
            enqueued(q, &["g1", "g1", "g2"], 500),
            seen(&a1, 1_000),
            decided(&a1, Decision::Retry, 1_050),
            seen(&a2, 1_200),
            decided(&a2, Decision::Ack, 1_200 + WORKER_SLOW_MS),
            seen(&b1, 5_750),
            decided(&b1, Decision::Ack, 5_800),
            seen(&c2, 9_000),
            decided(&c2, Decision::Poison("no".into()), 9_010),
        ];
        let after = |call| Op {
            invoke_ms: 20_000,
            complete_ms: 20_010,
            node: 1,
            process: 9_999,
            outcome: Outcome::Ok,
            call,
        };
        history.push(after(Call::DeadLetters {
            queue: q.into(),
            jobs: vec![DeadJob {
                offset: 2,
                id: "j2".into(),
                group: "g2".into(),
                attempts: 2,
                reason: "no".into(),
            }],
        }));
        history.push(after(Call::Stats {
            queue: q.into(),
            ready: 0,
            delayed: 0,
            leased: 0,
            dead: 1,
            next_offset: 3,
            ack_floor: 3,
        }));
        history.push(after(Call::Drained { queue: q.into() }));
        let report = crate::checker::check(&history);
        assert!(report.passed(), "{report:?}");
        assert_eq!(report.delivered, 4);
    }

    /// Why the `Worker` has a queue of its own: its fetches (unknown send
    /// time and capacity) explain any missing attempt of their queue, and
    /// must not explain an orphaned lease of the library worker's.
    #[test]
    fn worker_fetches_do_not_explain_an_orphaned_lease_of_another_queue() {
        let mut orphan = worker_fetch_op(&job(QUEUE, 0, "g1", 2, 2, 3_000), 3_000);
        if let Call::Fetch { invoke_unknown, .. } = &mut orphan.call {
            *invoke_unknown = false; // a library fetch, timed from its first try
        }
        let history = vec![
            enqueued(QUEUE, &["g1"], 500),
            enqueued(WORKER_QUEUE, &["g1"], 500),
            worker_fetch_op(&job(WORKER_QUEUE, 0, "g1", 1, 1, 1_000), 1_000),
            orphan,
        ];
        let report = crate::checker::check(&history);
        assert_eq!(report.counts.unexplained_attempts, 1, "{report:?}");
    }
}
