//! The replicated queue state and its `apply`.
//!
//! Everything here is a function of the applied log: no clock, no randomness,
//! no I/O. Time comes from the leader's stamp, and a queue's notion of "now"
//! (`Queue::clock_ms`) only moves when a command addresses the queue or a
//! `Tick` passes over every queue. The leader proposes a `Tick` when
//! [`State::next_due_ms`] says a lease or a delay is due, so expiry happens
//! without client traffic.
//!
//! Per pending job the core keeps one fixed-size [`Job`] record plus its
//! offset in its group's deque and its dedup entry; ids, headers and payloads
//! live in the payload store, reached through [`Effect`]s.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::command::*;
pub(crate) use crate::config::check_text;
use crate::config::{GroupPolicy, QueueConfig};
use crate::dedup::{Dedup, DedupEntry};
use crate::error::{Error, Result};
use crate::hash;
use crate::limits::*;
use crate::offset_map::OffsetMap;
use crate::session::{self, Lookup, Sessions};

/// The group reference of a job that has no group key (a group of one).
pub(crate) const NO_GROUP: u64 = u64::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    pub fence: u64,
    pub deadline_ms: u64,
}

/// The fixed-size in-memory record of one pending job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Job {
    pub id_hash: u128,
    pub group: u64,
    /// Key of the payload in the store; the offset the job was first stored
    /// under (a requeued dead letter keeps its blob under a new offset).
    pub blob: u64,
    pub enqueued_ms: u64,
    pub not_before_ms: u64,
    pub lease: Option<Lease>,
    /// Fence of the latest grant. A job can be granted again only by a later
    /// log entry, so every grant of a job has a strictly greater fence.
    pub last_fence: u64,
    pub payload_bytes: u32,
    /// Failed attempts so far.
    pub attempts: u32,
    pub priority: u8,
    /// The job's fairness key, interned ([`Queue::fair_keys`]) so the
    /// record stays fixed-size: a `u32` fits in the record's padding.
    pub fair: u32,
}

/// A fairness key some held (pending or dead-lettered) job carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FairKey {
    pub key: String,
    /// Pending and dead-lettered jobs that carry it; at 0 it is forgotten.
    pub held: u64,
}

/// One priority band's share of deliveries across fairness keys (SPEC
/// 2.3a): start-time fair queueing over the keys with ready heads.
///
/// Each key with pending jobs at this priority has a lane holding its
/// virtual time, the start tag of its next delivery. A pick takes the lane
/// with the smallest (virtual time, oldest ready head), delivers that
/// lane's oldest ready head and charges the lane `FAIRNESS_VTIME_SCALE /
/// weight`. The band's virtual clock is then raised to the smallest
/// virtual time among lanes with ready heads, and a lane that gets a ready
/// head after having none starts at no less than that clock, so a key
/// cannot bank credit while it has nothing to deliver.
///
/// Virtual times and the clock decide future picks, so they are encoded
/// (replicas and restored snapshots pick alike); the ready heads and the
/// order follow from the jobs, so a restore rebuilds them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Band {
    /// Never above the virtual time of a lane with ready heads.
    pub vclock: u128,
    /// By interned fairness key; only keys with pending jobs at this
    /// priority, so the map is bounded by the pending jobs.
    pub lanes: BTreeMap<u32, Lane>,
    /// Lanes with ready heads by (virtual time, oldest ready head): the
    /// head names the lane (`Job::fair`), and at equal virtual time the
    /// older head goes first. Derived.
    #[serde(skip)]
    pub order: BTreeSet<(u128, u64)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lane {
    pub vtime: u128,
    /// Pending jobs of this key at this priority; at 0 the lane goes.
    pub pending: u64,
    /// This key's ready group heads at this priority, by offset. Derived.
    #[serde(skip)]
    pub ready: BTreeSet<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Group {
    pub key: String,
    /// Offsets of the group's pending jobs, in order. The front is the head.
    pub offsets: VecDeque<u64>,
    pub paused: bool,
    /// Why the group is parked, when a dead letter stopped it.
    pub parked_reason: Option<String>,
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    Expired,
    Nacked,
    DeadLettered,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based delivery number.
    pub attempt: u32,
    pub fence: u64,
    pub at_ms: u64,
    pub outcome: AttemptOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeadJob {
    pub job: Job,
    pub group_key: Option<String>,
    pub reason: String,
    pub history: Vec<Attempt>,
    pub dead_ms: u64,
}

/// How a job that left the pending set ended, kept while its id is inside
/// the dedup window so a repeated ack is recognised and a `DUPLICATE` can
/// name the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Finished {
    Acked { fence: u64 },
    Dead { fence: u64 },
}

/// Running totals, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub enqueued: u64,
    pub duplicates: u64,
    pub delivered: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub nacked: u64,
    pub expired: u64,
    pub dead_lettered: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Queue {
    pub id: QueueId,
    pub name: String,
    pub config: QueueConfig,
    pub clock_ms: u64,
    pub next_offset: u64,
    pub jobs: OffsetMap<Job>,
    pub groups: OffsetMap<Group>,
    pub group_ids: BTreeMap<String, u64>,
    pub next_group_id: u64,
    /// Ready group heads: (PRIORITY_MAX - priority, offset), so iteration
    /// order is priority descending, then oldest head first. Fetch picks
    /// from `bands`; this serves the oldest ready age. Derived from the
    /// jobs, so not encoded: a restore rebuilds it with the lanes' ready
    /// heads ([`Queue::rebuild_ready`]).
    #[serde(skip)]
    pub ready: BTreeSet<(u8, u64)>,
    /// Pending, unleased jobs whose `not_before_ms` is after `clock_ms`.
    pub delayed: BTreeSet<(u64, u64)>,
    /// Live leases by deadline.
    pub leases: BTreeSet<(u64, u64)>,
    pub holders: BTreeMap<u64, String>,
    /// Attempt records of pending jobs that have failed at least once.
    pub history: BTreeMap<u64, Vec<Attempt>>,
    pub dead: BTreeMap<u64, DeadJob>,
    pub finished: BTreeMap<u64, Finished>,
    /// Ids inside the dedup window, by first acceptance, so expiry pops
    /// from the front instead of scanning.
    pub dedup: Dedup,
    /// Payload bytes of pending and dead-lettered jobs.
    pub bytes: u64,
    pub counters: Counters,
    /// GCRA arrival time (µs of cluster time) of the enqueue bucket
    /// (`rates.enqueue_rate_max`).
    pub enqueue_tat_us: u64,
    /// GCRA arrival time of each group's delivery bucket
    /// (`rates.group_rate_max`), while the bucket is not full again; a
    /// group missing here has a full bucket. Keyed by the group's key, as
    /// a group without jobs is forgotten but its rate must hold.
    pub group_tats: BTreeMap<String, u64>,
    /// The same entries by time, so full buckets are dropped in order.
    pub group_tat_order: BTreeSet<(u64, String)>,
    /// Fairness keys of held jobs, interned: by id, and ids by key. A key
    /// no held job carries is forgotten.
    pub fair_keys: BTreeMap<u32, FairKey>,
    pub fair_ids: BTreeMap<String, u32>,
    /// Where the search for a free id starts.
    pub next_fair_id: u32,
    /// Fair sharing per priority band, by `PRIORITY_MAX - priority` (so
    /// the first band is the highest priority); only bands with pending
    /// jobs.
    pub bands: BTreeMap<u8, Band>,
    /// Groups with jobs by (backlog, group): the top groups by backlog
    /// without a scan. Derived from `groups`, so not encoded: a restore
    /// rebuilds it ([`Queue::rebuild_group_indexes`]).
    #[serde(skip)]
    pub by_backlog: BTreeSet<(u64, u64)>,
    /// Groups with jobs by (head offset, group): offsets are given in
    /// cluster-time order, so the first entries head the oldest groups.
    /// Derived and rebuilt like `by_backlog`.
    #[serde(skip)]
    pub by_head: BTreeSet<(u64, u64)>,
    /// `None` for a queue; `Some(name)` for the consumer side of its
    /// subscription `name` (SPEC 2.3a), which is a `Queue` too: its jobs,
    /// groups, leases, attempts, dead letters, buckets and fairness are its
    /// own, over the queue's offsets and blobs. A subscription's own
    /// `dedup`, `holds` and `subscriptions` stay empty: the queue lends it
    /// its `dedup` and `holds` while it runs ([`Queue::lend_to`]).
    pub subscription: Option<String>,
    /// The queue's named subscriptions. The queue's own consumer state
    /// above is the default subscription.
    pub subscriptions: BTreeMap<String, Queue>,
    /// Who holds each payload, when the queue has subscriptions.
    pub holds: Holds,
}

/// Payload holds across a queue's subscriptions (SPEC 2.3a: a job is
/// removed once every subscription has finished it).
///
/// A job enqueued while the queue has `n` named subscriptions is held by
/// `1 + n` holders, the default subscription and each named one. Only
/// blobs with two or more holders are listed, so a queue without
/// subscriptions keeps nothing here; a blob missing here has one holder,
/// and its release deletes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Holds {
    /// Holders of each blob held by two or more subscriptions.
    pub shared: BTreeMap<u64, u32>,
    /// Jobs the default subscription finished (acked or purged) that a
    /// named subscription still holds, and their payload bytes. They still
    /// occupy storage, so `max_jobs` and `max_bytes` count them.
    pub orphans: u64,
    pub orphan_bytes: u64,
}

impl Holds {
    /// One holder of `blob` (the default subscription when `by_default`)
    /// finished it: the payload is deleted when it was the last.
    fn release(
        &mut self,
        queue_id: QueueId,
        blob: u64,
        payload_bytes: u32,
        by_default: bool,
        effects: &mut Vec<Effect>,
    ) {
        match self.shared.get_mut(&blob) {
            Some(holders) => {
                *holders -= 1;
                if *holders == 1 {
                    self.shared.remove(&blob);
                }
                if by_default {
                    self.orphans += 1;
                    self.orphan_bytes += u64::from(payload_bytes);
                }
            }
            None => {
                if !by_default {
                    // The last holder is a named subscription, so the
                    // default one finished the job before.
                    self.orphans -= 1;
                    self.orphan_bytes -= u64::from(payload_bytes);
                }
                effects.push(Effect::DeleteBlob { queue_id, blob });
            }
        }
    }
}

/// The whole replicated state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub(crate) clock_ms: u64,
    pub(crate) last_index: u64,
    pub(crate) next_queue_id: QueueId,
    pub(crate) queues: BTreeMap<String, Queue>,
    pub(crate) sessions: Sessions,
    /// The first offset a queue created now gives: above every offset a
    /// deleted queue ever gave, so a queue deleted and created again never
    /// reuses an offset (SPEC §1), whatever its name. One number for all
    /// names, so it needs no bound. Last in the struct, so the encoding of
    /// the fields before it is unchanged.
    pub(crate) offset_floor: u64,
}

/// The fair-sharing band of a job: higher priority, lower band.
fn band_of(job: &Job) -> u8 {
    PRIORITY_MAX - job.priority
}

/// Queue names: 1 to `QUEUE_NAME_BYTES_MAX` of `[A-Za-z0-9._-]`, so they are
/// safe in metrics labels, paths and shell commands.
pub fn validate_queue_name(name: &str) -> Result<()> {
    validate_name("queue", name, QUEUE_NAME_BYTES_MAX)
}

/// Subscription names follow the queue-name rules: 1 to
/// `SUBSCRIPTION_NAME_BYTES_MAX` of `[A-Za-z0-9._-]`. `field` is the
/// request field that carries it.
pub fn validate_subscription_name(field: &str, name: &str) -> Result<()> {
    validate_name(field, name, SUBSCRIPTION_NAME_BYTES_MAX)
}

fn validate_name(field: &str, name: &str, bytes_max: usize) -> Result<()> {
    check_text(field, name, bytes_max, false)?;
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(Error::invalid(
            field,
            format!("`{name}` may use only A-Z a-z 0-9 . _ -"),
        ));
    }
    Ok(())
}

/// The commands a subscription runs (`Command::InSubscription`): the
/// consumer side. Anything else is refused by name.
fn check_subscribable(command: &Command) -> Result<()> {
    match command {
        Command::Fetch { .. }
        | Command::Ack { .. }
        | Command::AckThen { .. }
        | Command::Nack { .. }
        | Command::Extend { .. }
        | Command::Release { .. }
        | Command::DeadLetter { .. }
        | Command::SkipHead { .. }
        | Command::PauseGroup { .. }
        | Command::ResumeGroup { .. }
        | Command::RequeueDeadLetter { .. }
        | Command::PurgeDeadLetters { .. } => Ok(()),
        Command::InSubscription { .. } => Err(Error::invalid(
            "command",
            "InSubscription cannot hold another InSubscription",
        )),
        Command::Sequenced { .. } => Err(Error::invalid(
            "command",
            "InSubscription cannot hold Sequenced: put InSubscription inside Sequenced",
        )),
        other => Err(Error::invalid(
            "command",
            format!(
                "{} is not a consumer command and cannot run in a subscription",
                other.kind()
            ),
        )),
    }
}

fn subscription_not_found(queue: &str, name: &str) -> Error {
    Error::NotFound {
        what: format!("subscription `{name}` of queue `{queue}`"),
    }
}

fn validate_job(config: &QueueConfig, job: &NewJob, index: usize) -> Result<()> {
    let field = |f: &str| format!("jobs[{index}].{f}");
    check_text(&field("id"), &job.id, ID_BYTES_MAX, false)?;
    if let Some(group) = &job.group {
        check_text(&field("group"), group, GROUP_BYTES_MAX, false)?;
    }
    if let Some(key) = &job.fairness_key {
        check_text(&field("fairness_key"), key, FAIRNESS_KEY_BYTES_MAX, false)?;
    }
    if job.payload.len() > config.max_payload_bytes as usize {
        return Err(Error::invalid(
            &field("payload"),
            format!(
                "{} bytes exceeds max_payload_bytes = {}",
                job.payload.len(),
                config.max_payload_bytes
            ),
        ));
    }
    if job.priority > PRIORITY_MAX {
        return Err(Error::invalid(
            &field("priority"),
            format!(
                "{} is above the highest priority {PRIORITY_MAX}",
                job.priority
            ),
        ));
    }
    if job.delay_ms > DELAY_MS_MAX {
        return Err(Error::invalid(
            &field("delay_ms"),
            format!("{} exceeds the limit of {DELAY_MS_MAX} ms", job.delay_ms),
        ));
    }
    if job.headers.len() > HEADERS_COUNT_MAX {
        return Err(Error::invalid(
            &field("headers"),
            format!(
                "{} headers exceed the limit of {HEADERS_COUNT_MAX}",
                job.headers.len()
            ),
        ));
    }
    let header_bytes: usize = job.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if header_bytes > HEADERS_BYTES_MAX {
        return Err(Error::invalid(
            &field("headers"),
            format!("{header_bytes} bytes exceed the limit of {HEADERS_BYTES_MAX} bytes"),
        ));
    }
    for (key, _) in &job.headers {
        check_text(&field("headers.key"), key, HEADERS_BYTES_MAX, false)?;
    }
    Ok(())
}

/// The checks of an enqueue's jobs that need no state: the batch size and
/// each job on its own.
fn validate_jobs(config: &QueueConfig, jobs: &[NewJob]) -> Result<()> {
    validate_batch("jobs", jobs.len(), config)?;
    jobs.iter()
        .enumerate()
        .try_for_each(|(i, job)| validate_job(config, job, i))
}

/// The checks of an [`Command::AckThen`] that need no queue: at most
/// [`CHAINED_QUEUES_MAX`] target queues, each named once, and no offset
/// acked twice (an item cannot both hold its lease and repeat an ack).
fn validate_chain(items: &[AckItem], then: &[Chained]) -> Result<()> {
    if then.len() > CHAINED_QUEUES_MAX {
        return Err(Error::invalid(
            "then",
            format!(
                "{} queues exceed the limit of {CHAINED_QUEUES_MAX}",
                then.len()
            ),
        ));
    }
    let mut offsets = BTreeSet::new();
    if let Some(item) = items.iter().find(|i| !offsets.insert(i.offset)) {
        return Err(Error::invalid(
            "items",
            format!("offset {} appears twice", item.offset),
        ));
    }
    let mut queues = BTreeSet::new();
    if let Some(c) = then.iter().find(|c| !queues.insert(c.queue.as_str())) {
        return Err(Error::invalid(
            "then",
            format!(
                "queue `{}` appears twice: put its jobs in one entry",
                c.queue
            ),
        ));
    }
    Ok(())
}

fn validate_batch(field: &str, len: usize, config: &QueueConfig) -> Result<()> {
    if len == 0 {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if len > config.max_batch as usize {
        return Err(Error::invalid(
            field,
            format!("{len} items exceed max_batch = {}", config.max_batch),
        ));
    }
    Ok(())
}

/// The backoff before the retry that follows failed attempt `attempt`
/// (1-based): `base * factor^(attempt-1)`, capped, minus a jitter of up to
/// `backoff_jitter_pct` percent drawn from a hash of (id, attempt).
pub fn backoff_ms(config: &QueueConfig, id_hash: u128, attempt: u32) -> u64 {
    let mut delay = config.backoff_base_ms;
    for _ in 1..attempt {
        if delay >= config.backoff_cap_ms {
            break;
        }
        delay = delay.saturating_mul(u64::from(config.backoff_factor));
    }
    let delay = delay.min(config.backoff_cap_ms);
    let jitter_max = (u128::from(delay) * u128::from(config.backoff_jitter_pct) / 100) as u64;
    delay - hash::jitter(id_hash, attempt) % (jitter_max + 1)
}

/// The lease a fetch or extend asking for `lease_ms` gets under `config`:
/// 0 is the default, above `lease_ms_max` is clamped, above the hard
/// ceiling is refused.
fn resolve_lease(config: &QueueConfig, lease_ms: u64) -> Result<u64> {
    if lease_ms > LEASE_MS_LIMIT {
        return Err(Error::invalid(
            "lease_ms",
            format!("{lease_ms} exceeds the limit of {LEASE_MS_LIMIT} ms"),
        ));
    }
    Ok(match lease_ms {
        0 => config.lease_ms_default,
        ms => ms.min(config.lease_ms_max),
    })
}

impl Queue {
    fn new(
        id: QueueId,
        name: String,
        config: QueueConfig,
        clock_ms: u64,
        next_offset: u64,
    ) -> Queue {
        Queue {
            id,
            name,
            config,
            clock_ms,
            next_offset,
            jobs: OffsetMap::new(),
            groups: OffsetMap::new(),
            group_ids: BTreeMap::new(),
            next_group_id: 0,
            ready: BTreeSet::new(),
            delayed: BTreeSet::new(),
            leases: BTreeSet::new(),
            holders: BTreeMap::new(),
            history: BTreeMap::new(),
            dead: BTreeMap::new(),
            finished: BTreeMap::new(),
            dedup: Dedup::default(),
            bytes: 0,
            counters: Counters::default(),
            enqueue_tat_us: 0,
            group_tats: BTreeMap::new(),
            group_tat_order: BTreeSet::new(),
            fair_keys: BTreeMap::new(),
            fair_ids: BTreeMap::new(),
            next_fair_id: 0,
            bands: BTreeMap::new(),
            by_backlog: BTreeSet::new(),
            by_head: BTreeSet::new(),
            subscription: None,
            subscriptions: BTreeMap::new(),
            holds: Holds::default(),
        }
    }

    /// What messages call this consumer: the queue, or one of its
    /// subscriptions.
    fn label(&self) -> String {
        match &self.subscription {
            None => format!("queue `{}`", self.name),
            Some(sub) => format!("subscription `{sub}` of queue `{}`", self.name),
        }
    }

    /// Runs `f` on subscription `sub` (taken out of `subscriptions`) with
    /// the queue's dedup index and payload holds lent to it, so the
    /// subscription's finished records follow the queue's dedup window and
    /// its finished payloads go through the holds. Lending swaps two maps,
    /// O(1). An offset the subscription gives (a requeue) is the queue's
    /// next one.
    fn lend_to<R>(&mut self, sub: &mut Queue, f: impl FnOnce(&mut Queue) -> R) -> R {
        std::mem::swap(&mut sub.dedup, &mut self.dedup);
        std::mem::swap(&mut sub.holds, &mut self.holds);
        sub.next_offset = self.next_offset;
        let result = f(sub);
        std::mem::swap(&mut sub.dedup, &mut self.dedup);
        std::mem::swap(&mut sub.holds, &mut self.holds);
        self.next_offset = self.next_offset.max(sub.next_offset);
        result
    }

    /// [`Queue::lend_to`] subscription `name`, if it exists; every
    /// subscription then agrees on the next offset.
    fn in_subscription<R>(&mut self, name: &str, f: impl FnOnce(&mut Queue) -> R) -> Option<R> {
        let mut sub = self.subscriptions.remove(name)?;
        let result = self.lend_to(&mut sub, f);
        self.subscriptions.insert(name.to_string(), sub);
        self.sync_offsets();
        Some(result)
    }

    fn sync_offsets(&mut self) {
        let next = self.next_offset;
        for sub in self.subscriptions.values_mut() {
            sub.next_offset = next;
        }
    }

    /// The consumer `subscription` names: the queue itself for `None`.
    pub(crate) fn consumer(&self, subscription: Option<&str>) -> Option<&Queue> {
        match subscription {
            None => Some(self),
            Some(name) => self.subscriptions.get(name),
        }
    }

    /// One holder of the payload of a job this consumer finished is gone.
    fn release_blob(&mut self, blob: u64, payload_bytes: u32, effects: &mut Vec<Effect>) {
        let by_default = self.subscription.is_none();
        self.holds
            .release(self.id, blob, payload_bytes, by_default, effects);
    }

    /// Applies a consumer-side command (see [`check_subscribable`]) other
    /// than a chained ack to this consumer, which the caller has moved to
    /// cluster time.
    fn consume(
        &mut self,
        stamp: Stamp,
        command: Command,
        effects: &mut Vec<Effect>,
    ) -> Result<Reply> {
        match command {
            Command::Fetch {
                consumer,
                max,
                lease_ms,
                ..
            } => self.fetch(stamp, consumer, max, lease_ms),
            Command::Ack { items, .. } => self.ack(items, effects),
            Command::Nack {
                offset,
                fence,
                delay_ms,
                ..
            } => self.nack(offset, fence, delay_ms),
            Command::Extend {
                offset,
                fence,
                lease_ms,
                ..
            } => self.extend(offset, fence, lease_ms),
            Command::Release { offset, fence, .. } => self.release(offset, fence),
            Command::DeadLetter {
                offset,
                fence,
                reason,
                ..
            } => self.dead_letter(offset, fence, reason),
            Command::PauseGroup { group, .. } => self.pause(group),
            Command::ResumeGroup { group, .. } => self.resume(group),
            Command::SkipHead { group, reason, .. } => self.skip_head(group, reason),
            Command::RequeueDeadLetter { offset, .. } => self.requeue(offset),
            Command::PurgeDeadLetters { which, .. } => self.purge(which, effects),
            other => {
                check_subscribable(&other)?;
                Err(Error::invalid(
                    "command",
                    format!("{} is not applied here", other.kind()),
                ))
            }
        }
    }

    /// Takes group `id` out of the top-k indexes, before its jobs change.
    fn unindex_group(&mut self, id: u64) {
        if let Some(head) = self.groups.get(&id).and_then(|g| g.offsets.front()) {
            let backlog = self.groups[&id].offsets.len() as u64;
            self.by_backlog.remove(&(backlog, id));
            self.by_head.remove(&(*head, id));
        }
    }

    /// Puts group `id` back into the top-k indexes, after its jobs changed.
    fn index_group(&mut self, id: u64) {
        if let Some(group) = self.groups.get(&id) {
            if let Some(&head) = group.offsets.front() {
                self.by_backlog.insert((group.offsets.len() as u64, id));
                self.by_head.insert((head, id));
            }
        }
    }

    /// Rebuilds the derived group indexes (after a restore).
    pub(crate) fn rebuild_group_indexes(&mut self) {
        self.by_backlog.clear();
        self.by_head.clear();
        let ids: Vec<u64> = self.groups.keys().collect();
        for id in ids {
            self.index_group(id);
        }
    }

    pub(crate) fn is_head(&self, offset: u64, job: &Job) -> bool {
        job.group == NO_GROUP || self.groups[&job.group].offsets.front() == Some(&offset)
    }

    fn group_paused(&self, group: u64) -> bool {
        group != NO_GROUP && self.groups[&group].paused
    }

    /// Whether a pending job belongs in the ready index right now.
    pub(crate) fn should_be_ready(&self, offset: u64, job: &Job) -> bool {
        job.lease.is_none()
            && job.not_before_ms <= self.clock_ms
            && self.is_head(offset, job)
            && !self.group_paused(job.group)
    }

    /// Re-derives the ready-index entry of one job after anything about it,
    /// or about its group, changed.
    fn refresh(&mut self, offset: u64) {
        let Some(job) = self.jobs.get(&offset) else {
            return;
        };
        // A head whose group is past its rate waits as a delayed head
        // until its bucket holds a token again (SPEC 2.3a), so nothing
        // behind it overtakes it. Refresh runs on every enqueue and ack:
        // a queue without a group rate pays one field test here.
        if self.config.rates.group_rate_max > 0
            && job.lease.is_none()
            && job.group != NO_GROUP
            && self.is_head(offset, job)
        {
            let gate = self.group_gate_ms(job.group);
            if gate > job.not_before_ms && gate > self.clock_ms {
                self.delayed.remove(&(job.not_before_ms, offset));
                self.delayed.insert((gate, offset));
                self.jobs.get_mut(&offset).expect("just read").not_before_ms = gate;
            }
        }
        let Some(job) = self.jobs.get(&offset) else {
            return;
        };
        let ready = self.should_be_ready(offset, job);
        self.set_ready(offset, ready);
    }

    /// Puts the pending job at `offset` into the ready indexes or takes it
    /// out: the queue's and its lane's, keeping the band's order.
    fn set_ready(&mut self, offset: u64, ready: bool) {
        let job = &self.jobs[&offset];
        let (band, fair) = (band_of(job), job.fair);
        let changed = if ready {
            self.ready.insert((band, offset))
        } else {
            self.ready.remove(&(band, offset))
        };
        if changed {
            self.change_lane(band, fair, |lane| {
                if ready {
                    lane.ready.insert(offset);
                } else {
                    lane.ready.remove(&offset);
                }
            });
        }
    }

    /// Changes a lane's ready heads or virtual time through `change`,
    /// keeping its band's order. A lane that had no ready head and now has
    /// one starts no earlier than the band's clock (it banks no credit
    /// while idle).
    fn change_lane(&mut self, band: u8, fair: u32, change: impl FnOnce(&mut Lane)) {
        let Band {
            vclock,
            lanes,
            order,
        } = self
            .bands
            .get_mut(&band)
            .expect("a pending job's band exists");
        let lane = lanes.get_mut(&fair).expect("a pending job's lane exists");
        let idle = match lane.ready.first() {
            Some(&head) => {
                order.remove(&(lane.vtime, head));
                false
            }
            None => true,
        };
        change(lane);
        if let Some(&head) = lane.ready.first() {
            if idle {
                lane.vtime = lane.vtime.max(*vclock);
            }
            order.insert((lane.vtime, head));
        }
    }

    /// The interned id of fairness key `key`, counting one more held job.
    fn hold_fair_key(&mut self, key: &str) -> u32 {
        if let Some(&id) = self.fair_ids.get(key) {
            self.fair_keys.get_mut(&id).expect("interned").held += 1;
            return id;
        }
        // Held keys are at most the held jobs, fewer than 2^32
        // (`JOBS_MAX_LIMIT`), so a free id exists; ids are only reused
        // once forgotten, and the search is the same on every replica.
        let mut id = self.next_fair_id;
        while self.fair_keys.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_fair_id = id.wrapping_add(1);
        self.fair_ids.insert(key.to_string(), id);
        self.fair_keys.insert(
            id,
            FairKey {
                key: key.to_string(),
                held: 1,
            },
        );
        id
    }

    /// One held job carrying fairness key `fair` is gone (acked or purged).
    fn release_fair_key(&mut self, fair: u32) {
        let entry = self.fair_keys.get_mut(&fair).expect("interned");
        entry.held -= 1;
        if entry.held == 0 {
            let key = self.fair_keys.remove(&fair).expect("just seen").key;
            self.fair_ids.remove(&key);
        }
    }

    /// A job of key `fair` became pending in `band`.
    fn enter_lane(&mut self, band: u8, fair: u32) {
        self.bands
            .entry(band)
            .or_default()
            .lanes
            .entry(fair)
            .or_default()
            .pending += 1;
    }

    /// A job of key `fair` in `band`, no longer ready, stopped being
    /// pending: a lane with no pending job is forgotten with its virtual
    /// time, and a band with no lane with its clock. (A key that comes back
    /// starts at the band's clock then, so forgetting sheds at most the one
    /// step its last delivery charged it.)
    fn leave_lane(&mut self, band: u8, fair: u32) {
        let b = self.bands.get_mut(&band).expect("a pending job's band");
        let lane = b.lanes.get_mut(&fair).expect("a pending job's lane");
        lane.pending -= 1;
        if lane.pending == 0 {
            debug_assert!(lane.ready.is_empty());
            b.lanes.remove(&fair);
            if b.lanes.is_empty() {
                self.bands.remove(&band);
            }
        }
    }

    /// The next head a fetch takes (SPEC 2.3a, 2.5), among the ready heads
    /// `eligible` lets through: the highest priority band that has one;
    /// in it, the first lane in (virtual time, oldest ready head) order
    /// that has one; that lane's oldest such head. So priority ranks
    /// first, keys share a band by weight, and within one key (and so for
    /// a queue where no job has a key) the older head goes first.
    ///
    /// Cost: at most one lookup per band (10), then O(log keys + log
    /// heads), plus one step per head `eligible` refuses.
    fn pick(&self, eligible: impl Fn(u64) -> bool) -> Option<u64> {
        self.bands.values().find_map(|band| {
            band.order.iter().find_map(|&(_, head)| {
                let lane = &band.lanes[&self.jobs[&head].fair];
                lane.ready.iter().copied().find(|&offset| eligible(offset))
            })
        })
    }

    /// Charges the lane of the just-leased job at `offset` for one delivery
    /// at its key's current weight, takes the job out of the ready
    /// indexes, and moves the band's clock up to the lanes still ready.
    fn charge_delivery(&mut self, offset: u64) {
        let job = &self.jobs[&offset];
        let (band, fair) = (band_of(job), job.fair);
        let weight = self.config.fairness.weight_of(&self.fair_keys[&fair].key);
        let step = FAIRNESS_VTIME_SCALE / u128::from(weight);
        self.ready.remove(&(band, offset));
        self.change_lane(band, fair, |lane| {
            lane.ready.remove(&offset);
            lane.vtime = lane.vtime.saturating_add(step);
        });
        let b = self.bands.get_mut(&band).expect("the job's band");
        if let Some(&(vtime, _)) = b.order.first() {
            b.vclock = b.vclock.max(vtime);
        }
    }

    /// Rebuilds the derived ready indexes (the queue's, each lane's, each
    /// band's order) from the jobs, after a restore. Virtual times are
    /// encoded and left alone.
    pub(crate) fn rebuild_ready(&mut self) {
        self.ready.clear();
        for band in self.bands.values_mut() {
            band.order.clear();
            for lane in band.lanes.values_mut() {
                lane.ready.clear();
            }
        }
        let ready: Vec<(u8, u32, u64)> = self
            .jobs
            .iter()
            .filter(|(offset, job)| self.should_be_ready(*offset, job))
            .map(|(offset, job)| (band_of(job), job.fair, offset))
            .collect();
        for (band, fair, offset) in ready {
            self.ready.insert((band, offset));
            // A snapshot that names a lane or band it does not hold is
            // refused by `check_invariants`, not here.
            if let Some(lane) = self
                .bands
                .get_mut(&band)
                .and_then(|b| b.lanes.get_mut(&fair))
            {
                lane.ready.insert(offset);
            }
        }
        for band in self.bands.values_mut() {
            for lane in band.lanes.values() {
                if let Some(&head) = lane.ready.first() {
                    band.order.insert((lane.vtime, head));
                }
            }
        }
    }

    /// When (cluster ms) group `group` may next be delivered: 0 when it
    /// has no rate or a token now.
    fn group_gate_ms(&self, group: u64) -> u64 {
        let Some(bucket) = self.config.rates.group_bucket() else {
            return 0;
        };
        let Some(&tat) = self.group_tats.get(&self.groups[&group].key) else {
            return 0;
        };
        let (allowed_at_us, _) = bucket.take(tat, self.clock_ms.saturating_mul(1_000), 1);
        allowed_at_us.div_ceil(1_000)
    }

    /// Takes a token from the delivery bucket of the group keyed `key`.
    fn take_group_token(&mut self, key: &str) {
        let Some(bucket) = self.config.rates.group_bucket() else {
            return;
        };
        let now_us = self.clock_ms.saturating_mul(1_000);
        let tat = match self.group_tats.get(key) {
            Some(&tat) => {
                self.group_tat_order.remove(&(tat, key.to_string()));
                tat
            }
            None => 0,
        };
        let (_, next) = bucket.take(tat, now_us, 1);
        self.group_tats.insert(key.to_string(), next);
        self.group_tat_order.insert((next, key.to_string()));
    }

    fn refresh_all_group_heads(&mut self) {
        let ids: Vec<u64> = self.groups.keys().collect();
        for id in ids {
            self.refresh_group_head(id);
        }
    }

    fn refresh_group_head(&mut self, group: u64) {
        if group == NO_GROUP {
            return;
        }
        let Some(g) = self.groups.get(&group) else {
            return;
        };
        match g.offsets.front().copied() {
            Some(head) => self.refresh(head),
            None if !g.paused => {
                let key = g.key.clone();
                self.groups.remove(&group);
                self.group_ids.remove(&key);
            }
            None => {}
        }
    }

    pub(crate) fn state_of(&self, offset: u64) -> JobState {
        if let Some(job) = self.jobs.get(&offset) {
            if job.lease.is_some() {
                JobState::Leased
            } else if job.not_before_ms > self.clock_ms {
                JobState::Delayed
            } else {
                JobState::Ready
            }
        } else if self.dead.contains_key(&offset) {
            JobState::Dead
        } else {
            match self.finished.get(&offset) {
                Some(Finished::Dead { .. }) => JobState::Dead,
                _ => JobState::Done,
            }
        }
    }

    fn resolve_lease(&self, lease_ms: u64) -> Result<u64> {
        resolve_lease(&self.config, lease_ms)
    }

    /// Moves the queue's clock to `now`: expires due leases, wakes due
    /// delayed jobs and forgets dedup ids past their window. Returns the
    /// number of leases expired.
    fn advance(&mut self, now: u64) -> u32 {
        self.clock_ms = self.clock_ms.max(now);
        // A bucket whose arrival time has passed is full: forget it.
        let now_us = self.clock_ms.saturating_mul(1_000);
        while let Some((tat, _)) = self.group_tat_order.first() {
            if *tat > now_us {
                break;
            }
            let (_, key) = self.group_tat_order.pop_first().expect("just seen");
            self.group_tats.remove(&key);
        }
        let mut expired = 0;
        while let Some(&(deadline, offset)) = self.leases.first() {
            if deadline > self.clock_ms {
                break;
            }
            self.expire(offset);
            expired += 1;
        }
        while let Some(&(not_before, offset)) = self.delayed.first() {
            if not_before > self.clock_ms {
                break;
            }
            self.delayed.pop_first();
            self.refresh(offset);
        }
        while let Some(first_ms) = self.dedup.oldest_ms() {
            if first_ms.saturating_add(self.config.dedup_window_ms) > self.clock_ms {
                break;
            }
            if let Some(entry) = self.dedup.pop_oldest() {
                self.finished.remove(&entry.offset);
                for sub in self.subscriptions.values_mut() {
                    sub.finished.remove(&entry.offset);
                }
            }
        }
        // Subscriptions keep the queue's time: their leases expire and
        // their delays end on the same commands and ticks.
        if !self.subscriptions.is_empty() {
            let mut subs = std::mem::take(&mut self.subscriptions);
            for sub in subs.values_mut() {
                expired += self.lend_to(sub, |sub| sub.advance(now));
            }
            self.subscriptions = subs;
        }
        expired
    }

    fn expire(&mut self, offset: u64) {
        let fence = self.end_lease(offset);
        self.counters.expired += 1;
        self.fail_attempt(offset, fence, AttemptOutcome::Expired, 0);
    }

    /// Ends the live lease of a job and returns its fence.
    fn end_lease(&mut self, offset: u64) -> u64 {
        let job = self.jobs.get_mut(&offset).expect("leased job is pending");
        let lease = job.lease.take().expect("job is leased");
        self.leases.remove(&(lease.deadline_ms, offset));
        self.holders.remove(&offset);
        lease.fence
    }

    /// The job at `offset` if it is leased under `fence`.
    fn check_lease(&self, offset: u64, fence: u64) -> Result<&Job> {
        match self.jobs.get(&offset) {
            Some(job) if job.lease.is_some_and(|l| l.fence == fence) => Ok(job),
            // Planted bug (tests only): any live lease will do.
            Some(job) if crate::planted_skip_fence() && job.lease.is_some() => Ok(job),
            _ => Err(self.not_leased(offset, fence)),
        }
    }

    fn not_leased(&self, offset: u64, fence: u64) -> Error {
        if offset >= self.next_offset {
            Error::NotFound {
                what: format!("job at offset {offset} in {}", self.label()),
            }
        } else {
            Error::LeaseLost { offset, fence }
        }
    }

    fn record_attempt(&mut self, offset: u64, fence: u64, outcome: AttemptOutcome) {
        let attempt = self.jobs[&offset].attempts + 1;
        let history = self.history.entry(offset).or_default();
        if history.len() == HISTORY_LEN_MAX {
            history.remove(0);
        }
        history.push(Attempt {
            attempt,
            fence,
            at_ms: self.clock_ms,
            outcome,
        });
    }

    /// Counts a failed attempt on an unleased job: it retries after a delay
    /// (the backoff, or `delay_ms` when non-zero) at the head of its group, or
    /// goes to the dead letters once `max_attempts` is reached. Returns
    /// whether the job died, and when it may run again.
    fn fail_attempt(
        &mut self,
        offset: u64,
        fence: u64,
        outcome: AttemptOutcome,
        delay_ms: u64,
    ) -> (bool, u64) {
        self.record_attempt(offset, fence, outcome);
        let max_attempts = self.config.max_attempts;
        let job = self.jobs.get_mut(&offset).expect("failed job is pending");
        job.attempts += 1;
        if job.attempts >= max_attempts {
            let reason = format!("max_attempts = {max_attempts} reached");
            self.kill(offset, fence, reason);
            return (true, 0);
        }
        let delay = match delay_ms {
            0 => backoff_ms(&self.config, job.id_hash, job.attempts),
            ms => ms,
        };
        job.not_before_ms = self.clock_ms.saturating_add(delay);
        let not_before = job.not_before_ms;
        if not_before > self.clock_ms {
            self.delayed.insert((not_before, offset));
        }
        self.refresh(offset);
        (false, not_before)
    }

    /// Removes a finished head from its group and lets the next job lead.
    fn remove_pending(&mut self, offset: u64) -> Job {
        self.set_ready(offset, false);
        let job = self.jobs.remove(&offset).expect("job is pending");
        debug_assert!(job.lease.is_none());
        self.leave_lane(band_of(&job), job.fair);
        self.delayed.remove(&(job.not_before_ms, offset));
        if job.group != NO_GROUP {
            self.unindex_group(job.group);
            let group = self.groups.get_mut(&job.group).expect("group exists");
            let head = group.offsets.pop_front();
            debug_assert_eq!(head, Some(offset), "only a group head can finish");
            self.index_group(job.group);
            self.refresh_group_head(job.group);
        }
        job
    }

    /// Records how an offset finished, while its id is still deduplicated
    /// (otherwise nobody could ask, and the record would never be pruned).
    fn mark_finished(&mut self, job: &Job, offset: u64, how: Finished) {
        if self
            .dedup
            .get(&job.id_hash)
            .is_some_and(|e| e.offset == offset)
        {
            self.finished.insert(offset, how);
        }
    }

    fn kill(&mut self, offset: u64, fence: u64, reason: String) {
        self.kill_as(offset, fence, reason, self.config.group_policy);
    }

    /// [`Queue::kill`] under group policy `policy`.
    fn kill_as(&mut self, offset: u64, fence: u64, reason: String, policy: GroupPolicy) {
        let group_key = match self.jobs[&offset].group {
            NO_GROUP => None,
            g => Some(self.groups[&g].key.clone()),
        };
        if let (Some(_), GroupPolicy::Park) = (&group_key, policy) {
            let g = self.jobs[&offset].group;
            let group = self.groups.get_mut(&g).expect("group exists");
            group.paused = true;
            group.parked_reason = Some(format!(
                "job at offset {offset} was dead-lettered: {reason}"
            ));
        }
        let job = self.remove_pending(offset);
        self.mark_finished(&job, offset, Finished::Dead { fence });
        let history = self.history.remove(&offset).unwrap_or_default();
        self.counters.dead_lettered += 1;
        self.dead.insert(
            offset,
            DeadJob {
                job,
                group_key,
                reason,
                history,
                dead_ms: self.clock_ms,
            },
        );
    }

    fn group_for(&mut self, key: &str) -> u64 {
        if let Some(&id) = self.group_ids.get(key) {
            return id;
        }
        let id = self.next_group_id;
        self.next_group_id += 1;
        self.group_ids.insert(key.to_string(), id);
        self.groups.insert(
            id,
            Group {
                key: key.to_string(),
                offsets: VecDeque::new(),
                paused: false,
                parked_reason: None,
            },
        );
        id
    }

    /// Adds a job at the tail of its group under a fresh offset.
    fn push_job(&mut self, job: Job, group_key: Option<&str>) -> u64 {
        let offset = self.next_offset;
        self.push_job_at(job, group_key, offset);
        offset
    }

    /// Adds a job at the tail of its group under `offset`, which is above
    /// every offset this consumer holds (a subscription gets each job under
    /// the queue's offset).
    fn push_job_at(&mut self, mut job: Job, group_key: Option<&str>, offset: u64) {
        self.next_offset = self.next_offset.max(offset + 1);
        job.group = match group_key {
            None => NO_GROUP,
            Some(key) => {
                let id = self.group_for(key);
                self.unindex_group(id);
                self.groups
                    .get_mut(&id)
                    .expect("just made")
                    .offsets
                    .push_back(offset);
                self.index_group(id);
                id
            }
        };
        if job.not_before_ms > self.clock_ms {
            self.delayed.insert((job.not_before_ms, offset));
        }
        self.enter_lane(band_of(&job), job.fair);
        self.jobs.insert(offset, job);
        self.refresh(offset);
    }

    /// Distinct jobs whose payload is still held: the default
    /// subscription's pending and dead-lettered jobs, and those only named
    /// subscriptions still hold.
    fn held(&self) -> u64 {
        (self.jobs.len() + self.dead.len()) as u64 + self.holds.orphans
    }

    /// Their payload bytes.
    fn held_bytes(&self) -> u64 {
        self.bytes + self.holds.orphan_bytes
    }

    /// Gives a job just stored under `offset` to every subscription as
    /// well, with the same blob: `job` as stored, before its group and
    /// fairness key are interned by each subscription.
    fn fan_out(&mut self, offset: u64, job: &Job, group_key: Option<&str>, fair_key: &str) {
        if self.subscriptions.is_empty() {
            return;
        }
        for sub in self.subscriptions.values_mut() {
            let mut copy = job.clone();
            copy.fair = sub.hold_fair_key(fair_key);
            sub.push_job_at(copy, group_key, offset);
            sub.bytes += u64::from(job.payload_bytes);
            sub.counters.enqueued += 1;
        }
        let holders = 1 + self.subscriptions.len() as u32;
        self.holds.shared.insert(job.blob, holders);
    }

    fn enqueue(&mut self, jobs: Vec<NewJob>, effects: &mut Vec<Effect>) -> Result<Reply> {
        validate_jobs(&self.config, &jobs)?;
        self.check_capacity(&jobs)?;
        Ok(Reply::Enqueued(self.enqueue_checked(jobs, effects)))
    }

    /// Refuses a batch whose new jobs (those whose ids the queue does not
    /// hold) would pass `max_jobs` or `max_bytes`. Changes nothing, so a
    /// batch is all or nothing.
    fn check_capacity(&self, jobs: &[NewJob]) -> Result<()> {
        // Dry run: which jobs are new, so the capacity check covers the
        // whole batch before anything changes (a batch is all or nothing).
        let mut seen = BTreeSet::new();
        let (mut new_jobs, mut new_bytes) = (0u64, 0u64);
        for job in jobs {
            let id_hash = hash::id_hash(&job.id);
            let known = self.dedup.contains_key(&id_hash) && !crate::planted_ignore_dedup();
            if !known && seen.insert(id_hash) {
                new_jobs += 1;
                new_bytes += job.payload.len() as u64;
            }
        }
        if self.held() + new_jobs > self.config.max_jobs {
            return Err(Error::exhausted(
                "max_jobs",
                self.config.max_jobs,
                format!(
                    "queue `{}` holds {} jobs and the batch adds {new_jobs}",
                    self.name,
                    self.held()
                ),
            ));
        }
        if self.held_bytes() + new_bytes > self.config.max_bytes {
            return Err(Error::exhausted(
                "max_bytes",
                self.config.max_bytes,
                format!(
                    "queue `{}` holds {} bytes and the batch adds {new_bytes}",
                    self.name,
                    self.held_bytes()
                ),
            ));
        }
        if let (Some(bucket), true) = (self.config.rates.enqueue_bucket(), new_jobs > 0) {
            let rates = &self.config.rates;
            let now_us = self.clock_ms.saturating_mul(1_000);
            let (allowed_at, _) = bucket.take(self.enqueue_tat_us, now_us, new_jobs);
            if new_jobs > bucket.burst {
                return Err(Error::exhausted(
                    "enqueue_rate_max",
                    u64::from(rates.enqueue_rate_max),
                    format!(
                        "queue `{}` takes at most {} new jobs at once (its enqueue burst) and \
                         the batch adds {new_jobs}: split it",
                        self.name, bucket.burst
                    ),
                ));
            }
            if allowed_at > now_us {
                return Err(Error::exhausted(
                    "enqueue_rate_max",
                    u64::from(rates.enqueue_rate_max),
                    format!(
                        "queue `{}` takes {} new jobs per {} ms and the batch adds {new_jobs}: \
                         retry in {} ms",
                        self.name,
                        rates.enqueue_rate_max,
                        rates.window_ms(),
                        (allowed_at - now_us).div_ceil(1_000)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Stores a batch that passed [`validate_jobs`] and
    /// [`Queue::check_capacity`].
    fn enqueue_checked(
        &mut self,
        jobs: Vec<NewJob>,
        effects: &mut Vec<Effect>,
    ) -> Vec<EnqueueResult> {
        let mut results = Vec::with_capacity(jobs.len());
        for new in jobs {
            let id_hash = hash::id_hash(&new.id);
            let content_hash = hash::content_hash(new.group.as_deref(), &new.payload);
            let dedup = if crate::planted_ignore_dedup() {
                None
            } else {
                self.dedup.get(&id_hash)
            };
            if let Some(entry) = dedup {
                results.push(if entry.content_hash == content_hash {
                    self.counters.duplicates += 1;
                    EnqueueResult::Duplicate {
                        offset: entry.offset,
                        state: self.state_of(entry.offset),
                    }
                } else {
                    EnqueueResult::IdConflict {
                        offset: entry.offset,
                    }
                });
                continue;
            }
            let payload_bytes = new.payload.len() as u32;
            let fair_key = new.fairness_key.as_deref().unwrap_or("");
            let fair = self.hold_fair_key(fair_key);
            let job = Job {
                id_hash,
                group: NO_GROUP,
                blob: self.next_offset,
                enqueued_ms: self.clock_ms,
                not_before_ms: self.clock_ms.saturating_add(new.delay_ms),
                lease: None,
                last_fence: 0,
                payload_bytes,
                attempts: 0,
                priority: new.priority,
                fair,
            };
            let offset = self.next_offset;
            self.fan_out(offset, &job, new.group.as_deref(), fair_key);
            self.push_job(job, new.group.as_deref());
            self.bytes += u64::from(payload_bytes);
            // Always vacant, except with the planted ignore-dedup bug: then
            // the id keeps its first offset and its one expiry slot.
            self.dedup.insert_new(
                id_hash,
                DedupEntry {
                    offset,
                    first_ms: self.clock_ms,
                    content_hash,
                },
            );
            self.counters.enqueued += 1;
            effects.push(Effect::PutBlob {
                queue_id: self.id,
                blob: offset,
                data: JobBlob {
                    id: new.id,
                    headers: new.headers,
                    payload: new.payload,
                },
            });
            results.push(EnqueueResult::Created { offset });
        }
        if let Some(bucket) = self.config.rates.enqueue_bucket() {
            let created = results
                .iter()
                .filter(|r| matches!(r, EnqueueResult::Created { .. }))
                .count() as u64;
            if created > 0 {
                let now_us = self.clock_ms.saturating_mul(1_000);
                self.enqueue_tat_us = bucket.take(self.enqueue_tat_us, now_us, created).1;
            }
        }
        results
    }

    fn fetch(&mut self, stamp: Stamp, consumer: String, max: u32, lease_ms: u64) -> Result<Reply> {
        check_text("consumer", &consumer, CONSUMER_BYTES_MAX, true)?;
        if max == 0 || max > self.config.max_batch {
            return Err(Error::invalid(
                "max",
                format!("{max} is outside 1..=max_batch ({})", self.config.max_batch),
            ));
        }
        let lease_ms = self.resolve_lease(lease_ms)?;
        // Heads whose lease ended earlier in this same entry are skipped:
        // granting them again would repeat the fence. At most one skip per
        // command earlier in the entry, so each pick stays O(log keys +
        // log heads) plus those few skips.
        // With group rates, a group not yet tracked needs room in the
        // bounded bucket map; without it the group waits for a later fetch.
        let rated = self.config.rates.group_bucket().is_some();
        let full = self.group_tats.len() >= RATE_GROUPS_MAX;
        let deadline_ms = self.clock_ms.saturating_add(lease_ms);
        let mut deliveries = Vec::new();
        // One pick at a time: each delivery moves its key's virtual time,
        // which decides the next pick.
        while deliveries.len() < max as usize {
            let eligible = |offset: u64| {
                let job = &self.jobs[&offset];
                job.last_fence < stamp.index
                    && (!(rated && full && job.group != NO_GROUP)
                        || self.group_tats.contains_key(&self.groups[&job.group].key))
            };
            let Some(offset) = self.pick(eligible) else {
                break;
            };
            self.charge_delivery(offset);
            let job = self.jobs.get_mut(&offset).expect("ready job is pending");
            job.lease = Some(Lease {
                fence: stamp.index,
                deadline_ms,
            });
            job.last_fence = stamp.index;
            let (group, priority, attempt, blob) =
                (job.group, job.priority, job.attempts + 1, job.blob);
            self.leases.insert((deadline_ms, offset));
            self.holders.insert(offset, consumer.clone());
            self.counters.delivered += 1;
            if attempt > 1 {
                self.counters.redelivered += 1;
            }
            let key = (group != NO_GROUP).then(|| self.groups[&group].key.clone());
            if let Some(key) = &key {
                self.take_group_token(key);
            }
            deliveries.push(Delivery {
                queue_id: self.id,
                offset,
                blob,
                group: key,
                priority,
                attempt,
                fence: stamp.index,
                deadline_ms,
            });
        }
        Ok(Reply::Fetched(deliveries))
    }

    fn ack_one(&mut self, item: AckItem, effects: &mut Vec<Effect>) -> AckResult {
        let AckItem { offset, fence } = item;
        if self.check_lease(offset, fence).is_ok() {
            self.end_lease(offset);
            let job = self.remove_pending(offset);
            self.release_fair_key(job.fair);
            self.mark_finished(&job, offset, Finished::Acked { fence });
            self.history.remove(&offset);
            self.bytes -= u64::from(job.payload_bytes);
            self.counters.acked += 1;
            self.release_blob(job.blob, job.payload_bytes, effects);
            return AckResult::Acked;
        }
        if self.acked_with(&item) {
            AckResult::AlreadyAcked
        } else {
            AckResult::Failed(self.not_leased(offset, fence))
        }
    }

    /// Whether `item` names a job this queue finished by an ack under that
    /// very fence (still inside the dedup window): a repeated ack.
    fn acked_with(&self, item: &AckItem) -> bool {
        matches!(
            self.finished.get(&item.offset),
            Some(Finished::Acked { fence }) if *fence == item.fence
        )
    }

    fn ack(&mut self, items: Vec<AckItem>, effects: &mut Vec<Effect>) -> Result<Reply> {
        validate_batch("items", items.len(), &self.config)?;
        Ok(Reply::Acked(
            items
                .into_iter()
                .map(|item| self.ack_one(item, effects))
                .collect(),
        ))
    }

    fn nack(&mut self, offset: u64, fence: u64, delay_ms: u64) -> Result<Reply> {
        if delay_ms > DELAY_MS_MAX {
            return Err(Error::invalid(
                "delay_ms",
                format!("{delay_ms} exceeds the limit of {DELAY_MS_MAX} ms"),
            ));
        }
        self.check_lease(offset, fence)?;
        self.end_lease(offset);
        self.counters.nacked += 1;
        let (dead, not_before_ms) =
            self.fail_attempt(offset, fence, AttemptOutcome::Nacked, delay_ms);
        Ok(Reply::Nacked {
            dead,
            not_before_ms,
        })
    }

    fn extend(&mut self, offset: u64, fence: u64, lease_ms: u64) -> Result<Reply> {
        let lease_ms = self.resolve_lease(lease_ms)?;
        self.check_lease(offset, fence)?;
        let deadline_ms = self.clock_ms.saturating_add(lease_ms);
        let job = self.jobs.get_mut(&offset).expect("checked");
        let lease = job.lease.as_mut().expect("checked");
        self.leases.remove(&(lease.deadline_ms, offset));
        lease.deadline_ms = deadline_ms;
        self.leases.insert((deadline_ms, offset));
        Ok(Reply::Extended { deadline_ms })
    }

    fn release(&mut self, offset: u64, fence: u64) -> Result<Reply> {
        self.check_lease(offset, fence)?;
        self.end_lease(offset);
        self.refresh(offset);
        Ok(Reply::Released)
    }

    fn dead_letter(&mut self, offset: u64, fence: u64, reason: String) -> Result<Reply> {
        check_text("reason", &reason, REASON_BYTES_MAX, true)?;
        self.check_lease(offset, fence)?;
        self.end_lease(offset);
        self.record_attempt(offset, fence, AttemptOutcome::DeadLettered);
        self.jobs.get_mut(&offset).expect("checked").attempts += 1;
        self.kill(offset, fence, reason);
        Ok(Reply::DeadLettered)
    }

    fn pause(&mut self, key: String) -> Result<Reply> {
        check_text("group", &key, GROUP_BYTES_MAX, false)?;
        if !self.group_ids.contains_key(&key)
            && self.groups.len() >= self.jobs.len() + PAUSED_EMPTY_GROUPS_MAX
        {
            return Err(Error::exhausted(
                "paused_empty_groups_max",
                PAUSED_EMPTY_GROUPS_MAX as u64,
                format!("{} keeps too many paused groups without jobs", self.label()),
            ));
        }
        let id = self.group_for(&key);
        self.groups.get_mut(&id).expect("exists").paused = true;
        self.refresh_group_head(id);
        Ok(Reply::GroupPaused)
    }

    fn resume(&mut self, key: String) -> Result<Reply> {
        check_text("group", &key, GROUP_BYTES_MAX, false)?;
        let Some(&id) = self.group_ids.get(&key) else {
            return Err(Error::NotFound {
                what: format!("group `{key}` in {}", self.label()),
            });
        };
        let group = self.groups.get_mut(&id).expect("indexed");
        group.paused = false;
        group.parked_reason = None;
        self.refresh_group_head(id);
        Ok(Reply::GroupResumed)
    }

    fn skip_head(&mut self, key: String, reason: String) -> Result<Reply> {
        check_text("group", &key, GROUP_BYTES_MAX, false)?;
        check_text("reason", &reason, REASON_BYTES_MAX, true)?;
        let head = self
            .group_ids
            .get(&key)
            .and_then(|id| self.groups[id].offsets.front().copied())
            .ok_or_else(|| Error::NotFound {
                what: format!("a job in group `{key}` of {}", self.label()),
            })?;
        let job = &self.jobs[&head];
        let fence = match job.lease {
            Some(_) => {
                // The attempt in flight ends here, as a dead letter would
                // end it; a head not leased gets no attempt.
                let fence = self.end_lease(head);
                self.record_attempt(head, fence, AttemptOutcome::DeadLettered);
                self.jobs.get_mut(&head).expect("the head").attempts += 1;
                fence
            }
            None => job.last_fence,
        };
        self.kill_as(
            head,
            fence,
            format!("skipped: {reason}"),
            GroupPolicy::Continue,
        );
        Ok(Reply::Skipped { offset: head })
    }

    fn requeue(&mut self, offset: u64) -> Result<Reply> {
        let Some(dead) = self.dead.remove(&offset) else {
            return Err(Error::NotFound {
                what: format!("dead letter at offset {offset} in {}", self.label()),
            });
        };
        let DeadJob {
            mut job, group_key, ..
        } = dead;
        self.finished.remove(&offset);
        job.attempts = 0;
        job.not_before_ms = self.clock_ms;
        job.enqueued_ms = self.clock_ms;
        job.last_fence = 0;
        let id_hash = job.id_hash;
        let new_offset = self.push_job(job, group_key.as_deref());
        // The id's entry follows the default subscription's job; a named
        // subscription's requeue leaves it (it names the queue's offset).
        if self.subscription.is_none() {
            if let Some(entry) = self.dedup.get_mut(&id_hash) {
                if entry.offset == offset {
                    entry.offset = new_offset;
                    // The subscriptions' records of the old offset go
                    // with its entry (they are kept only while it is).
                    for sub in self.subscriptions.values_mut() {
                        sub.finished.remove(&offset);
                    }
                }
            }
            self.sync_offsets();
        }
        Ok(Reply::Requeued { offset: new_offset })
    }

    fn purge(&mut self, which: PurgeSelector, effects: &mut Vec<Effect>) -> Result<Reply> {
        let offsets: Vec<u64> = match which {
            PurgeSelector::All => self.dead.keys().copied().collect(),
            PurgeSelector::Offsets(list) => {
                validate_batch("offsets", list.len(), &self.config)?;
                list
            }
        };
        let mut count = 0;
        for offset in offsets {
            if let Some(dead) = self.dead.remove(&offset) {
                self.release_fair_key(dead.job.fair);
                self.bytes -= u64::from(dead.job.payload_bytes);
                self.release_blob(dead.job.blob, dead.job.payload_bytes, effects);
                count += 1;
            }
        }
        Ok(Reply::Purged { count })
    }

    /// The earliest cluster time at which this queue has something to do.
    fn next_due_ms(&self) -> Option<u64> {
        let lease = self.leases.first().map(|&(t, _)| t);
        let delayed = self.delayed.first().map(|&(t, _)| t);
        let subs = self.subscriptions.values().filter_map(Queue::next_due_ms);
        lease.into_iter().chain(delayed).chain(subs).min()
    }
}

impl State {
    pub fn new() -> State {
        State::default()
    }

    /// Rebuilds what a snapshot leaves out because it follows from the
    /// rest (the group indexes, the ready indexes); [`State::restore`]
    /// calls it.
    pub(crate) fn rebuild_derived(&mut self) {
        for queue in self.queues.values_mut() {
            queue.rebuild_group_indexes();
            queue.rebuild_ready();
            for sub in queue.subscriptions.values_mut() {
                sub.rebuild_group_indexes();
                sub.rebuild_ready();
            }
        }
    }

    /// Cluster time as of the last applied command.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Index of the last applied command.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Each queue's id and the offset its next job will get. A payload is
    /// stored under its queue's id and the offset it was enqueued at, and
    /// offsets only grow, so every payload this state holds is keyed below
    /// its queue's bound, and a payload stored later is not. The store
    /// keeps these beside a snapshot to tell, among the payloads it holds
    /// when it sends the snapshot, those the snapshot's state holds.
    pub fn payload_bounds(&self) -> Vec<(QueueId, u64)> {
        self.queues
            .values()
            .map(|queue| (queue.id, queue.next_offset))
            .collect()
    }

    /// Applies one command. Payload writes and deletes are appended to
    /// `effects` for the storage layer to make in the same batch as the
    /// entry. A command that fails changes nothing but the passage of time
    /// and pushes no effect.
    pub fn apply(
        &mut self,
        stamp: Stamp,
        command: Command,
        effects: &mut Vec<Effect>,
    ) -> Result<Reply> {
        assert!(
            stamp.index >= self.last_index,
            "log index went backwards: {} after {}",
            stamp.index,
            self.last_index
        );
        self.last_index = stamp.index;
        // Cluster time never runs backwards, whatever a new leader stamps.
        self.clock_ms = self.clock_ms.max(stamp.time_ms);
        let stamp = Stamp {
            index: stamp.index,
            time_ms: self.clock_ms,
        };
        let mark = effects.len();
        let result = self.dispatch(stamp, command, effects);
        if result.is_err() {
            debug_assert_eq!(effects.len(), mark, "a failed command pushed effects");
            effects.truncate(mark);
        }
        result
    }

    /// The queue `name`, its clock advanced. A name no queue could have
    /// (empty, too long, a character outside the set) is refused as
    /// `INVALID_ARGUMENT` before the lookup, as `CreateQueue` refuses it,
    /// rather than as `NOT_FOUND`: it is the caller's mistake, not a queue
    /// that might exist later.
    fn queue_mut(&mut self, name: &str) -> Result<&mut Queue> {
        validate_queue_name(name)?;
        let clock = self.clock_ms;
        let queue = self
            .queues
            .get_mut(name)
            .ok_or_else(|| Error::queue_not_found(name))?;
        queue.advance(clock);
        Ok(queue)
    }

    fn dispatch(
        &mut self,
        stamp: Stamp,
        command: Command,
        effects: &mut Vec<Effect>,
    ) -> Result<Reply> {
        match command {
            Command::CreateQueue { name, config } => self.create_queue(name, config),
            Command::UpdateQueue { name, config } => {
                // The name first, then the configuration: the order of
                // `precheck`, which the leader answers from, so a bad name
                // gets the same error whether precheck or apply refuses it
                // (found by the `command` fuzz target).
                validate_queue_name(&name)?;
                config.validate()?;
                let queue = self.queue_mut(&name)?;
                let rates_changed = queue.config.rates != config.rates;
                // Subscriptions run under their queue's configuration. A
                // lower group rate holds back the heads waiting now.
                for sub in queue.subscriptions.values_mut() {
                    sub.config = config.clone();
                    if rates_changed {
                        sub.refresh_all_group_heads();
                    }
                }
                queue.config = config;
                if rates_changed {
                    queue.refresh_all_group_heads();
                }
                Ok(Reply::QueueUpdated)
            }
            Command::DeleteQueue { name } => {
                validate_queue_name(&name)?;
                let queue = self
                    .queues
                    .remove(&name)
                    .ok_or_else(|| Error::queue_not_found(&name))?;
                self.offset_floor = self.offset_floor.max(queue.next_offset);
                effects.push(Effect::DropQueue { queue_id: queue.id });
                Ok(Reply::QueueDeleted)
            }
            Command::Enqueue { queue, jobs } => self.queue_mut(&queue)?.enqueue(jobs, effects),
            Command::Fetch {
                queue,
                consumer,
                max,
                lease_ms,
            } => self
                .queue_mut(&queue)?
                .fetch(stamp, consumer, max, lease_ms),
            Command::Ack { queue, items } => self.queue_mut(&queue)?.ack(items, effects),
            Command::AckThen { queue, items, then } => {
                self.ack_then(queue, None, items, then, effects)
            }
            Command::Nack {
                queue,
                offset,
                fence,
                delay_ms,
            } => self.queue_mut(&queue)?.nack(offset, fence, delay_ms),
            Command::Extend {
                queue,
                offset,
                fence,
                lease_ms,
            } => self.queue_mut(&queue)?.extend(offset, fence, lease_ms),
            Command::Release {
                queue,
                offset,
                fence,
            } => self.queue_mut(&queue)?.release(offset, fence),
            Command::DeadLetter {
                queue,
                offset,
                fence,
                reason,
            } => self.queue_mut(&queue)?.dead_letter(offset, fence, reason),
            Command::Tick => {
                let clock = self.clock_ms;
                let expired = self.queues.values_mut().map(|q| q.advance(clock)).sum();
                self.sessions.expire(clock);
                Ok(Reply::Ticked { expired })
            }
            Command::OpenSession => Ok(Reply::SessionOpened {
                session: self.sessions.open(self.clock_ms),
            }),
            Command::Sequenced { sequence, command } => {
                if !session::sequenceable(&command) {
                    return Err(not_sequenceable());
                }
                match self.sessions.lookup(sequence, self.clock_ms)? {
                    Lookup::Replay(result) => result.map(|r| self.replay(&command, r)),
                    Lookup::New => {
                        let result = self.dispatch(stamp, *command, effects);
                        self.sessions.record(sequence, &result);
                        result
                    }
                }
            }
            Command::PauseGroup { queue, group } => self.queue_mut(&queue)?.pause(group),
            Command::SkipHead {
                queue,
                group,
                reason,
            } => self.queue_mut(&queue)?.skip_head(group, reason),
            Command::ResumeGroup { queue, group } => self.queue_mut(&queue)?.resume(group),
            Command::RequeueDeadLetter { queue, offset } => self.queue_mut(&queue)?.requeue(offset),
            Command::PurgeDeadLetters { queue, which } => {
                self.queue_mut(&queue)?.purge(which, effects)
            }
            Command::InSubscription {
                subscription,
                command,
            } => self.in_subscription(stamp, subscription, *command, effects),
            Command::CreateSubscription { queue, name } => {
                let queue = self.queue_mut(&queue)?;
                validate_subscription_name("name", &name)?;
                if queue.subscriptions.contains_key(&name) {
                    return Ok(Reply::SubscriptionCreated { created: false });
                }
                check_subscription_room(&queue.name, queue.subscriptions.len())?;
                // It starts at the queue's next offset, as a Kafka consumer
                // group at "latest": the jobs enqueued from now on.
                let mut sub = Queue::new(
                    queue.id,
                    queue.name.clone(),
                    queue.config.clone(),
                    queue.clock_ms,
                    queue.next_offset,
                );
                sub.subscription = Some(name.clone());
                queue.subscriptions.insert(name, sub);
                Ok(Reply::SubscriptionCreated { created: true })
            }
            Command::DeleteSubscription { queue, name } => {
                let queue = self.queue_mut(&queue)?;
                validate_subscription_name("name", &name)?;
                let sub = queue
                    .subscriptions
                    .remove(&name)
                    .ok_or_else(|| subscription_not_found(&queue.name, &name))?;
                // Its holds go, in blob order; a payload nobody else holds
                // is deleted.
                let mut held: Vec<(u64, u32)> = sub
                    .jobs
                    .values()
                    .chain(sub.dead.values().map(|d| &d.job))
                    .map(|j| (j.blob, j.payload_bytes))
                    .collect();
                held.sort_unstable();
                for (blob, bytes) in held {
                    queue.holds.release(queue.id, blob, bytes, false, effects);
                }
                Ok(Reply::SubscriptionDeleted)
            }
        }
    }

    /// A consumer command in a named subscription, checked in
    /// [`precheck`]'s order: the command's kind, the queue, the
    /// subscription's name, that it exists, then the command itself.
    fn in_subscription(
        &mut self,
        stamp: Stamp,
        subscription: String,
        command: Command,
        effects: &mut Vec<Effect>,
    ) -> Result<Reply> {
        check_subscribable(&command)?;
        let name = command.queue().expect("a consumer command names its queue");
        let queue = self.queue_mut(name)?;
        validate_subscription_name("subscription", &subscription)?;
        if !queue.subscriptions.contains_key(&subscription) {
            return Err(subscription_not_found(&queue.name, &subscription));
        }
        match command {
            Command::AckThen { queue, items, then } => {
                self.ack_then(queue, Some(&subscription), items, then, effects)
            }
            command => queue
                .in_subscription(&subscription, |sub| sub.consume(stamp, command, effects))
                .expect("checked above"),
        }
    }

    /// A chained ack (SPEC 2.3a). Every check runs before anything
    /// changes, in [`precheck`]'s order and then the checks that need the
    /// state (the leases, then each target's capacity), so the ack and its
    /// jobs land together or not at all.
    fn ack_then(
        &mut self,
        queue: String,
        subscription: Option<&str>,
        items: Vec<AckItem>,
        then: Vec<Chained>,
        effects: &mut Vec<Effect>,
    ) -> Result<Reply> {
        validate_chain(&items, &then)?;
        let source = self.queue_mut(&queue)?;
        validate_batch("items", items.len(), &source.config)?;
        for chained in &then {
            validate_jobs(&self.queue(&chained.queue)?.config, &chained.jobs)?;
        }
        // Every queue named moves to cluster time (dedup ids past their
        // window are forgotten before the capacity check counts them).
        let clock = self.clock_ms;
        for chained in &then {
            self.queues
                .get_mut(&chained.queue)
                .expect("checked above")
                .advance(clock);
        }
        let source = self.queues[&queue]
            .consumer(subscription)
            .expect("checked by the caller");
        let repeats = items.iter().filter(|i| source.acked_with(i)).count();
        if repeats == items.len() {
            // The whole ack happened before: its jobs were enqueued then.
            return Ok(Reply::AckedThen {
                acked: vec![AckResult::AlreadyAcked; items.len()],
                then: Vec::new(),
            });
        }
        // Part repeated, part not: no earlier chained ack looks like this,
        // so the repeated items' leases are simply gone.
        if let Some(item) = items
            .iter()
            .find(|i| source.check_lease(i.offset, i.fence).is_err())
        {
            return Err(source.not_leased(item.offset, item.fence));
        }
        for chained in &then {
            self.queues[&chained.queue].check_capacity(&chained.jobs)?;
        }
        let source = self.queues.get_mut(&queue).expect("checked above");
        let ack_all = |consumer: &mut Queue| -> Vec<AckResult> {
            items
                .into_iter()
                .map(|item| consumer.ack_one(item, effects))
                .collect()
        };
        let acked = match subscription {
            None => ack_all(source),
            Some(name) => source
                .in_subscription(name, ack_all)
                .expect("checked by the caller"),
        };
        let results = then
            .into_iter()
            .map(|chained| {
                self.queues
                    .get_mut(&chained.queue)
                    .expect("checked above")
                    .enqueue_checked(chained.jobs, effects)
            })
            .collect();
        Ok(Reply::AckedThen {
            acked,
            then: results,
        })
    }

    fn create_queue(&mut self, name: String, config: QueueConfig) -> Result<Reply> {
        validate_queue_name(&name)?;
        config.validate()?;
        if let Some(existing) = self.queues.get(&name) {
            if existing.config == config {
                return Ok(Reply::QueueCreated {
                    created: false,
                    queue_id: existing.id,
                });
            }
            return Err(Error::AlreadyExists { queue: name });
        }
        if self.queues.len() >= QUEUES_COUNT_MAX {
            return Err(Error::exhausted(
                "queues_count_max",
                QUEUES_COUNT_MAX as u64,
                "the cluster holds the maximum number of queues",
            ));
        }
        let id = self.next_queue_id;
        self.next_queue_id += 1;
        self.queues.insert(
            name.clone(),
            Queue::new(id, name, config, self.clock_ms, self.offset_floor),
        );
        Ok(Reply::QueueCreated {
            created: true,
            queue_id: id,
        })
    }

    /// The checks of `command` that need no change of state: names, sizes,
    /// counts, lease bounds, and that the queue exists. The leader runs it
    /// before proposing, so hostile or malformed input never reaches the
    /// log; `apply` repeats every check, so this only ever refuses what
    /// `apply` would refuse against the same state.
    pub fn precheck(&self, command: &Command) -> Result<()> {
        if let Command::Sequenced { sequence, command } = command {
            if !session::sequenceable(command) {
                return Err(not_sequenceable());
            }
            // A request answered before gets its first answer from apply,
            // whatever the state says of it now.
            if self.sessions.peek(*sequence)? {
                return Ok(());
            }
        }
        precheck(self, command)
    }

    /// What [`State::precheck`] reads, copied: one configuration per
    /// queue, so O(queues), never O(jobs).
    pub fn configs(&self) -> Configs {
        Configs(
            self.queues
                .iter()
                .map(|(name, q)| {
                    let subs = q.subscriptions.keys().cloned().collect();
                    (name.clone(), (q.config.clone(), subs))
                })
                .collect(),
        )
    }

    /// A cached reply as a retry gets it. A fetch's deliveries are narrowed
    /// to the leases still held under the fence they were granted with, so
    /// a late retry never hands out a lease that expired or was re-granted
    /// meanwhile.
    fn replay(&self, command: &Command, reply: Reply) -> Reply {
        match (command, reply) {
            (Command::Fetch { queue, .. }, Reply::Fetched(deliveries)) => {
                Reply::Fetched(self.still_held(queue, None, deliveries))
            }
            (
                Command::InSubscription {
                    subscription,
                    command,
                },
                Reply::Fetched(deliveries),
            ) if matches!(**command, Command::Fetch { .. }) => {
                let queue = command.queue().expect("a fetch names its queue");
                Reply::Fetched(self.still_held(queue, Some(subscription), deliveries))
            }
            (_, reply) => reply,
        }
    }

    /// The deliveries whose leases are still held under their fences.
    fn still_held(
        &self,
        queue: &str,
        subscription: Option<&str>,
        deliveries: Vec<Delivery>,
    ) -> Vec<Delivery> {
        let consumer = self
            .queues
            .get(queue)
            .and_then(|q| q.consumer(subscription));
        let held = |d: &Delivery| {
            consumer
                .filter(|q| q.id == d.queue_id)
                .and_then(|q| q.jobs.get(&d.offset))
                .and_then(|j| j.lease)
                .is_some_and(|l| l.fence == d.fence)
        };
        deliveries.into_iter().filter(held).collect()
    }

    /// Client sessions open now.
    pub fn sessions_count(&self) -> usize {
        self.sessions.count()
    }

    /// The earliest cluster time at which a `Tick` would change something
    /// (a lease to expire or a delay to end), for the leader's ticker.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.queues.values().filter_map(Queue::next_due_ms).min()
    }
}

/// Each queue's configuration and subscription names: all that
/// [`State::precheck`] reads of the state. The node publishes one after
/// every apply that changes it and answers prechecks from it without the
/// state lock (`lockstep-store`'s `StateHandle::precheck`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Configs(BTreeMap<String, (QueueConfig, BTreeSet<String>)>);

impl Configs {
    /// [`State::precheck`] against the state these configurations were
    /// copied from: the same answer, the same error.
    ///
    /// One difference: it holds no sessions, so it checks a sequenced
    /// request's command as if it were new. Its refusal of a sequenced
    /// request is final only once [`State::precheck`] agrees (the request
    /// may have been answered before, and a repeat gets that answer).
    pub fn precheck(&self, command: &Command) -> Result<()> {
        precheck(self, command)
    }
}

/// What [`precheck`] reads: a queue's configuration, and its subscriptions.
trait Facts {
    fn config_of(&self, queue: &str) -> Option<&QueueConfig>;
    /// Whether existing queue `queue` has subscription `name`, and how
    /// many it has.
    fn subscription_of(&self, queue: &str, name: &str) -> (bool, usize);
}

impl Facts for State {
    fn config_of(&self, queue: &str) -> Option<&QueueConfig> {
        self.queues.get(queue).map(|q| &q.config)
    }
    fn subscription_of(&self, queue: &str, name: &str) -> (bool, usize) {
        self.queues.get(queue).map_or((false, 0), |q| {
            (q.subscriptions.contains_key(name), q.subscriptions.len())
        })
    }
}

impl Facts for Configs {
    fn config_of(&self, queue: &str) -> Option<&QueueConfig> {
        self.0.get(queue).map(|(config, _)| config)
    }
    fn subscription_of(&self, queue: &str, name: &str) -> (bool, usize) {
        self.0
            .get(queue)
            .map_or((false, 0), |(_, subs)| (subs.contains(name), subs.len()))
    }
}

/// The body of [`State::precheck`] and [`Configs::precheck`].
fn precheck(facts: &impl Facts, command: &Command) -> Result<()> {
    // The name first, as in `apply` (`queue_mut`).
    let queue = |name: &str| {
        validate_queue_name(name)?;
        facts
            .config_of(name)
            .ok_or_else(|| Error::queue_not_found(name))
    };
    match command {
        Command::CreateQueue { name, config } | Command::UpdateQueue { name, config } => {
            validate_queue_name(name)?;
            config.validate()
        }
        Command::Enqueue { queue: name, jobs } => validate_jobs(queue(name)?, jobs),
        Command::AckThen {
            queue: name,
            items,
            then,
        } => {
            validate_chain(items, then)?;
            validate_batch("items", items.len(), queue(name)?)?;
            then.iter()
                .try_for_each(|c| validate_jobs(queue(&c.queue)?, &c.jobs))
        }
        Command::Fetch {
            queue: name,
            consumer,
            max,
            lease_ms,
        } => {
            let q = queue(name)?;
            check_text("consumer", consumer, CONSUMER_BYTES_MAX, true)?;
            if *max == 0 || *max > q.max_batch {
                return Err(Error::invalid(
                    "max",
                    format!("{max} is outside 1..=max_batch ({})", q.max_batch),
                ));
            }
            resolve_lease(q, *lease_ms).map(|_| ())
        }
        Command::Ack { queue: name, items } => validate_batch("items", items.len(), queue(name)?),
        Command::Extend {
            queue: name,
            lease_ms,
            ..
        } => resolve_lease(queue(name)?, *lease_ms).map(|_| ()),
        Command::DeadLetter {
            queue: name,
            reason,
            ..
        } => {
            queue(name)?;
            check_text("reason", reason, REASON_BYTES_MAX, true)
        }
        Command::SkipHead {
            queue: name,
            group,
            reason,
        } => {
            queue(name)?;
            check_text("group", group, GROUP_BYTES_MAX, false)?;
            check_text("reason", reason, REASON_BYTES_MAX, true)
        }
        Command::Nack { queue: name, .. }
        | Command::Release { queue: name, .. }
        | Command::DeleteQueue { name }
        | Command::PauseGroup { queue: name, .. }
        | Command::ResumeGroup { queue: name, .. }
        | Command::RequeueDeadLetter { queue: name, .. }
        | Command::PurgeDeadLetters { queue: name, .. } => queue(name).map(|_| ()),
        Command::Tick | Command::OpenSession => Ok(()),
        Command::Sequenced { command, .. } => {
            if !session::sequenceable(command) {
                return Err(not_sequenceable());
            }
            precheck(facts, command)
        }
        Command::InSubscription {
            subscription,
            command,
        } => {
            check_subscribable(command)?;
            let name = command.queue().expect("a consumer command names its queue");
            queue(name)?;
            validate_subscription_name("subscription", subscription)?;
            if !facts.subscription_of(name, subscription).0 {
                return Err(subscription_not_found(name, subscription));
            }
            precheck(facts, command)
        }
        Command::CreateSubscription { queue: q, name } => {
            queue(q)?;
            validate_subscription_name("name", name)?;
            match facts.subscription_of(q, name) {
                (true, _) => Ok(()),
                (false, count) => check_subscription_room(q, count),
            }
        }
        Command::DeleteSubscription { queue: q, name } => {
            queue(q)?;
            validate_subscription_name("name", name)?;
            if !facts.subscription_of(q, name).0 {
                return Err(subscription_not_found(q, name));
            }
            Ok(())
        }
    }
}

/// Refuses a subscription past [`SUBSCRIPTIONS_MAX`] on queue `queue`,
/// which has `count`.
fn check_subscription_room(queue: &str, count: usize) -> Result<()> {
    if count >= SUBSCRIPTIONS_MAX {
        return Err(Error::exhausted(
            "subscriptions_max",
            SUBSCRIPTIONS_MAX as u64,
            format!("queue `{queue}` has {count} subscriptions"),
        ));
    }
    Ok(())
}

fn not_sequenceable() -> Error {
    Error::invalid(
        "command",
        "only a plain state-changing command can be sequenced",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interned_fairness_key_costs_a_job_record_no_memory() {
        // The `u32` id sits in the padding after `attempts`, `priority`
        // and `payload_bytes` (SPEC 7: bytes per pending job).
        assert!(
            std::mem::size_of::<Job>() <= 96,
            "{}",
            std::mem::size_of::<Job>()
        );
    }
}
