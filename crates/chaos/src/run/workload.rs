//! The workload: producers and workers that enqueue, fetch, ack and nack
//! through every node while faults are injected, the drain after healing,
//! the final digests, and the recorder that turns every call into the
//! history the checker reads.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockstep_harness::Cluster;
use lockstep_proto as pb;
use rand::rngs::StdRng;
use rand::Rng;
use tonic::transport::{Channel, Endpoint};

use super::common::{now_ms, LEADER_MS_MAX};
use crate::checker::DRAIN_CONSUMER;
use crate::history::{
    AckItem, Call, DeadJob, Delivery, EndKind, EnqueueOutcome, EnqueueResult, Op, Outcome, SentJob,
};

/// The queue the raw gRPC producers and workers use.
pub const QUEUE: &str = "chaos";
/// The queue the client library's producer and worker use: apart, so that
/// a fetch of the raw workers whose answer was lost (which may have leased
/// jobs no one saw) can never explain an attempt of a library job, whose
/// retried calls must never lease anything unseen (the reply cache).
pub const LIB_QUEUE: &str = "chaos-lib";
/// The queue the client library's own `Worker` consumes, fed by a library
/// producer of its own: the `Worker` fetches where the history cannot see
/// when (or whether) it fetched, so its fetches are recorded with an
/// unknown send time and capacity, which would explain away any orphaned
/// lease of a queue they shared (the A check `LIB_QUEUE` relies on).
pub const WORKER_QUEUE: &str = "chaos-worker";
/// The queue the `Worker`'s chained acks enqueue into (the next step of
/// about half of its jobs); only the drain consumes it.
pub const CHAIN_QUEUE: &str = "chaos-chain";
/// Every queue the workload uses: each is created before the run and
/// drained after it, the chained jobs' queue after the queue of the jobs
/// whose acks carry them.
pub const QUEUES: [&str; 4] = [QUEUE, LIB_QUEUE, WORKER_QUEUE, CHAIN_QUEUE];
/// Deadline of one client call; past it the outcome is indeterminate.
pub(super) const CALL_MS_MAX: u64 = 3_000;
/// One batch in this many is sent again after it succeeded.
const RESEND_ONE_IN: u32 = 10;
/// Tries of one enqueue (same ids) before a producer gives up on it.
const ENQUEUE_TRIES_MAX: u32 = 20;
/// Bound on draining the queue after healing.
const DRAIN_MS_MAX: u64 = 60_000;

#[derive(Clone, Debug, Default)]
pub(super) struct Recorder(Arc<Mutex<Vec<Op>>>);

impl Recorder {
    pub(super) fn push(&self, op: Op) {
        if let Ok(mut h) = self.0.lock() {
            h.push(op);
        }
    }

    /// Records `op` as indeterminate before its call is made, and returns
    /// its place for [`Recorder::complete`]: a call the run abandons (its
    /// task cut off at the end) is then still in the history, as
    /// something that may have happened.
    pub(super) fn begin(&self, mut op: Op) -> usize {
        op.outcome = Outcome::Indeterminate;
        self.0
            .lock()
            .map(|mut h| {
                h.push(op);
                h.len() - 1
            })
            .unwrap_or(usize::MAX)
    }

    /// Replaces the op recorded at `slot` with how it ended.
    pub(super) fn complete(&self, slot: usize, op: Op) {
        if let Ok(mut h) = self.0.lock() {
            if let Some(place) = h.get_mut(slot) {
                *place = op;
            }
        }
    }

    /// Every operation recorded so far, in the order recorded.
    pub(super) fn history(&self) -> Vec<Op> {
        self.0.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

/// How a failed call is recorded: definite errors changed nothing; anything
/// else (timeouts, broken connections, UNAVAILABLE, which the node also
/// uses for "outcome unknown") may have taken effect.
fn outcome_of(status: &tonic::Status) -> Outcome {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Unauthenticated => Outcome::Fail,
        _ => Outcome::Indeterminate,
    }
}

/// How often the workload pings a node connection, and how long a ping may
/// go unanswered before the connection is dropped, in milliseconds.
const KEEPALIVE_MS: u64 = 1_000;

/// A workload channel to a node's client port, from `from`. The HTTP/2
/// ping matters: a connection whose packets were dropped does not fail,
/// TCP retransmits with a backoff that grows to tens of seconds, and a
/// call timeout does not close it. Without the ping, calls to one node
/// kept timing out for a minute after healing and the drain ran out of
/// time (`partition-halves`, seed 4, 120 s).
pub(super) fn channel_to(addr: std::net::SocketAddr, from: Ipv4Addr) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .local_address(Some(from.into()))
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_millis(CALL_MS_MAX))
        .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_MS))
        .keep_alive_timeout(Duration::from_millis(KEEPALIVE_MS))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

pub(super) async fn producer(
    p: usize,
    mut rng: StdRng,
    channels: Vec<Channel>,
    groups: u64,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (jobs, sent) = batch(&mut rng, &format!("p{p}-{n}"), groups);
        n += 1;
        // Retry an unknown outcome with the same ids, through any node.
        // Now and then send a batch once more after it succeeded, as a
        // client whose answer was lost would: the ids must come back as
        // duplicates at their first offsets.
        let resend = rng.random_ratio(1, RESEND_ONE_IN);
        let mut succeeded = false;
        for _ in 0..ENQUEUE_TRIES_MAX {
            let node = rng.random_range(0..channels.len());
            let mut q = pb::queue_client::QueueClient::new(channels[node].clone());
            let t0 = now_ms();
            let r = q
                .enqueue(pb::EnqueueRequest {
                    queue: QUEUE.into(),
                    jobs: jobs.clone(),
                    session: None,
                })
                .await;
            let (outcome, results) = match r {
                Ok(resp) => (
                    Outcome::Ok,
                    resp.into_inner()
                        .results
                        .into_iter()
                        .map(|r| EnqueueResult {
                            outcome: match r.outcome {
                                x if x == pb::EnqueueOutcome::Duplicate as i32 => {
                                    EnqueueOutcome::Duplicate
                                }
                                x if x == pb::EnqueueOutcome::IdConflict as i32 => {
                                    EnqueueOutcome::IdConflict
                                }
                                _ => EnqueueOutcome::Created,
                            },
                            id: r.id,
                            offset: r.offset,
                        })
                        .collect(),
                ),
                Err(s) => (outcome_of(&s), Vec::new()),
            };
            recorder.push(Op {
                invoke_ms: t0,
                complete_ms: now_ms(),
                node: node as u64 + 1,
                process: p as u64,
                outcome,
                call: Call::Enqueue {
                    queue: QUEUE.into(),
                    jobs: sent.clone(),
                    results,
                },
            });
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if outcome == Outcome::Ok {
                if succeeded || !resend {
                    break;
                }
                succeeded = true;
                continue;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..50))).await;
    }
}

/// A batch of 1-4 jobs of 64 bytes with ids `<prefix>-<j>` in random
/// groups, and what the history records of it.
pub(super) fn batch(rng: &mut StdRng, prefix: &str, groups: u64) -> (Vec<pb::Job>, Vec<SentJob>) {
    let k = rng.random_range(1..=4);
    let jobs: Vec<pb::Job> = (0..k)
        .map(|j| pb::Job {
            id: Some(format!("{prefix}-{j}")),
            group: format!("g{}", rng.random_range(0..groups)),
            payload: vec![b'x'; 64],
            ..Default::default()
        })
        .collect();
    let sent = jobs
        .iter()
        .map(|j| SentJob {
            id: j.id.clone().unwrap_or_default(),
            group: j.group.clone(),
            chained_from: None,
        })
        .collect();
    (jobs, sent)
}

/// The stats of `queue` as the node behind `channel` answers them.
async fn queue_stats(channel: &Channel, queue: &str) -> Option<pb::QueueStats> {
    pb::admin_client::AdminClient::new(channel.clone())
        .get_queue(pb::GetQueueRequest {
            name: queue.into(),
            read: None,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().queue)
        .and_then(|q| q.stats)
}

pub(super) async fn worker(
    w: usize,
    mut rng: StdRng,
    channels: Vec<Channel>,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
) {
    let process = 1_000 + w as u64;
    while !stop.load(Ordering::Relaxed) {
        let node = rng.random_range(0..channels.len());
        let request = fetch_request(QUEUE, &format!("w{w}"), 2, 2_000, 300);
        let Some(deliveries) =
            fetch_recorded(&channels[node], node, process, request, &recorder).await
        else {
            continue;
        };
        for d in deliveries {
            // Work: usually short, sometimes past the lease.
            let ms = if rng.random_ratio(1, 10) {
                2_500
            } else {
                rng.random_range(0..150)
            };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let node = rng.random_range(0..channels.len());
            let mut q = pb::queue_client::QueueClient::new(channels[node].clone());
            let t0 = now_ms();
            if rng.random_ratio(1, 5) {
                let r = q
                    .nack(pb::NackRequest {
                        subscription: String::new(),
                        queue: QUEUE.into(),
                        offset: d.offset,
                        fence: d.fence,
                        delay_ms: 0,
                        session: None,
                    })
                    .await;
                recorder.push(Op {
                    invoke_ms: t0,
                    complete_ms: now_ms(),
                    node: node as u64 + 1,
                    process,
                    outcome: r.as_ref().map_or_else(outcome_of, |_| Outcome::Ok),
                    call: Call::EndLease {
                        queue: QUEUE.into(),
                        offset: d.offset,
                        fence: d.fence,
                        kind: EndKind::Nack,
                    },
                });
            } else {
                ack_one(
                    &mut q,
                    QUEUE,
                    t0,
                    node,
                    process,
                    &[(d.offset, d.fence)],
                    &recorder,
                )
                .await;
            }
        }
    }
}

fn fetch_request(
    queue: &str,
    consumer: &str,
    max: u32,
    lease_ms: u64,
    wait_ms: u64,
) -> pb::FetchRequest {
    pb::FetchRequest {
        subscription: String::new(),
        queue: queue.into(),
        consumer: consumer.into(),
        max,
        lease_ms,
        wait_ms,
        session: None,
    }
}

/// One fetch through `channel`, recorded. `None` after a failure (and a
/// short pause, so a dead node is not hammered).
async fn fetch_recorded(
    channel: &Channel,
    node: usize,
    process: u64,
    request: pb::FetchRequest,
    recorder: &Recorder,
) -> Option<Vec<pb::Delivery>> {
    let mut q = pb::queue_client::QueueClient::new(channel.clone());
    let t0 = now_ms();
    let asked = (request.lease_ms, request.max);
    let queue = request.queue.clone();
    let consumer = request.consumer.clone();
    match q.fetch(request).await {
        Ok(resp) => {
            let deliveries = resp.into_inner().deliveries;
            recorder.push(fetch_op(
                (&queue, &consumer),
                t0,
                node,
                process,
                Outcome::Ok,
                asked,
                deliveries.clone(),
            ));
            Some(deliveries)
        }
        Err(s) => {
            recorder.push(fetch_op(
                (&queue, &consumer),
                t0,
                node,
                process,
                outcome_of(&s),
                asked,
                Vec::new(),
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

pub(super) fn fetch_op(
    (queue, consumer): (&str, &str),
    t0: u64,
    node: usize,
    process: u64,
    outcome: Outcome,
    (lease_ms, max): (u64, u32),
    ds: Vec<pb::Delivery>,
) -> Op {
    Op {
        invoke_ms: t0,
        complete_ms: now_ms(),
        node: node as u64 + 1,
        process,
        outcome,
        call: Call::Fetch {
            queue: queue.into(),
            // The checker tells the drain's deliveries (still pending when
            // the run ended) by this name.
            consumer: consumer.into(),
            lease_ms,
            invoke_unknown: false,
            max,
            // One try, no session: never a replay.
            retried: false,
            deliveries: ds
                .into_iter()
                .map(|d| Delivery {
                    offset: d.offset,
                    id: d.id,
                    group: d.group,
                    fence: d.fence,
                    lease_deadline_ms: d.lease_deadline_ms,
                    attempt: d.attempt,
                })
                .collect(),
        },
    }
}

async fn ack_one(
    q: &mut pb::queue_client::QueueClient<Channel>,
    queue: &str,
    t0: u64,
    node: usize,
    process: u64,
    items: &[(u64, u64)],
    recorder: &Recorder,
) {
    let r = q
        .ack(pb::AckRequest {
            subscription: String::new(),
            queue: queue.into(),
            items: items
                .iter()
                .map(|(offset, fence)| pb::AckItem {
                    offset: *offset,
                    fence: *fence,
                })
                .collect(),
            then: Vec::new(),
            session: None,
        })
        .await;
    let (outcome, oks): (Outcome, Vec<bool>) = match r {
        Ok(resp) => (
            Outcome::Ok,
            resp.into_inner()
                .results
                .iter()
                .map(|r| r.code == 0)
                .collect(),
        ),
        Err(s) => (outcome_of(&s), vec![false; items.len()]),
    };
    recorder.push(Op {
        invoke_ms: t0,
        complete_ms: now_ms(),
        node: node as u64 + 1,
        process,
        outcome,
        call: Call::Ack {
            queue: queue.into(),
            items: items
                .iter()
                .zip(oks)
                .map(|((offset, fence), ok)| AckItem {
                    offset: *offset,
                    fence: *fence,
                    ok,
                })
                .collect(),
        },
    });
}

/// Consumes until the queue is empty, then records `Drained`.
pub(super) async fn drain(
    rng: &mut StdRng,
    channels: &[Channel],
    recorder: &Recorder,
    queue: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(DRAIN_MS_MAX);
    let process = 9_999;
    while Instant::now() < deadline {
        let node = rng.random_range(0..channels.len());
        let request = fetch_request(queue, DRAIN_CONSUMER, 100, 30_000, 200);
        let Some(ds) = fetch_recorded(&channels[node], node, process, request, recorder).await
        else {
            continue;
        };
        let mut q = pb::queue_client::QueueClient::new(channels[node].clone());
        if ds.is_empty() {
            if let Some(s) = queue_stats(&channels[node], queue).await {
                if s.ready + s.delayed + s.leased == 0 {
                    if !record_after_drain(channels, recorder, queue).await {
                        return Err(format!(
                            "no node answered the dead letters and stats of {queue} after the drain"
                        ));
                    }
                    recorder.push(Op {
                        invoke_ms: now_ms(),
                        complete_ms: now_ms(),
                        node: node as u64 + 1,
                        process,
                        outcome: Outcome::Ok,
                        call: Call::Drained {
                            queue: queue.into(),
                        },
                    });
                    return Ok(());
                }
            }
            continue;
        }
        let items: Vec<(u64, u64)> = ds.iter().map(|d| (d.offset, d.fence)).collect();
        ack_one(&mut q, queue, now_ms(), node, process, &items, recorder).await;
    }
    Err(format!(
        "the drain did not empty the queue {queue} within {DRAIN_MS_MAX} ms"
    ))
}

/// How many dead letters one listing call asks for.
const DEAD_LETTERS_PAGE: u32 = 1_000;
/// Bound on the listing calls after the drain (pages).
const DEAD_LETTER_PAGES_MAX: u32 = 1_000;

/// After the drain: the full dead-letter list and the queue's stats, as
/// some node answers them (reads are served by the leader), for the
/// checker's accounting of every job (A) and of the stats (S).
async fn record_after_drain(channels: &[Channel], recorder: &Recorder, queue: &str) -> bool {
    for (i, channel) in channels.iter().enumerate() {
        let mut admin = pb::admin_client::AdminClient::new(channel.clone());
        let t0 = now_ms();
        let mut jobs = Vec::new();
        let mut after = None;
        let mut complete = false;
        for _ in 0..DEAD_LETTER_PAGES_MAX {
            let page = admin
                .list_dead_letters(pb::ListDeadLettersRequest {
                    queue: queue.into(),
                    after,
                    limit: DEAD_LETTERS_PAGE,
                    ..Default::default()
                })
                .await;
            let Ok(page) = page else { break };
            let page = page.into_inner();
            jobs.extend(page.dead_letters.into_iter().map(|d| DeadJob {
                offset: d.offset,
                id: d.id,
                group: d.group,
                attempts: d.attempts,
                reason: d.reason,
            }));
            match page.next_after {
                Some(next) => after = Some(next),
                None => {
                    complete = true;
                    break;
                }
            }
        }
        if !complete {
            continue;
        }
        let Some(s) = queue_stats(channel, queue).await else {
            continue;
        };
        let node = i as u64 + 1;
        recorder.push(Op {
            invoke_ms: t0,
            complete_ms: now_ms(),
            node,
            process: 9_999,
            outcome: Outcome::Ok,
            call: Call::DeadLetters {
                queue: queue.into(),
                jobs,
            },
        });
        recorder.push(Op {
            invoke_ms: t0,
            complete_ms: now_ms(),
            node,
            process: 9_999,
            outcome: Outcome::Ok,
            call: Call::Stats {
                queue: queue.into(),
                ready: s.ready,
                delayed: s.delayed,
                leased: s.leased,
                dead: s.dead,
                next_offset: s.next_offset,
                ack_floor: s.ack_floor,
            },
        });
        return true;
    }
    false
}

/// Waits until every node reports the same applied index (bounded), then
/// records each node's digest.
pub(super) async fn record_digests(cluster: &Cluster, ids: &[u64], recorder: &Recorder) {
    let deadline = Instant::now() + Duration::from_millis(LEADER_MS_MAX);
    loop {
        let mut seen = Vec::new();
        for id in ids {
            if let Ok(s) = cluster.status(*id).await {
                seen.push((*id, s.applied_index, s.state_digest));
            }
        }
        let settled = seen.len() == ids.len() && seen.iter().all(|s| s.1 == seen[0].1);
        if settled || Instant::now() > deadline {
            for (id, index, digest) in seen {
                recorder.push(Op {
                    invoke_ms: now_ms(),
                    complete_ms: now_ms(),
                    node: id,
                    process: 0,
                    outcome: Outcome::Ok,
                    call: Call::Digest {
                        applied_index: index,
                        digest,
                    },
                });
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How often the side-queue task creates a queue.
const SIDE_QUEUE_EVERY_MS: u64 = 1_000;

/// Creates a side queue every [`SIDE_QUEUE_EVERY_MS`] through every node
/// and, once its creation is acknowledged, enqueues one job into it through
/// every node at once. A NOT_FOUND to that enqueue is a
/// refusal from a state that lacks the acknowledged creation (the checker's
/// N). Only the creation and such refusals are recorded: the side jobs are
/// not part of the job accounting, and no one consumes them.
pub(super) async fn side_queues(channels: Vec<Channel>, recorder: Recorder, stop: Arc<AtomicBool>) {
    let process = 3_000;
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(SIDE_QUEUE_EVERY_MS)).await;
        k += 1;
        let queue = format!("side-{k}");
        // Created through every node at once: the creation is acknowledged
        // as soon as one of them answers OK (the others answer OK too, or
        // time out where no leader can be reached), so a cut-off node never
        // holds the step up.
        let (done, mut answers) = tokio::sync::mpsc::channel(channels.len());
        for (node, channel) in channels.iter().enumerate() {
            let mut admin = pb::admin_client::AdminClient::new(channel.clone());
            let (queue, recorder, done) = (queue.clone(), recorder.clone(), done.clone());
            tokio::spawn(async move {
                let t0 = now_ms();
                let created = admin
                    .create_queue(pb::CreateQueueRequest {
                        name: queue.clone(),
                        config: Some(pb::QueueConfig::default()),
                        session: None,
                    })
                    .await;
                let outcome = created.as_ref().map_or_else(outcome_of, |_| Outcome::Ok);
                recorder.push(Op {
                    invoke_ms: t0,
                    complete_ms: now_ms(),
                    node: node as u64 + 1,
                    process,
                    outcome,
                    call: Call::CreateQueue { queue },
                });
                let _ = done.send(outcome).await;
            });
        }
        drop(done);
        let mut acknowledged = false;
        while let Some(outcome) = answers.recv().await {
            if outcome == Outcome::Ok {
                acknowledged = true;
                break;
            }
        }
        if !acknowledged {
            continue;
        }
        // Through every node at once, so a node that still takes itself
        // for the leader (cut off, not yet told) is asked too.
        let calls = channels.iter().enumerate().map(|(node, channel)| {
            let mut q = pb::queue_client::QueueClient::new(channel.clone());
            let queue = queue.clone();
            async move {
                let t0 = now_ms();
                let enqueued = q
                    .enqueue(pb::EnqueueRequest {
                        queue: queue.clone(),
                        jobs: vec![pb::Job {
                            id: Some(format!("{queue}-0")),
                            payload: vec![b's'; 8],
                            ..Default::default()
                        }],
                        session: None,
                    })
                    .await;
                match enqueued {
                    Err(s) if s.code() == tonic::Code::NotFound => Some(Op {
                        invoke_ms: t0,
                        complete_ms: now_ms(),
                        node: node as u64 + 1,
                        process,
                        outcome: Outcome::Fail,
                        call: Call::QueueNotFound { queue },
                    }),
                    _ => None,
                }
            }
        });
        for op in all_at_once(calls).await.into_iter().flatten() {
            recorder.push(op);
        }
    }
}

/// Runs `calls` at once and collects their results in order.
async fn all_at_once<F>(calls: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = calls.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fetch is recorded under the consumer it asked as: the C check
    /// knows the drain's deliveries (jobs still pending when the run
    /// ended) by the name `drain`. Recorded under an empty name, a chained
    /// ack lost in a crash, whose job the drain then finished, counted as
    /// a lost step (`kill-all` seed 9 of the 2026-12-02 tier, C=1).
    #[test]
    fn a_fetch_is_recorded_under_its_consumer() {
        let delivery = pb::Delivery {
            offset: 120,
            id: "l4-47-1".into(),
            group: "g2".into(),
            fence: 1_628,
            attempt: 2,
            ..Default::default()
        };
        let op = fetch_op(
            ("chaos-worker", DRAIN_CONSUMER),
            1,
            0,
            9_999,
            Outcome::Ok,
            (30_000, 100),
            vec![delivery],
        );
        match op.call {
            Call::Fetch {
                consumer,
                deliveries,
                ..
            } => {
                assert_eq!(consumer, DRAIN_CONSUMER);
                assert_eq!(deliveries[0].id, "l4-47-1");
            }
            other => panic!("not a fetch: {other:?}"),
        }
    }
}
