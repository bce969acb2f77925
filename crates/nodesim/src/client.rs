//! The simulated clients: producers, workers and the drain, each a task
//! with its own seeded generator, a session and the client library's retry
//! rule (a sequenced request is retried on another node under the same
//! number, so the reply cache answers a try whose first answer was lost).
//! Every call is recorded in the chaos harness's history format.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lockstep_chaos::history::{AckItem, Call, DeadJob, EndKind, Op, Outcome, SentJob};
use lockstep_core::{self as core, Command, QueueConfig, Reply, Sequence};
use lockstep_sim::calls::{ack_oks, deliveries, end_lease, enqueue_results, new_job};
use lockstep_types::forward::{Read, ReadReply, Request, Response};
use lockstep_types::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Code;

use crate::clock::EPOCH_MS;
use crate::net::{Net, CLIENT_SIDE};

/// The one queue of the workload.
pub(crate) const QUEUE: &str = "q";
/// Producers and workers.
pub(crate) const PRODUCERS: u64 = 3;
pub(crate) const WORKERS: u64 = 3;
/// The drain's process number in the history.
pub(crate) const DRAIN_PROCESS: u64 = 9_999;
/// One try of a call, ms: past it the client gives up on the node.
const TRY_MS: u64 = 2_000;
/// Tries of one call before its outcome is recorded unknown.
const TRIES_MAX: u32 = 4;
/// Pause before a retry, ms.
const RETRY_MS: u64 = 50;
/// Groups the producers spread jobs over.
const GROUPS: u32 = 6;
/// Lease lengths workers ask for, ms.
const LEASES_MS: [u64; 3] = [400, 1_000, 2_000];
/// The drain's lease, ms: long enough to ack a page, short enough that a
/// page whose fetch answer was lost comes back well within the drain's
/// bound.
const DRAIN_LEASE_MS: u64 = 5_000;
/// Jobs one drain fetch takes at most.
const DRAIN_FETCH_MAX: u32 = 100;
/// Side queues the admin creates in one run, each probed through every
/// node.
const SIDE_QUEUES_MAX: u32 = 40;
/// Pause before the admin creates the next side queue, ms.
const SIDE_QUEUE_GAP_MS: (u64, u64) = (50, 300);
/// A probe's process in the history: this plus the id of the node it
/// went to.
const PROBE_PROCESS: u64 = 200;
/// Attempts a job gets before it is dead-lettered.
pub(crate) const MAX_ATTEMPTS: u32 = 4;

/// What every client shares: the network, the history, the nodes' ids and
/// the signal to stop.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) net: Arc<Net>,
    pub(crate) start: Instant,
    pub(crate) nodes: Vec<NodeId>,
    pub(crate) history: Mutex<Vec<Op>>,
    /// True once the workload's phase is over.
    pub(crate) stop: watch::Receiver<bool>,
}

impl Shared {
    /// The harness's clock: simulated ms, on the wall clock's scale.
    pub(crate) fn now_ms(&self) -> u64 {
        EPOCH_MS + self.start.elapsed().as_millis() as u64
    }

    pub(crate) fn record(&self, op: Op) {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(op);
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

/// A job a worker holds.
#[derive(Clone, Debug)]
struct Held {
    offset: u64,
    fence: u64,
    lease_ms: u64,
    extended: bool,
}

/// How a call ended.
struct Answer {
    outcome: Outcome,
    reply: Option<Reply>,
    /// For a fetch: each delivery's stored job id.
    ids: Vec<String>,
    error: Option<core::Error>,
    invoke_ms: u64,
    node: NodeId,
    retried: bool,
}

/// One client.
pub(crate) struct Client {
    shared: Arc<Shared>,
    process: u64,
    rng: StdRng,
    session: Option<u64>,
    seq: u64,
    held: VecDeque<Held>,
    sent: u64,
    past: Vec<(String, String)>,
}

impl Client {
    pub(crate) fn new(shared: Arc<Shared>, process: u64, seed: u64) -> Client {
        Client {
            shared,
            process,
            rng: StdRng::seed_from_u64(seed ^ process.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            session: None,
            seq: 0,
            held: VecDeque::new(),
            sent: 0,
            past: Vec::new(),
        }
    }

    fn pick_node(&mut self) -> NodeId {
        let nodes = &self.shared.nodes;
        nodes[self.rng.random_range(0..nodes.len())]
    }

    fn next_node(&self, node: NodeId) -> NodeId {
        let nodes = &self.shared.nodes;
        let i = nodes.iter().position(|n| *n == node).unwrap_or(0);
        nodes[(i + 1) % nodes.len()]
    }

    async fn pause(&mut self, range: std::ops::Range<u64>) {
        let ms = self.rng.random_range(range);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Sends one request through the network to `node` and waits for it.
    async fn send(&self, node: NodeId, request: Request) -> Result<Response, tonic::Status> {
        self.shared
            .net
            .round_trip(
                CLIENT_SIDE,
                node,
                Duration::from_millis(TRY_MS),
                move |n| async move { n.execute(request).await },
            )
            .await
    }

    /// Runs `command`, retried as the client library retries it.
    async fn call(&mut self, command: Command, sequenced: bool) -> Answer {
        let first = self.pick_node();
        self.call_at(command, sequenced, first).await
    }

    /// Runs `command`, sent first to `first`.
    async fn call_at(&mut self, command: Command, sequenced: bool, first: NodeId) -> Answer {
        let seq = sequenced.then(|| {
            self.seq += 1;
            self.seq
        });
        let invoke_ms = self.shared.now_ms();
        let mut node = first;
        let mut maybe_applied = false;
        let tries = if sequenced { TRIES_MAX } else { 1 };
        for attempt in 1..=tries {
            if attempt > 1 {
                node = self.next_node(node);
                tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
            }
            let wrapped = match (seq, self.session) {
                (Some(seq), Some(session)) => Command::Sequenced {
                    sequence: Sequence {
                        session,
                        seq,
                        floor: seq,
                        // The client's tries, as the client library counts
                        // them; the node counts the forwards within each.
                        try_number: core::TryNumber {
                            client: attempt - 1,
                            ..core::TryNumber::default()
                        },
                    },
                    command: Box::new(command.clone()),
                },
                _ => command.clone(),
            };
            let answer = |outcome, reply, ids, error| Answer {
                outcome,
                reply,
                ids,
                error,
                invoke_ms,
                node: first,
                retried: maybe_applied,
            };
            match self.send(node, Request::Write(wrapped)).await {
                Ok(Response::Write {
                    reply: Ok(reply),
                    blobs,
                }) => {
                    let ids = blobs
                        .into_iter()
                        .map(|b| b.map(|b| b.id).unwrap_or_default())
                        .collect();
                    return answer(Outcome::Ok, Some(reply), ids, None);
                }
                Ok(Response::Write { reply: Err(e), .. }) => {
                    let outcome = match e {
                        core::Error::ReplyForgotten { .. } | core::Error::Superseded { .. } => {
                            Outcome::Indeterminate
                        }
                        core::Error::SessionUnknown { .. } if maybe_applied => {
                            Outcome::Indeterminate
                        }
                        _ => Outcome::Fail,
                    };
                    if matches!(e, core::Error::SessionUnknown { .. }) {
                        self.session = None;
                    }
                    return answer(outcome, None, Vec::new(), Some(e));
                }
                Ok(Response::MayHaveApplied(_)) => maybe_applied = true,
                Ok(Response::Unavailable(_)) | Ok(Response::NotLeader { .. }) => {}
                Ok(_) => maybe_applied = true,
                // Refused before anything was proposed.
                Err(s)
                    if matches!(
                        s.code(),
                        Code::ResourceExhausted | Code::InvalidArgument | Code::NotFound
                    ) => {}
                // A node that was down refused the connection.
                Err(s) if s.code() == Code::Unavailable && s.message().ends_with("is down") => {}
                Err(_) => maybe_applied = true,
            }
        }
        let outcome = if maybe_applied {
            Outcome::Indeterminate
        } else {
            Outcome::Fail
        };
        Answer {
            outcome,
            reply: None,
            ids: Vec::new(),
            error: None,
            invoke_ms,
            node: first,
            retried: maybe_applied,
        }
    }

    fn op(&self, answer: &Answer, call: Call) -> Op {
        Op {
            invoke_ms: answer.invoke_ms,
            complete_ms: self.shared.now_ms(),
            node: answer.node,
            process: self.process,
            outcome: answer.outcome,
            call,
        }
    }

    /// Opens a session unless one is open. False when it could not.
    async fn ensure_session(&mut self) -> bool {
        if self.session.is_some() {
            return true;
        }
        let answer = self.call(Command::OpenSession, false).await;
        if let Some(Reply::SessionOpened { session }) = answer.reply {
            self.session = Some(session);
            self.seq = 0;
            return true;
        }
        false
    }

    /// Creates the workload's queue; true once it exists.
    pub(crate) async fn create_queue(&mut self) -> bool {
        self.create(QUEUE).await
    }

    /// Creates queue `name`; true once it exists.
    async fn create(&mut self, name: &str) -> bool {
        if !self.ensure_session().await {
            return false;
        }
        let command = Command::CreateQueue {
            name: name.into(),
            config: QueueConfig {
                max_attempts: MAX_ATTEMPTS,
                backoff_base_ms: 20,
                backoff_cap_ms: 500,
                ..QueueConfig::default()
            },
        };
        let answer = self.call(command, true).await;
        let created = matches!(answer.reply, Some(Reply::QueueCreated { .. }))
            || matches!(answer.error, Some(core::Error::AlreadyExists { .. }));
        if created {
            let op = self.op(&answer, Call::CreateQueue { queue: name.into() });
            self.shared.record(Op {
                outcome: Outcome::Ok,
                ..op
            });
        }
        created
    }

    /// Creates side queues during the workload's phase, and after each
    /// acknowledged creation probes it through every node at once. A
    /// probe has no session and one try, so a node that takes itself for
    /// the leader answers from its own state: one cut off from the others,
    /// not yet told of its successor, or a new leader that has not yet
    /// applied its predecessor's entries, must not answer NOT_FOUND for a
    /// queue whose creation was acknowledged (the checker's N).
    pub(crate) async fn administer(mut self) {
        let mut created = 0;
        let mut probes = Vec::new();
        while !self.shared.stopping() && created < SIDE_QUEUES_MAX {
            self.pause(SIDE_QUEUE_GAP_MS.0..SIDE_QUEUE_GAP_MS.1).await;
            let queue = format!("s{}", created + 1);
            if self.shared.stopping() || !self.create(&queue).await {
                continue;
            }
            created += 1;
            // A ms later, so the history's clock orders the probes after
            // the acknowledgement (the checker's N compares whole ms).
            tokio::time::sleep(Duration::from_millis(1)).await;
            // Not waited for: a probe of a node cut off waits out its try,
            // and the next queue should not wait with it.
            for &node in &self.shared.nodes {
                probes.push(tokio::spawn(probe(
                    self.shared.clone(),
                    node,
                    queue.clone(),
                )));
            }
        }
        for p in probes {
            let _ = p.await;
        }
    }

    /// Enqueues until the workload's phase ends.
    pub(crate) async fn produce(mut self) {
        while !self.shared.stopping() {
            if !self.ensure_session().await {
                self.pause(20..80).await;
                continue;
            }
            let jobs: Vec<(String, String)> = if !self.past.is_empty() && self.rng.random_bool(0.05)
            {
                let i = self.rng.random_range(0..self.past.len());
                vec![self.past[i].clone()]
            } else {
                let n = self.rng.random_range(1..=3);
                (0..n)
                    .map(|_| {
                        self.sent += 1;
                        let id = format!("p{}-{}", self.process, self.sent);
                        let group = format!("g{}", self.rng.random_range(0..GROUPS));
                        self.past.push((id.clone(), group.clone()));
                        (id, group)
                    })
                    .collect()
            };
            let command = Command::Enqueue {
                queue: QUEUE.into(),
                jobs: jobs.iter().map(|(id, group)| new_job(id, group)).collect(),
            };
            let answer = self.call(command, true).await;
            let results = enqueue_results(
                answer.reply.as_ref(),
                jobs.iter().map(|(id, _)| id.as_str()),
            );
            let call = Call::Enqueue {
                queue: QUEUE.into(),
                jobs: jobs
                    .into_iter()
                    .map(|(id, group)| SentJob {
                        id,
                        group,
                        chained_from: None,
                    })
                    .collect(),
                results,
            };
            let op = self.op(&answer, call);
            self.shared.record(op);
            self.pause(5..40).await;
        }
    }

    /// Fetches and settles jobs until the workload's phase ends; what it
    /// still holds then is left to expire.
    pub(crate) async fn work(mut self) {
        while !self.shared.stopping() {
            if !self.ensure_session().await {
                self.pause(20..80).await;
                continue;
            }
            match self.held.front().cloned() {
                Some(held) => self.settle(held).await,
                None => {
                    let max = self.rng.random_range(1..=3);
                    let lease_ms = LEASES_MS[self.rng.random_range(0..LEASES_MS.len())];
                    let took = self.fetch(max, lease_ms).await;
                    if took {
                        let ms = self.processing_ms(lease_ms);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    } else {
                        self.pause(20..80).await;
                    }
                }
            }
        }
    }

    /// One fetch; true when it took a job.
    async fn fetch(&mut self, max: u32, lease_ms: u64) -> bool {
        let consumer = if self.process == DRAIN_PROCESS {
            "drain".to_string()
        } else {
            format!("w{}", self.process)
        };
        let command = Command::Fetch {
            queue: QUEUE.into(),
            consumer: consumer.clone(),
            max,
            lease_ms,
        };
        let answer = self.call(command, true).await;
        let deliveries = deliveries(answer.reply.as_ref(), &answer.ids);
        for d in &deliveries {
            self.held.push_back(Held {
                offset: d.offset,
                fence: d.fence,
                lease_ms,
                extended: false,
            });
        }
        let took = !deliveries.is_empty();
        let call = Call::Fetch {
            queue: QUEUE.into(),
            consumer,
            deliveries,
            lease_ms,
            invoke_unknown: false,
            max,
            retried: answer.retried,
        };
        let op = self.op(&answer, call);
        self.shared.record(op);
        took
    }

    /// Acks, extends, nacks, releases or dead-letters the first held job.
    async fn settle(&mut self, h: Held) {
        let roll = self.rng.random_range(0..100);
        let queue = QUEUE.to_string();
        if roll < 72 || (roll < 78 && h.extended) {
            let command = Command::Ack {
                queue: queue.clone(),
                items: vec![core::AckItem {
                    offset: h.offset,
                    fence: h.fence,
                }],
            };
            let answer = self.call(command, true).await;
            let ok = ack_oks(answer.reply.as_ref(), 1).first() == Some(&true);
            let call = Call::Ack {
                queue,
                items: vec![AckItem {
                    offset: h.offset,
                    fence: h.fence,
                    ok,
                }],
            };
            let op = self.op(&answer, call);
            self.shared.record(op);
            self.held.pop_front();
        } else if roll < 78 {
            let command = Command::Extend {
                queue: queue.clone(),
                offset: h.offset,
                fence: h.fence,
                lease_ms: 1_000,
            };
            let answer = self.call(command, true).await;
            let deadline = match &answer.reply {
                Some(Reply::Extended { deadline_ms }) => *deadline_ms,
                _ => 0,
            };
            let call = Call::Extend {
                queue,
                offset: h.offset,
                fence: h.fence,
                lease_deadline_ms: deadline,
            };
            let op = self.op(&answer, call);
            self.shared.record(op);
            if let Some(front) = self.held.front_mut() {
                front.extended = true;
                front.lease_ms = 1_000;
            }
            let ms = self.processing_ms(1_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return;
        } else {
            let kind = if roll < 90 {
                EndKind::Nack
            } else if roll < 95 {
                EndKind::Release
            } else {
                EndKind::DeadLetter
            };
            let (offset, fence) = (h.offset, h.fence);
            let command = end_lease(&queue, offset, fence, kind);
            let answer = self.call(command, true).await;
            let call = Call::EndLease {
                queue,
                offset,
                fence,
                kind,
            };
            let op = self.op(&answer, call);
            self.shared.record(op);
            self.held.pop_front();
        }
        match self.held.front() {
            Some(next) => {
                let ms = self.processing_ms(next.lease_ms);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            None => self.pause(10..60).await,
        }
    }

    /// How long a handler works on a job: mostly well inside its lease,
    /// sometimes past it (so leases expire under a working consumer).
    fn processing_ms(&mut self, lease_ms: u64) -> u64 {
        if self.rng.random_bool(0.7) {
            self.rng.random_range(5..lease_ms / 2)
        } else {
            self.rng.random_range(lease_ms / 2..lease_ms * 3 / 2)
        }
    }

    /// Takes and acks every job left, then records the queue drained, its
    /// dead letters and its stats as the leader reads them. False when
    /// `deadline` passed first.
    pub(crate) async fn drain(&mut self, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            if !self.ensure_session().await {
                self.pause(50..150).await;
                continue;
            }
            if !self.held.is_empty() {
                let items: Vec<(u64, u64)> =
                    self.held.iter().map(|h| (h.offset, h.fence)).collect();
                let command = Command::Ack {
                    queue: QUEUE.into(),
                    items: items
                        .iter()
                        .map(|&(offset, fence)| core::AckItem { offset, fence })
                        .collect(),
                };
                let answer = self.call(command, true).await;
                let oks = ack_oks(answer.reply.as_ref(), items.len());
                let call = Call::Ack {
                    queue: QUEUE.into(),
                    items: items
                        .iter()
                        .zip(&oks)
                        .map(|(&(offset, fence), &ok)| AckItem { offset, fence, ok })
                        .collect(),
                };
                let op = self.op(&answer, call);
                self.shared.record(op);
                // Acked or not, these leases are done with: an unacked one
                // comes back once its lease ends.
                self.held.clear();
                continue;
            }
            if self.fetch(DRAIN_FETCH_MAX, DRAIN_LEASE_MS).await {
                continue;
            }
            if self.finish_drain().await {
                return true;
            }
            self.pause(100..200).await;
        }
        false
    }

    /// When the leader shows nothing pending: records the end of the drain.
    async fn finish_drain(&mut self) -> bool {
        let node = self.pick_node();
        let at = self.shared.now_ms();
        let info = match self
            .send(node, Request::Read(Read::Queue { name: QUEUE.into() }))
            .await
        {
            Ok(Response::Read(Ok(ReadReply::Queue(info)))) => info,
            _ => return false,
        };
        let stats = &info.stats;
        if stats.ready + stats.delayed + stats.leased > 0 {
            return false;
        }
        let mut dead = Vec::new();
        let mut after = None;
        loop {
            let read = Read::DeadLetters {
                queue: QUEUE.into(),
                after,
                limit: 1_000,
                subscription: None,
            };
            match self.send(node, Request::Read(read)).await {
                Ok(Response::Read(Ok(ReadReply::DeadLetters(page, blobs)))) => {
                    for (d, blob) in page.dead_letters.iter().zip(blobs) {
                        dead.push(DeadJob {
                            offset: d.offset,
                            id: blob.map(|b| b.id).unwrap_or_default(),
                            group: d.group.clone().unwrap_or_default(),
                            attempts: d.attempts,
                            reason: d.reason.clone(),
                        });
                    }
                    match page.next_after {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                _ => return false,
            }
        }
        let op = |call| Op {
            invoke_ms: at,
            complete_ms: self.shared.now_ms(),
            node,
            process: DRAIN_PROCESS,
            outcome: Outcome::Ok,
            call,
        };
        let ops = [
            op(Call::Drained {
                queue: QUEUE.into(),
            }),
            op(Call::DeadLetters {
                queue: QUEUE.into(),
                jobs: dead,
            }),
            op(Call::Stats {
                queue: QUEUE.into(),
                ready: stats.ready,
                delayed: stats.delayed,
                leased: stats.leased,
                dead: stats.dead,
                next_offset: stats.next_offset,
                ack_floor: stats.ack_floor,
            }),
        ];
        for o in ops {
            self.shared.record(o);
        }
        true
    }
}

/// One probe of side queue `queue` through `node`: a fetch with no session
/// and one try (see [`Client::administer`]). It records the fetch and, when
/// the node answered NOT_FOUND, that answer as the checker reads it.
async fn probe(shared: Arc<Shared>, node: NodeId, queue: String) {
    let process = PROBE_PROCESS + node;
    let mut client = Client::new(shared.clone(), process, 0);
    let consumer = "probe".to_string();
    let (max, lease_ms) = (1, 1_000);
    let command = Command::Fetch {
        queue: queue.clone(),
        consumer: consumer.clone(),
        max,
        lease_ms,
    };
    let answer = client.call_at(command, false, node).await;
    if let Some(core::Error::NotFound { .. }) = answer.error {
        let op = client.op(
            &answer,
            Call::QueueNotFound {
                queue: queue.clone(),
            },
        );
        shared.record(op);
    }
    let call = Call::Fetch {
        queue,
        consumer,
        deliveries: deliveries(answer.reply.as_ref(), &answer.ids),
        lease_ms,
        invoke_unknown: false,
        max,
        retried: answer.retried,
    };
    let op = client.op(&answer, call);
    shared.record(op);
}
