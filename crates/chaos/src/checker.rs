//! The checker: counts anomalies in a history. Pure and deterministic: the
//! same history gives the same report.
//!
//! Classes (each count comes with up to [`EXAMPLES_MAX`] examples):
//! - **L** an enqueue answered OK whose job was never delivered, although
//!   its queue was drained after the faults;
//! - **U** a delivered job whose id no producer ever sent;
//! - **D** one id stored at two offsets;
//! - **R** a job delivered by a fetch sent after an ack of it answered OK;
//! - **O** in a group, a job delivered while an earlier job of the group
//!   was neither acked nor dead-lettered (this also catches delivery out of
//!   offset order);
//! - **F** two leases on one group both certainly live at one moment, or an
//!   ack accepted with a fence older than a grant the client already saw;
//! - **X** two nodes with different state digests at the same applied index.
//!
//! What the checker assumes of the run: the queues' `max_attempts` is high
//! enough that the server never dead-letters a job on its own (that ends a
//! job without any client seeing it, which O would misread), and jobs are
//! never requeued from the dead-letter set (a requeue gives an id a second
//! offset, which D would misread).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::history::{Call, EndKind, EnqueueOutcome, Op, Outcome};

/// Examples kept per anomaly class.
pub const EXAMPLES_MAX: usize = 10;
/// How long before its deadline a lease counts as possibly expired:
/// deadlines are in cluster time (the leader's wall clock), completion
/// times in the harness's; both are this machine's clock, and this covers
/// the stamping delay.
pub const CLOCK_TOLERANCE_MS: u64 = 100;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub lost: u64,
    pub unexpected: u64,
    pub duplicated: u64,
    pub redelivered_after_ack: u64,
    pub out_of_order: u64,
    pub fencing: u64,
    pub diverged: u64,
}

impl Counts {
    /// The counts in the order of their letters: L, U, D, R, O, F, X.
    pub fn in_order(&self) -> [u64; 7] {
        [
            self.lost,
            self.unexpected,
            self.duplicated,
            self.redelivered_after_ack,
            self.out_of_order,
            self.fencing,
            self.diverged,
        ]
    }

    pub fn total(&self) -> u64 {
        self.lost
            + self.unexpected
            + self.duplicated
            + self.redelivered_after_ack
            + self.out_of_order
            + self.fencing
            + self.diverged
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub ops: usize,
    pub enqueued_ok: usize,
    pub delivered: usize,
    pub counts: Counts,
    /// Per class letter (L, U, D, R, O, F, X), a few examples.
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
/// (certainly live from, certainly live until, offset, fence)
type LiveLease = (u64, u64, u64, u64);

#[derive(Debug)]
struct Seen {
    invoke_ms: u64,
    complete_ms: u64,
    fence: u64,
    deadline_ms: u64,
    group: String,
    id: String,
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

pub fn check(history: &[Op]) -> Report {
    let mut report = Report {
        ops: history.len(),
        ..Report::default()
    };
    let mut sent: BTreeSet<(String, String)> = BTreeSet::new(); // (queue, id)
    let mut acked_enqueues: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut group_of: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut offsets_of: BTreeMap<(String, String), BTreeSet<u64>> = BTreeMap::new();
    let mut known: BTreeMap<(String, String), BTreeSet<u64>> = BTreeMap::new(); // (queue, group) -> offsets
    let mut deliveries: BTreeMap<Key, Vec<Seen>> = BTreeMap::new();
    let mut finishes: BTreeMap<Key, Vec<Finish>> = BTreeMap::new();
    // Calls that end one lease: (queue, offset, fence) -> earliest invoke.
    let mut lease_ends: BTreeMap<(String, u64, u64), u64> = BTreeMap::new();
    let mut extended: BTreeMap<(String, u64, u64), u64> = BTreeMap::new();
    let mut drained: BTreeSet<String> = BTreeSet::new();
    let mut digests: BTreeMap<u64, BTreeMap<String, Vec<u64>>> = BTreeMap::new();

    for op in history {
        let maybe = op.outcome != Outcome::Fail;
        match &op.call {
            Call::Enqueue {
                queue,
                jobs,
                results,
            } => {
                for j in jobs {
                    sent.insert((queue.clone(), j.id.clone()));
                    group_of.insert((queue.clone(), j.id.clone()), j.group.clone());
                }
                if op.outcome != Outcome::Ok {
                    continue;
                }
                for r in results {
                    if r.outcome == EnqueueOutcome::IdConflict {
                        continue;
                    }
                    let key = (queue.clone(), r.id.clone());
                    acked_enqueues.entry(key.clone()).or_insert(r.offset);
                    offsets_of.entry(key.clone()).or_default().insert(r.offset);
                    if let Some(g) = group_of.get(&key) {
                        known
                            .entry((queue.clone(), g.clone()))
                            .or_default()
                            .insert(r.offset);
                    }
                }
            }
            Call::Fetch {
                queue,
                deliveries: ds,
                ..
            } => {
                if op.outcome != Outcome::Ok {
                    continue;
                }
                for d in ds {
                    report.delivered += 1;
                    offsets_of
                        .entry((queue.clone(), d.id.clone()))
                        .or_default()
                        .insert(d.offset);
                    known
                        .entry((queue.clone(), d.group.clone()))
                        .or_default()
                        .insert(d.offset);
                    deliveries
                        .entry((queue.clone(), d.offset))
                        .or_default()
                        .push(Seen {
                            invoke_ms: op.invoke_ms,
                            complete_ms: op.complete_ms,
                            fence: d.fence,
                            deadline_ms: d.lease_deadline_ms,
                            group: d.group.clone(),
                            id: d.id.clone(),
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
                    finishes
                        .entry((queue.clone(), i.offset))
                        .or_default()
                        .push(Finish {
                            invoke_ms: op.invoke_ms,
                            complete_ms: op.complete_ms,
                            fence: i.fence,
                            certain,
                        });
                    end_lease(&mut lease_ends, queue, i.offset, i.fence, op.invoke_ms);
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
                end_lease(&mut lease_ends, queue, *offset, *fence, op.invoke_ms);
                if *kind == EndKind::DeadLetter {
                    finishes
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
                if op.outcome == Outcome::Ok {
                    let e = extended
                        .entry((queue.clone(), *offset, *fence))
                        .or_insert(0);
                    *e = (*e).max(*lease_deadline_ms);
                }
            }
            Call::Drained { queue } => {
                if op.outcome == Outcome::Ok {
                    drained.insert(queue.clone());
                }
            }
            Call::Digest {
                applied_index,
                digest,
            } => {
                if op.outcome == Outcome::Ok {
                    digests
                        .entry(*applied_index)
                        .or_default()
                        .entry(digest.clone())
                        .or_default()
                        .push(op.node);
                }
            }
        }
    }
    report.enqueued_ok = acked_enqueues.len();

    // L: acknowledged, drained, never delivered.
    let delivered_ids: BTreeSet<(String, String)> = deliveries
        .iter()
        .flat_map(|((q, _), seen)| seen.iter().map(move |s| (q.clone(), s.id.clone())))
        .collect();
    let mut undrained = BTreeSet::new();
    for ((queue, id), offset) in &acked_enqueues {
        if !drained.contains(queue) {
            undrained.insert(queue.clone());
            continue;
        }
        if !delivered_ids.contains(&(queue.clone(), id.clone())) {
            report.counts.lost += 1;
            report.note(
                "L",
                format!("{queue}: id {id} acknowledged at offset {offset}, never delivered"),
            );
        }
    }
    report.undrained = undrained.into_iter().collect();

    // U: delivered, never sent.
    for (queue, id) in &delivered_ids {
        if !sent.contains(&(queue.clone(), id.clone())) {
            report.counts.unexpected += 1;
            report.note("U", format!("{queue}: id {id} delivered, never enqueued"));
        }
    }

    // D: one id at two offsets.
    for ((queue, id), offsets) in &offsets_of {
        if offsets.len() > 1 {
            report.counts.duplicated += 1;
            report.note("D", format!("{queue}: id {id} at offsets {offsets:?}"));
        }
    }

    // R: delivered by a fetch sent after an ack answered OK.
    for (key, seen) in &deliveries {
        let acked_at = finishes
            .get(key)
            .and_then(|fs| fs.iter().filter(|f| f.certain).map(|f| f.complete_ms).min());
        if let Some(t) = acked_at {
            for s in seen.iter().filter(|s| s.invoke_ms > t) {
                report.counts.redelivered_after_ack += 1;
                report.note(
                    "R",
                    format!(
                        "{}: offset {} delivered (fence {}) by a fetch sent at {} ms, after its ack answered at {t} ms",
                        key.0, key.1, s.fence, s.invoke_ms
                    ),
                );
            }
        }
    }

    // O: every earlier job of the group finished before a later one was
    // delivered. `finished_by[o]` is the earliest moment any call that may
    // have finished o was sent (u64::MAX if none).
    for ((queue, group), offsets) in &known {
        if group.is_empty() {
            continue; // each job without a group is its own group
        }
        let mut earlier_done_by = 0u64; // max over earlier offsets
        for o in offsets {
            let key = (queue.clone(), *o);
            if let Some(seen) = deliveries.get(&key) {
                for s in seen {
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
            }
            let done = finishes
                .get(&key)
                .and_then(|fs| fs.iter().map(|f| f.invoke_ms).min())
                .unwrap_or(u64::MAX);
            earlier_done_by = earlier_done_by.max(done);
        }
    }

    // F, part 1: two leases of one group both certainly live at once.
    let mut leases: BTreeMap<(String, String), Vec<LiveLease>> = BTreeMap::new();
    for ((queue, offset), seen) in &deliveries {
        for s in seen {
            let lease = (queue.clone(), *offset, s.fence);
            let deadline = extended
                .get(&lease)
                .map_or(s.deadline_ms, |e| (*e).max(s.deadline_ms));
            let mut end = deadline.saturating_sub(CLOCK_TOLERANCE_MS);
            if let Some(t) = lease_ends.get(&lease) {
                end = end.min(*t);
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
            if let Some((live_end, o, f)) = live {
                if start < live_end && (o, f) != (offset, fence) {
                    report.counts.fencing += 1;
                    report.note(
                        "F",
                        format!(
                            "{queue}/{group}: lease on offset {offset} (fence {fence}) from {start} ms while offset {o} (fence {f}) was live until {live_end} ms"
                        ),
                    );
                }
            }
            if live.is_none_or(|(e, _, _)| end > e) {
                live = Some((end, offset, fence));
            }
        }
    }
    // F, part 2: an ack accepted with a fence older than a grant already seen.
    for (key, fs) in &finishes {
        let Some(seen) = deliveries.get(key) else {
            continue;
        };
        for f in fs.iter().filter(|f| f.certain) {
            if let Some(newer) = seen
                .iter()
                .find(|s| s.fence > f.fence && s.complete_ms < f.invoke_ms)
            {
                report.counts.fencing += 1;
                report.note(
                    "F",
                    format!(
                        "{}: offset {} acked with fence {} at {} ms after fence {} was granted at {} ms",
                        key.0, key.1, f.fence, f.invoke_ms, newer.fence, newer.complete_ms
                    ),
                );
            }
        }
    }

    // X: different digests at one applied index.
    for (index, by_digest) in &digests {
        if by_digest.len() > 1 {
            report.counts.diverged += 1;
            report.note("X", format!("applied index {index}: {by_digest:?}"));
        }
    }
    report
}

fn end_lease(
    ends: &mut BTreeMap<(String, u64, u64), u64>,
    queue: &str,
    offset: u64,
    fence: u64,
    at: u64,
) {
    let e = ends.entry((queue.into(), offset, fence)).or_insert(at);
    *e = (*e).min(at);
}

#[cfg(test)]
mod tests;
