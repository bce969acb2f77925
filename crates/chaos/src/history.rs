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
    /// A chained job (enqueued by a chained ack): the (queue, id) of the
    /// job whose ack carried it. The checker's C count holds every such
    /// job to its source's fate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chained_from: Option<(String, String)>,
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
    /// Cluster time (the leader's cluster clock, milliseconds).
    pub lease_deadline_ms: u64,
    /// The server's attempt number, 1 for the first delivery (a release
    /// does not count one). 0: unknown (histories before it was recorded).
    #[serde(default)]
    pub attempt: u32,
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
        /// The lease length the fetch asked for; 0: unknown (or the
        /// queue's default).
        #[serde(default)]
        lease_ms: u64,
        /// The fetch was made where the harness cannot see when it was
        /// sent (inside a library type such as the client's `Worker`):
        /// `invoke_ms` is when the harness saw the job, and the send time
        /// is taken as the start of the history. Such a fetch may also
        /// have returned jobs it does not list. The workload records one
        /// per job its client `Worker` hands the handler, on that
        /// `Worker`'s own queue (its other library calls are timed from
        /// before their first try).
        #[serde(default)]
        invoke_unknown: bool,
        /// The most jobs the fetch asked for; 0 = unknown (no limit).
        #[serde(default)]
        max: u32,
        /// The answer came to a retry, after a try of unknown outcome. A
        /// retry of an applied fetch is answered from the reply cache,
        /// which lists only the leases still held under their fence
        /// (`State::replay`): the first try may have delivered jobs this
        /// does not list.
        #[serde(default)]
        retried: bool,
    },
    /// Acks and nacks the client library's `Worker` makes are recorded
    /// `Indeterminate`: the harness cannot see whether they landed.
    Ack { queue: String, items: Vec<AckItem> },
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
    Drained { queue: String },
    /// The whole dead-letter list of `queue`, read once after the drain.
    DeadLetters { queue: String, jobs: Vec<DeadJob> },
    /// The stats of `queue`, read once after the drain, from the leader.
    Stats {
        queue: String,
        ready: u64,
        delayed: u64,
        leased: u64,
        dead: u64,
        next_offset: u64,
        ack_floor: u64,
    },
    /// How far cluster time may be from the harness's clock in this run,
    /// in ms: the nodes' wall clocks were stepped, and cluster time follows
    /// a leader's wall clock within `clock.skew_ms_max`. Deadlines in
    /// cluster time are read with this much slack.
    ClockBound { ms: u64 },
    /// A queue created during the run (the workload's side queues).
    CreateQueue { queue: String },
    /// A call on `queue` answered NOT_FOUND: the queue does not exist.
    QueueNotFound { queue: String },
    /// A node's applied index and state digest, read after the run.
    Digest { applied_index: u64, digest: String },
}

/// One entry of a dead-letter list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadJob {
    pub offset: u64,
    pub id: String,
    pub group: String,
    /// Failed attempts, counting the last one (the attempt number of the
    /// last delivery).
    pub attempts: u32,
    pub reason: String,
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
