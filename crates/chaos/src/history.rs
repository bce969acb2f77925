//! The history format: one [`Op`] per line of a JSON-lines file.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The call answered OK (per-item results may still differ).
    Ok,
    /// The call answered an error that means nothing happened.
    Fail,
    /// The call timed out or the connection broke: it may or may not have
    /// taken effect.
    Indeterminate,
}

/// One client operation, from invocation to completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Harness wall-clock milliseconds when the call was sent.
    pub invoke_ms: u64,
    /// When its answer (or its failure) arrived.
    pub complete_ms: u64,
    /// The node the call went to.
    pub node: u64,
    /// The client (producer or worker) that made it.
    pub process: u64,
    pub outcome: Outcome,
    pub call: Call,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentJob {
    pub id: String,
    pub group: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnqueueOutcome {
    Created,
    Duplicate,
    IdConflict,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnqueueResult {
    pub id: String,
    pub offset: u64,
    pub outcome: EnqueueOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub offset: u64,
    pub id: String,
    pub group: String,
    pub fence: u64,
    /// Cluster time (the leader's wall clock, milliseconds).
    pub lease_deadline_ms: u64,
}

/// An item of an ack and whether the server accepted it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckItem {
    pub offset: u64,
    pub fence: u64,
    /// The per-item answer was OK. Meaningless unless the call was `Ok`.
    pub ok: bool,
}

/// What an operation sent and got back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Call {
    Enqueue {
        queue: String,
        jobs: Vec<SentJob>,
        /// Empty unless the call was `Ok`.
        results: Vec<EnqueueResult>,
    },
    Fetch {
        queue: String,
        consumer: String,
        /// Empty unless the call was `Ok`.
        deliveries: Vec<Delivery>,
    },
    Ack {
        queue: String,
        items: Vec<AckItem>,
    },
    /// Nack, release and dead-letter end a lease; only a dead-letter
    /// finishes the job.
    EndLease {
        queue: String,
        offset: u64,
        fence: u64,
        kind: EndKind,
    },
    Extend {
        queue: String,
        offset: u64,
        fence: u64,
        /// The new deadline, when `Ok`.
        lease_deadline_ms: u64,
    },
    /// The harness drained `queue` after healing: a fetch found it empty
    /// and its stats showed nothing pending, leased or delayed.
    Drained {
        queue: String,
    },
    /// A node's applied index and state digest, read after the run.
    Digest {
        applied_index: u64,
        digest: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndKind {
    Nack,
    Release,
    DeadLetter,
}

/// Parses a JSON-lines history; an empty line is skipped. The error names
/// the line.
pub fn parse(text: &str) -> Result<Vec<Op>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("history line {}: {e}", i + 1)))
        .collect()
}

/// One JSON line for `op`.
pub fn to_line(op: &Op) -> String {
    // A history op has only strings, numbers and enums: it always encodes.
    serde_json::to_string(op).unwrap_or_else(|e| format!("{{\"encode_error\":\"{e}\"}}"))
}
