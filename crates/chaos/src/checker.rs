//! The checker: counts anomalies in a history. Pure and deterministic: the
//! same history gives the same report.
//!
//! Classes (each count comes with up to [`EXAMPLES_MAX`] examples):
//! - **L** an enqueue answered OK whose job was neither delivered nor
//!   dead-lettered, although its queue was drained after the faults;
//! - **U** a delivered (or dead-lettered) job whose id no producer ever
//!   sent;
//! - **D** one id stored at two offsets;
//! - **R** a job delivered by a fetch sent after an ack of it answered OK;
//! - **O** in a group, a job delivered while an earlier job of the group
//!   was neither acked nor dead-lettered (this also catches delivery out of
//!   offset order);
//! - **F** two leases on one group both certainly live at one moment by
//!   their cluster-time deadlines, or an ack accepted with a fence older
//!   than a grant the client already saw;
//! - **X** two nodes with different state digests at the same applied index;
//! - **T** two leases on one group both certainly live at one moment on
//!   the harness's own clock: the second was granted by a fetch sent after
//!   the first lease arrived and answered before the first lease could
//!   have ended (its fetch's send time plus its length, less the cluster
//!   clock's slew, or a call that may have ended it). Unlike F this does not
//!   trust cluster time, so it catches a cluster clock that ran ahead;
//! - **A** an attempt number no delivery explains: every attempt 1..=n of a
//!   job (n its highest attempt seen, or its dead letter's count) needs a
//!   delivery seen with that number, or a fetch of unknown outcome that
//!   could have made it unseen (each such fetch makes at most one attempt of
//!   one job). A job dead-lettered with nothing that explains any attempt is
//!   "dead-lettered unseen"; a higher attempt than deliveries seen and such
//!   fetches allow is an "orphaned lease";
//! - **S** stats after the drain that differ from what the history implies:
//!   jobs still ready, delayed or leased; a dead count other than the
//!   dead-letter list's; a `next_offset` other than the first offset plus
//!   the offsets the history saw (every job is either delivered by the
//!   drain or dead-lettered, so every offset below `next_offset` was seen).
//!
//! The server may dead-letter a job on its own (its attempts reach the
//! queue's `max_attempts` on a nack or a lease expiry). A job in the
//! `DeadLetters` list read after the drain is finished at an unknown time
//! after its last delivery seen: not lost, and not holding its group back
//! after that delivery was sent.
//!
//! A fetch made inside the client library's `Worker` (`invoke_unknown`)
//! was sent at an unknown time, as early as the start of the history: no
//! check orders anything after its send time, and its deliveries are never
//! the first lease of a T.
//!
//! What the checker assumes of the run: jobs are never requeued from the
//! dead-letter set (a requeue gives an id a second offset, which D would
//! misread, and resets its attempts, which A would misread); each queue is
//! created once on a fresh cluster, so its first offset is
//! [`FIRST_OFFSET`]; a fetch's `lease_ms` is within the queue's
//! `lease_ms_max` (the server would shorten it).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{Call, EndKind, EnqueueOutcome, Op, Outcome};

/// Examples kept per anomaly class.
pub const EXAMPLES_MAX: usize = 10;
/// How long before its deadline a lease counts as possibly expired:
/// deadlines are in cluster time (the leader's cluster clock), completion
/// times in the harness's; both follow this machine's clocks, and this
/// covers the stamping delay. T subtracts it too, for millisecond rounding
/// and the delay between a clock read and the call it times.
pub const CLOCK_TOLERANCE_MS: u64 = 100;
/// How much faster than real time cluster time may run, in parts per
/// million: the node's `SLEW_PPM_MAX` (1 %). A lease of `lease_ms` granted
/// after a fetch was sent lasts at least `lease_ms` less this share of
/// real time after the send.
pub const CLUSTER_SLEW_PPM_MAX: u64 = 10_000;
/// The first offset of a queue created on a fresh cluster: the state
/// machine's `offset_floor` starts at 0 and grows only when a queue is
/// deleted.
pub const FIRST_OFFSET: u64 = 0;
const PPM: u64 = 1_000_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub lost: u64,
    pub unexpected: u64,
    pub duplicated: u64,
    pub redelivered_after_ack: u64,
    pub out_of_order: u64,
    pub fencing: u64,
    pub diverged: u64,
    #[serde(default)]
    pub overlap: u64,
    #[serde(default)]
    pub unexplained_attempts: u64,
    #[serde(default)]
    pub stats_mismatch: u64,
    #[serde(default)]
    pub stale_refusal: u64,
    #[serde(default)]
    pub chained: u64,
}

impl Counts {
    /// The class letters, in the order of [`Counts::in_order`].
    pub const LETTERS: [&'static str; 12] =
        ["L", "U", "D", "R", "O", "F", "X", "T", "A", "S", "N", "C"];

    /// The counts in the order of their letters: L, U, D, R, O, F, X, T, A,
    /// S, N, C.
    pub fn in_order(&self) -> [u64; 12] {
        [
            self.lost,
            self.unexpected,
            self.duplicated,
            self.redelivered_after_ack,
            self.out_of_order,
            self.fencing,
            self.diverged,
            self.overlap,
            self.unexplained_attempts,
            self.stats_mismatch,
            self.stale_refusal,
            self.chained,
        ]
    }

    pub fn total(&self) -> u64 {
        self.in_order().iter().sum()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub ops: usize,
    pub enqueued_ok: usize,
    pub delivered: usize,
    /// Jobs in the dead-letter lists read after the drain.
    #[serde(default)]
    pub dead_lettered: usize,
    pub counts: Counts,
    /// Per class letter (see [`Counts::LETTERS`]), a few examples.
    pub examples: BTreeMap<String, Vec<String>>,
    /// Queues with acknowledged enqueues that were never drained: L cannot
    /// be judged for them, and the run is a liveness failure.
    pub undrained: Vec<String>,
}

impl Report {
    /// No anomaly and every queue drained.
    pub fn passed(&self) -> bool {
        self.counts.total() == 0 && self.undrained.is_empty()
    }

    fn note(&mut self, class: &str, example: String) {
        let list = self.examples.entry(class.into()).or_default();
        if list.len() < EXAMPLES_MAX {
            list.push(example);
        }
    }
}

type Key = (String, u64); // (queue, offset)
type LeaseKey = (String, u64, u64); // (queue, offset, fence)
/// (certainly live from, certainly live until, offset, fence)
type LiveLease = (u64, u64, u64, u64);

#[derive(Debug)]
struct Seen {
    /// When the fetch was sent; `None` if unknown (a library fetch).
    sent_ms: Option<u64>,
    complete_ms: u64,
    fence: u64,
    deadline_ms: u64,
    group: String,
    id: String,
    attempt: u32,
    lease_ms: u64,
}

impl Seen {
    /// The earliest moment the fetch may have been sent.
    fn sent(&self) -> u64 {
        self.sent_ms.unwrap_or(0)
    }
}

/// A call that may have finished a job (ack, dead-letter): when it was sent,
/// and whether it certainly did.
#[derive(Debug, Clone, Copy)]
struct Finish {
    invoke_ms: u64,
    complete_ms: u64,
    fence: u64,
    certain: bool,
}

/// A job in a dead-letter list.
#[derive(Debug)]
struct Dead {
    id: String,
    attempts: u32,
    /// When the list that holds it was answered.
    listed_ms: u64,
}

/// A fetch that may have delivered jobs it does not list: (sent at, or 0
/// when unknown; the most jobs it could have delivered, `u64::MAX` when
/// unknown).
type Unseen = (u64, u64);

/// The stats of one `Stats` op.
#[derive(Debug)]
struct Stats {
    queue: String,
    ready: u64,
    delayed: u64,
    leased: u64,
    dead: u64,
    next_offset: u64,
    ack_floor: u64,
}

/// Everything the checks read, gathered in one pass over the history.
#[derive(Default)]
struct Facts {
    sent: BTreeSet<(String, String)>, // (queue, id)
    /// (queue, id) -> the earliest send of an enqueue carrying it.
    first_sent: BTreeMap<(String, String), u64>,
    acked_enqueues: BTreeMap<(String, String), u64>,
    offsets_of: BTreeMap<(String, String), BTreeSet<u64>>,
    known: BTreeMap<(String, String), BTreeSet<u64>>, // (queue, group) -> offsets
    /// Per queue, every offset the history saw (enqueue results,
    /// deliveries, dead letters).
    seen_offsets: BTreeMap<String, BTreeSet<u64>>,
    deliveries: BTreeMap<Key, Vec<Seen>>,
    finishes: BTreeMap<Key, Vec<Finish>>,
    /// Calls that end one lease: (queue, offset, fence) -> earliest invoke.
    lease_ends: BTreeMap<LeaseKey, u64>,
    extended: BTreeMap<LeaseKey, u64>,
    /// Extends that may have landed: (queue, offset, fence) -> (sent at,
    /// the new deadline if known).
    extends: BTreeMap<LeaseKey, Vec<(u64, Option<u64>)>>,
    drained: BTreeSet<String>,
    dead: BTreeMap<Key, Dead>,
    /// Queues whose dead-letter list was read.
    dead_listed: BTreeSet<String>,
    /// Per queue, fetches that may have delivered jobs they do not list,
    /// sorted by send time.
    unseen: BTreeMap<String, Vec<Unseen>>,
    /// How far cluster time may be from the harness's clock (ms).
    clock_bound_ms: u64,
    stats: Vec<Stats>,
    digests: BTreeMap<u64, BTreeMap<String, Vec<u64>>>,
    /// Queue -> when its creation was first acknowledged.
    created: BTreeMap<String, u64>,
    /// Calls answered NOT_FOUND: (queue, sent at, answered at).
    not_found: Vec<(String, u64, u64)>,
    /// Chained jobs sent, by the (queue, id) of the job whose ack carried
    /// them: (queue, id) of each.
    chained: BTreeMap<(String, String), BTreeSet<(String, String)>>,
    /// (queue, id) of every job delivered by the harness's drain.
    drain_delivered: BTreeSet<(String, String)>,
    /// (queue, id) of every job delivered or dead-lettered.
    present: BTreeSet<(String, String)>,
}

pub fn check(history: &[Op]) -> Report {
    let mut report = Report {
        ops: history.len(),
        ..Report::default()
    };
    let facts = gather(history, &mut report);
    report.enqueued_ok = facts.acked_enqueues.len();
    report.dead_lettered = facts.dead.len();
    check_lost_unexpected_duplicated(&facts, &mut report);
    check_redelivered(&facts, &mut report);
    check_order(&facts, &mut report);
    check_fencing(&facts, &mut report);
    check_diverged(&facts, &mut report);
    check_overlap(&facts, &mut report);
    check_attempts(&facts, &mut report);
    check_stats(&facts, &mut report);
    check_stale_refusals(&facts, &mut report);
    check_chained(&facts, &mut report);
    report
}

fn gather(history: &[Op], report: &mut Report) -> Facts {
    let mut f = Facts::default();
    let mut group_of: BTreeMap<(String, String), String> = BTreeMap::new();
    for op in history {
        let maybe = op.outcome != Outcome::Fail;
        match &op.call {
            Call::Enqueue {
                queue,
                jobs,
                results,
            } => {
                for j in jobs {
                    let key = (queue.clone(), j.id.clone());
                    if let Some(source) = &j.chained_from {
                        f.chained
                            .entry(source.clone())
                            .or_default()
                            .insert(key.clone());
                    }
                    f.sent.insert(key.clone());
                    let t = f.first_sent.entry(key.clone()).or_insert(op.invoke_ms);
                    *t = (*t).min(op.invoke_ms);
                    group_of.insert(key, j.group.clone());
                }
                if op.outcome != Outcome::Ok {
                    continue;
                }
                for r in results {
                    if r.outcome == EnqueueOutcome::IdConflict {
                        continue;
                    }
                    let key = (queue.clone(), r.id.clone());
                    f.acked_enqueues.entry(key.clone()).or_insert(r.offset);
                    f.offsets_of
                        .entry(key.clone())
                        .or_default()
                        .insert(r.offset);
                    f.seen_offsets
                        .entry(queue.clone())
                        .or_default()
                        .insert(r.offset);
                    if let Some(g) = group_of.get(&key) {
                        f.known
                            .entry((queue.clone(), g.clone()))
                            .or_default()
                            .insert(r.offset);
                    }
                }
            }
            Call::Fetch {
                queue,
                consumer,
                deliveries: ds,
                lease_ms,
                invoke_unknown,
                max,
                retried,
            } => {
                if !maybe {
                    continue;
                }
                for d in ds {
                    f.present.insert((queue.clone(), d.id.clone()));
                    if consumer == DRAIN_CONSUMER {
                        f.drain_delivered.insert((queue.clone(), d.id.clone()));
                    }
                }
                let sent_ms = (!invoke_unknown).then_some(op.invoke_ms);
                // A fetch of unknown outcome, one inside the library, or
                // one answered to a retry (a replay lists only the leases
                // still held) may have delivered jobs it does not list, at
                // any time after it was sent (a forward delayed in a
                // partition is applied when the partition heals).
                if op.outcome == Outcome::Indeterminate || *invoke_unknown || *retried {
                    let sent = if *invoke_unknown { 0 } else { op.invoke_ms };
                    let capacity = if *max == 0 { u64::MAX } else { u64::from(*max) };
                    f.unseen
                        .entry(queue.clone())
                        .or_default()
                        .push((sent, capacity));
                }
                for d in ds {
                    report.delivered += 1;
                    f.offsets_of
                        .entry((queue.clone(), d.id.clone()))
                        .or_default()
                        .insert(d.offset);
                    f.known
                        .entry((queue.clone(), d.group.clone()))
                        .or_default()
                        .insert(d.offset);
                    f.seen_offsets
                        .entry(queue.clone())
                        .or_default()
                        .insert(d.offset);
                    f.deliveries
                        .entry((queue.clone(), d.offset))
                        .or_default()
                        .push(Seen {
                            sent_ms,
                            complete_ms: op.complete_ms,
                            fence: d.fence,
                            deadline_ms: d.lease_deadline_ms,
                            group: d.group.clone(),
                            id: d.id.clone(),
                            attempt: d.attempt,
                            lease_ms: *lease_ms,
                        });
                }
            }
            Call::Ack { queue, items } => {
                if !maybe {
                    continue;
                }
                for i in items {
                    let certain = op.outcome == Outcome::Ok && i.ok;
                    if op.outcome == Outcome::Ok && !i.ok {
                        continue;
                    }
                    f.finishes
                        .entry((queue.clone(), i.offset))
                        .or_default()
                        .push(Finish {
                            invoke_ms: op.invoke_ms,
                            complete_ms: op.complete_ms,
                            fence: i.fence,
                            certain,
                        });
                    end_lease(&mut f.lease_ends, queue, i.offset, i.fence, op.invoke_ms);
                }
            }
            Call::EndLease {
                queue,
                offset,
                fence,
                kind,
            } => {
                if !maybe {
                    continue;
                }
                end_lease(&mut f.lease_ends, queue, *offset, *fence, op.invoke_ms);
                if *kind == EndKind::DeadLetter {
                    f.finishes
                        .entry((queue.clone(), *offset))
                        .or_default()
                        .push(Finish {
                            invoke_ms: op.invoke_ms,
                            complete_ms: op.complete_ms,
                            fence: *fence,
                            certain: op.outcome == Outcome::Ok,
                        });
                }
            }
            Call::Extend {
                queue,
                offset,
                fence,
                lease_deadline_ms,
            } => {
                let lease = (queue.clone(), *offset, *fence);
                if op.outcome == Outcome::Ok {
                    let e = f.extended.entry(lease.clone()).or_insert(0);
                    *e = (*e).max(*lease_deadline_ms);
                }
                if maybe {
                    let known = (op.outcome == Outcome::Ok).then_some(*lease_deadline_ms);
                    f.extends
                        .entry(lease)
                        .or_default()
                        .push((op.invoke_ms, known));
                }
            }
            Call::Drained { queue } => {
                if op.outcome == Outcome::Ok {
                    f.drained.insert(queue.clone());
                }
            }
            Call::DeadLetters { queue, jobs } => {
                if op.outcome != Outcome::Ok {
                    continue;
                }
                f.dead_listed.insert(queue.clone());
                for j in jobs {
                    f.present.insert((queue.clone(), j.id.clone()));
                    f.offsets_of
                        .entry((queue.clone(), j.id.clone()))
                        .or_default()
                        .insert(j.offset);
                    f.known
                        .entry((queue.clone(), j.group.clone()))
                        .or_default()
                        .insert(j.offset);
                    f.seen_offsets
                        .entry(queue.clone())
                        .or_default()
                        .insert(j.offset);
                    f.dead
                        .entry((queue.clone(), j.offset))
                        .and_modify(|d| {
                            d.attempts = d.attempts.max(j.attempts);
                            d.listed_ms = d.listed_ms.min(op.complete_ms);
                        })
                        .or_insert(Dead {
                            id: j.id.clone(),
                            attempts: j.attempts,
                            listed_ms: op.complete_ms,
                        });
                }
            }
            Call::Stats {
                queue,
                ready,
                delayed,
                leased,
                dead,
                next_offset,
                ack_floor,
            } => {
                if op.outcome == Outcome::Ok {
                    f.stats.push(Stats {
                        queue: queue.clone(),
                        ready: *ready,
                        delayed: *delayed,
                        leased: *leased,
                        dead: *dead,
                        next_offset: *next_offset,
                        ack_floor: *ack_floor,
                    });
                }
            }
            Call::ClockBound { ms } => f.clock_bound_ms = f.clock_bound_ms.max(*ms),
            Call::CreateQueue { queue } => {
                if op.outcome == Outcome::Ok {
                    let at = f.created.entry(queue.clone()).or_insert(op.complete_ms);
                    *at = (*at).min(op.complete_ms);
                }
            }
            Call::QueueNotFound { queue } => {
                f.not_found
                    .push((queue.clone(), op.invoke_ms, op.complete_ms));
            }
            Call::Digest {
                applied_index,
                digest,
            } => {
                if op.outcome == Outcome::Ok {
                    f.digests
                        .entry(*applied_index)
                        .or_default()
                        .entry(digest.clone())
                        .or_default()
                        .push(op.node);
                }
            }
        }
    }
    for list in f.unseen.values_mut() {
        list.sort_unstable();
    }
    f
}

/// L, U and D.
fn check_lost_unexpected_duplicated(f: &Facts, report: &mut Report) {
    // L: acknowledged, drained, neither delivered nor dead-lettered.
    let delivered_ids: BTreeSet<(String, String)> = f
        .deliveries
        .iter()
        .flat_map(|((q, _), seen)| seen.iter().map(move |s| (q.clone(), s.id.clone())))
        .collect();
    let dead_ids: BTreeSet<(String, String)> = f
        .dead
        .iter()
        .map(|((q, _), d)| (q.clone(), d.id.clone()))
        .collect();
    let mut undrained = BTreeSet::new();
    for ((queue, id), offset) in &f.acked_enqueues {
        if !f.drained.contains(queue) {
            undrained.insert(queue.clone());
            continue;
        }
        let key = (queue.clone(), id.clone());
        if !delivered_ids.contains(&key) && !dead_ids.contains(&key) {
            report.counts.lost += 1;
            report.note(
                "L",
                format!(
                    "{queue}: id {id} acknowledged at offset {offset}, never delivered nor dead-lettered"
                ),
            );
        }
    }
    report.undrained = undrained.into_iter().collect();

    // U: delivered or dead-lettered, never sent.
    for (queue, id) in &delivered_ids {
        if !f.sent.contains(&(queue.clone(), id.clone())) {
            report.counts.unexpected += 1;
            report.note("U", format!("{queue}: id {id} delivered, never enqueued"));
        }
    }
    for (queue, id) in dead_ids.difference(&delivered_ids) {
        if !f.sent.contains(&(queue.clone(), id.clone())) {
            report.counts.unexpected += 1;
            report.note(
                "U",
                format!("{queue}: id {id} dead-lettered, never enqueued"),
            );
        }
    }

    // D: one id at two offsets.
    for ((queue, id), offsets) in &f.offsets_of {
        if offsets.len() > 1 {
            report.counts.duplicated += 1;
            report.note("D", format!("{queue}: id {id} at offsets {offsets:?}"));
        }
    }
}

/// R: delivered by a fetch sent after an ack answered OK.
fn check_redelivered(f: &Facts, report: &mut Report) {
    for (key, seen) in &f.deliveries {
        let acked_at = f
            .finishes
            .get(key)
            .and_then(|fs| fs.iter().filter(|f| f.certain).map(|f| f.complete_ms).min());
        if let Some(t) = acked_at {
            for s in seen.iter().filter(|s| s.sent() > t) {
                report.counts.redelivered_after_ack += 1;
                report.note(
                    "R",
                    format!(
                        "{}: offset {} delivered (fence {}) by a fetch sent at {} ms, after its ack answered at {t} ms",
                        key.0, key.1, s.fence, s.sent()
                    ),
                );
            }
        }
    }
}

/// O: every earlier job of the group finished before a later one was
/// delivered. An earlier job's finish is bounded below by the earliest
/// send of a call that may have finished it (ack, dead-letter) and, if it
/// is in a dead-letter list, by the latest send of a fetch seen delivering
/// it (the server dead-letters only after a delivery); u64::MAX if neither.
fn check_order(f: &Facts, report: &mut Report) {
    for ((queue, group), offsets) in &f.known {
        if group.is_empty() {
            continue; // each job without a group is its own group
        }
        let mut earlier_done_by = 0u64; // max over earlier offsets
        for o in offsets {
            let key = (queue.clone(), *o);
            let seen = f.deliveries.get(&key);
            for s in seen.into_iter().flatten() {
                if earlier_done_by >= s.complete_ms {
                    report.counts.out_of_order += 1;
                    report.note(
                        "O",
                        format!(
                            "{queue}/{group}: offset {o} delivered (fetch answered at {} ms) before an earlier job of the group was finished{}",
                            s.complete_ms,
                            if earlier_done_by == u64::MAX { " (never)".to_string() } else { format!(" (at {earlier_done_by} ms)") }
                        ),
                    );
                }
            }
            let mut done = f
                .finishes
                .get(&key)
                .and_then(|fs| fs.iter().map(|f| f.invoke_ms).min())
                .unwrap_or(u64::MAX);
            if let Some(dead) = f.dead.get(&key) {
                let after = seen
                    .into_iter()
                    .flatten()
                    .map(Seen::sent)
                    .max()
                    .or_else(|| f.first_sent.get(&(queue.clone(), dead.id.clone())).copied())
                    .unwrap_or(0);
                done = done.min(after);
            }
            earlier_done_by = earlier_done_by.max(done);
        }
    }
}

/// F: two leases of one group both certainly live at once by their
/// cluster-time deadlines, or an ack accepted with a fence older than a
/// grant already seen.
fn check_fencing(f: &Facts, report: &mut Report) {
    let mut leases: BTreeMap<(String, String), Vec<LiveLease>> = BTreeMap::new();
    for ((queue, offset), seen) in &f.deliveries {
        for s in seen {
            let lease = (queue.clone(), *offset, s.fence);
            let deadline = f
                .extended
                .get(&lease)
                .map_or(s.deadline_ms, |e| (*e).max(s.deadline_ms));
            let mut end = deadline.saturating_sub(CLOCK_TOLERANCE_MS + f.clock_bound_ms);
            if let Some(t) = f.lease_ends.get(&lease) {
                end = end.min(*t);
            }
            // An extend may also shorten the lease (as in T): one of unknown
            // outcome, or one that answered an earlier deadline, may have
            // ended it as soon as it was sent.
            for (sent, extended) in f.extends.get(&lease).into_iter().flatten() {
                if extended.is_none_or(|d| d < s.deadline_ms) {
                    end = end.min(*sent);
                }
            }
            if s.complete_ms < end && !s.group.is_empty() {
                leases
                    .entry((queue.clone(), s.group.clone()))
                    .or_default()
                    .push((s.complete_ms, end, *offset, s.fence));
            }
        }
    }
    for ((queue, group), mut ls) in leases {
        ls.sort_unstable();
        let mut live: Option<(u64, u64, u64)> = None; // (end, offset, fence)
        for (start, end, offset, fence) in ls {
            if let Some((live_end, o, fe)) = live {
                if start < live_end && (o, fe) != (offset, fence) {
                    report.counts.fencing += 1;
                    report.note(
                        "F",
                        format!(
                            "{queue}/{group}: lease on offset {offset} (fence {fence}) from {start} ms while offset {o} (fence {fe}) was live until {live_end} ms"
                        ),
                    );
                }
            }
            if live.is_none_or(|(e, _, _)| end > e) {
                live = Some((end, offset, fence));
            }
        }
    }
    for (key, fs) in &f.finishes {
        let Some(seen) = f.deliveries.get(key) else {
            continue;
        };
        for fin in fs.iter().filter(|fin| fin.certain) {
            if let Some(newer) = seen
                .iter()
                .find(|s| s.fence > fin.fence && s.complete_ms < fin.invoke_ms)
            {
                report.counts.fencing += 1;
                report.note(
                    "F",
                    format!(
                        "{}: offset {} acked with fence {} at {} ms after fence {} was granted at {} ms",
                        key.0, key.1, fin.fence, fin.invoke_ms, newer.fence, newer.complete_ms
                    ),
                );
            }
        }
    }
}

/// X: different digests at one applied index.
fn check_diverged(f: &Facts, report: &mut Report) {
    for (index, by_digest) in &f.digests {
        if by_digest.len() > 1 {
            report.counts.diverged += 1;
            report.note("X", format!("applied index {index}: {by_digest:?}"));
        }
    }
}

/// A lease certainly live on the harness's clock: (arrived at, certainly
/// live until, offset, fence).
type SureLease = (u64, u64, u64, u64);
/// A grant whose fetch's send time is known: (sent at, arrived at, offset,
/// fence).
type Grant = (u64, u64, u64, u64);

/// The two longest-running leases of distinct (offset, fence), so a grant
/// can be compared with the longest one that is not itself.
#[derive(Default)]
struct TopTwo {
    first: Option<SureLease>,
    second: Option<SureLease>,
}

impl TopTwo {
    fn add(&mut self, l: SureLease) {
        let same = |a: &Option<SureLease>| a.is_some_and(|a| (a.2, a.3) == (l.2, l.3));
        let end = |a: &Option<SureLease>| a.map_or(0, |a| a.1);
        if same(&self.first) {
            if l.1 > end(&self.first) {
                self.first = Some(l);
            }
        } else if same(&self.second) {
            if l.1 > end(&self.second) {
                self.second = Some(l);
            }
        } else if l.1 > end(&self.second) {
            self.second = Some(l);
        }
        if end(&self.second) > end(&self.first) {
            std::mem::swap(&mut self.first, &mut self.second);
        }
    }

    /// The longest lease other than (offset, fence).
    fn other_than(&self, offset: u64, fence: u64) -> Option<SureLease> {
        match self.first {
            Some(l) if (l.2, l.3) != (offset, fence) => Some(l),
            _ => self.second,
        }
    }
}

/// T: a second grant on a group certainly made (its fetch sent after the
/// first lease arrived, answered before that lease could have ended) while
/// a lease ran, on the harness's clock. A lease granted after its fetch was
/// sent at `t` for `lease_ms` cannot expire before `t + lease_ms` of
/// cluster time has passed, at least `lease_ms * (1 - slew)` of real time.
/// An extend that answered OK with a deadline no earlier than the grant's
/// only lengthened it and is ignored (the lease is not taken as longer).
fn check_overlap(f: &Facts, report: &mut Report) {
    // (queue, group, offset for a job without a group) -> leases, grants
    type GroupKey = (String, String, Option<u64>);
    let mut by_group: BTreeMap<GroupKey, (Vec<SureLease>, Vec<Grant>)> = BTreeMap::new();
    for ((queue, offset), seen) in &f.deliveries {
        for s in seen {
            let Some(sent) = s.sent_ms else {
                continue; // neither a lower bound nor an order
            };
            let key = (
                queue.clone(),
                s.group.clone(),
                s.group.is_empty().then_some(*offset),
            );
            let entry = by_group.entry(key).or_default();
            entry.1.push((sent, s.complete_ms, *offset, s.fence));
            if s.lease_ms == 0 {
                continue;
            }
            let slew = u128::from(s.lease_ms) * u128::from(CLUSTER_SLEW_PPM_MAX);
            let slew_ms = u64::try_from(slew.div_ceil(u128::from(PPM))).unwrap_or(u64::MAX);
            let sure_ms = s.lease_ms.saturating_sub(slew_ms);
            let mut end = sent
                .saturating_add(sure_ms)
                .saturating_sub(CLOCK_TOLERANCE_MS);
            let lease = (queue.clone(), *offset, s.fence);
            if let Some(t) = f.lease_ends.get(&lease) {
                end = end.min(*t);
            }
            // An extend sets the deadline to its own time plus the length
            // it asks (not recorded), so it may also shorten the lease:
            // one of unknown outcome, or one that answered an earlier
            // deadline, may have ended it as soon as it was sent.
            for (sent, deadline) in f.extends.get(&lease).into_iter().flatten() {
                if deadline.is_none_or(|d| d < s.deadline_ms) {
                    end = end.min(*sent);
                }
            }
            if s.complete_ms < end {
                entry.0.push((s.complete_ms, end, *offset, s.fence));
            }
        }
    }
    for ((queue, group, _), (mut leases, mut grants)) in by_group {
        leases.sort_unstable();
        grants.sort_unstable();
        let mut top = TopTwo::default();
        let mut next = 0;
        for (sent, arrived, offset, fence) in grants {
            while next < leases.len() && leases[next].0 <= sent {
                top.add(leases[next]);
                next += 1;
            }
            let Some((from, until, o, fe)) = top.other_than(offset, fence) else {
                continue;
            };
            if arrived < until {
                report.counts.overlap += 1;
                let what = if group.is_empty() {
                    format!("{queue}: job at offset {offset}")
                } else {
                    format!("{queue}/{group}")
                };
                report.note(
                    "T",
                    format!(
                        "{what}: offset {offset} (fence {fence}) granted by a fetch sent at {sent} ms, answered at {arrived} ms, while the lease on offset {o} (fence {fe}), answered at {from} ms, certainly ran until {until} ms (harness clock)"
                    ),
                );
            }
        }
    }
}

/// A: attempts no delivery explains. For each job, every attempt k of
/// 1..=n (n: the highest attempt seen, or its dead letter's count) needs a
/// delivery seen with attempt k, or an unseen one: a fetch of the queue
/// whose outcome is unknown, sent before the earliest answer of a delivery
/// of a later attempt (or before the dead-letter list was answered). Such a
/// fetch may take effect any time after it was sent (Jepsen's reading: a
/// forward held up in a partition is applied when it heals), and delivers
/// at most the `max` jobs it asked for, each once. The count is how many
/// missing attempts no assignment of those fetches can cover, the larger
/// of two bounds: per job, the fetches sent by each deadline against its
/// attempts due by then; per queue, the fetches' capacity against all the
/// attempts due by each deadline. A job with any delivery of unknown
/// attempt (0, an old history) is skipped.
fn check_attempts(f: &Facts, report: &mut Report) {
    let empty: Vec<Seen> = Vec::new();
    let no_fetches: Vec<Unseen> = Vec::new();
    // Per queue, every attempt no delivery shows: (the latest moment it
    // can have happened, i.e. the next seen delivery's answer or the
    // dead-letter listing; the example to give).
    let mut missing: BTreeMap<&String, Vec<(u64, String)>> = BTreeMap::new();
    let mut per_job_short = 0u64;
    let keys: BTreeSet<&Key> = f.deliveries.keys().chain(f.dead.keys()).collect();
    for key in keys {
        let (queue, offset) = key;
        let seen = f.deliveries.get(key).unwrap_or(&empty);
        if seen.iter().any(|s| s.attempt == 0) {
            continue; // attempt numbers unknown (an old history)
        }
        let dead = f.dead.get(key);
        let top = seen
            .iter()
            .map(|s| s.attempt)
            .chain(dead.map(|d| d.attempts.max(1)))
            .max()
            .unwrap_or(0);
        let present: BTreeSet<u32> = seen.iter().map(|s| s.attempt).collect();
        let Some(id) = seen.first().map(|s| &s.id).or(dead.map(|d| &d.id)) else {
            continue;
        };
        let end = dead.map_or(u64::MAX, |d| d.listed_ms);
        let fetches = f.unseen.get(queue).unwrap_or(&no_fetches);
        let mut deadlines = Vec::new();
        let mut first_example = None;
        for k in (1..=top).filter(|k| !present.contains(k)) {
            // The earliest answer of a delivery with a later attempt.
            let before = seen
                .iter()
                .filter(|s| s.attempt > k)
                .map(|s| s.complete_ms)
                .min()
                .unwrap_or(u64::MAX)
                .min(end);
            let example = if seen.is_empty() {
                format!(
                    "dead-lettered unseen: {queue}: offset {offset} (id {id}) dead-lettered after {top} attempts with no delivery seen"
                )
            } else {
                format!(
                    "orphaned lease: {queue}: offset {offset} (id {id}) reached attempt {top} (attempts seen {present:?}), but attempt {k} has no delivery seen"
                )
            };
            first_example.get_or_insert_with(|| example.clone());
            missing.entry(queue).or_default().push((before, example));
            deadlines.push(before);
        }
        // One fetch leases a job at most once: the job's own missing
        // attempts need as many different fetches, each sent in time.
        deadlines.sort_unstable();
        let mut own_short = 0u64;
        for (due, before) in deadlines.iter().enumerate() {
            let sent = fetches.partition_point(|u| u.0 <= *before) as u64;
            own_short = own_short.max((due as u64 + 1).saturating_sub(sent));
        }
        if own_short > 0 {
            per_job_short += own_short;
            report.note(
                "A",
                format!(
                    "{}; {own_short} of its {} missing attempts fit no fetch of unknown outcome (each leases a job once, after it was sent)",
                    first_example.unwrap_or_default(),
                    deadlines.len()
                ),
            );
        }
    }
    // Each missing attempt needs a fetch of unknown outcome sent before it
    // (its effect may come any time after), and such a fetch delivers at
    // most its `max` jobs. Sweeping the attempts by deadline, the fetches
    // sent by each deadline must cover every attempt due by then; what they
    // cannot cover is certain.
    let mut capacity_short = 0u64;
    for (queue, mut list) in missing {
        list.sort();
        let fetches = f.unseen.get(queue).unwrap_or(&no_fetches);
        let (mut next, mut supply, mut demand, mut short) = (0usize, 0u64, 0u64, 0u64);
        for (before, example) in &list {
            while next < fetches.len() && fetches[next].0 <= *before {
                supply = supply.saturating_add(fetches[next].1);
                next += 1;
            }
            demand += 1;
            let uncovered = demand.saturating_sub(supply);
            if uncovered > short {
                short = uncovered;
                report.note(
                    "A",
                    format!(
                        "{example}; the {} fetches of unknown outcome sent by then could have made {supply} deliveries, {demand} attempts needed them",
                        next
                    ),
                );
            }
        }
        capacity_short += short;
    }
    // Both are attempts no assignment of fetches can explain; the larger
    // is the count.
    report.counts.unexplained_attempts = per_job_short.max(capacity_short);
}

/// S: the stats read after the drain against what the history implies.
/// Only for drained queues (an undrained queue is a liveness failure).
fn check_stats(f: &Facts, report: &mut Report) {
    let empty = BTreeSet::new();
    for s in &f.stats {
        if !f.drained.contains(&s.queue) {
            continue;
        }
        let q = &s.queue;
        if s.ready != 0 || s.delayed != 0 || s.leased != 0 || s.ack_floor != s.next_offset {
            report.counts.stats_mismatch += 1;
            report.note(
                "S",
                format!(
                    "{q}: after the drain, ready {} delayed {} leased {} (ack floor {}, next offset {})",
                    s.ready, s.delayed, s.leased, s.ack_floor, s.next_offset
                ),
            );
        }
        if f.dead_listed.contains(q) {
            let listed = f.dead.range((q.clone(), 0)..=(q.clone(), u64::MAX)).count() as u64;
            if s.dead != listed {
                report.counts.stats_mismatch += 1;
                report.note(
                    "S",
                    format!(
                        "{q}: stats count {} dead letters, the list holds {listed}",
                        s.dead
                    ),
                );
            }
        }
        let seen = f.seen_offsets.get(q).unwrap_or(&empty);
        let expected = FIRST_OFFSET + seen.len() as u64;
        if s.next_offset != expected {
            let mut missing = Vec::new();
            let mut o = FIRST_OFFSET;
            while o < s.next_offset && missing.len() < EXAMPLES_MAX {
                if !seen.contains(&o) {
                    missing.push(o);
                }
                o += 1;
            }
            let below = seen.range(FIRST_OFFSET..s.next_offset).count() as u64;
            let missing_n = s.next_offset.saturating_sub(FIRST_OFFSET) - below;
            let beyond: Vec<u64> = seen
                .iter()
                .copied()
                .filter(|o| !(FIRST_OFFSET..s.next_offset).contains(o))
                .take(EXAMPLES_MAX)
                .collect();
            report.counts.stats_mismatch += 1;
            report.note(
                "S",
                format!(
                    "{q}: next offset {} but the history saw {} offsets from {FIRST_OFFSET}: {missing_n} never seen (first {missing:?}), seen outside [{FIRST_OFFSET}, {}): {beyond:?}",
                    s.next_offset,
                    seen.len(),
                    s.next_offset
                ),
            );
        }
    }
}

/// N: a call answered NOT_FOUND for a queue whose creation was
/// acknowledged before the call was sent. Queues are never deleted in a
/// run, so the answer came from a state that lacked an acknowledged write:
/// a deposed or lagging leader refused without confirming that it leads
/// and holds everything committed.
fn check_stale_refusals(f: &Facts, report: &mut Report) {
    for (queue, sent, answered) in &f.not_found {
        if let Some(created) = f.created.get(queue) {
            if sent > created {
                report.counts.stale_refusal += 1;
                report.note(
                    "N",
                    format!(
                        "{queue}: NOT_FOUND to a call sent at {sent} (answered at {answered}), \
                         though its creation was acknowledged at {created}"
                    ),
                );
            }
        }
    }
}

/// The consumer name of the harness's drain: a job it delivered was still
/// pending when the run ended.
pub const DRAIN_CONSUMER: &str = "drain";

/// C: a chained step lost or doubled. A job whose ack carried chained jobs
/// (each sent with an id of its own, so a second enqueue of the step is a
/// second job, not a duplicate) must have exactly one of them in the end
/// if that ack landed, and none if it never did. The ack landed exactly
/// when the job finished during the run and not as a dead letter: a job
/// the drain delivered was still pending, and a dead-lettered one was
/// never acked (the workload only chains every ack of a job it chains).
/// Judged once the source's queue and every chained job's queue were
/// drained and their dead letters read.
fn check_chained(f: &Facts, report: &mut Report) {
    let dead: BTreeSet<(&str, &str)> = f
        .dead
        .iter()
        .map(|((q, _), d)| (q.as_str(), d.id.as_str()))
        .collect();
    for (source, successors) in &f.chained {
        let judged = std::iter::once(&source.0)
            .chain(successors.iter().map(|(q, _)| q))
            .all(|q| f.drained.contains(q) && f.dead_listed.contains(q));
        if !judged {
            continue;
        }
        let landed = !dead.contains(&(source.0.as_str(), source.1.as_str()))
            && !f.drain_delivered.contains(source);
        let expected = usize::from(landed);
        let found: Vec<&String> = successors
            .iter()
            .filter(|s| f.present.contains(*s))
            .map(|(_, id)| id)
            .collect();
        if found.len() != expected {
            report.counts.chained += found.len().abs_diff(expected) as u64;
            let what = if found.len() > expected {
                "doubled"
            } else {
                "lost"
            };
            report.note(
                "C",
                format!(
                    "{}/{}: chained step {what}: its ack {} and {} of its chained jobs are \
                     there ({found:?})",
                    source.0,
                    source.1,
                    if landed { "landed" } else { "never landed" },
                    found.len()
                ),
            );
        }
    }
}

fn end_lease(ends: &mut BTreeMap<LeaseKey, u64>, queue: &str, offset: u64, fence: u64, at: u64) {
    let e = ends.entry((queue.into(), offset, fence)).or_insert(at);
    *e = (*e).min(at);
}

#[cfg(test)]
mod tests;
