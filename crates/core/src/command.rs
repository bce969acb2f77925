//! The input and output of [`crate::State::apply`].
//!
//! A Raft entry carries one leader stamp ([`Stamp`]: log index and cluster
//! time) and one or more [`Command`]s; the server batches concurrent client
//! requests into one entry, and every command in it is applied with the same
//! stamp and answered on its own.

use serde::{Deserialize, Serialize};

use crate::config::QueueConfig;

/// Where and when a command is applied. The log index is the fence of every
/// lease the command grants; the time is the leader's cluster time, which the
/// core never lets run backwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub index: u64,
    pub time_ms: u64,
}

/// Identifies a queue's incarnation: a queue deleted and created again with
/// the same name gets a new id, so its payload keys never collide.
pub type QueueId = u64;

/// Where a request sits in its client's session (see `session.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequence {
    /// From `Reply::SessionOpened`.
    pub session: u64,
    /// 1, 2, 3... per request; a retry reuses its number.
    pub seq: u64,
    /// The lowest number the client still waits for: every reply below it
    /// may be forgotten.
    pub floor: u64,
    /// Which try of the request this is. Tries of one number may overtake
    /// each other on the way to the log (a forward that broke after sending,
    /// a client's earlier try through another node), so the
    /// core refuses a try older than one it already applied without
    /// keeping the result (an empty fetch, which a long poll repeats).
    pub try_number: TryNumber,
}

/// The order of the tries of one request, oldest first: the client's try,
/// then the serving node's round of a long poll within it, then the
/// forward within that round. Each layer counts from 0 and only ever
/// counts up, and a layer starts a new try only after giving up on its
/// previous one, so a later try always compares greater.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TryNumber {
    /// The client's try of the call (its retries after no answer).
    pub client: u32,
    /// The serving node's round of a long poll within that try.
    pub round: u32,
    /// The forward to a leader within that round.
    pub forward: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewJob {
    /// Client-given (recommended) or server-made before proposing; 1 to
    /// `ID_BYTES_MAX` bytes with no control characters.
    pub id: String,
    /// `None`: the job is a group of one.
    pub group: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// 0..=9, higher first among ready group heads.
    pub priority: u8,
    /// The job is `DELAYED` until cluster time passes enqueue time plus this.
    pub delay_ms: u64,
    /// Who the job is for (a tenant, say; SPEC 2.3a): among ready heads of
    /// equal priority, deliveries are shared across keys by the queue's
    /// `fairness` weights. `None` is the key `""`, shared by every job
    /// without one; `Some` is 1 to `FAIRNESS_KEY_BYTES_MAX` bytes with no
    /// control characters. Fixed at enqueue, and not part of what makes a
    /// repeated id a `DUPLICATE` rather than an `ID_CONFLICT` (group and
    /// payload are). Last, so the fields before it keep their encoding.
    pub fairness_key: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckItem {
    pub offset: u64,
    pub fence: u64,
}

/// Jobs an [`Command::AckThen`] enqueues into one queue, in the same entry
/// as its ack (SPEC 2.3a: chained jobs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chained {
    pub queue: String,
    pub jobs: Vec<NewJob>,
}

/// Which dead letters a purge removes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PurgeSelector {
    All,
    Offsets(Vec<u64>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateQueue {
        name: String,
        config: QueueConfig,
    },
    UpdateQueue {
        name: String,
        config: QueueConfig,
    },
    DeleteQueue {
        name: String,
    },
    Enqueue {
        queue: String,
        jobs: Vec<NewJob>,
    },
    /// Grants up to `max` leases. `lease_ms` 0 means the queue's default.
    Fetch {
        queue: String,
        consumer: String,
        max: u32,
        lease_ms: u64,
    },
    Ack {
        queue: String,
        items: Vec<AckItem>,
    },
    /// Ends the attempt as failed. `delay_ms` 0 means the queue's backoff.
    Nack {
        queue: String,
        offset: u64,
        fence: u64,
        delay_ms: u64,
    },
    Extend {
        queue: String,
        offset: u64,
        fence: u64,
        lease_ms: u64,
    },
    /// Gives the job back without counting an attempt.
    Release {
        queue: String,
        offset: u64,
        fence: u64,
    },
    DeadLetter {
        queue: String,
        offset: u64,
        fence: u64,
        reason: String,
    },
    /// Advances cluster time on every queue: expires due leases, wakes due
    /// delayed jobs, forgets dedup ids past their window.
    Tick,
    PauseGroup {
        queue: String,
        group: String,
    },
    ResumeGroup {
        queue: String,
        group: String,
    },
    RequeueDeadLetter {
        queue: String,
        offset: u64,
    },
    PurgeDeadLetters {
        queue: String,
        which: PurgeSelector,
    },
    /// Opens a client session for at-most-once requests (see `session.rs`).
    OpenSession,
    /// `command` as request `sequence` of a client session: applied at
    /// most once, its first result kept for retries.
    Sequenced {
        sequence: Sequence,
        command: Box<Command>,
    },
    /// Acks `items` and enqueues the `then` jobs in one step: either all of
    /// it happens or none of it does. Unlike a plain `Ack`, every item must
    /// hold its lease; an ack repeated after it succeeded (every item
    /// already acked under its fence) is answered `AlreadyAcked` and
    /// enqueues nothing again. Last in the enum, so the encoding of every
    /// older command is unchanged.
    AckThen {
        queue: String,
        items: Vec<AckItem>,
        then: Vec<Chained>,
    },
    /// An operator moves the head of `group` to the dead letters with
    /// `reason`, leased or not (a lease it ends is lost to its holder), so
    /// the group moves on. A `park` queue does not park the group: the
    /// operator chose to go on. The attempt in flight, if any, ends as a
    /// dead letter would end it.
    SkipHead {
        queue: String,
        group: String,
        reason: String,
    },
    /// `command`, a consumer-side command (fetch, ack, chained ack, nack,
    /// extend, release, dead letter, skip, pause, resume, requeue, purge),
    /// applied to subscription `subscription` of the queue it names
    /// (SPEC 2.3a) instead of the queue's default subscription. A chained
    /// ack's `then` jobs are ordinary enqueues. Any other command inside,
    /// a nested `InSubscription` or a `Sequenced` included, is refused
    /// `INVALID_ARGUMENT`; wrap this in `Sequenced`, not the other way
    /// round. Last but two in the enum, so older encodings are unchanged.
    InSubscription {
        subscription: String,
        command: Box<Command>,
    },
    /// Adds subscription `name` to `queue`: an independent consumer group
    /// over the jobs enqueued from now on. Creating one that exists is
    /// answered `created: false`.
    CreateSubscription {
        queue: String,
        name: String,
    },
    /// Removes subscription `name` of `queue` with its leases and dead
    /// letters; a payload no other subscription holds is deleted.
    DeleteSubscription {
        queue: String,
        name: String,
    },
}

impl Command {
    /// Marks a sequenced command as forward `forward` of its round (see
    /// [`TryNumber`]) and says whether it was one; any other command is left
    /// as it is.
    pub fn set_forward_try(&mut self, forward: u32) -> bool {
        match self {
            Command::Sequenced { sequence, .. } => {
                sequence.try_number.forward = forward;
                true
            }
            _ => false,
        }
    }

    /// Whether applying this command may change a queue's existence or
    /// configuration: what [`crate::Configs`] copies.
    /// A sequenced one may too: a queue created with a session must reach
    /// the copy, or every later call without one is refused NOT_FOUND by
    /// the leader's precheck.
    pub fn changes_configs(&self) -> bool {
        match self {
            Command::CreateQueue { .. }
            | Command::UpdateQueue { .. }
            | Command::DeleteQueue { .. }
            | Command::CreateSubscription { .. }
            | Command::DeleteSubscription { .. } => true,
            Command::Sequenced { command, .. } => command.changes_configs(),
            // Consumer commands only: no queue or subscription comes or goes.
            Command::InSubscription { .. } => false,
            _ => false,
        }
    }

    /// The command's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateQueue { .. } => "CreateQueue",
            Command::UpdateQueue { .. } => "UpdateQueue",
            Command::DeleteQueue { .. } => "DeleteQueue",
            Command::Enqueue { .. } => "Enqueue",
            Command::Fetch { .. } => "Fetch",
            Command::Ack { .. } => "Ack",
            Command::Nack { .. } => "Nack",
            Command::Extend { .. } => "Extend",
            Command::Release { .. } => "Release",
            Command::DeadLetter { .. } => "DeadLetter",
            Command::Tick => "Tick",
            Command::PauseGroup { .. } => "PauseGroup",
            Command::ResumeGroup { .. } => "ResumeGroup",
            Command::RequeueDeadLetter { .. } => "RequeueDeadLetter",
            Command::PurgeDeadLetters { .. } => "PurgeDeadLetters",
            Command::OpenSession => "OpenSession",
            Command::Sequenced { .. } => "Sequenced",
            Command::AckThen { .. } => "AckThen",
            Command::SkipHead { .. } => "SkipHead",
            Command::InSubscription { .. } => "InSubscription",
            Command::CreateSubscription { .. } => "CreateSubscription",
            Command::DeleteSubscription { .. } => "DeleteSubscription",
        }
    }

    /// The queue a command addresses, if any.
    pub fn queue(&self) -> Option<&str> {
        match self {
            Command::CreateQueue { name, .. }
            | Command::UpdateQueue { name, .. }
            | Command::DeleteQueue { name } => Some(name),
            Command::Enqueue { queue, .. }
            | Command::Fetch { queue, .. }
            | Command::Ack { queue, .. }
            | Command::AckThen { queue, .. }
            | Command::SkipHead { queue, .. }
            | Command::Nack { queue, .. }
            | Command::Extend { queue, .. }
            | Command::Release { queue, .. }
            | Command::DeadLetter { queue, .. }
            | Command::PauseGroup { queue, .. }
            | Command::ResumeGroup { queue, .. }
            | Command::RequeueDeadLetter { queue, .. }
            | Command::PurgeDeadLetters { queue, .. }
            | Command::CreateSubscription { queue, .. }
            | Command::DeleteSubscription { queue, .. } => Some(queue),
            Command::Sequenced { command, .. } | Command::InSubscription { command, .. } => {
                command.queue()
            }
            Command::Tick | Command::OpenSession => None,
        }
    }
}

/// The state of a job as a client sees it (SPEC 2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    Ready,
    Delayed,
    Leased,
    Done,
    Dead,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnqueueResult {
    Created {
        offset: u64,
    },
    /// Same id, group and payload inside the window: the original offset.
    Duplicate {
        offset: u64,
        state: JobState,
    },
    /// Same id with another group or payload: nothing stored.
    IdConflict {
        offset: u64,
    },
}

/// A granted lease. The payload, id and headers are not in the core: the
/// server reads them from the payload store under (`queue_id`, `blob`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub queue_id: QueueId,
    pub offset: u64,
    pub blob: u64,
    pub group: Option<String>,
    pub priority: u8,
    /// 1 for the first delivery.
    pub attempt: u32,
    pub fence: u64,
    pub deadline_ms: u64,
}

/// The outcome of one ack item. Items of one ack are independent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckResult {
    Acked,
    /// Repeated ack with the fence that finished the job: OK, no change.
    AlreadyAcked,
    Failed(crate::Error),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    QueueCreated {
        created: bool,
        queue_id: QueueId,
    },
    QueueUpdated,
    QueueDeleted,
    Enqueued(Vec<EnqueueResult>),
    Fetched(Vec<Delivery>),
    Acked(Vec<AckResult>),
    /// The job is retried after `not_before_ms`, or went to the dead letters.
    Nacked {
        dead: bool,
        not_before_ms: u64,
    },
    Extended {
        deadline_ms: u64,
    },
    Released,
    DeadLettered,
    Ticked {
        expired: u32,
    },
    GroupPaused,
    GroupResumed,
    Requeued {
        offset: u64,
    },
    Purged {
        count: u64,
    },
    SessionOpened {
        session: u64,
    },
    /// The answer to [`Command::AckThen`]: one result per item, then one
    /// list of enqueue results per `then` entry, in order (empty when the
    /// ack was a repeat and enqueued nothing).
    AckedThen {
        acked: Vec<AckResult>,
        then: Vec<Vec<EnqueueResult>>,
    },
    /// The head at `offset` is a dead letter now.
    Skipped {
        offset: u64,
    },
    /// The answer to [`Command::CreateSubscription`]; `created` is false
    /// when the subscription existed already.
    SubscriptionCreated {
        created: bool,
    },
    SubscriptionDeleted,
}

/// What the client sent along with a job, kept by the payload store rather
/// than the core (SPEC 7: payloads stay out of memory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobBlob {
    pub id: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

/// A write the storage layer must make in the same batch as the entry that
/// produced it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    PutBlob {
        queue_id: QueueId,
        blob: u64,
        data: JobBlob,
    },
    DeleteBlob {
        queue_id: QueueId,
        blob: u64,
    },
    /// Every blob of the queue goes (the queue was deleted).
    DropQueue {
        queue_id: QueueId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequenced_queue_change_changes_the_configs() {
        let create = Command::CreateQueue {
            name: "q".into(),
            config: crate::QueueConfig::default(),
        };
        assert!(create.changes_configs());
        let sequenced = Command::Sequenced {
            sequence: Sequence {
                session: 1,
                seq: 1,
                floor: 1,
                try_number: TryNumber::default(),
            },
            command: Box::new(create),
        };
        assert!(sequenced.changes_configs());
        assert!(!Command::Tick.changes_configs());
    }
}
