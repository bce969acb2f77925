//! The simulated clients and what they record: producers, workers, an
//! admin that creates side queues and probes them through every node, and
//! the drain. Every state-changing call goes in a session and is retried
//! with the same sequence number after a timeout, as the Rust client does.
use lockstep_chaos::history::{AckItem, Call, EndKind, Op, Outcome, SentJob};
use lockstep_core::{self as core, Command, Error, QueueConfig, Reply, Sequence};
use rand::Rng;

use crate::calls::{ack_oks, deliveries, end_lease, enqueue_results, new_job};

use crate::client::{Held, Kind, Pending, What, DRAIN_PROCESS};
use crate::net::{Addr, Answer, Envelope, Msg, NodeIx, Try, NODES};
use crate::world::{ClientEvent, Phase, World};

/// How long a client waits for one try's answer, simulated ms.
const TRY_MS: u64 = 500;
/// Tries of one call, the first included.
const TRIES_MAX: u32 = 4;
/// Pause before a try after an answer that said "no leader here".
const RETRY_MS: u64 = 30;
/// Side queues the admin creates in one run.
const SIDE_QUEUES_MAX: u64 = 6;
/// Lease lengths workers ask for, ms.
const LEASES_MS: [u64; 3] = [300, 800, 1_500];
/// The drain's lease: long enough to ack everything it took.
const DRAIN_LEASE_MS: u64 = 30_000;
/// Jobs one drain fetch takes.
const DRAIN_FETCH_MAX: u32 = 100;
/// Groups the producers spread jobs over.
const GROUPS: u32 = 8;
/// The queue every run creates first.
pub(crate) const MAIN_QUEUE: &str = "q";

fn queue_config(world: &World) -> QueueConfig {
    QueueConfig {
        max_attempts: world.max_attempts,
        backoff_base_ms: 20,
        backoff_cap_ms: 500,
        ..QueueConfig::default()
    }
}

/// What a client does on `event`: the world's [`crate::world::OnClient`].
pub(crate) fn on_client(world: &mut World, event: ClientEvent) {
    match event {
        ClientEvent::Wake(cx) => step(world, cx),
        ClientEvent::TimedOut(cx, try_id) => timed_out(world, cx, try_id),
        ClientEvent::Answered(cx, tr, answer) => answered(world, cx, tr, answer),
    }
}

/// A client wakes: a retry of its call, or its next call.
fn step(world: &mut World, cx: usize) {
    if world.clients[cx].pending.is_some() {
        send_try(world, cx);
        return;
    }
    let kind = world.clients[cx].kind;
    if kind == Kind::Drain {
        if world.phase == Phase::Drain {
            drain_step(world, cx);
        }
        return;
    }
    if world.phase != Phase::Workload {
        return;
    }
    if world.clients[cx].session.is_none() {
        start(world, cx, What::OpenSession, Command::OpenSession, false);
        return;
    }
    match kind {
        Kind::Producer => produce(world, cx),
        Kind::Worker => work(world, cx),
        Kind::Admin => administer(world, cx),
        Kind::Drain => {}
    }
}

fn pick_queue(world: &mut World) -> Option<String> {
    if world.queues.is_empty() {
        return None;
    }
    if world.rng.random_bool(0.6) {
        return Some(world.queues[0].clone());
    }
    let i = world.rng.random_range(0..world.queues.len());
    Some(world.queues[i].clone())
}

fn produce(world: &mut World, cx: usize) {
    let Some(queue) = pick_queue(world) else {
        world.wake_client(cx, 50);
        return;
    };
    let client = &world.clients[cx];
    let resend = !client.past.is_empty() && world.rng.random_bool(0.05);
    let (queue, jobs) = if resend {
        let i = world.rng.random_range(0..world.clients[cx].past.len());
        let (q, id, group) = world.clients[cx].past[i].clone();
        (q, vec![(id, group)])
    } else {
        let n = world.rng.random_range(1..=3);
        let mut jobs = Vec::new();
        for _ in 0..n {
            let c = &mut world.clients[cx];
            c.sent += 1;
            let id = format!("p{cx}-{}", c.sent);
            let group = format!("g{}", world.rng.random_range(0..GROUPS));
            world.clients[cx]
                .past
                .push((queue.clone(), id.clone(), group.clone()));
            jobs.push((id, group));
        }
        (queue, jobs)
    };
    let command = Command::Enqueue {
        queue: queue.clone(),
        jobs: jobs.iter().map(|(id, group)| new_job(id, group)).collect(),
    };
    let what = What::Enqueue {
        queue,
        jobs: jobs
            .into_iter()
            .map(|(id, group)| SentJob {
                id,
                group,
                chained_from: None,
            })
            .collect(),
    };
    start(world, cx, what, command, true);
}

fn work(world: &mut World, cx: usize) {
    if let Some(h) = world.clients[cx].held.front().cloned() {
        let roll = world.rng.random_range(0..100);
        let (what, command) = if roll < 72 || (roll < 78 && h.extended) {
            (
                What::Ack {
                    queue: h.queue.clone(),
                    items: vec![(h.offset, h.fence)],
                },
                Command::Ack {
                    queue: h.queue.clone(),
                    items: vec![core::AckItem {
                        offset: h.offset,
                        fence: h.fence,
                    }],
                },
            )
        } else if roll < 78 {
            (
                What::Extend {
                    queue: h.queue.clone(),
                    offset: h.offset,
                    fence: h.fence,
                },
                Command::Extend {
                    queue: h.queue.clone(),
                    offset: h.offset,
                    fence: h.fence,
                    lease_ms: 1_000,
                },
            )
        } else {
            let kind = if roll < 90 {
                EndKind::Nack
            } else if roll < 95 {
                EndKind::Release
            } else {
                EndKind::DeadLetter
            };
            let (queue, offset, fence) = (h.queue.clone(), h.offset, h.fence);
            let command = end_lease(&queue, offset, fence, kind);
            (
                What::EndLease {
                    queue,
                    offset,
                    fence,
                    kind,
                },
                command,
            )
        };
        start(world, cx, what, command, true);
        return;
    }
    let Some(queue) = pick_queue(world) else {
        world.wake_client(cx, 50);
        return;
    };
    let max = world.rng.random_range(1..=3);
    let lease_ms = LEASES_MS[world.rng.random_range(0..LEASES_MS.len())];
    let command = Command::Fetch {
        queue: queue.clone(),
        consumer: format!("w{cx}"),
        max,
        lease_ms,
    };
    start(
        world,
        cx,
        What::Fetch {
            queue,
            max,
            lease_ms,
        },
        command,
        true,
    );
}

fn administer(world: &mut World, cx: usize) {
    if let Some((queue, node)) = world.clients[cx].probes.pop_front() {
        // Through every node in turn, with no session and no retry, so a
        // node that takes itself for leader answers from its own state.
        let command = Command::Enqueue {
            queue: queue.clone(),
            jobs: vec![new_job(&format!("{queue}-0"), "probe")],
        };
        start_at(world, cx, What::Probe { queue }, command, false, Some(node));
        return;
    }
    let queue = if world.queues.is_empty() {
        MAIN_QUEUE.to_string()
    } else if world.clients[cx].created < SIDE_QUEUES_MAX {
        format!("s{}", world.clients[cx].created + 1)
    } else {
        return;
    };
    let command = Command::CreateQueue {
        name: queue.clone(),
        config: queue_config(world),
    };
    start(world, cx, What::CreateQueue { queue }, command, true);
}

fn start(world: &mut World, cx: usize, what: What, command: Command, sequenced: bool) {
    start_at(world, cx, what, command, sequenced, None);
}

fn start_at(
    world: &mut World,
    cx: usize,
    what: What,
    command: Command,
    sequenced: bool,
    node: Option<NodeIx>,
) {
    let node = node.unwrap_or_else(|| world.rng.random_range(0..NODES));
    let tries_max = if matches!(what, What::Probe { .. }) {
        1
    } else {
        TRIES_MAX
    };
    let client = &mut world.clients[cx];
    let seq = sequenced.then(|| {
        client.seq += 1;
        client.seq
    });
    client.pending = Some(Pending {
        what,
        command,
        seq,
        invoke_ms: world.now,
        first_node: node,
        node,
        tries: 0,
        tries_max,
        try_id: 0,
        maybe_applied: false,
    });
    send_try(world, cx);
}

fn send_try(world: &mut World, cx: usize) {
    let client = &mut world.clients[cx];
    let session = client.session;
    client.next_try += 1;
    let try_id = client.next_try;
    let Some(p) = client.pending.as_mut() else {
        return;
    };
    if p.tries > 0 {
        p.node = (p.node + 1) % NODES;
    }
    p.tries += 1;
    p.try_id = try_id;
    let command = match (p.seq, session) {
        (Some(seq), Some(session)) => Command::Sequenced {
            sequence: Sequence {
                session,
                seq,
                floor: seq,
                try_number: lockstep_core::TryNumber {
                    client: p.tries,
                    ..lockstep_core::TryNumber::default()
                },
            },
            command: Box::new(p.command.clone()),
        },
        _ => p.command.clone(),
    };
    let node = p.node;
    world.send(Envelope {
        from: Addr::Client(cx),
        to: Addr::Node(node),
        msg: Msg::Request {
            tr: Try {
                client: cx,
                id: try_id,
            },
            command,
            via: None,
        },
    });
    world.try_timeout(cx, try_id, TRY_MS);
}

fn timed_out(world: &mut World, cx: usize, try_id: u64) {
    let Some(p) = world.clients[cx].pending.as_mut() else {
        return;
    };
    if p.try_id != try_id {
        return;
    }
    p.maybe_applied = true;
    p.try_id = 0;
    if p.tries < p.tries_max {
        send_try(world, cx);
    } else {
        finish(world, cx, None);
    }
}

fn answered(world: &mut World, cx: usize, tr: Try, answer: Answer) {
    let Some(p) = world.clients[cx].pending.as_mut() else {
        return;
    };
    if p.try_id != tr.id || p.try_id == 0 {
        return;
    }
    p.try_id = 0;
    if matches!(answer, Answer::Unavailable) && p.tries < p.tries_max {
        world.wake_client(cx, RETRY_MS);
        return;
    }
    finish(world, cx, Some(answer));
}

/// A call ended: record it, and decide what the client does next.
fn finish(world: &mut World, cx: usize, answer: Option<Answer>) {
    let Some(p) = world.clients[cx].pending.take() else {
        return;
    };
    let process = world.clients[cx].process();
    let op = |outcome: Outcome, call: Call| Op {
        invoke_ms: p.invoke_ms,
        complete_ms: world.now,
        node: p.first_node as u64 + 1,
        process,
        outcome,
        call,
    };
    // The outcome, and the reply when it is OK.
    let (outcome, reply, ids, error) = match answer {
        Some(Answer::Applied {
            result: Ok(reply),
            ids,
        }) => (Outcome::Ok, Some(reply), ids, None),
        Some(Answer::Applied { result: Err(e), .. }) => {
            let outcome = match e {
                Error::ReplyForgotten { .. } | Error::Superseded { .. } => Outcome::Indeterminate,
                _ if p.maybe_applied && matches!(e, Error::SessionUnknown { .. }) => {
                    Outcome::Indeterminate
                }
                _ => Outcome::Fail,
            };
            (outcome, None, Vec::new(), Some(e))
        }
        Some(Answer::Refused(e)) => {
            let outcome = if p.maybe_applied {
                Outcome::Indeterminate
            } else {
                Outcome::Fail
            };
            (outcome, None, Vec::new(), Some(e))
        }
        Some(Answer::Unavailable) | None => {
            let outcome = if p.maybe_applied || answer.is_none() {
                Outcome::Indeterminate
            } else {
                Outcome::Fail
            };
            (outcome, None, Vec::new(), None)
        }
    };
    if matches!(error, Some(Error::SessionUnknown { .. })) {
        world.clients[cx].session = None;
    }
    let mut ops = Vec::new();
    if let (Some(Error::NotFound { .. }), Some(queue)) = (&error, queue_of(&p.what)) {
        ops.push(op(
            Outcome::Fail,
            Call::QueueNotFound {
                queue: queue.to_string(),
            },
        ));
    }
    let mut wake = world.rng.random_range(10..60);
    match &p.what {
        What::OpenSession => {
            if let Some(Reply::SessionOpened { session }) = reply {
                let c = &mut world.clients[cx];
                c.session = Some(session);
                c.seq = 0;
            } else {
                wake = 50;
            }
        }
        What::CreateQueue { queue } => {
            if let Some(Reply::QueueCreated { .. }) = reply {
                ops.push(op(
                    Outcome::Ok,
                    Call::CreateQueue {
                        queue: queue.clone(),
                    },
                ));
                if !world.queues.contains(queue) {
                    world.queues.push(queue.clone());
                }
                let c = &mut world.clients[cx];
                if queue != MAIN_QUEUE {
                    c.created += 1;
                    for node in 0..NODES {
                        c.probes.push_back((queue.clone(), node));
                    }
                }
                wake = world.rng.random_range(0..30);
            } else {
                wake = 100;
            }
            if !world.clients[cx].probes.is_empty() {
                wake = 0;
            } else if queue != MAIN_QUEUE && reply.is_some() {
                wake = world.rng.random_range(700..1_500);
            }
        }
        What::Enqueue { queue, .. } | What::Probe { queue } => {
            let jobs = match &p.what {
                What::Probe { queue } => vec![SentJob {
                    id: format!("{queue}-0"),
                    group: "probe".into(),
                    chained_from: None,
                }],
                _ => jobs_of(&p.what),
            };
            let results = enqueue_results(reply.as_ref(), jobs.iter().map(|j| j.id.as_str()));
            ops.push(op(
                outcome,
                Call::Enqueue {
                    queue: queue.clone(),
                    jobs,
                    results,
                },
            ));
            if matches!(p.what, What::Probe { .. }) {
                wake = if world.clients[cx].probes.is_empty() {
                    world.rng.random_range(700..1_500)
                } else {
                    0
                };
            }
        }
        What::Fetch {
            queue,
            max,
            lease_ms,
        } => {
            let deliveries = deliveries(reply.as_ref(), &ids);
            for d in &deliveries {
                world.clients[cx].held.push_back(Held {
                    queue: queue.clone(),
                    offset: d.offset,
                    fence: d.fence,
                    lease_ms: *lease_ms,
                    extended: false,
                });
            }
            let took = !deliveries.is_empty();
            ops.push(op(
                outcome,
                Call::Fetch {
                    queue: queue.clone(),
                    consumer: format!("w{cx}"),
                    deliveries,
                    lease_ms: *lease_ms,
                    invoke_unknown: false,
                    max: *max,
                    retried: p.maybe_applied,
                },
            ));
            if world.clients[cx].kind == Kind::Drain {
                drain_after_fetch(world, cx, queue, took, reply.is_some());
                world.history.extend(ops);
                return;
            }
            wake = if took {
                processing_ms(world, *lease_ms)
            } else {
                world.rng.random_range(20..80)
            };
        }
        What::Ack { queue, items } => {
            let oks = ack_oks(reply.as_ref(), items.len());
            ops.push(op(
                outcome,
                Call::Ack {
                    queue: queue.clone(),
                    items: items
                        .iter()
                        .zip(&oks)
                        .map(|(&(offset, fence), &ok)| AckItem { offset, fence, ok })
                        .collect(),
                },
            ));
            wake = next_after_lease_call(world, cx);
        }
        What::EndLease {
            queue,
            offset,
            fence,
            kind,
        } => {
            ops.push(op(
                outcome,
                Call::EndLease {
                    queue: queue.clone(),
                    offset: *offset,
                    fence: *fence,
                    kind: *kind,
                },
            ));
            wake = next_after_lease_call(world, cx);
        }
        What::Extend {
            queue,
            offset,
            fence,
        } => {
            let deadline = match &reply {
                Some(Reply::Extended { deadline_ms }) => *deadline_ms,
                _ => 0,
            };
            ops.push(op(
                outcome,
                Call::Extend {
                    queue: queue.clone(),
                    offset: *offset,
                    fence: *fence,
                    lease_deadline_ms: deadline,
                },
            ));
            // Keep it, extended, for a later ack.
            let c = &mut world.clients[cx];
            if let Some(h) = c.held.front_mut() {
                h.extended = true;
                h.lease_ms = 1_000;
            }
            wake = processing_ms(world, 1_000);
        }
    }
    world.history.extend(ops);
    if world.clients[cx].kind == Kind::Drain {
        world.wake_client(cx, 0);
    } else {
        world.wake_client(cx, wake);
    }
}

/// After an ack or an end of lease: the held job is done with; the next
/// one after its processing time, or a fetch soon.
fn next_after_lease_call(world: &mut World, cx: usize) -> u64 {
    let c = &mut world.clients[cx];
    if c.kind == Kind::Drain {
        c.held.clear();
        return 0;
    }
    c.held.pop_front();
    match c.held.front() {
        Some(h) => {
            let lease = h.lease_ms;
            processing_ms(world, lease)
        }
        None => world.rng.random_range(10..60),
    }
}

/// How long a handler works on a job: mostly well inside its lease,
/// sometimes past it (so leases expire under a working consumer).
fn processing_ms(world: &mut World, lease_ms: u64) -> u64 {
    if world.rng.random_bool(0.7) {
        world.rng.random_range(5..lease_ms / 2)
    } else {
        world.rng.random_range(lease_ms / 2..lease_ms * 3 / 2)
    }
}

fn queue_of(what: &What) -> Option<&str> {
    match what {
        What::OpenSession => None,
        What::CreateQueue { queue }
        | What::Enqueue { queue, .. }
        | What::Probe { queue }
        | What::Fetch { queue, .. }
        | What::Ack { queue, .. }
        | What::EndLease { queue, .. }
        | What::Extend { queue, .. } => Some(queue),
    }
}

fn jobs_of(what: &What) -> Vec<SentJob> {
    match what {
        What::Enqueue { jobs, .. } => jobs.clone(),
        _ => Vec::new(),
    }
}

// ---- the drain ----

fn drain_step(world: &mut World, cx: usize) {
    if world.clients[cx].session.is_none() {
        start(world, cx, What::OpenSession, Command::OpenSession, false);
        return;
    }
    let i = world.clients[cx].drain_queue;
    let Some(queue) = world.queues.get(i).cloned() else {
        world.done();
        return;
    };
    let held: Vec<(u64, u64)> = world.clients[cx]
        .held
        .iter()
        .map(|h| (h.offset, h.fence))
        .collect();
    if !held.is_empty() {
        let command = Command::Ack {
            queue: queue.clone(),
            items: held
                .iter()
                .map(|&(offset, fence)| core::AckItem { offset, fence })
                .collect(),
        };
        start(world, cx, What::Ack { queue, items: held }, command, true);
        return;
    }
    let command = Command::Fetch {
        queue: queue.clone(),
        consumer: "drain".into(),
        max: DRAIN_FETCH_MAX,
        lease_ms: DRAIN_LEASE_MS,
    };
    let what = What::Fetch {
        queue,
        max: DRAIN_FETCH_MAX,
        lease_ms: DRAIN_LEASE_MS,
    };
    start(world, cx, what, command, true);
}

/// The drain's fetch ended: ack what it took, or, when it took nothing,
/// close the queue once the leader's state shows nothing pending.
fn drain_after_fetch(world: &mut World, cx: usize, queue: &str, took: bool, ok: bool) {
    if took || !ok {
        world.wake_client(cx, if ok { 0 } else { 100 });
        return;
    }
    let Some(leader) = world.settled_leader() else {
        world.wake_client(cx, 100);
        return;
    };
    let Ok(stats) = world.nodes[leader].state.stats(queue) else {
        world.wake_client(cx, 100);
        return;
    };
    if stats.ready + stats.delayed + stats.leased > 0 {
        world.wake_client(cx, 100);
        return;
    }
    let at = world.now;
    let op = |call: Call| Op {
        invoke_ms: at,
        complete_ms: at,
        node: leader as u64 + 1,
        process: DRAIN_PROCESS,
        outcome: Outcome::Ok,
        call,
    };
    let dead = world.dead_letters(leader, queue);
    let ops = [
        op(Call::Drained {
            queue: queue.into(),
        }),
        op(Call::DeadLetters {
            queue: queue.into(),
            jobs: dead,
        }),
        op(Call::Stats {
            queue: queue.into(),
            ready: stats.ready,
            delayed: stats.delayed,
            leased: stats.leased,
            dead: stats.dead,
            next_offset: stats.next_offset,
            ack_floor: stats.ack_floor,
        }),
    ];
    world.history.extend(ops);
    world.clients[cx].drain_queue += 1;
    world.wake_client(cx, 0);
}
