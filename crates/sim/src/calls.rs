//! The commands a simulated client sends and how their replies are
//! recorded, shared by both simulators (this crate's model of the node,
//! and `lockstep-nodesim`'s real node layer), so both write the same
//! history for the same answer.

use lockstep_chaos::history::{Delivery, EndKind, EnqueueOutcome, EnqueueResult};
use lockstep_core::{self as core, Command, NewJob, Reply};

/// A job of the workload: its id is its payload.
pub fn new_job(id: &str, group: &str) -> NewJob {
    NewJob {
        id: id.into(),
        group: Some(group.into()),
        payload: id.as_bytes().to_vec(),
        headers: Vec::new(),
        priority: 0,
        delay_ms: 0,
        fairness_key: None,
    }
}

/// The command that ends the lease `(offset, fence)` on `queue` as `kind`
/// says.
pub fn end_lease(queue: &str, offset: u64, fence: u64, kind: EndKind) -> Command {
    let queue = queue.to_string();
    match kind {
        EndKind::Nack => Command::Nack {
            queue,
            offset,
            fence,
            delay_ms: 0,
        },
        EndKind::Release => Command::Release {
            queue,
            offset,
            fence,
        },
        EndKind::DeadLetter => Command::DeadLetter {
            queue,
            offset,
            fence,
            reason: "the simulated handler gave up".into(),
        },
    }
}

/// Each sent job's result in an enqueue's reply (none unless it was OK).
pub fn enqueue_results<'a>(
    reply: Option<&Reply>,
    ids: impl IntoIterator<Item = &'a str>,
) -> Vec<EnqueueResult> {
    let Some(Reply::Enqueued(results)) = reply else {
        return Vec::new();
    };
    results
        .iter()
        .zip(ids)
        .map(|(r, id)| {
            let (offset, outcome) = match r {
                core::EnqueueResult::Created { offset } => (*offset, EnqueueOutcome::Created),
                core::EnqueueResult::Duplicate { offset, .. } => {
                    (*offset, EnqueueOutcome::Duplicate)
                }
                core::EnqueueResult::IdConflict { offset } => (*offset, EnqueueOutcome::IdConflict),
            };
            EnqueueResult {
                id: id.to_string(),
                offset,
                outcome,
            }
        })
        .collect()
}

/// Whether each of an ack's `items` items was accepted (all false unless
/// the ack answered OK).
pub fn ack_oks(reply: Option<&Reply>, items: usize) -> Vec<bool> {
    let mut oks: Vec<bool> = match reply {
        Some(Reply::Acked(results)) => results
            .iter()
            .map(|r| matches!(r, core::AckResult::Acked | core::AckResult::AlreadyAcked))
            .collect(),
        _ => Vec::new(),
    };
    oks.resize(items, false);
    oks
}

/// What a fetch delivered, as the history records it: each delivery with
/// the job id its stored payload names (`ids`, in the same order; empty
/// where none came back). Nothing unless the reply is `Fetched`.
pub fn deliveries(reply: Option<&Reply>, ids: &[String]) -> Vec<Delivery> {
    let Some(Reply::Fetched(ds)) = reply else {
        return Vec::new();
    };
    ds.iter()
        .enumerate()
        .map(|(i, d)| Delivery {
            offset: d.offset,
            id: ids.get(i).cloned().unwrap_or_default(),
            group: d.group.clone().unwrap_or_default(),
            fence: d.fence,
            lease_deadline_ms: d.deadline_ms,
            attempt: d.attempt,
        })
        .collect()
}
