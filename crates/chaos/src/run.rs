//! Runs a workload against a real cluster while faults are injected, then
//! heals, drains and records every node's state digest. Produces the
//! history the checker reads.
//!
//! Everything random comes from one seed: the fault schedule, and each
//! producer's and worker's choices (node, sizes, sleeps, outcomes). Timing
//! still varies from run to run, so a replay repeats the schedule, not the
//! interleaving.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockstep_harness::{Cluster, Spec};
use lockstep_proto as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::{Channel, Endpoint};

use crate::history::{
    AckItem, Call, Delivery, EndKind, EnqueueOutcome, EnqueueResult, Op, Outcome, SentJob,
};

/// The queue every run uses.
pub const QUEUE: &str = "chaos";
/// Deadline of one client call; past it the outcome is indeterminate.
const CALL_MS_MAX: u64 = 3_000;
/// One batch in this many is sent again after it succeeded.
const RESEND_ONE_IN: u32 = 10;
/// Tries of one enqueue (same ids) before a producer gives up on it.
const ENQUEUE_TRIES_MAX: u32 = 20;
/// Bound on healing: a leader must be agreed within this.
const LEADER_MS_MAX: u64 = 10_000;
/// Bound on draining the queue after healing.
const DRAIN_MS_MAX: u64 = 60_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    None,
    Kill,
    /// Every node killed at once (a power cut), then restarted.
    KillAll,
    Pause,
    Wipe,
    PartitionLeader,
    PartitionHalves,
    PartitionOneway,
    Membership,
    Mixed,
}

impl Profile {
    pub const ALL: [Profile; 10] = [
        Profile::None,
        Profile::Kill,
        Profile::KillAll,
        Profile::Pause,
        Profile::Wipe,
        Profile::PartitionLeader,
        Profile::PartitionHalves,
        Profile::PartitionOneway,
        Profile::Membership,
        Profile::Mixed,
    ];

    /// The faults `mixed` draws from.
    const MIXED: [Profile; 8] = [
        Profile::Kill,
        Profile::KillAll,
        Profile::Pause,
        Profile::Wipe,
        Profile::PartitionLeader,
        Profile::PartitionHalves,
        Profile::PartitionOneway,
        Profile::Membership,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profile::None => "none",
            Profile::Kill => "kill",
            Profile::KillAll => "kill-all",
            Profile::Pause => "pause",
            Profile::Wipe => "wipe",
            Profile::PartitionLeader => "partition-leader",
            Profile::PartitionHalves => "partition-halves",
            Profile::PartitionOneway => "partition-oneway",
            Profile::Membership => "membership",
            Profile::Mixed => "mixed",
        }
    }

    pub fn parse(text: &str) -> Result<Profile, String> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Profile::ALL.iter().map(|p| p.name()).collect();
                format!("unknown profile `{text}`; one of {}", names.join(", "))
            })
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub nodes: u64,
    pub seed: u64,
    pub profile: Profile,
    pub duration: Duration,
    pub producers: usize,
    pub workers: usize,
    pub groups: u64,
    /// A planted bug every node runs with (`LOCKSTEP_PLANTED_BUG`; needs a
    /// binary built with the `planted-bugs` feature).
    pub planted: Option<String>,
    /// The third octet of the nodes' loopback addresses, so runs in
    /// parallel (`scripts/chaos` lanes) never partition each other.
    pub net: u8,
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcomes {
    pub history: Vec<Op>,
    /// Faults applied, with their start time (wall ms), for the timeline.
    pub faults: Vec<(u64, String)>,
    /// A liveness failure (no leader after healing, drain not finished).
    pub liveness: Option<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Clone, Debug, Default)]
struct Recorder(Arc<Mutex<Vec<Op>>>);

impl Recorder {
    fn push(&self, op: Op) {
        if let Ok(mut h) = self.0.lock() {
            h.push(op);
        }
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
fn channel_to(addr: std::net::SocketAddr, from: Ipv4Addr) -> Result<Channel, String> {
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

/// Runs one chaos run. The cluster is always torn down and partitions are
/// always removed, whatever happens.
pub async fn run(options: &Options) -> Result<Outcomes, String> {
    let mut spec = Spec::new(&options.bin, &options.dir);
    spec.net = options.net;
    if let Some(bug) = &options.planted {
        spec.env.push(("LOCKSTEP_PLANTED_BUG".into(), bug.clone()));
    }
    let cluster = Cluster::start(spec, options.nodes, options.nodes).map_err(|e| e.0)?;
    let ids: Vec<u64> = (1..=options.nodes).collect();
    cluster.bootstrap(options.nodes).await.map_err(|e| e.0)?;
    cluster
        .wait_leader(&ids, Duration::from_millis(LEADER_MS_MAX * 2))
        .await
        .map_err(|e| e.0)?;
    let channels: Vec<Channel> = ids
        .iter()
        .map(|id| channel_to(cluster.addr(*id).client, cluster.client_ip()))
        .collect::<Result<_, _>>()?;
    let mut admin = pb::admin_client::AdminClient::new(channels[0].clone());
    admin
        .create_queue(pb::CreateQueueRequest {
            name: QUEUE.into(),
            config: Some(pb::QueueConfig {
                // The server must never dead-letter on its own: the checker
                // would read that as a job finished unseen.
                max_attempts: 1_000,
                backoff_base_ms: 50,
                backoff_cap_ms: 500,
                lease_ms_default: 2_000,
                ..Default::default()
            }),
        })
        .await
        .map_err(|s| format!("create queue: {s}"))?;

    let recorder = Recorder::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 0..options.producers {
        let rng = StdRng::seed_from_u64(options.seed ^ (0x5EED_0000 + p as u64));
        tasks.push(tokio::spawn(producer(
            p,
            rng,
            channels.clone(),
            options.groups,
            recorder.clone(),
            stop.clone(),
        )));
    }
    for w in 0..options.workers {
        let rng = StdRng::seed_from_u64(options.seed ^ (0xC0DE_0000 + w as u64));
        tasks.push(tokio::spawn(worker(
            w,
            rng,
            channels.clone(),
            recorder.clone(),
            stop.clone(),
        )));
    }

    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let mut partitions = Partitions::new();
    let faults = inject(options, &cluster, &channels, &mut partitions).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_millis(CALL_MS_MAX * 3), t).await;
    }

    // Heal: remove partitions, resume and restart everything.
    partitions.heal();
    let mut c = cluster.lock().await;
    for id in c.paused() {
        let _ = c.resume(id);
    }
    for id in ids.clone() {
        c.spawn(id).map_err(|e| e.0)?;
    }
    let mut liveness = None;
    match c
        .wait_leader(&ids, Duration::from_millis(LEADER_MS_MAX))
        .await
    {
        Err(e) => {
            liveness = Some(format!(
                "no leader within {LEADER_MS_MAX} ms of healing: {e}"
            ));
        }
        Ok(leader) => {
            // A membership fault that could not be undone in the run leaves
            // a node out; the digest comparison needs every node in.
            if let Err(e) = ensure_members(&c, leader, &ids, &channels).await {
                liveness = Some(e);
            }
        }
    }
    if liveness.is_none() {
        let mut rng = StdRng::seed_from_u64(options.seed ^ 0xD7A1);
        if let Err(e) = drain(&mut rng, &channels, &recorder).await {
            liveness = Some(e);
        }
    }
    record_digests(&c, &ids, &recorder).await;
    drop(c);

    let history = recorder.0.lock().map(|h| h.clone()).unwrap_or_default();
    Ok(Outcomes {
        history,
        faults,
        liveness,
    })
}

async fn producer(
    p: usize,
    mut rng: StdRng,
    channels: Vec<Channel>,
    groups: u64,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let k = rng.random_range(1..=4);
        let jobs: Vec<pb::Job> = (0..k)
            .map(|j| pb::Job {
                id: Some(format!("p{p}-{n}-{j}")),
                group: format!("g{}", rng.random_range(0..groups)),
                payload: vec![b'x'; 64],
                ..Default::default()
            })
            .collect();
        n += 1;
        let sent: Vec<SentJob> = jobs
            .iter()
            .map(|j| SentJob {
                id: j.id.clone().unwrap_or_default(),
                group: j.group.clone(),
            })
            .collect();
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

async fn worker(
    w: usize,
    mut rng: StdRng,
    channels: Vec<Channel>,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
) {
    let process = 1_000 + w as u64;
    while !stop.load(Ordering::Relaxed) {
        let node = rng.random_range(0..channels.len());
        let request = fetch_request(&format!("w{w}"), 2, 2_000, 300);
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
                        queue: QUEUE.into(),
                        offset: d.offset,
                        fence: d.fence,
                        delay_ms: 0,
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
                ack_one(&mut q, t0, node, process, &[(d.offset, d.fence)], &recorder).await;
            }
        }
    }
}

fn fetch_request(consumer: &str, max: u32, lease_ms: u64, wait_ms: u64) -> pb::FetchRequest {
    pb::FetchRequest {
        queue: QUEUE.into(),
        consumer: consumer.into(),
        max,
        lease_ms,
        wait_ms,
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
    match q.fetch(request).await {
        Ok(resp) => {
            let deliveries = resp.into_inner().deliveries;
            recorder.push(fetch_op(t0, node, process, Outcome::Ok, deliveries.clone()));
            Some(deliveries)
        }
        Err(s) => {
            recorder.push(fetch_op(t0, node, process, outcome_of(&s), Vec::new()));
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

fn fetch_op(t0: u64, node: usize, process: u64, outcome: Outcome, ds: Vec<pb::Delivery>) -> Op {
    Op {
        invoke_ms: t0,
        complete_ms: now_ms(),
        node: node as u64 + 1,
        process,
        outcome,
        call: Call::Fetch {
            queue: QUEUE.into(),
            consumer: String::new(),
            deliveries: ds
                .into_iter()
                .map(|d| Delivery {
                    offset: d.offset,
                    id: d.id,
                    group: d.group,
                    fence: d.fence,
                    lease_deadline_ms: d.lease_deadline_ms,
                })
                .collect(),
        },
    }
}

async fn ack_one(
    q: &mut pb::queue_client::QueueClient<Channel>,
    t0: u64,
    node: usize,
    process: u64,
    items: &[(u64, u64)],
    recorder: &Recorder,
) {
    let r = q
        .ack(pb::AckRequest {
            queue: QUEUE.into(),
            items: items
                .iter()
                .map(|(offset, fence)| pb::AckItem {
                    offset: *offset,
                    fence: *fence,
                })
                .collect(),
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
            queue: QUEUE.into(),
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
async fn drain(rng: &mut StdRng, channels: &[Channel], recorder: &Recorder) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(DRAIN_MS_MAX);
    let process = 9_999;
    while Instant::now() < deadline {
        let node = rng.random_range(0..channels.len());
        let request = fetch_request("drain", 100, 30_000, 200);
        let Some(ds) = fetch_recorded(&channels[node], node, process, request, recorder).await
        else {
            continue;
        };
        let mut q = pb::queue_client::QueueClient::new(channels[node].clone());
        if ds.is_empty() {
            let mut admin = pb::admin_client::AdminClient::new(channels[node].clone());
            let stats = admin
                .get_queue(pb::GetQueueRequest {
                    name: QUEUE.into(),
                    read: None,
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().queue)
                .and_then(|q| q.stats);
            if let Some(s) = stats {
                if s.ready + s.delayed + s.leased == 0 {
                    recorder.push(Op {
                        invoke_ms: now_ms(),
                        complete_ms: now_ms(),
                        node: node as u64 + 1,
                        process,
                        outcome: Outcome::Ok,
                        call: Call::Drained {
                            queue: QUEUE.into(),
                        },
                    });
                    return Ok(());
                }
            }
            continue;
        }
        let items: Vec<(u64, u64)> = ds.iter().map(|d| (d.offset, d.fence)).collect();
        ack_one(&mut q, now_ms(), node, process, &items, recorder).await;
    }
    Err(format!(
        "the drain did not empty the queue within {DRAIN_MS_MAX} ms"
    ))
}

/// Waits until every node reports the same applied index (bounded), then
/// records each node's digest.
async fn record_digests(cluster: &Cluster, ids: &[u64], recorder: &Recorder) {
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

/// Applies the profile's faults on a seeded schedule: the first after
/// about a quarter of the run (at most 10 s), then every ~5 s, each lasting
/// 2–15 s (cut short by the end of the run). Every fault is undone before
/// the next one starts.
async fn inject(
    options: &Options,
    cluster: &Arc<tokio::sync::Mutex<Cluster>>,
    channels: &[Channel],
    partitions: &mut Partitions,
) -> Vec<(u64, String)> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let start = Instant::now();
    let end = start + options.duration;
    let first = (options.duration / 4).min(Duration::from_secs(10));
    let mut faults = Vec::new();
    tokio::time::sleep(first).await;
    let ids: Vec<u64> = (1..=options.nodes).collect();
    while Instant::now() + Duration::from_secs(2) < end {
        let kind = match options.profile {
            Profile::None => break,
            Profile::Mixed => Profile::MIXED[rng.random_range(0..Profile::MIXED.len())],
            p => p,
        };
        let hold = Duration::from_millis(rng.random_range(2_000..15_000))
            .min(end.saturating_duration_since(Instant::now()));
        let leader = {
            let c = cluster.lock().await;
            c.wait_leader(&ids, Duration::from_millis(3_000)).await.ok()
        };
        let followers: Vec<u64> = ids.iter().copied().filter(|i| Some(*i) != leader).collect();
        let target = match (kind, leader) {
            // Wipe and remove only followers: a wiped leader is the same as
            // kill + wipe of a follower after an election, and removing the
            // leader is a leadership transfer openraft 0.9 does not offer.
            (Profile::Wipe | Profile::Membership, Some(_)) => {
                followers[rng.random_range(0..followers.len())]
            }
            (_, Some(l)) if rng.random_ratio(1, 2) => l,
            _ => ids[rng.random_range(0..ids.len())],
        };
        let applied = {
            let mut c = cluster.lock().await;
            apply_fault(kind, target, &ids, &mut c, channels, partitions, &mut rng).await
        };
        faults.push((
            now_ms(),
            format!("{} for {} ms", applied.label(), hold.as_millis()),
        ));
        tokio::time::sleep(hold).await;
        let undone = {
            let mut c = cluster.lock().await;
            undo_fault(&applied, &mut c, channels, partitions).await
        };
        faults.push((
            now_ms(),
            match undone {
                Ok(()) => format!("healed {}", kind.name()),
                Err(e) => format!("healed {} with trouble: {e}", kind.name()),
            },
        ));
        let gap = Duration::from_millis(rng.random_range(4_000..6_000));
        tokio::time::sleep(gap.min(end.saturating_duration_since(Instant::now()))).await;
    }
    let rest = end.saturating_duration_since(Instant::now());
    tokio::time::sleep(rest).await;
    faults
}

/// A fault in place, and what undoing it takes.
#[derive(Debug)]
enum Applied {
    Killed(Vec<u64>),
    Paused(u64),
    Wiped(u64),
    /// Partitioned: `label` says how.
    Cut(String),
    /// Removed from the membership; rejoined (empty) when undone.
    Removed(u64),
    /// The fault could not be applied (for example a removal refused).
    Skipped(String),
}

impl Applied {
    fn label(&self) -> String {
        match self {
            Applied::Killed(ids) if ids.len() == 1 => format!("kill node {}", ids[0]),
            Applied::Killed(ids) => format!("kill nodes {ids:?}"),
            Applied::Paused(id) => format!("pause node {id}"),
            Applied::Wiped(id) => format!("wipe node {id}"),
            Applied::Cut(how) => how.clone(),
            Applied::Removed(id) => format!("remove node {id}"),
            Applied::Skipped(why) => format!("skipped: {why}"),
        }
    }
}

/// Longest a membership call of the fault schedule may take.
const MEMBERSHIP_CALL_MS_MAX: u64 = 30_000;

async fn apply_fault(
    kind: Profile,
    target: u64,
    ids: &[u64],
    c: &mut Cluster,
    channels: &[Channel],
    partitions: &mut Partitions,
    rng: &mut StdRng,
) -> Applied {
    let ip = |c: &Cluster, id: u64| c.addr(id).ip;
    // Every node's address but `target`'s.
    let others = |c: &Cluster| -> Vec<Ipv4Addr> {
        ids.iter()
            .filter(|i| **i != target)
            .map(|i| ip(c, *i))
            .collect()
    };
    match kind {
        Profile::Kill => {
            c.kill(target);
            Applied::Killed(vec![target])
        }
        Profile::KillAll => {
            for id in ids {
                c.kill(*id);
            }
            Applied::Killed(ids.to_vec())
        }
        Profile::Pause => {
            let _ = c.pause(target);
            Applied::Paused(target)
        }
        Profile::Wipe => {
            let _ = c.wipe(target);
            Applied::Wiped(target)
        }
        Profile::PartitionLeader => {
            partitions.isolate(ip(c, target), &others(c));
            Applied::Cut(format!("isolate node {target}"))
        }
        Profile::PartitionHalves => {
            // A random split into a minority and a majority side.
            let mut shuffled = ids.to_vec();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.random_range(0..=i));
            }
            let (minority, majority) = shuffled.split_at(ids.len() / 2);
            for a in minority {
                let others: Vec<Ipv4Addr> = majority.iter().map(|b| ip(c, *b)).collect();
                partitions.isolate(ip(c, *a), &others);
            }
            Applied::Cut(format!("split {minority:?} | {majority:?}"))
        }
        Profile::PartitionOneway => {
            partitions.drop_from(ip(c, target), &others(c));
            Applied::Cut(format!("drop node {target}'s outgoing packets"))
        }
        Profile::Membership => {
            let channel = channels[rng.random_range(0..channels.len())].clone();
            let removed = tokio::time::timeout(
                Duration::from_millis(MEMBERSHIP_CALL_MS_MAX),
                pb::cluster_client::ClusterClient::new(channel)
                    .remove(pb::RemoveRequest { id: target }),
            )
            .await;
            match removed {
                Ok(Ok(_)) => {
                    // A removed node is stopped and forgets its data, as an
                    // operator retiring it would; it comes back empty.
                    let _ = c.stop(target);
                    let _ = c.wipe(target);
                    Applied::Removed(target)
                }
                Ok(Err(s)) => Applied::Skipped(format!("remove node {target}: {}", s.message())),
                Err(_) => Applied::Skipped(format!("remove node {target}: timed out")),
            }
        }
        Profile::None | Profile::Mixed => Applied::Skipped("no fault".into()),
    }
}

async fn undo_fault(
    applied: &Applied,
    c: &mut Cluster,
    channels: &[Channel],
    partitions: &mut Partitions,
) -> Result<(), String> {
    match applied {
        Applied::Killed(ids) => {
            for id in ids {
                c.spawn(*id).map_err(|e| e.0)?;
            }
            Ok(())
        }
        Applied::Paused(id) => c.resume(*id).map_err(|e| e.0),
        Applied::Wiped(id) => c.spawn(*id).map_err(|e| e.0),
        Applied::Cut(_) => {
            partitions.heal();
            Ok(())
        }
        Applied::Removed(id) => {
            c.spawn(*id).map_err(|e| e.0)?;
            rejoin(c, *id, channels).await
        }
        Applied::Skipped(_) => Ok(()),
    }
}

/// Rejoins every node of `ids` that is not a voter (after a membership
/// fault the run ended in the middle of).
async fn ensure_members(
    c: &Cluster,
    leader: u64,
    ids: &[u64],
    channels: &[Channel],
) -> Result<(), String> {
    let status = c.status(leader).await.map_err(|e| e.0)?;
    for id in ids {
        if !status
            .members
            .iter()
            .any(|m| m.id == *id && m.role != "learner")
        {
            rejoin(c, *id, channels).await?;
        }
    }
    Ok(())
}

/// Joins node `id` (running, empty) back as a voter, retrying through any
/// node for up to `MEMBERSHIP_CALL_MS_MAX`.
async fn rejoin(c: &Cluster, id: u64, channels: &[Channel]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(MEMBERSHIP_CALL_MS_MAX);
    let member = c.addr(id).member();
    let mut last = String::new();
    // Not through the node being joined (channel `id - 1`): it knows no
    // leader yet.
    let through: Vec<&Channel> = channels
        .iter()
        .enumerate()
        .filter(|(i, _)| channels.len() == 1 || *i as u64 + 1 != id)
        .map(|(_, channel)| channel)
        .collect();
    for channel in through.iter().cycle() {
        if Instant::now() >= deadline {
            break;
        }
        let joined = tokio::time::timeout(
            Duration::from_millis(MEMBERSHIP_CALL_MS_MAX),
            pb::cluster_client::ClusterClient::new((*channel).clone()).join(member.clone()),
        )
        .await;
        match joined {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(s)) => last = s.message().to_string(),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("join of node {id} failed: {last}"))
}

/// The comment every partition rule carries; the process id follows it.
const RULE_TAG: &str = "lockstep-chaos-";

/// iptables rules between node addresses, tagged with this process's id
/// and always removed: on `heal`, and on drop (so also on a panic, and on
/// Ctrl-C or SIGTERM, where `lockstep chaos` drops the run). Only a
/// SIGKILL can leave rules behind; the next run removes those.
#[derive(Debug)]
pub struct Partitions {
    rules: Vec<Vec<String>>,
}

impl Partitions {
    pub fn new() -> Partitions {
        remove_orphaned_rules();
        Partitions { rules: Vec::new() }
    }

    /// Drops traffic both ways between `ip` and each of `others`.
    pub fn isolate(&mut self, ip: Ipv4Addr, others: &[Ipv4Addr]) {
        let pairs: Vec<(Ipv4Addr, Ipv4Addr)> = others
            .iter()
            .flat_map(|other| [(ip, *other), (*other, ip)])
            .collect();
        self.drop_pairs(&pairs);
    }

    /// Drops the packets `ip` sends to each of `others`; theirs still
    /// reach it.
    pub fn drop_from(&mut self, ip: Ipv4Addr, others: &[Ipv4Addr]) {
        let pairs: Vec<(Ipv4Addr, Ipv4Addr)> = others.iter().map(|other| (ip, *other)).collect();
        self.drop_pairs(&pairs);
    }

    fn drop_pairs(&mut self, pairs: &[(Ipv4Addr, Ipv4Addr)]) {
        {
            for &(src, dst) in pairs {
                let rule: Vec<String> = [
                    "INPUT",
                    "-s",
                    &src.to_string(),
                    "-d",
                    &dst.to_string(),
                    "-j",
                    "DROP",
                    "-m",
                    "comment",
                    "--comment",
                    &format!("{RULE_TAG}{}", std::process::id()),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                let added = std::process::Command::new("iptables")
                    .arg("-A")
                    .args(&rule)
                    .status()
                    .is_ok_and(|s| s.success());
                if added {
                    self.rules.push(rule);
                }
            }
        }
    }

    pub fn heal(&mut self) {
        for rule in self.rules.drain(..) {
            let _ = std::process::Command::new("iptables")
                .arg("-D")
                .args(&rule)
                .status();
        }
    }
}

/// Removes the rules of chaos runs whose process no longer exists (killed
/// with SIGKILL, so no drop ran). Rules of live runs, in tests running side
/// by side, stay.
fn remove_orphaned_rules() {
    let Ok(listed) = std::process::Command::new("iptables")
        .args(["-S", "INPUT"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let owner = words
            .iter()
            .find_map(|w| w.strip_prefix(RULE_TAG))
            .and_then(|pid| pid.parse::<u32>().ok());
        let orphaned =
            owner.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
        if orphaned && words.first() == Some(&"-A") {
            let _ = std::process::Command::new("iptables")
                .arg("-D")
                .args(&words[1..])
                .status();
        }
    }
}

impl Default for Partitions {
    fn default() -> Self {
        Partitions::new()
    }
}

impl Drop for Partitions {
    fn drop(&mut self) {
        self.heal();
    }
}

/// The JSON report of one run.
#[derive(Debug, serde::Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub profile: &'static str,
    pub nodes: u64,
    pub duration_s: u64,
    pub passed: bool,
    pub liveness: Option<String>,
    pub checker: crate::checker::Report,
    pub faults: Vec<(u64, String)>,
    /// The command that runs the same seed and profile again.
    pub replay: String,
}

pub fn report(options: &Options, outcomes: &Outcomes) -> ChaosReport {
    let checker = crate::checker::check(&outcomes.history);
    ChaosReport {
        seed: options.seed,
        profile: options.profile.name(),
        nodes: options.nodes,
        duration_s: options.duration.as_secs(),
        passed: checker.passed() && outcomes.liveness.is_none(),
        liveness: outcomes.liveness.clone(),
        checker,
        faults: outcomes.faults.clone(),
        replay: format!(
            "lockstep chaos --profile {} --seed {} --duration-s {} --nodes {} --producers {} --workers {} --groups {}",
            options.profile.name(),
            options.seed,
            options.duration.as_secs(),
            options.nodes,
            options.producers,
            options.workers,
            options.groups
        ) + &options
            .planted
            .as_ref()
            .map(|b| format!(" --plant {b}"))
            .unwrap_or_default(),
    }
}

/// A short human summary of a report.
pub fn summary(r: &ChaosReport) -> String {
    let counts: Vec<String> = CLASSES
        .iter()
        .zip(r.checker.counts.in_order())
        .map(|((letter, _), n)| format!("{letter}={n}"))
        .collect();
    format!(
        "{} profile={} seed={} nodes={} {}s: ops={} enqueued_ok={} delivered={} {} faults={} liveness={}\nreplay: {}",
        if r.passed { "PASS" } else { "FAIL" },
        r.profile,
        r.seed,
        r.nodes,
        r.duration_s,
        r.checker.ops,
        r.checker.enqueued_ok,
        r.checker.delivered,
        counts.join(" "),
        r.faults.len() / 2,
        r.liveness.as_deref().unwrap_or("ok"),
        r.replay
    )
}

/// What each anomaly class means, for the one-page summary.
const CLASSES: [(&str, &str); 7] = [
    ("L", "acknowledged enqueue never delivered after the drain"),
    ("U", "delivered job no producer sent"),
    ("D", "one id stored at two offsets"),
    ("R", "delivered again after an ack answered OK"),
    ("O", "delivered out of group order"),
    ("F", "overlapping live leases, or a stale fence accepted"),
    (
        "X",
        "nodes with different state digests at one applied index",
    ),
];

/// The one-page human summary of a run (`summary.txt`): the verdict, what
/// was done, each anomaly class with its count and first examples, the
/// faults in order, and the replay command.
pub fn summary_page(r: &ChaosReport) -> String {
    use std::fmt::Write as _;
    let counts = r.checker.counts.in_order();
    let mut page = String::new();
    let _ = writeln!(
        page,
        "{}: chaos profile {} seed {}, {} nodes, {} s",
        if r.passed { "PASS" } else { "FAIL" },
        r.profile,
        r.seed,
        r.nodes,
        r.duration_s
    );
    let _ = writeln!(
        page,
        "{} operations recorded, {} enqueues acknowledged, {} deliveries",
        r.checker.ops, r.checker.enqueued_ok, r.checker.delivered
    );
    let _ = writeln!(
        page,
        "liveness: {}",
        r.liveness
            .as_deref()
            .unwrap_or("ok (a leader after healing, the queue drained)")
    );
    let _ = writeln!(page, "\nanomalies:");
    for ((letter, meaning), n) in CLASSES.iter().zip(counts) {
        let _ = writeln!(page, "  {letter} = {n:<6} {meaning}");
        for example in r
            .checker
            .examples
            .get(*letter)
            .into_iter()
            .flatten()
            .take(3)
        {
            let _ = writeln!(page, "      e.g. {example}");
        }
    }
    if !r.checker.undrained.is_empty() {
        let _ = writeln!(page, "  not drained: {}", r.checker.undrained.join(", "));
    }
    let _ = writeln!(page, "\nfaults:");
    let t0 = r.faults.first().map_or(0, |f| f.0);
    for (ms, what) in &r.faults {
        let _ = writeln!(
            page,
            "  +{:>6.1} s  {what}",
            ms.saturating_sub(t0) as f64 / 1e3
        );
    }
    if r.faults.is_empty() {
        let _ = writeln!(page, "  none");
    }
    let _ = writeln!(page, "\nreplay: {}", r.replay);
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_page_lists_classes_faults_and_the_replay() {
        let options = Options {
            bin: PathBuf::from("lockstep"),
            dir: PathBuf::from("/tmp/x"),
            nodes: 3,
            seed: 9,
            profile: Profile::Kill,
            duration: Duration::from_secs(30),
            producers: 4,
            workers: 4,
            groups: 20,
            planted: Some("skip-fence".into()),
            net: 0,
        };
        let outcomes = Outcomes {
            history: Vec::new(),
            faults: vec![
                (10_000, "kill node 2 for 2000 ms".into()),
                (12_000, "healed kill".into()),
            ],
            liveness: None,
        };
        let page = summary_page(&report(&options, &outcomes));
        for needle in [
            "chaos profile kill seed 9, 3 nodes, 30 s",
            "  L = 0 ",
            "  X = 0 ",
            "+   2.0 s  healed kill",
            "replay: lockstep chaos --profile kill --seed 9",
            "--plant skip-fence",
        ] {
            assert!(page.contains(needle), "`{needle}` missing from:\n{page}");
        }
    }
}
