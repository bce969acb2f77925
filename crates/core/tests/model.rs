//! Model-based property test of the queue state machine (STYLE habit 5).
//!
//! Random sequences of every [`Command`] drive the real [`State`] and a
//! naive model written from SPEC section 2 alone: per queue a map of every
//! offset ever given to a plain job record, a `VecDeque` of offsets per
//! group, and a map from job id to its dedup entry. The model picks the next
//! jobs of a fetch by scanning every job, not with an index, so it shares no
//! data structure with `state.rs`; the only shared code is the public
//! backoff formula. Fair sharing across fairness keys (SPEC 2.3a) is a map
//! of virtual times per (priority, key) and a clock per priority, written
//! from the rule: a fetch takes the highest priority, then the key with the
//! smallest (virtual time, oldest ready head), then that key's oldest head.
//! Named subscriptions (SPEC 2.3a) are further model queues that receive a
//! copy of every later job under the same offset; a payload is predicted
//! deleted when a scan finds no subscription still holding its job.
//!
//! After every step the test compares the reply (errors by code and the
//! fields a client acts on), the effects, the payload store, the stats, the
//! group listing (with every filter and with paging) and the dead letters,
//! and checks `check_invariants`. A step may also snapshot the state, restore
//! it and carry on with the restored copy, which must be equal and encode to
//! the same bytes.
//!
//! The default run is 2,000 cases of 60 to 120 steps. A longer run:
//!
//! ```text
//! LOCKSTEP_MODEL_CASES=50000 cargo test --release -p lockstep-core --test model
//! ```
//!
//! A failure prints the shrunk step list and the first difference; proptest
//! also stores its seed in `crates/core/tests/model.proptest-regressions`,
//! and the next run replays it first.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use lockstep_core::hash::id_hash;
use lockstep_core::limits::{HEADERS_BYTES_MAX, HEADERS_COUNT_MAX, PAGE_LIMIT_MAX};
use lockstep_core::*;
use proptest::prelude::*;
use proptest::sample::Index;

/// Cases of the default run; `LOCKSTEP_MODEL_CASES` overrides it.
const CASES_DEFAULT: u32 = 2_000;

/// The limits as SPEC and the API docs state them, written out again so the
/// model does not lean on the core's constants.
const LEASE_MS_CEILING: u64 = 12 * 3_600_000;
const DELAY_MS_CEILING: u64 = 30 * 24 * 3_600_000;
const TEXT_BYTES_MAX: usize = 256;
const REASON_BYTES_MAX: usize = 1024;
const QUEUE_NAME_BYTES_MAX: usize = 128;
const PRIORITY_HIGHEST: u8 = 9;
/// Attempt records kept per job (its dead-letter history).
const HISTORY_LEN_MAX: usize = 32;
const CHAINED_QUEUES_LIMIT: usize = 16;
/// Named subscriptions per queue.
const SUBSCRIPTIONS_LIMIT: usize = 16;
/// Fairness: key bytes, named weights, the heaviest weight, and the
/// virtual time one delivery costs a key of weight 1.
const FAIRNESS_KEY_BYTES: usize = 128;
const FAIRNESS_WEIGHTS: usize = 1_000;
const FAIRNESS_WEIGHT_HEAVIEST: u32 = 1_000;
const FAIRNESS_SCALE: u128 = 1 << 32;

// ---------------------------------------------------------------------------
// The model.

/// How a job's offset stands. The model never forgets an offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    /// In the dead-letter set.
    Dead,
    Acked {
        fence: u64,
    },
    /// Was dead, then purged.
    Purged,
    /// Was dead, then requeued under a new offset.
    Requeued,
}

#[derive(Clone, Debug)]
struct MLease {
    fence: u64,
    deadline_ms: u64,
    holder: String,
}

#[derive(Clone, Debug)]
struct MJob {
    id: String,
    group: Option<String>,
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
    priority: u8,
    /// `""` for a job without a fairness key.
    fairness: String,
    blob: u64,
    enqueued_ms: u64,
    not_before_ms: u64,
    lease: Option<MLease>,
    /// Fence of the latest grant (0: never granted).
    last_fence: u64,
    /// Failed attempts.
    attempts: u32,
    history: Vec<Attempt>,
    status: Status,
    reason: String,
    dead_ms: u64,
}

#[derive(Clone, Debug, Default)]
struct MGroup {
    offsets: VecDeque<u64>,
    paused: bool,
    /// (offset, reason) of the dead letter that parked the group.
    parked: Option<(u64, String)>,
}

#[derive(Clone, Debug)]
struct MDedup {
    offset: u64,
    first_ms: u64,
    group: Option<String>,
    payload: Vec<u8>,
}

#[derive(Clone, Debug)]
struct MQueue {
    id: u64,
    config: QueueConfig,
    clock_ms: u64,
    next_offset: u64,
    jobs: BTreeMap<u64, MJob>,
    groups: BTreeMap<String, MGroup>,
    dedup: BTreeMap<String, MDedup>,
    counters: Counters,
    /// Token buckets as GCRA arrival times (µs): the enqueue bucket, and
    /// each group's delivery bucket by key (never pruned here: a bucket
    /// whose time has passed acts as a full one).
    enqueue_tat_us: u64,
    group_tats: BTreeMap<String, u64>,
    /// Virtual time of each (priority, fairness key) that has pending
    /// jobs (missing: 0), and each priority's virtual clock (missing: 0);
    /// both forgotten when no pending job has that priority (and key).
    vtimes: BTreeMap<(u8, String), u128>,
    vclocks: BTreeMap<u8, u128>,
    /// The (priority, key) pairs that had a ready head when last looked.
    was_ready: BTreeSet<(u8, String)>,
    /// Named subscriptions (SPEC 2.3a): each an independent model
    /// consumer, an `MQueue` that receives a copy of every job enqueued
    /// after its creation under the same offset and blob. Its `dedup` is
    /// a copy of the queue's, taken before each of its commands
    /// ([`MQueue::sub_mut`]); its own changes to it are thrown away.
    subs: BTreeMap<String, MQueue>,
}

/// A bucket's (µs per token, tokens when full), or `None` when off.
fn bucket(rate_max: u32, burst: u32, window_ms: u64) -> Option<(u64, u64)> {
    let window_ms = if window_ms == 0 { 1_000 } else { window_ms };
    (rate_max > 0).then(|| {
        let interval = (window_ms * 1_000 / u64::from(rate_max)).max(1);
        (
            interval,
            u64::from(if burst == 0 { rate_max } else { burst }),
        )
    })
}

/// GCRA: (when `n` tokens may be taken, the arrival time after).
fn take((interval, burst): (u64, u64), tat: u64, now: u64, n: u64) -> (u64, u64) {
    let next = tat.max(now) + n * interval;
    (next.saturating_sub(burst * interval), next)
}

#[derive(Clone, Debug, Default)]
struct Model {
    clock_ms: u64,
    index: u64,
    next_queue_id: u64,
    queues: BTreeMap<String, MQueue>,
    /// Above every offset a deleted queue gave: where a new queue starts,
    /// so no offset is given twice under one name (SPEC §1).
    offset_floor: u64,
    /// Whether the last command advanced the clock of the queue it named.
    advanced: bool,
    /// The other queues the last command advanced (a chained ack's).
    advanced_too: Vec<String>,
}

/// An error as the model predicts it: the code, plus the fields a client
/// acts on. Messages are for people and are not compared.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fail {
    Invalid,
    NotFound,
    AlreadyExists(String),
    LeaseLost { offset: u64, fence: u64 },
    Precondition,
    Exhausted { limit: String, max: u64 },
}

fn fail_of(error: &Error) -> Fail {
    match error {
        Error::InvalidArgument { .. } => Fail::Invalid,
        Error::NotFound { .. } => Fail::NotFound,
        Error::AlreadyExists { queue } => Fail::AlreadyExists(queue.clone()),
        Error::LeaseLost { offset, fence } => Fail::LeaseLost {
            offset: *offset,
            fence: *fence,
        },
        Error::FailedPrecondition { .. } => Fail::Precondition,
        Error::ResourceExhausted { limit, max, .. } => Fail::Exhausted {
            limit: limit.clone(),
            max: *max,
        },
        // The generated histories carry no sessions (the reply cache has
        // its own tests beside the state).
        Error::SessionUnknown { .. } | Error::ReplyForgotten { .. } | Error::Superseded { .. } => {
            unreachable!("the model sends no session commands: {error}")
        }
    }
}

/// The model's per-item ack errors as `Error` values; `NotFound` messages
/// are blanked on both sides before comparing.
fn error_of(fail: Fail) -> Error {
    match fail {
        Fail::LeaseLost { offset, fence } => Error::LeaseLost { offset, fence },
        Fail::NotFound => Error::NotFound {
            what: String::new(),
        },
        other => panic!("model: {other:?} is not an ack item error"),
    }
}

/// Blanks what the model does not predict: the text of per-item errors.
fn normalize(reply: Reply) -> Reply {
    match reply {
        Reply::Acked(results) => Reply::Acked(
            results
                .into_iter()
                .map(|r| match r {
                    AckResult::Failed(e) => AckResult::Failed(match fail_of(&e) {
                        Fail::NotFound => Error::NotFound {
                            what: String::new(),
                        },
                        _ => e,
                    }),
                    other => other,
                })
                .collect(),
        ),
        other => other,
    }
}

fn text_ok(value: &str, bytes_max: usize, allow_empty: bool) -> bool {
    (allow_empty || !value.is_empty())
        && value.len() <= bytes_max
        && !value.chars().any(char::is_control)
}

fn queue_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= QUEUE_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The documented ranges of every configuration field.
fn config_ok(c: &QueueConfig) -> bool {
    (1..=1_000).contains(&c.max_attempts)
        && c.backoff_base_ms <= DELAY_MS_CEILING
        && (1..=16).contains(&c.backoff_factor)
        && (c.backoff_base_ms..=DELAY_MS_CEILING).contains(&c.backoff_cap_ms)
        && c.backoff_jitter_pct <= 100
        && (1..=LEASE_MS_CEILING).contains(&c.lease_ms_max)
        && (1..=c.lease_ms_max).contains(&c.lease_ms_default)
        && (1..=DELAY_MS_CEILING).contains(&c.dedup_window_ms)
        && (1..=1_000_000_000).contains(&c.max_jobs)
        && (1..=1024 * 1024 * 1024 * 1024).contains(&c.max_bytes)
        && (1..=4 * 1024 * 1024).contains(&c.max_payload_bytes)
        && (1..=10_000).contains(&c.max_batch)
        && [
            c.rates.enqueue_rate_max,
            c.rates.enqueue_burst,
            c.rates.group_rate_max,
            c.rates.group_burst,
        ]
        .iter()
        .all(|r| *r <= 1_000_000)
        && c.rates.rate_window_ms <= 24 * 3_600_000
        && c.fairness.weights.len() <= FAIRNESS_WEIGHTS
        && c.fairness.weight_default <= FAIRNESS_WEIGHT_HEAVIEST
        && c.fairness.weights.iter().all(|(k, w)| {
            text_ok(k, FAIRNESS_KEY_BYTES, true) && (1..=FAIRNESS_WEIGHT_HEAVIEST).contains(w)
        })
}

fn job_ok(c: &QueueConfig, job: &NewJob) -> bool {
    let header_bytes: usize = job.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    text_ok(&job.id, TEXT_BYTES_MAX, false)
        && job
            .group
            .as_deref()
            .is_none_or(|g| text_ok(g, TEXT_BYTES_MAX, false))
        && job.payload.len() <= c.max_payload_bytes as usize
        && job.priority <= PRIORITY_HIGHEST
        && job.delay_ms <= DELAY_MS_CEILING
        && job.headers.len() <= HEADERS_COUNT_MAX
        && header_bytes <= HEADERS_BYTES_MAX
        && job
            .headers
            .iter()
            .all(|(k, _)| text_ok(k, HEADERS_BYTES_MAX, false))
        && job
            .fairness_key
            .as_deref()
            .is_none_or(|k| text_ok(k, FAIRNESS_KEY_BYTES, false))
}

fn batch_ok(len: usize, c: &QueueConfig) -> Result<(), Fail> {
    if len == 0 || len > c.max_batch as usize {
        return Err(Fail::Invalid);
    }
    Ok(())
}

impl MQueue {
    fn new(id: u64, config: QueueConfig, clock_ms: u64, next_offset: u64) -> MQueue {
        MQueue {
            id,
            config,
            clock_ms,
            next_offset,
            jobs: BTreeMap::new(),
            groups: BTreeMap::new(),
            dedup: BTreeMap::new(),
            counters: Counters::default(),
            enqueue_tat_us: 0,
            group_tats: BTreeMap::new(),
            vtimes: BTreeMap::new(),
            vclocks: BTreeMap::new(),
            was_ready: BTreeSet::new(),
            subs: BTreeMap::new(),
        }
    }

    /// Subscription `name`, ready for a command: the queue's dedup ids
    /// copied in, and the queue's next offset.
    fn sub_mut(&mut self, name: &str) -> Option<&mut MQueue> {
        let dedup = self.dedup.clone();
        let next_offset = self.next_offset;
        let sub = self.subs.get_mut(name)?;
        sub.dedup = dedup;
        sub.next_offset = next_offset;
        Some(sub)
    }

    /// Whether the default subscription or a named one still holds `blob`
    /// (pending or dead-lettered): a scan, not a count.
    fn holds(&self, blob: u64) -> bool {
        std::iter::once(self)
            .chain(self.subs.values())
            .any(|c| c.held().any(|j| j.blob == blob))
    }

    /// Distinct held jobs of every subscription, and their payload bytes:
    /// what the queue's limits count.
    fn held_everywhere(&self) -> (u64, u64) {
        let mut blobs: BTreeMap<u64, u64> = BTreeMap::new();
        for c in std::iter::once(self).chain(self.subs.values()) {
            for j in c.held() {
                blobs.insert(j.blob, j.payload.len() as u64);
            }
        }
        (blobs.len() as u64, blobs.values().sum())
    }

    /// A consumer-side command on this consumer (the queue's default
    /// subscription, or a named one).
    fn consume(&mut self, index: u64, cmd: &Command, fx: &mut Vec<Effect>) -> Result<Reply, Fail> {
        match cmd {
            Command::Fetch {
                consumer,
                max,
                lease_ms,
                ..
            } => self.fetch(index, consumer, *max, *lease_ms),
            Command::Ack { items, .. } => {
                batch_ok(items.len(), &self.config)?;
                Ok(Reply::Acked(
                    items.iter().map(|item| self.ack_one(*item, fx)).collect(),
                ))
            }
            Command::Nack {
                offset,
                fence,
                delay_ms,
                ..
            } => self.nack(*offset, *fence, *delay_ms),
            Command::Extend {
                offset,
                fence,
                lease_ms,
                ..
            } => self.extend(*offset, *fence, *lease_ms),
            Command::Release { offset, fence, .. } => self.release(*offset, *fence),
            Command::DeadLetter {
                offset,
                fence,
                reason,
                ..
            } => self.dead_letter(*offset, *fence, reason),
            Command::PauseGroup { group, .. } => self.pause(group),
            Command::SkipHead { group, reason, .. } => self.skip_head(group, reason),
            Command::ResumeGroup { group, .. } => self.resume(group),
            Command::RequeueDeadLetter { offset, .. } => self.requeue(*offset),
            Command::PurgeDeadLetters { which, .. } => self.purge(which, fx),
            other => panic!("model: {other:?} is not a consumer command"),
        }
    }

    /// The (priority, fairness key) of every head a fetch could take now.
    fn ready_lanes(&self) -> BTreeSet<(u8, String)> {
        self.jobs
            .iter()
            .filter(|(o, j)| self.fetchable(**o, j))
            .map(|(_, j)| (j.priority, j.fairness.clone()))
            .collect()
    }

    /// A key that has a ready head again after having none starts no
    /// earlier than its priority's clock: it banks no credit while idle.
    fn sync_fairness(&mut self) {
        let now = self.ready_lanes();
        for lane in now.difference(&self.was_ready) {
            let clock = self.vclocks.get(&lane.0).copied().unwrap_or(0);
            let vtime = self.vtimes.entry(lane.clone()).or_insert(0);
            *vtime = (*vtime).max(clock);
        }
        self.was_ready = now;
    }

    /// Keys and priorities with no pending job forget their virtual times.
    fn forget_idle_fairness(&mut self) {
        let pending: BTreeSet<(u8, String)> = self
            .pending()
            .map(|(_, j)| (j.priority, j.fairness.clone()))
            .collect();
        self.vtimes.retain(|lane, _| pending.contains(lane));
        self.was_ready.retain(|lane| pending.contains(lane));
        self.vclocks
            .retain(|p, _| pending.iter().any(|(priority, _)| priority == p));
    }

    /// The next head a fetch at `index` takes: the highest priority with a
    /// head it may take; there, the key with the smallest (virtual time,
    /// oldest ready head) that has one; that key's oldest such head.
    fn pick(&self, index: u64) -> Option<u64> {
        let ready: Vec<(u64, &MJob)> = self
            .jobs
            .iter()
            .filter(|(o, j)| self.fetchable(**o, j))
            .map(|(o, j)| (*o, j))
            .collect();
        let takeable = |j: &MJob| j.last_fence < index;
        let priority = ready
            .iter()
            .filter(|(_, j)| takeable(j))
            .map(|(_, j)| j.priority)
            .max()?;
        let mut lanes: BTreeMap<&str, u64> = BTreeMap::new();
        for (o, j) in ready.iter().filter(|(_, j)| j.priority == priority) {
            let oldest = lanes.entry(&j.fairness).or_insert(*o);
            *oldest = (*oldest).min(*o);
        }
        let mut order: Vec<(u128, u64, &str)> = lanes
            .into_iter()
            .map(|(key, oldest)| {
                let vtime = self.vtimes.get(&(priority, key.to_string()));
                (vtime.copied().unwrap_or(0), oldest, key)
            })
            .collect();
        order.sort();
        order.into_iter().find_map(|(_, _, key)| {
            ready
                .iter()
                .filter(|(_, j)| j.priority == priority && j.fairness == key && takeable(j))
                .map(|(o, _)| *o)
                .min()
        })
    }

    /// Charges the key of the just-leased job at `offset` one delivery at
    /// its current weight, and moves its priority's clock up to the
    /// smallest virtual time of a key that still has a ready head.
    fn charge(&mut self, offset: u64) {
        let job = &self.jobs[&offset];
        let lane = (job.priority, job.fairness.clone());
        let weight = match self.config.fairness.weights.get(&job.fairness) {
            Some(w) => *w,
            None if self.config.fairness.weight_default == 0 => 1,
            None => self.config.fairness.weight_default,
        };
        *self.vtimes.entry(lane.clone()).or_insert(0) += FAIRNESS_SCALE / u128::from(weight);
        let least = self
            .ready_lanes()
            .into_iter()
            .filter(|(p, _)| *p == lane.0)
            .map(|l| self.vtimes.get(&l).copied().unwrap_or(0))
            .min();
        if let Some(least) = least {
            let clock = self.vclocks.entry(lane.0).or_insert(0);
            *clock = (*clock).max(least);
        }
    }

    fn group_bucket(&self) -> Option<(u64, u64)> {
        let r = &self.config.rates;
        bucket(r.group_rate_max, r.group_burst, r.rate_window_ms)
    }

    fn enqueue_bucket(&self) -> Option<(u64, u64)> {
        let r = &self.config.rates;
        bucket(r.enqueue_rate_max, r.enqueue_burst, r.rate_window_ms)
    }

    /// A head not leased whose group is past its rate waits, as a delayed
    /// job, until the group's bucket holds a token.
    fn settle(&mut self) {
        let Some(b) = self.group_bucket() else {
            return;
        };
        let now = self.clock_ms * 1_000;
        let clock = self.clock_ms;
        let heads: Vec<(String, u64)> = self
            .groups
            .iter()
            .filter_map(|(k, g)| g.offsets.front().map(|o| (k.clone(), *o)))
            .collect();
        for (key, head) in heads {
            let Some(&tat) = self.group_tats.get(&key) else {
                continue;
            };
            let gate = take(b, tat, now, 1).0.div_ceil(1_000);
            let job = self.job(head);
            if job.lease.is_none() && gate > job.not_before_ms && gate > clock {
                job.not_before_ms = gate;
            }
        }
    }

    fn pending(&self) -> impl Iterator<Item = (u64, &MJob)> {
        self.jobs
            .iter()
            .filter(|(_, j)| j.status == Status::Pending)
            .map(|(o, j)| (*o, j))
    }

    /// Pending plus dead-lettered: what counts against `max_jobs`.
    fn held(&self) -> impl Iterator<Item = &MJob> {
        self.jobs
            .values()
            .filter(|j| matches!(j.status, Status::Pending | Status::Dead))
    }

    fn is_head(&self, offset: u64, job: &MJob) -> bool {
        match &job.group {
            None => true,
            Some(g) => self.groups[g].offsets.front() == Some(&offset),
        }
    }

    fn paused(&self, job: &MJob) -> bool {
        job.group.as_ref().is_some_and(|g| self.groups[g].paused)
    }

    /// A pending head a fetch could take now (the same-entry rule aside).
    fn fetchable(&self, offset: u64, job: &MJob) -> bool {
        job.status == Status::Pending
            && job.lease.is_none()
            && job.not_before_ms <= self.clock_ms
            && self.is_head(offset, job)
            && !self.paused(job)
    }

    fn state_of(&self, offset: u64) -> JobState {
        let job = &self.jobs[&offset];
        match job.status {
            Status::Pending if job.lease.is_some() => JobState::Leased,
            Status::Pending if job.not_before_ms > self.clock_ms => JobState::Delayed,
            Status::Pending => JobState::Ready,
            Status::Dead | Status::Purged => JobState::Dead,
            Status::Acked { .. } => JobState::Done,
            Status::Requeued => panic!("model: a dedup entry names requeued offset {offset}"),
        }
    }

    /// Groups exist while they hold jobs or are paused.
    fn tidy(&mut self) {
        self.groups.retain(|_, g| !g.offsets.is_empty() || g.paused);
    }

    fn advance(&mut self, now: u64) -> u32 {
        self.clock_ms = self.clock_ms.max(now);
        let clock = self.clock_ms;
        // (1) Due leases expire in (deadline, offset) order.
        let mut due: Vec<(u64, u64)> = self
            .jobs
            .iter()
            .filter_map(|(o, j)| {
                j.lease
                    .as_ref()
                    .filter(|l| l.deadline_ms <= clock)
                    .map(|l| (l.deadline_ms, *o))
            })
            .collect();
        due.sort();
        for &(_, offset) in &due {
            let lease = self.job(offset).lease.take().expect("due lease");
            self.counters.expired += 1;
            self.fail_attempt(offset, lease.fence, AttemptOutcome::Expired, 0);
        }
        // (2) Delayed jobs need nothing: "delayed" is `not_before > clock`.
        // (3) Ids past their window are forgotten.
        let window = self.config.dedup_window_ms;
        self.dedup
            .retain(|_, d| d.first_ms.saturating_add(window) > clock);
        // (4) Heads whose lease ended wait for their group's rate.
        self.settle();
        // (5) Keys with a ready head again start at their band's clock.
        self.sync_fairness();
        // (6) Subscriptions keep the queue's time.
        let dedup = self.dedup.clone();
        let mut expired = due.len() as u32;
        for sub in self.subs.values_mut() {
            sub.dedup = dedup.clone();
            expired += sub.advance(now);
        }
        expired
    }

    fn job(&mut self, offset: u64) -> &mut MJob {
        self.jobs.get_mut(&offset).expect("model job")
    }

    fn record(&mut self, offset: u64, fence: u64, outcome: AttemptOutcome) {
        let at_ms = self.clock_ms;
        let job = self.job(offset);
        if job.history.len() == HISTORY_LEN_MAX {
            job.history.remove(0);
        }
        let attempt = job.attempts + 1;
        job.history.push(Attempt {
            attempt,
            fence,
            at_ms,
            outcome,
        });
    }

    /// A failed attempt of an unleased pending job.
    fn fail_attempt(
        &mut self,
        offset: u64,
        fence: u64,
        outcome: AttemptOutcome,
        delay_ms: u64,
    ) -> (bool, u64) {
        self.record(offset, fence, outcome);
        let max_attempts = self.config.max_attempts;
        let clock = self.clock_ms;
        let config = self.config.clone();
        let job = self.job(offset);
        job.attempts += 1;
        if job.attempts >= max_attempts {
            self.kill(offset, format!("max_attempts = {max_attempts} reached"));
            return (true, 0);
        }
        let delay = if delay_ms > 0 {
            delay_ms
        } else {
            backoff_ms(&config, id_hash(&job.id), job.attempts)
        };
        job.not_before_ms = clock.saturating_add(delay);
        (false, job.not_before_ms)
    }

    fn kill(&mut self, offset: u64, reason: String) {
        let park = self.config.group_policy == GroupPolicy::Park;
        self.kill_as(offset, reason, park);
    }

    fn kill_as(&mut self, offset: u64, reason: String, park: bool) {
        let clock = self.clock_ms;
        let job = self.job(offset);
        job.status = Status::Dead;
        job.reason = reason.clone();
        job.dead_ms = clock;
        if let Some(key) = job.group.clone() {
            let group = self.groups.get_mut(&key).expect("model group");
            assert_eq!(group.offsets.pop_front(), Some(offset), "model: not head");
            if park {
                group.paused = true;
                group.parked = Some((offset, reason));
            }
        }
        self.counters.dead_lettered += 1;
        self.tidy();
        self.forget_idle_fairness();
    }

    fn lost(&self, offset: u64, fence: u64) -> Fail {
        if offset >= self.next_offset {
            Fail::NotFound
        } else {
            Fail::LeaseLost { offset, fence }
        }
    }

    fn check_lease(&self, offset: u64, fence: u64) -> Result<(), Fail> {
        match self.jobs.get(&offset) {
            Some(j)
                if j.status == Status::Pending
                    && j.lease.as_ref().is_some_and(|l| l.fence == fence) =>
            {
                Ok(())
            }
            _ => Err(self.lost(offset, fence)),
        }
    }

    fn resolve_lease(&self, lease_ms: u64) -> Result<u64, Fail> {
        match lease_ms {
            ms if ms > LEASE_MS_CEILING => Err(Fail::Invalid),
            0 => Ok(self.config.lease_ms_default),
            ms => Ok(ms.min(self.config.lease_ms_max)),
        }
    }

    fn enqueue(&mut self, jobs: &[NewJob], fx: &mut Vec<Effect>) -> Result<Reply, Fail> {
        // A duplicate's state is read after this command's own head
        // changes (a chained ack's) have met their group's rate.
        self.settle();
        batch_ok(jobs.len(), &self.config)?;
        if !jobs.iter().all(|j| job_ok(&self.config, j)) {
            return Err(Fail::Invalid);
        }
        let mut new_ids: Vec<&str> = Vec::new();
        let mut new_bytes = 0u64;
        for job in jobs {
            if !self.dedup.contains_key(&job.id) && !new_ids.contains(&job.id.as_str()) {
                new_ids.push(&job.id);
                new_bytes += job.payload.len() as u64;
            }
        }
        let (held, bytes) = self.held_everywhere();
        if held + new_ids.len() as u64 > self.config.max_jobs {
            return Err(Fail::Exhausted {
                limit: "max_jobs".into(),
                max: self.config.max_jobs,
            });
        }
        if bytes + new_bytes > self.config.max_bytes {
            return Err(Fail::Exhausted {
                limit: "max_bytes".into(),
                max: self.config.max_bytes,
            });
        }
        let new = new_ids.len() as u64;
        if let (Some(b), true) = (self.enqueue_bucket(), new > 0) {
            let refused = Fail::Exhausted {
                limit: "enqueue_rate_max".into(),
                max: u64::from(self.config.rates.enqueue_rate_max),
            };
            if new > b.1
                || take(b, self.enqueue_tat_us, self.clock_ms * 1_000, new).0
                    > self.clock_ms * 1_000
            {
                return Err(refused);
            }
            self.enqueue_tat_us = take(b, self.enqueue_tat_us, self.clock_ms * 1_000, new).1;
        }
        let mut results = Vec::new();
        for new in jobs {
            // A job this batch just made a head may wait for its rate.
            self.settle();
            if let Some(d) = self.dedup.get(&new.id) {
                if d.group == new.group && d.payload == new.payload {
                    self.counters.duplicates += 1;
                    results.push(EnqueueResult::Duplicate {
                        offset: d.offset,
                        state: self.state_of(d.offset),
                    });
                } else {
                    results.push(EnqueueResult::IdConflict { offset: d.offset });
                }
                continue;
            }
            let offset = self.next_offset;
            self.next_offset += 1;
            self.jobs.insert(
                offset,
                MJob {
                    id: new.id.clone(),
                    group: new.group.clone(),
                    payload: new.payload.clone(),
                    headers: new.headers.clone(),
                    priority: new.priority,
                    fairness: new.fairness_key.clone().unwrap_or_default(),
                    blob: offset,
                    enqueued_ms: self.clock_ms,
                    not_before_ms: self.clock_ms.saturating_add(new.delay_ms),
                    lease: None,
                    last_fence: 0,
                    attempts: 0,
                    history: Vec::new(),
                    status: Status::Pending,
                    reason: String::new(),
                    dead_ms: 0,
                },
            );
            if let Some(key) = &new.group {
                let group = self.groups.entry(key.clone()).or_default();
                group.offsets.push_back(offset);
            }
            let copy = self.jobs[&offset].clone();
            for sub in self.subs.values_mut() {
                sub.jobs.insert(offset, copy.clone());
                if let Some(key) = &new.group {
                    sub.groups
                        .entry(key.clone())
                        .or_default()
                        .offsets
                        .push_back(offset);
                }
                sub.next_offset = offset + 1;
                sub.counters.enqueued += 1;
            }
            self.dedup.insert(
                new.id.clone(),
                MDedup {
                    offset,
                    first_ms: self.clock_ms,
                    group: new.group.clone(),
                    payload: new.payload.clone(),
                },
            );
            self.counters.enqueued += 1;
            fx.push(Effect::PutBlob {
                queue_id: self.id,
                blob: offset,
                data: JobBlob {
                    id: new.id.clone(),
                    headers: new.headers.clone(),
                    payload: new.payload.clone(),
                },
            });
            results.push(EnqueueResult::Created { offset });
        }
        Ok(Reply::Enqueued(results))
    }

    fn fetch(
        &mut self,
        index: u64,
        consumer: &str,
        max: u32,
        lease_ms: u64,
    ) -> Result<Reply, Fail> {
        if !text_ok(consumer, TEXT_BYTES_MAX, true) || max == 0 || max > self.config.max_batch {
            return Err(Fail::Invalid);
        }
        let lease_ms = self.resolve_lease(lease_ms)?;
        let deadline_ms = self.clock_ms.saturating_add(lease_ms);
        let queue_id = self.id;
        let mut deliveries = Vec::new();
        // One at a time: each delivery moves its key's virtual time.
        while deliveries.len() < max as usize {
            let Some(offset) = self.pick(index) else {
                break;
            };
            let now = self.clock_ms * 1_000;
            if let (Some(b), Some(key)) = (self.group_bucket(), self.jobs[&offset].group.clone()) {
                let tat = self.group_tats.get(&key).copied().unwrap_or(0);
                self.group_tats.insert(key, take(b, tat, now, 1).1);
            }
            let job = self.job(offset);
            job.lease = Some(MLease {
                fence: index,
                deadline_ms,
                holder: consumer.to_string(),
            });
            job.last_fence = index;
            let delivery = Delivery {
                queue_id,
                offset,
                blob: job.blob,
                group: job.group.clone(),
                priority: job.priority,
                attempt: job.attempts + 1,
                fence: index,
                deadline_ms,
            };
            self.counters.delivered += 1;
            if delivery.attempt > 1 {
                self.counters.redelivered += 1;
            }
            deliveries.push(delivery);
            self.charge(offset);
            self.sync_fairness();
        }
        Ok(Reply::Fetched(deliveries))
    }

    fn ack_one(&mut self, item: AckItem, fx: &mut Vec<Effect>) -> AckResult {
        let AckItem { offset, fence } = item;
        if self.check_lease(offset, fence).is_ok() {
            let queue_id = self.id;
            let job = self.job(offset);
            job.lease = None;
            job.status = Status::Acked { fence };
            let (blob, group) = (job.blob, job.group.clone());
            if let Some(key) = group {
                let group = self.groups.get_mut(&key).expect("model group");
                assert_eq!(group.offsets.pop_front(), Some(offset), "model: not head");
            }
            self.tidy();
            self.forget_idle_fairness();
            self.counters.acked += 1;
            fx.push(Effect::DeleteBlob { queue_id, blob });
            return AckResult::Acked;
        }
        if self.acked_with(item) {
            return AckResult::AlreadyAcked;
        }
        AckResult::Failed(error_of(self.lost(offset, fence)))
    }

    /// An ack of `item` would repeat one that finished the job.
    fn acked_with(&self, item: AckItem) -> bool {
        self.jobs.get(&item.offset).is_some_and(|job| {
            let in_window = self
                .dedup
                .get(&job.id)
                .is_some_and(|d| d.offset == item.offset);
            job.status == (Status::Acked { fence: item.fence }) && in_window
        })
    }

    fn nack(&mut self, offset: u64, fence: u64, delay_ms: u64) -> Result<Reply, Fail> {
        if delay_ms > DELAY_MS_CEILING {
            return Err(Fail::Invalid);
        }
        self.check_lease(offset, fence)?;
        self.job(offset).lease = None;
        self.counters.nacked += 1;
        let (dead, not_before_ms) =
            self.fail_attempt(offset, fence, AttemptOutcome::Nacked, delay_ms);
        Ok(Reply::Nacked {
            dead,
            not_before_ms,
        })
    }

    fn extend(&mut self, offset: u64, fence: u64, lease_ms: u64) -> Result<Reply, Fail> {
        let lease_ms = self.resolve_lease(lease_ms)?;
        self.check_lease(offset, fence)?;
        let deadline_ms = self.clock_ms.saturating_add(lease_ms);
        self.job(offset)
            .lease
            .as_mut()
            .expect("checked")
            .deadline_ms = deadline_ms;
        Ok(Reply::Extended { deadline_ms })
    }

    fn release(&mut self, offset: u64, fence: u64) -> Result<Reply, Fail> {
        self.check_lease(offset, fence)?;
        self.job(offset).lease = None;
        Ok(Reply::Released)
    }

    fn dead_letter(&mut self, offset: u64, fence: u64, reason: &str) -> Result<Reply, Fail> {
        if !text_ok(reason, REASON_BYTES_MAX, true) {
            return Err(Fail::Invalid);
        }
        self.check_lease(offset, fence)?;
        self.job(offset).lease = None;
        self.record(offset, fence, AttemptOutcome::DeadLettered);
        self.job(offset).attempts += 1;
        self.kill(offset, reason.to_string());
        Ok(Reply::DeadLettered)
    }

    fn pause(&mut self, key: &str) -> Result<Reply, Fail> {
        if !text_ok(key, TEXT_BYTES_MAX, false) {
            return Err(Fail::Invalid);
        }
        self.groups.entry(key.to_string()).or_default().paused = true;
        Ok(Reply::GroupPaused)
    }

    /// An operator's skip: the head goes to the dead letters, its attempt
    /// in flight counted, and the group goes on even under `park`.
    fn skip_head(&mut self, key: &str, reason: &str) -> Result<Reply, Fail> {
        if !text_ok(key, TEXT_BYTES_MAX, false) || !text_ok(reason, REASON_BYTES_MAX, true) {
            return Err(Fail::Invalid);
        }
        let head = self
            .groups
            .get(key)
            .and_then(|g| g.offsets.front().copied())
            .ok_or(Fail::NotFound)?;
        if let Some(lease) = self.job(head).lease.take() {
            self.record(head, lease.fence, AttemptOutcome::DeadLettered);
            self.job(head).attempts += 1;
        }
        self.kill_as(head, format!("skipped: {reason}"), false);
        Ok(Reply::Skipped { offset: head })
    }

    fn resume(&mut self, key: &str) -> Result<Reply, Fail> {
        if !text_ok(key, TEXT_BYTES_MAX, false) {
            return Err(Fail::Invalid);
        }
        let group = self.groups.get_mut(key).ok_or(Fail::NotFound)?;
        group.paused = false;
        group.parked = None;
        self.tidy();
        Ok(Reply::GroupResumed)
    }

    fn requeue(&mut self, offset: u64) -> Result<Reply, Fail> {
        match self.jobs.get(&offset) {
            Some(j) if j.status == Status::Dead => {}
            _ => return Err(Fail::NotFound),
        }
        let clock = self.clock_ms;
        let new_offset = self.next_offset;
        self.next_offset += 1;
        let old = self.job(offset);
        old.status = Status::Requeued;
        let job = MJob {
            enqueued_ms: clock,
            not_before_ms: clock,
            lease: None,
            last_fence: 0,
            attempts: 0,
            history: Vec::new(),
            status: Status::Pending,
            reason: String::new(),
            dead_ms: 0,
            ..old.clone()
        };
        if let Some(key) = &job.group {
            let group = self.groups.entry(key.clone()).or_default();
            group.offsets.push_back(new_offset);
        }
        if let Some(d) = self.dedup.get_mut(&job.id) {
            if d.offset == offset {
                d.offset = new_offset;
            }
        }
        self.jobs.insert(new_offset, job);
        Ok(Reply::Requeued { offset: new_offset })
    }

    fn purge(&mut self, which: &PurgeSelector, fx: &mut Vec<Effect>) -> Result<Reply, Fail> {
        let offsets: Vec<u64> = match which {
            PurgeSelector::All => self
                .jobs
                .iter()
                .filter(|(_, j)| j.status == Status::Dead)
                .map(|(o, _)| *o)
                .collect(),
            PurgeSelector::Offsets(list) => {
                batch_ok(list.len(), &self.config)?;
                list.clone()
            }
        };
        let queue_id = self.id;
        let mut count = 0;
        for offset in offsets {
            if let Some(job) = self.jobs.get_mut(&offset) {
                if job.status == Status::Dead {
                    job.status = Status::Purged;
                    fx.push(Effect::DeleteBlob {
                        queue_id,
                        blob: job.blob,
                    });
                    count += 1;
                }
            }
        }
        Ok(Reply::Purged { count })
    }

    // --- What the queries should answer.

    fn stats(&self) -> QueueStats {
        let pending: Vec<(u64, &MJob)> = self.pending().collect();
        let leased = pending.iter().filter(|(_, j)| j.lease.is_some()).count() as u64;
        let delayed = pending
            .iter()
            .filter(|(_, j)| j.lease.is_none() && j.not_before_ms > self.clock_ms)
            .count() as u64;
        let oldest = pending
            .iter()
            .filter(|(o, j)| self.fetchable(*o, j))
            .map(|(_, j)| j.enqueued_ms)
            .min();
        QueueStats {
            queue_id: self.id,
            ready: pending.len() as u64 - leased - delayed,
            delayed,
            leased,
            dead: self.held().filter(|j| j.status == Status::Dead).count() as u64,
            bytes: self.held().map(|j| j.payload.len() as u64).sum(),
            ack_floor: pending.first().map_or(self.next_offset, |(o, _)| *o),
            next_offset: self.next_offset,
            oldest_ready_age_ms: oldest.map_or(0, |t| self.clock_ms - t),
            groups: self.groups.len() as u64,
            counters: self.counters.clone(),
        }
    }

    fn groups(&self, filter: &GroupFilter) -> Vec<GroupInfo> {
        let mut out = Vec::new();
        for (key, group) in &self.groups {
            let head = group.offsets.front().map(|o| (*o, &self.jobs[o]));
            let leased = head.is_some_and(|(_, j)| j.lease.is_some());
            let shown = match filter.status {
                GroupStatus::Any => true,
                GroupStatus::Leased => leased,
                GroupStatus::Paused => group.paused,
                GroupStatus::Waiting => !leased && !group.paused,
            };
            if !key.starts_with(&filter.key_prefix) || !shown {
                continue;
            }
            out.push(GroupInfo {
                key: key.clone(),
                backlog: group.offsets.len() as u64,
                head_offset: head.map(|(o, _)| o),
                head_age_ms: head.map_or(0, |(_, j)| self.clock_ms - j.enqueued_ms),
                lease_holder: head.and_then(|(_, j)| j.lease.as_ref().map(|l| l.holder.clone())),
                lease_deadline_ms: head.and_then(|(_, j)| j.lease.as_ref().map(|l| l.deadline_ms)),
                attempts: head.map_or(0, |(_, j)| j.attempts),
                paused: group.paused,
                parked_reason: group
                    .parked
                    .as_ref()
                    .map(|(o, r)| format!("job at offset {o} was dead-lettered: {r}")),
            });
        }
        out
    }

    fn dead_letters(&self) -> Vec<DeadLetterInfo> {
        self.jobs
            .iter()
            .filter(|(_, j)| j.status == Status::Dead)
            .map(|(o, j)| DeadLetterInfo {
                queue_id: self.id,
                offset: *o,
                blob: j.blob,
                group: j.group.clone(),
                priority: j.priority,
                attempts: j.attempts,
                reason: j.reason.clone(),
                history: j.history.clone(),
                enqueued_ms: j.enqueued_ms,
                dead_ms: j.dead_ms,
            })
            .collect()
    }

    /// When this queue next has something to do on its own.
    fn next_due_ms(&self) -> Option<u64> {
        self.pending()
            .filter_map(|(_, j)| match &j.lease {
                Some(l) => Some(l.deadline_ms),
                None if j.not_before_ms > self.clock_ms => Some(j.not_before_ms),
                None => None,
            })
            .chain(self.subs.values().filter_map(MQueue::next_due_ms))
            .min()
    }
}

impl Model {
    fn apply(&mut self, stamp: Stamp, cmd: &Command) -> (Result<Reply, Fail>, Vec<Effect>) {
        self.index = stamp.index;
        self.clock_ms = self.clock_ms.max(stamp.time_ms);
        self.advanced = false;
        self.advanced_too.clear();
        let mut fx = Vec::new();
        let reply = self.dispatch(stamp.index, cmd, &mut fx);
        for queue in self.queues.values_mut() {
            queue.settle();
            queue.sync_fairness();
            let next = std::iter::once(queue.next_offset)
                .chain(queue.subs.values().map(|s| s.next_offset))
                .max()
                .expect("one at least");
            queue.next_offset = next;
            for sub in queue.subs.values_mut() {
                sub.next_offset = next;
                sub.settle();
                sub.sync_fairness();
            }
        }
        // A payload goes once no subscription holds its job any more.
        fx.retain(|e| match e {
            Effect::DeleteBlob { queue_id, blob } => !self
                .queues
                .values()
                .any(|q| q.id == *queue_id && q.holds(*blob)),
            _ => true,
        });
        assert!(
            reply.is_ok() || fx.is_empty(),
            "model: a failure left effects"
        );
        (reply, fx)
    }

    /// The queue a command names, moved to cluster time.
    fn queue(&mut self, name: &str) -> Result<&mut MQueue, Fail> {
        let clock = self.clock_ms;
        let queue = self.queues.get_mut(name).ok_or(Fail::NotFound)?;
        queue.advance(clock);
        self.advanced = true;
        Ok(queue)
    }

    /// A chained ack: all of it, or nothing but time.
    fn ack_then(
        &mut self,
        queue: &str,
        sub: Option<&str>,
        items: &[AckItem],
        then: &[Chained],
        fx: &mut Vec<Effect>,
    ) -> Result<Reply, Fail> {
        let mut offsets = BTreeSet::new();
        let mut names = BTreeSet::new();
        if then.len() > CHAINED_QUEUES_LIMIT
            || !items.iter().all(|i| offsets.insert(i.offset))
            || !then.iter().all(|c| names.insert(c.queue.clone()))
        {
            return Err(Fail::Invalid);
        }
        let q = self.queue(queue)?;
        batch_ok(items.len(), &q.config)?;
        for c in then {
            if !queue_name_ok(&c.queue) {
                return Err(Fail::Invalid);
            }
            let t = self.queues.get(&c.queue).ok_or(Fail::NotFound)?;
            batch_ok(c.jobs.len(), &t.config)?;
            if !c.jobs.iter().all(|j| job_ok(&t.config, j)) {
                return Err(Fail::Invalid);
            }
        }
        let clock = self.clock_ms;
        for c in then {
            self.queues
                .get_mut(&c.queue)
                .expect("checked")
                .advance(clock);
            self.advanced_too.push(c.queue.clone());
        }
        if let Some(name) = sub {
            self.queues
                .get_mut(queue)
                .expect("checked")
                .sub_mut(name)
                .expect("checked by the caller");
        }
        let source = match sub {
            None => &self.queues[queue],
            Some(name) => &self.queues[queue].subs[name],
        };
        if items.iter().all(|i| source.acked_with(*i)) {
            return Ok(Reply::AckedThen {
                acked: vec![AckResult::AlreadyAcked; items.len()],
                then: Vec::new(),
            });
        }
        for i in items {
            source.check_lease(i.offset, i.fence)?;
        }
        // Each target's limits, tried on a copy before anything changes.
        for c in then {
            self.queues[&c.queue]
                .clone()
                .enqueue(&c.jobs, &mut Vec::new())?;
        }
        let q = self.queues.get_mut(queue).expect("checked");
        let source = match sub {
            None => q,
            Some(name) => q.subs.get_mut(name).expect("checked"),
        };
        let acked = items.iter().map(|i| source.ack_one(*i, fx)).collect();
        let then = then
            .iter()
            .map(|c| {
                match self
                    .queues
                    .get_mut(&c.queue)
                    .expect("checked")
                    .enqueue(&c.jobs, fx)
                {
                    Ok(Reply::Enqueued(results)) => results,
                    other => panic!("model: a checked enqueue answered {other:?}"),
                }
            })
            .collect();
        Ok(Reply::AckedThen { acked, then })
    }

    fn dispatch(&mut self, index: u64, cmd: &Command, fx: &mut Vec<Effect>) -> Result<Reply, Fail> {
        match cmd {
            Command::OpenSession | Command::Sequenced { .. } => {
                unreachable!("the model sends no session commands")
            }
            Command::CreateQueue { name, config } => {
                if !queue_name_ok(name) || !config_ok(config) {
                    return Err(Fail::Invalid);
                }
                // Creating an existing queue only answers; it does not move
                // that queue's clock.
                if let Some(q) = self.queues.get(name) {
                    if &q.config == config {
                        return Ok(Reply::QueueCreated {
                            created: false,
                            queue_id: q.id,
                        });
                    }
                    return Err(Fail::AlreadyExists(name.clone()));
                }
                let id = self.next_queue_id;
                self.next_queue_id += 1;
                let queue = MQueue::new(id, config.clone(), self.clock_ms, self.offset_floor);
                self.queues.insert(name.clone(), queue);
                Ok(Reply::QueueCreated {
                    created: true,
                    queue_id: id,
                })
            }
            Command::UpdateQueue { name, config } => {
                // A bad configuration is refused before the queue is looked up.
                if !config_ok(config) {
                    return Err(Fail::Invalid);
                }
                let q = self.queue(name)?;
                q.config = config.clone();
                for sub in q.subs.values_mut() {
                    sub.config = config.clone();
                }
                Ok(Reply::QueueUpdated)
            }
            Command::DeleteQueue { name } => {
                let queue = self.queues.remove(name).ok_or(Fail::NotFound)?;
                self.offset_floor = self.offset_floor.max(queue.next_offset);
                fx.push(Effect::DropQueue { queue_id: queue.id });
                Ok(Reply::QueueDeleted)
            }
            Command::Enqueue { queue, jobs } => self.queue(queue)?.enqueue(jobs, fx),
            Command::Fetch {
                queue,
                consumer,
                max,
                lease_ms,
            } => self.queue(queue)?.fetch(index, consumer, *max, *lease_ms),
            Command::Ack { queue, items } => {
                let q = self.queue(queue)?;
                batch_ok(items.len(), &q.config)?;
                Ok(Reply::Acked(
                    items.iter().map(|item| q.ack_one(*item, fx)).collect(),
                ))
            }
            Command::AckThen { queue, items, then } => self.ack_then(queue, None, items, then, fx),
            Command::Nack {
                queue,
                offset,
                fence,
                delay_ms,
            } => self.queue(queue)?.nack(*offset, *fence, *delay_ms),
            Command::Extend {
                queue,
                offset,
                fence,
                lease_ms,
            } => self.queue(queue)?.extend(*offset, *fence, *lease_ms),
            Command::Release {
                queue,
                offset,
                fence,
            } => self.queue(queue)?.release(*offset, *fence),
            Command::DeadLetter {
                queue,
                offset,
                fence,
                reason,
            } => self.queue(queue)?.dead_letter(*offset, *fence, reason),
            Command::Tick => {
                let clock = self.clock_ms;
                let expired = self.queues.values_mut().map(|q| q.advance(clock)).sum();
                Ok(Reply::Ticked { expired })
            }
            Command::PauseGroup { queue, group } => self.queue(queue)?.pause(group),
            Command::SkipHead {
                queue,
                group,
                reason,
            } => self.queue(queue)?.skip_head(group, reason),
            Command::ResumeGroup { queue, group } => self.queue(queue)?.resume(group),
            Command::RequeueDeadLetter { queue, offset } => self.queue(queue)?.requeue(*offset),
            Command::PurgeDeadLetters { queue, which } => self.queue(queue)?.purge(which, fx),
            Command::InSubscription {
                subscription,
                command,
            } => {
                let allowed = matches!(
                    **command,
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
                        | Command::PurgeDeadLetters { .. }
                );
                if !allowed {
                    return Err(Fail::Invalid);
                }
                let queue = command.queue().expect("names a queue");
                let q = self.queue(queue)?;
                if !queue_name_ok(subscription) {
                    return Err(Fail::Invalid);
                }
                let sub = q.sub_mut(subscription).ok_or(Fail::NotFound)?;
                match &**command {
                    Command::AckThen { items, then, .. } => {
                        self.ack_then(queue, Some(subscription), items, then, fx)
                    }
                    inner => sub.consume(index, inner, fx),
                }
            }
            Command::CreateSubscription { queue, name } => {
                let q = self.queue(queue)?;
                if !queue_name_ok(name) {
                    return Err(Fail::Invalid);
                }
                if q.subs.contains_key(name) {
                    return Ok(Reply::SubscriptionCreated { created: false });
                }
                if q.subs.len() >= SUBSCRIPTIONS_LIMIT {
                    return Err(Fail::Exhausted {
                        limit: "subscriptions_max".into(),
                        max: SUBSCRIPTIONS_LIMIT as u64,
                    });
                }
                let sub = MQueue::new(q.id, q.config.clone(), q.clock_ms, q.next_offset);
                q.subs.insert(name.clone(), sub);
                Ok(Reply::SubscriptionCreated { created: true })
            }
            Command::DeleteSubscription { queue, name } => {
                let q = self.queue(queue)?;
                if !queue_name_ok(name) {
                    return Err(Fail::Invalid);
                }
                let sub = q.subs.remove(name).ok_or(Fail::NotFound)?;
                let mut blobs: Vec<u64> = sub.held().map(|j| j.blob).collect();
                blobs.sort_unstable();
                for blob in blobs {
                    if !q.holds(blob) {
                        fx.push(Effect::DeleteBlob {
                            queue_id: q.id,
                            blob,
                        });
                    }
                }
                Ok(Reply::SubscriptionDeleted)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Generation.
//
// Most generated commands are valid and name live leases, so that runs get
// deep (leases that expire, retries, dead letters, parked groups, requeues,
// duplicates); each kind of bad input still shows up a few times per case.

const QUEUES: [&str; 3] = ["q1", "q2", "q3"];
/// Job ids; all valid (invalid ids come from [`Fault`]).
const IDS: [&str; 12] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"];
/// Group keys; `g6` is never given to a job, so pausing or resuming it
/// exercises groups without jobs.
const GROUPS: [&str; 6] = ["g1", "g2", "g3", "g4", "g5", "g6"];
const CONSUMERS: [&str; 4] = ["w1", "w2", "", "bad\nname"];
/// Fairness keys; `""` is also what a job without one shares.
const TENANTS: [&str; 4] = ["", "t1", "t2", "t3"];
const REASONS: [&str; 3] = ["poison", "", "bad\u{7}reason"];
/// Subscription names: `s3` is rarely created, and the last is no valid
/// name.
const SUBS: [&str; 4] = ["s1", "s2", "s3", "bad name"];

/// One way to make a job invalid.
#[derive(Clone, Copy, Debug)]
enum Fault {
    EmptyId,
    ControlInId,
    LongId,
    EmptyGroup,
    Payload,
    Priority,
    Delay,
    HeaderKey,
    HeaderCount,
    EmptyFairnessKey,
    LongFairnessKey,
}

impl Fault {
    fn apply(self, job: &mut NewJob) {
        match self {
            Fault::EmptyId => job.id.clear(),
            Fault::ControlInId => job.id.push('\u{1}'),
            Fault::LongId => job.id = "x".repeat(TEXT_BYTES_MAX + 1),
            Fault::EmptyGroup => job.group = Some(String::new()),
            // Above every generated `max_payload_bytes`.
            Fault::Payload => job.payload = vec![9; 9],
            Fault::Priority => job.priority = PRIORITY_HIGHEST + 1,
            Fault::Delay => job.delay_ms = DELAY_MS_CEILING + 1,
            Fault::HeaderKey => job.headers = vec![(String::new(), "v".into())],
            Fault::HeaderCount => {
                job.headers = vec![("k".into(), "v".into()); HEADERS_COUNT_MAX + 1];
            }
            Fault::EmptyFairnessKey => job.fairness_key = Some(String::new()),
            Fault::LongFairnessKey => job.fairness_key = Some("t".repeat(FAIRNESS_KEY_BYTES + 1)),
        }
    }
}

/// A lease a command presents.
#[derive(Clone, Debug)]
enum Target {
    /// A lease of the queue that is live right now.
    Live(Index),
    /// One of the last few deliveries of the queue (often finished).
    Recent(Index),
    /// Any delivery of the queue so far.
    Any(Index),
    /// An arbitrary offset with a fence a little below the current index.
    Raw { offset: u64, fence_back: u64 },
}

/// A dead letter a command names.
#[derive(Clone, Debug)]
enum DeadTarget {
    Dead(Index),
    Raw(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        q: usize,
        config: QueueConfig,
        /// Use the queue's current configuration if it exists (an
        /// idempotent create).
        same: bool,
        bad_name: bool,
    },
    Update {
        q: usize,
        config: QueueConfig,
    },
    Delete {
        q: usize,
    },
    Enqueue {
        q: usize,
        jobs: Vec<NewJob>,
        /// Makes one job of the batch invalid.
        fault: Option<(Index, Fault)>,
    },
    Fetch {
        q: usize,
        consumer: usize,
        max: u32,
        lease_ms: u64,
    },
    Ack {
        q: usize,
        items: Vec<Target>,
    },
    /// An ack with chained jobs: (queue, jobs) per target.
    AckThen {
        q: usize,
        items: Vec<Target>,
        then: Vec<(usize, Vec<NewJob>)>,
    },
    Nack {
        q: usize,
        target: Target,
        delay_ms: u64,
    },
    Extend {
        q: usize,
        target: Target,
        lease_ms: u64,
    },
    Release {
        q: usize,
        target: Target,
    },
    DeadLetter {
        q: usize,
        target: Target,
        reason: usize,
    },
    Tick,
    Pause {
        q: usize,
        group: usize,
        /// An empty (invalid) key instead.
        bad: bool,
    },
    Resume {
        q: usize,
        group: usize,
        bad: bool,
    },
    Skip {
        q: usize,
        group: usize,
        reason: usize,
    },
    Requeue {
        q: usize,
        target: DeadTarget,
    },
    Purge {
        q: usize,
        /// `None`: purge all.
        which: Option<Vec<DeadTarget>>,
    },
    /// Several commands in one log entry (one stamp), as the server
    /// batches concurrent requests: a lease that ends in the entry must not
    /// be granted again by it.
    Entry(Vec<Op>),
    /// Snapshot, restore, and carry on with the restored state.
    Snapshot,
    CreateSub {
        q: usize,
        s: usize,
    },
    DeleteSub {
        q: usize,
        s: usize,
    },
    /// `op` in subscription `s` (`Command::InSubscription`).
    InSub {
        s: usize,
        op: Box<Op>,
    },
}

impl Op {
    /// The same lease command on queue `q`.
    fn on(mut self, queue: usize) -> Op {
        match &mut self {
            Op::Fetch { q, .. }
            | Op::Ack { q, .. }
            | Op::AckThen { q, .. }
            | Op::Nack { q, .. }
            | Op::Extend { q, .. }
            | Op::Release { q, .. }
            | Op::DeadLetter { q, .. } => *q = queue,
            Op::InSub { op, .. } => {
                let inner = std::mem::replace(&mut **op, Op::Tick);
                **op = inner.on(queue);
            }
            _ => {}
        }
        self
    }
}

#[derive(Clone, Debug)]
struct Step {
    dt_ms: u64,
    /// Applied in the log entry of the previous step (same index).
    same_entry: bool,
    /// How far behind the cluster clock this leader's stamp is.
    skew_ms: u64,
    op: Op,
}

fn config_valid() -> impl Strategy<Value = QueueConfig> {
    let retry = (
        1u32..=3,
        prop_oneof![Just(0u64), Just(60), Just(400)],
        1u32..=3,
        1u64..=4,
        prop_oneof![Just(0u32), Just(25), Just(100)],
    );
    let limits = (
        prop_oneof![Just(1_000u64), Just(2_500)],
        prop_oneof![Just(3_000u64), Just(8_000)],
        prop_oneof![Just(1_500u64), Just(6_000), Just(40_000)],
        prop_oneof![Just(6u64), Just(20)],
        prop_oneof![Just(12u64), Just(400)],
        prop_oneof![Just(3u32), Just(8)],
        prop_oneof![1 => Just(1u32), 1 => Just(2), 10 => Just(4)],
        prop_oneof![Just(GroupPolicy::Continue), Just(GroupPolicy::Park)],
    );
    let rates = prop_oneof![
        6 => Just(RateLimits::default()),
        2 => (1u32..=3, 0u32..=3, prop_oneof![Just(0u64), Just(3_000)]).prop_map(
            |(rate, burst, window)| RateLimits {
                enqueue_rate_max: rate,
                enqueue_burst: burst,
                rate_window_ms: window,
                ..RateLimits::default()
            }
        ),
        2 => (1u32..=3, 0u32..=2, prop_oneof![Just(0u64), Just(500), Just(2_000)]).prop_map(
            |(rate, burst, window)| RateLimits {
                group_rate_max: rate,
                group_burst: burst,
                rate_window_ms: window,
                ..RateLimits::default()
            }
        ),
    ];
    // Weights of 1 to 4 for some keys (often `""`), and a default of 0
    // (which is 1) to 3 for the rest.
    let fairness = prop_oneof![
        2 => Just(Fairness::default()),
        3 => (
            prop::collection::btree_map(prop::sample::select(TENANTS.to_vec()), 1u32..=4, 0..=3),
            0u32..=3,
        )
            .prop_map(|(weights, weight_default)| Fairness {
                weights: weights.into_iter().map(|(k, w)| (k.to_string(), w)).collect(),
                weight_default,
            }),
    ];
    (retry, limits, rates, fairness)
        .prop_map(
            |(
                (max_attempts, base, factor, cap_x, jitter),
                (lease_default, lease_max, dedup, jobs, bytes, payload, batch, policy),
                rates,
                fairness,
            )| QueueConfig {
                max_attempts,
                backoff_base_ms: base,
                backoff_factor: factor,
                backoff_cap_ms: base * cap_x,
                backoff_jitter_pct: jitter,
                lease_ms_default: lease_default,
                lease_ms_max: lease_max,
                dedup_window_ms: dedup,
                max_jobs: jobs,
                max_bytes: bytes,
                max_payload_bytes: payload,
                max_batch: batch,
                group_policy: policy,
                rates,
                fairness,
            },
        )
        // Boxed, as is `new_job`: the value trees of the whole step strategy
        // otherwise overflow a test thread's stack in a debug build.
        .boxed()
}

fn config() -> impl Strategy<Value = QueueConfig> {
    prop_oneof![
        12 => config_valid(),
        1 => config_valid().prop_map(|c| QueueConfig { max_batch: 0, ..c }),
        1 => config_valid().prop_map(|c| QueueConfig {
            lease_ms_default: c.lease_ms_max + 1,
            ..c
        }),
        1 => config_valid().prop_map(|mut c| {
            c.fairness.weights.insert("t1".into(), 0);
            c
        }),
    ]
}

fn queue() -> impl Strategy<Value = usize> {
    prop_oneof![12 => Just(0usize), 8 => Just(1), 1 => Just(2)]
}

/// A valid job. Usually its group and payload follow from its id, so a
/// repeated id is mostly a duplicate and sometimes a conflict.
fn new_job() -> impl Strategy<Value = NewJob> {
    let group = prop_oneof![1 => Just(None), 4 => (0usize..5).prop_map(Some)];
    let payload = prop_oneof![
        Just(vec![]),
        Just(vec![1u8]),
        Just(vec![2u8, 2]),
        Just(vec![4u8; 4]),
    ];
    let priority = prop_oneof![3 => Just(0u8), 2 => 0u8..=PRIORITY_HIGHEST];
    let delay = prop_oneof![12 => Just(0u64), 2 => Just(700), 2 => Just(2_500)];
    let headers = prop_oneof![
        3 => Just(vec![]),
        1 => Just(vec![("k".to_string(), "v".to_string())]),
    ];
    // Mostly a few tenants, so heads of one priority often belong to
    // several keys; sometimes none, which is the key `""`.
    let fairness_key = prop_oneof![
        3 => Just(None),
        6 => prop::sample::select(TENANTS[1..].to_vec()).prop_map(|k| Some(k.to_string())),
    ];
    (
        0usize..IDS.len(),
        prop::bool::weighted(0.8),
        group,
        payload,
        priority,
        delay,
        headers,
        fairness_key,
    )
        .prop_map(
            |(id, canonical, group, payload, priority, delay_ms, headers, fairness_key)| {
                let (group, payload) = if canonical {
                    // Ids 3, 7 and 11 have no group; the others share g1..g3.
                    let group = (id % 4 != 3).then(|| GROUPS[id % 3].to_string());
                    (group, vec![id as u8; id % 3])
                } else {
                    (group.map(|g| GROUPS[g].to_string()), payload)
                };
                NewJob {
                    id: IDS[id].to_string(),
                    group,
                    payload,
                    headers,
                    priority,
                    delay_ms,
                    fairness_key,
                }
            },
        )
        .boxed()
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::EmptyId),
        Just(Fault::ControlInId),
        Just(Fault::LongId),
        Just(Fault::EmptyGroup),
        Just(Fault::Payload),
        Just(Fault::Priority),
        Just(Fault::Delay),
        Just(Fault::HeaderKey),
        Just(Fault::HeaderCount),
        Just(Fault::EmptyFairnessKey),
        Just(Fault::LongFairnessKey),
    ]
}

/// Batch lengths: mostly within every generated `max_batch`, sometimes
/// empty or too long.
fn batch_len() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 24 => 1usize..=3, 2 => 4usize..=5]
}

fn lease_ms() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => Just(0u64),
        4 => Just(400),
        6 => Just(1_500),
        4 => Just(5_000),
        2 => Just(LEASE_MS_CEILING),
        1 => Just(LEASE_MS_CEILING + 1),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        10 => any::<Index>().prop_map(Target::Live),
        4 => any::<Index>().prop_map(Target::Recent),
        2 => any::<Index>().prop_map(Target::Any),
        1 => (0u64..24, 0u64..4)
            .prop_map(|(offset, fence_back)| Target::Raw { offset, fence_back }),
    ]
}

fn dead_target() -> impl Strategy<Value = DeadTarget> {
    prop_oneof![
        5 => any::<Index>().prop_map(DeadTarget::Dead),
        1 => (0u64..24).prop_map(DeadTarget::Raw),
    ]
}

fn dead_targets() -> impl Strategy<Value = Vec<DeadTarget>> {
    batch_len().prop_flat_map(|n| prop::collection::vec(dead_target(), n))
}

fn fetch_op() -> impl Strategy<Value = Op> {
    let consumer = prop_oneof![24 => 0usize..2, 4 => Just(2usize), 1 => Just(3usize)];
    let fetch_max = prop_oneof![1 => Just(0u32), 30 => 1u32..=3, 2 => 4u32..=5];
    (queue(), consumer, fetch_max, lease_ms()).prop_map(|(q, consumer, max, lease_ms)| Op::Fetch {
        q,
        consumer,
        max,
        lease_ms,
    })
}

/// Commands that present a lease.
fn lease_call_op() -> impl Strategy<Value = Op> {
    let nack_delay = prop_oneof![12 => Just(0u64), 4 => Just(300), 1 => Just(DELAY_MS_CEILING + 1)];
    let reason = prop_oneof![10 => Just(0usize), 3 => Just(1), 1 => Just(2)];
    prop_oneof![
        36 => (queue(), batch_len().prop_flat_map(|n| prop::collection::vec(target(), n)))
            .prop_map(|(q, items)| Op::Ack { q, items }),
        12 => (
            queue(),
            prop::collection::vec(target(), 1..=2),
            prop::collection::vec(
                (queue(), batch_len().prop_flat_map(|n| prop::collection::vec(new_job(), n))),
                0..=2,
            ),
        )
            .prop_map(|(q, items, then)| Op::AckThen { q, items, then }),
        12 => (queue(), target(), nack_delay)
            .prop_map(|(q, target, delay_ms)| Op::Nack { q, target, delay_ms }),
        10 => (queue(), target(), lease_ms())
            .prop_map(|(q, target, lease_ms)| Op::Extend { q, target, lease_ms }),
        10 => (queue(), target()).prop_map(|(q, target)| Op::Release { q, target }),
        8 => (queue(), target(), reason)
            .prop_map(|(q, target, reason)| Op::DeadLetter { q, target, reason }),
    ]
    .boxed()
}

/// A subscription name, by index into `SUBS`.
fn sub() -> impl Strategy<Value = usize> {
    prop_oneof![12 => Just(0usize), 8 => Just(1), 1 => Just(2), 1 => Just(3)]
}

/// A command in a subscription: mostly the consumer side; sometimes a
/// command no subscription runs, or a nested wrapper.
fn in_sub_op() -> impl Strategy<Value = Op> {
    let inner = prop_oneof![
        20 => fetch_op(),
        36 => lease_call_op(),
        2 => (queue(), 0usize..GROUPS.len())
            .prop_map(|(q, group)| Op::Pause { q, group, bad: false }),
        3 => (queue(), 0usize..GROUPS.len())
            .prop_map(|(q, group)| Op::Resume { q, group, bad: false }),
        2 => (queue(), 0usize..GROUPS.len())
            .prop_map(|(q, group)| Op::Skip { q, group, reason: 0 }),
        4 => (queue(), dead_target()).prop_map(|(q, target)| Op::Requeue { q, target }),
        3 => (queue(), prop::option::weighted(0.6, dead_targets()))
            .prop_map(|(q, which)| Op::Purge { q, which }),
        1 => queue().prop_map(|q| Op::Enqueue { q, jobs: Vec::new(), fault: None }),
        1 => (sub(), fetch_op()).prop_map(|(s, op)| Op::InSub { s, op: Box::new(op) }),
    ];
    // Boxed, as `config_valid` is: the value trees nest deeply.
    (sub(), inner)
        .prop_map(|(s, op)| Op::InSub {
            s,
            op: Box::new(op),
        })
        .boxed()
}

/// What one log entry of a busy server is made of. Half the entries
/// fetch, end a lease and fetch again, which is where a job released in
/// the entry that granted it must not be granted twice.
fn entry_op() -> impl Strategy<Value = Op> {
    let any_op = prop_oneof![
        1 => fetch_op(),
        2 => lease_call_op(),
        1 => (sub(), prop_oneof![fetch_op(), lease_call_op()])
            .prop_map(|(s, op)| Op::InSub { s, op: Box::new(op) }),
    ];
    prop_oneof![
        prop::collection::vec(any_op, 2..=4).prop_map(Op::Entry),
        (queue(), fetch_op(), lease_call_op(), fetch_op())
            .prop_map(|(q, a, b, c)| Op::Entry(vec![a.on(q), b.on(q), c.on(q)])),
    ]
    .boxed()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (queue(), config(), prop::bool::weighted(0.4), prop::bool::weighted(0.05))
            .prop_map(|(q, config, same, bad_name)| Op::Create { q, config, same, bad_name }),
        4 => (queue(), config()).prop_map(|(q, config)| Op::Update { q, config }),
        1 => queue().prop_map(|q| Op::Delete { q }),
        44 => (
            queue(),
            batch_len().prop_flat_map(|n| prop::collection::vec(new_job(), n)),
            prop::option::weighted(0.06, (any::<Index>(), fault())),
        )
            .prop_map(|(q, jobs, fault)| Op::Enqueue { q, jobs, fault }),
        40 => fetch_op(),
        76 => lease_call_op(),
        12 => Just(Op::Tick),
        6 => (queue(), 0usize..GROUPS.len(), prop::bool::weighted(0.05))
            .prop_map(|(q, group, bad)| Op::Pause { q, group, bad }),
        8 => (queue(), 0usize..GROUPS.len(), prop::bool::weighted(0.05))
            .prop_map(|(q, group, bad)| Op::Resume { q, group, bad }),
        4 => (queue(), 0usize..GROUPS.len(), prop_oneof![10 => Just(0usize), 1 => Just(2)])
            .prop_map(|(q, group, reason)| Op::Skip { q, group, reason }),
        8 => (queue(), dead_target()).prop_map(|(q, target)| Op::Requeue { q, target }),
        6 => (queue(), prop::option::weighted(0.6, dead_targets()))
            .prop_map(|(q, which)| Op::Purge { q, which }),
        12 => entry_op(),
        4 => Just(Op::Snapshot),
        4 => (queue(), sub()).prop_map(|(q, s)| Op::CreateSub { q, s }),
        1 => (queue(), sub()).prop_map(|(q, s)| Op::DeleteSub { q, s }),
        60 => in_sub_op(),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        // Mostly whole 100 ms, so a deadline, a delay or a dedup window
        // often ends exactly at a stamp (the boundaries are `<=`). An odd
        // step shifts every later stamp off the grid that earlier times
        // were on, so it stays rare.
        prop_oneof![
            12 => (0u64..8).prop_map(|k| k * 100),
            4 => (8u64..20).prop_map(|k| k * 100),
            1 => 0u64..2_000,
        ],
        prop::bool::weighted(0.3),
        prop_oneof![12 => Just(0u64), 1 => (1u64..30).prop_map(|k| k * 100)],
        op(),
    )
        .prop_map(|(dt_ms, same_entry, skew_ms, op)| Step {
            dt_ms,
            same_entry,
            skew_ms,
            op,
        })
}

// ---------------------------------------------------------------------------
// The run.

macro_rules! same {
    ($got:expr, $want:expr, $($ctx:tt)+) => {{
        let (got, want) = (&$got, &$want);
        if got != want {
            return Err(format!(
                "{}\n  core:  {got:?}\n  model: {want:?}",
                format!($($ctx)+)
            ));
        }
    }};
}

struct Run {
    state: State,
    store: MemBlobStore,
    model: Model,
    /// The current leader's clock; stamps may lag it by a step's skew.
    leader_ms: u64,
    index: u64,
    /// Every delivery so far: (consumer, offset, fence), the consumer
    /// being `queue` or `queue/subscription`.
    delivered: Vec<(String, u64, u64)>,
}

impl Run {
    fn new() -> Run {
        Run {
            state: State::new(),
            store: MemBlobStore::default(),
            model: Model::default(),
            leader_ms: 10_000,
            index: 1,
            delivered: Vec::new(),
        }
    }

    /// The model consumer `key` names (`queue` or `queue/subscription`).
    fn consumer(&self, key: &str) -> Option<&MQueue> {
        match key.split_once('/') {
            None => self.model.queues.get(key),
            Some((queue, sub)) => self.model.queues.get(queue)?.subs.get(sub),
        }
    }

    fn lease(&self, target: &Target, queue: &str) -> (u64, u64) {
        let pool: Vec<(u64, u64)> = self
            .delivered
            .iter()
            .filter(|(q, _, _)| q == queue)
            .map(|(_, o, f)| (*o, *f))
            .collect();
        let live: Vec<(u64, u64)> = self.consumer(queue).map_or(Vec::new(), |q| {
            q.pending()
                .filter_map(|(o, j)| j.lease.as_ref().map(|l| (o, l.fence)))
                .collect()
        });
        match target {
            Target::Live(i) if !live.is_empty() => live[i.index(live.len())],
            Target::Live(i) | Target::Recent(i) if !pool.is_empty() => {
                let n = pool.len().min(6);
                pool[pool.len() - n + i.index(n)]
            }
            Target::Any(i) if !pool.is_empty() => pool[i.index(pool.len())],
            Target::Raw { offset, fence_back } => (*offset, self.index.saturating_sub(*fence_back)),
            _ => (0, self.index),
        }
    }

    fn ack_items(&self, targets: &[Target], queue: &str) -> Vec<AckItem> {
        targets
            .iter()
            .map(|t| {
                let (offset, fence) = self.lease(t, queue);
                AckItem { offset, fence }
            })
            .collect()
    }

    fn dead(&self, target: &DeadTarget, queue: &str) -> u64 {
        let dead: Vec<u64> = self.consumer(queue).map_or(Vec::new(), |q| {
            q.dead_letters().iter().map(|d| d.offset).collect()
        });
        match target {
            DeadTarget::Dead(i) if !dead.is_empty() => dead[i.index(dead.len())],
            DeadTarget::Dead(_) => 0,
            DeadTarget::Raw(offset) => *offset,
        }
    }

    fn command(&self, op: &Op) -> Command {
        self.command_at(op, None)
    }

    /// `op` as a command; its leases and dead letters are those of
    /// subscription `sub` (`None`: the default one).
    fn command_at(&self, op: &Op, sub: Option<&str>) -> Command {
        let key = |q: usize| match sub {
            None => QUEUES[q].to_string(),
            Some(s) => format!("{}/{s}", QUEUES[q]),
        };
        match op {
            Op::CreateSub { q, s } => Command::CreateSubscription {
                queue: QUEUES[*q].to_string(),
                name: SUBS[*s].to_string(),
            },
            Op::DeleteSub { q, s } => Command::DeleteSubscription {
                queue: QUEUES[*q].to_string(),
                name: SUBS[*s].to_string(),
            },
            Op::InSub { s, op } => Command::InSubscription {
                subscription: SUBS[*s].to_string(),
                command: Box::new(self.command_at(op, Some(SUBS[*s]))),
            },
            Op::Create {
                q,
                config,
                same,
                bad_name,
            } => {
                let name = if *bad_name { "bad name" } else { QUEUES[*q] };
                let config = match self.model.queues.get(name) {
                    Some(queue) if *same => queue.config.clone(),
                    _ => config.clone(),
                };
                Command::CreateQueue {
                    name: name.to_string(),
                    config,
                }
            }
            Op::Update { q, config } => Command::UpdateQueue {
                name: QUEUES[*q].to_string(),
                config: config.clone(),
            },
            Op::Delete { q } => Command::DeleteQueue {
                name: QUEUES[*q].to_string(),
            },
            Op::Enqueue { q, jobs, fault } => {
                let mut jobs = jobs.clone();
                if let (Some((i, fault)), false) = (fault, jobs.is_empty()) {
                    let n = jobs.len();
                    fault.apply(&mut jobs[i.index(n)]);
                }
                Command::Enqueue {
                    queue: QUEUES[*q].to_string(),
                    jobs,
                }
            }
            Op::Fetch {
                q,
                consumer,
                max,
                lease_ms,
            } => Command::Fetch {
                queue: QUEUES[*q].to_string(),
                consumer: CONSUMERS[*consumer].to_string(),
                max: *max,
                lease_ms: *lease_ms,
            },
            Op::Ack { q, items } => Command::Ack {
                queue: QUEUES[*q].to_string(),
                items: self.ack_items(items, &key(*q)),
            },
            Op::AckThen { q, items, then } => Command::AckThen {
                queue: QUEUES[*q].to_string(),
                items: self.ack_items(items, &key(*q)),
                then: then
                    .iter()
                    .map(|(q, jobs)| Chained {
                        queue: QUEUES[*q].to_string(),
                        jobs: jobs.clone(),
                    })
                    .collect(),
            },
            Op::Nack {
                q,
                target,
                delay_ms,
            } => {
                let (offset, fence) = self.lease(target, &key(*q));
                Command::Nack {
                    queue: QUEUES[*q].to_string(),
                    offset,
                    fence,
                    delay_ms: *delay_ms,
                }
            }
            Op::Extend {
                q,
                target,
                lease_ms,
            } => {
                let (offset, fence) = self.lease(target, &key(*q));
                Command::Extend {
                    queue: QUEUES[*q].to_string(),
                    offset,
                    fence,
                    lease_ms: *lease_ms,
                }
            }
            Op::Release { q, target } => {
                let (offset, fence) = self.lease(target, &key(*q));
                Command::Release {
                    queue: QUEUES[*q].to_string(),
                    offset,
                    fence,
                }
            }
            Op::DeadLetter { q, target, reason } => {
                let (offset, fence) = self.lease(target, &key(*q));
                Command::DeadLetter {
                    queue: QUEUES[*q].to_string(),
                    offset,
                    fence,
                    reason: REASONS[*reason].to_string(),
                }
            }
            Op::Tick => Command::Tick,
            Op::Pause { q, group, bad } => Command::PauseGroup {
                queue: QUEUES[*q].to_string(),
                group: if *bad { "" } else { GROUPS[*group] }.to_string(),
            },
            Op::Skip { q, group, reason } => Command::SkipHead {
                queue: QUEUES[*q].to_string(),
                group: GROUPS[*group].to_string(),
                reason: REASONS[*reason].to_string(),
            },
            Op::Resume { q, group, bad } => Command::ResumeGroup {
                queue: QUEUES[*q].to_string(),
                group: if *bad { "" } else { GROUPS[*group] }.to_string(),
            },
            Op::Requeue { q, target } => Command::RequeueDeadLetter {
                queue: QUEUES[*q].to_string(),
                offset: self.dead(target, &key(*q)),
            },
            Op::Purge { q, which } => Command::PurgeDeadLetters {
                queue: QUEUES[*q].to_string(),
                which: match which {
                    None => PurgeSelector::All,
                    Some(list) => PurgeSelector::Offsets(
                        list.iter().map(|t| self.dead(t, &key(*q))).collect(),
                    ),
                },
            },
            Op::Entry(_) | Op::Snapshot => unreachable!("not one command: {op:?}"),
        }
    }

    fn step(&mut self, n: usize, step: &Step) -> Result<(), String> {
        self.leader_ms += step.dt_ms;
        if let Op::Snapshot = step.op {
            let bytes = self.state.snapshot();
            let restored = State::restore(&bytes).map_err(|e| format!("step {n}: restore: {e}"))?;
            if restored != self.state {
                return Err(format!("step {n}: the restored state differs"));
            }
            if restored.snapshot() != bytes {
                return Err(format!("step {n}: the restored state encodes differently"));
            }
            self.state = restored;
            return self.check(n);
        }
        if !step.same_entry {
            self.index += 1;
        }
        let stamp = Stamp {
            index: self.index,
            time_ms: self.leader_ms.saturating_sub(step.skew_ms),
        };
        match &step.op {
            Op::Entry(ops) => ops.iter().try_for_each(|op| self.apply(n, stamp, op)),
            op => self.apply(n, stamp, op),
        }
    }

    /// Applies one command to the core and the model and compares them.
    fn apply(&mut self, n: usize, stamp: Stamp, op: &Op) -> Result<(), String> {
        let cmd = self.command(op);
        let before = self.state.clone();
        let precheck = self.state.precheck(&cmd);
        let mut effects = Vec::new();
        let got = self.state.apply(stamp, cmd.clone(), &mut effects);
        let (want, want_effects) = self.model.apply(stamp, &cmd);
        let ctx = format!("step {n}: {stamp:?} {cmd:?}");
        // The node answers prechecks from a copy of the configurations:
        // it must answer as the state does.
        same!(
            before.configs().precheck(&cmd),
            precheck,
            "{ctx}: precheck from the configurations"
        );
        // The leader's precheck only refuses what apply refuses, the same way.
        if let Err(e) = &precheck {
            same!(got.as_ref().err(), Some(e), "{ctx}: precheck refused");
        }
        same!(
            got.clone().map(normalize).map_err(|e| fail_of(&e)),
            want,
            "{ctx}: reply"
        );
        same!(effects, want_effects, "{ctx}: effects");
        if got.is_err() {
            // Nothing changes but time: compare with a copy that only had
            // its clock moved (a probe that fails after the queue lookup).
            let mut probe = before;
            let advanced = cmd.queue().filter(|_| self.model.advanced);
            let too = self.model.advanced_too.iter().map(String::as_str);
            for queue in advanced.into_iter().chain(too) {
                let release = Command::Release {
                    queue: queue.to_string(),
                    offset: u64::MAX,
                    fence: 0,
                };
                let probed = probe.apply(stamp, release, &mut Vec::new());
                same!(
                    probed.map_err(|e| fail_of(&e)),
                    Err(Fail::NotFound),
                    "{ctx}: probe"
                );
            }
            if probe.queues_snapshot() != self.state.queues_snapshot() {
                return Err(format!("{ctx}: a failed command changed the state"));
            }
        }
        if let Ok(Reply::Fetched(deliveries)) = &got {
            let queue = cmd.queue().expect("a fetch names its queue");
            let key = match &cmd {
                Command::InSubscription { subscription, .. } => format!("{queue}/{subscription}"),
                _ => queue.to_string(),
            };
            self.delivered
                .extend(deliveries.iter().map(|d| (key.clone(), d.offset, d.fence)));
        }
        self.store.apply_effects(&effects);
        self.check(n).map_err(|e| format!("{e}\n  after {cmd:?}"))
    }

    /// Compares every query with the model and checks the invariants.
    fn check(&self, n: usize) -> Result<(), String> {
        self.state
            .check_invariants()
            .map_err(|e| format!("step {n}: invariant: {e}"))?;
        self.store
            .check_against(&self.state)
            .map_err(|e| format!("step {n}: payload store: {e}"))?;
        same!(
            self.state.clock_ms(),
            self.model.clock_ms,
            "step {n}: clock"
        );
        same!(self.state.last_index(), self.model.index, "step {n}: index");
        let due = self
            .model
            .queues
            .values()
            .filter_map(MQueue::next_due_ms)
            .min();
        same!(self.state.next_due_ms(), due, "step {n}: next_due_ms");
        let queues: Vec<(String, u64, QueueConfig)> = self
            .state
            .list_queues()
            .into_iter()
            .map(|i| (i.name, i.stats.queue_id, i.config))
            .collect();
        let want: Vec<(String, u64, QueueConfig)> = self
            .model
            .queues
            .iter()
            .map(|(name, q)| (name.clone(), q.id, q.config.clone()))
            .collect();
        same!(queues, want, "step {n}: queues");
        for name in QUEUES {
            let Some(q) = self.model.queues.get(name) else {
                same!(
                    self.state.stats(name).map_err(|e| fail_of(&e)),
                    Err::<QueueStats, _>(Fail::NotFound),
                    "step {n}: stats of missing {name}"
                );
                continue;
            };
            let stats = self.state.stats(name).map_err(|e| e.to_string())?;
            same!(stats, q.stats(), "step {n}: stats of {name}");
            for job in q.held() {
                let stored = self.store.get(q.id, job.blob);
                let want = JobBlob {
                    id: job.id.clone(),
                    headers: job.headers.clone(),
                    payload: job.payload.clone(),
                };
                same!(
                    stored,
                    Some(want),
                    "step {n}: payload of {name} blob {}",
                    job.blob
                );
            }
            self.check_groups(n, name, q)?;
            self.check_dead_letters(n, name, q)?;
            self.check_subscriptions(n, name, q)?;
        }
        Ok(())
    }

    /// Each subscription's stats, leases and payloads.
    fn check_subscriptions(&self, n: usize, name: &str, q: &MQueue) -> Result<(), String> {
        let listed = self
            .state
            .list_subscriptions(name)
            .map_err(|e| e.to_string())?;
        let want: Vec<SubscriptionInfo> = q
            .subs
            .iter()
            .map(|(s, sub)| SubscriptionInfo {
                name: s.clone(),
                stats: sub.stats(),
            })
            .collect();
        same!(listed, want, "step {n}: subscriptions of {name}");
        for s in SUBS {
            let got = self
                .state
                .subscription_stats(name, s)
                .map_err(|e| fail_of(&e));
            let want = match q.subs.get(s) {
                Some(sub) => Ok(sub.stats()),
                None if s.contains(' ') => Err(Fail::Invalid),
                None => Err(Fail::NotFound),
            };
            same!(got, want, "step {n}: stats of {name}/{s}");
        }
        for (s, sub) in &q.subs {
            for (offset, job) in sub.pending() {
                let fence = job.lease.as_ref().map_or(0, |l| l.fence);
                same!(
                    self.state.holds_lease_in(name, Some(s), offset, fence),
                    job.lease.is_some(),
                    "step {n}: lease of {name}/{s} at {offset}"
                );
            }
            for job in sub.held() {
                same!(
                    self.store.get(q.id, job.blob).map(|b| b.payload),
                    Some(job.payload.clone()),
                    "step {n}: payload of {name}/{s} blob {}",
                    job.blob
                );
            }
        }
        Ok(())
    }

    fn check_groups(&self, n: usize, name: &str, q: &MQueue) -> Result<(), String> {
        // One group at a time, and the top groups from their indexes.
        let all = q.groups(&GroupFilter::default());
        for key in GROUPS {
            let want = all
                .iter()
                .find(|g| g.key == key)
                .cloned()
                .ok_or(Fail::NotFound);
            let got = self.state.get_group(name, key).map_err(|e| fail_of(&e));
            same!(got, want, "step {n}: group {key} of {name}");
        }
        let mut busy: Vec<GroupInfo> = all.into_iter().filter(|g| g.backlog > 0).collect();
        busy.sort_by_key(|g| g.head_offset);
        let by_age = self
            .state
            .top_groups(name, GroupRank::Age, 3)
            .map_err(|e| e.to_string())?;
        same!(
            by_age,
            busy.iter().take(3).cloned().collect::<Vec<_>>(),
            "step {n}: top by age of {name}"
        );
        // By backlog: the same backlogs, largest first; ties in any order.
        let by_backlog = self
            .state
            .top_groups(name, GroupRank::Backlog, 3)
            .map_err(|e| e.to_string())?;
        let mut backlogs: Vec<u64> = busy.iter().map(|g| g.backlog).collect();
        backlogs.sort_by(|a, b| b.cmp(a));
        backlogs.truncate(3);
        same!(
            by_backlog.iter().map(|g| g.backlog).collect::<Vec<_>>(),
            backlogs,
            "step {n}: top by backlog of {name}"
        );
        for g in &by_backlog {
            same!(
                Some(g),
                busy.iter().find(|b| b.key == g.key),
                "step {n}: top group {}",
                g.key
            );
        }
        let statuses = [
            GroupStatus::Any,
            GroupStatus::Leased,
            GroupStatus::Paused,
            GroupStatus::Waiting,
        ];
        for prefix in ["", "g2"] {
            for status in statuses {
                let filter = GroupFilter {
                    key_prefix: prefix.to_string(),
                    status,
                };
                let page = self
                    .state
                    .list_groups(name, &filter, None, PAGE_LIMIT_MAX)
                    .map_err(|e| e.to_string())?;
                let want = q.groups(&filter);
                same!(page.groups, want, "step {n}: groups of {name} ({filter:?})");
                same!(page.next_after, None, "step {n}: groups of {name} paged");
                // Pages of two, followed to the end, list the same groups.
                let mut paged = Vec::new();
                let mut after: Option<String> = None;
                for _ in 0..=want.len() + 1 {
                    let page = self
                        .state
                        .list_groups(name, &filter, after.as_deref(), 2)
                        .map_err(|e| e.to_string())?;
                    paged.extend(page.groups);
                    after = page.next_after;
                    if after.is_none() {
                        break;
                    }
                }
                same!(after, None, "step {n}: paging of {name} does not end");
                same!(paged, want, "step {n}: paged groups of {name} ({filter:?})");
            }
        }
        Ok(())
    }

    fn check_dead_letters(&self, n: usize, name: &str, q: &MQueue) -> Result<(), String> {
        let want = q.dead_letters();
        let page = self
            .state
            .list_dead_letters(name, None, PAGE_LIMIT_MAX)
            .map_err(|e| e.to_string())?;
        same!(page.dead_letters, want, "step {n}: dead letters of {name}");
        same!(
            page.next_after,
            None,
            "step {n}: dead letters of {name} paged"
        );
        let mut paged = Vec::new();
        let mut after = None;
        for _ in 0..=want.len() + 1 {
            let page = self
                .state
                .list_dead_letters(name, after, 2)
                .map_err(|e| e.to_string())?;
            paged.extend(page.dead_letters);
            after = page.next_after;
            if after.is_none() {
                break;
            }
        }
        same!(paged, want, "step {n}: paged dead letters of {name}");
        Ok(())
    }
}

fn run(
    config_1: &QueueConfig,
    config_2: &QueueConfig,
    subs: &[(usize, usize)],
    steps: &[Step],
) -> Result<(), String> {
    let mut run = Run::new();
    let queues = [(0, config_1), (1, config_2)].map(|(q, config)| Op::Create {
        q,
        config: config.clone(),
        same: false,
        bad_name: false,
    });
    let subs = subs.iter().map(|&(q, s)| Op::CreateSub { q, s });
    let setup: Vec<Step> = queues
        .into_iter()
        .chain(subs)
        .map(|op| Step {
            dt_ms: 0,
            same_entry: false,
            skew_ms: 0,
            op,
        })
        .collect();
    for (n, step) in setup.iter().chain(steps).enumerate() {
        run.step(n, step)?;
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("LOCKSTEP_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES_DEFAULT)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// The state machine answers every command, query and snapshot exactly
    /// as the naive model of SPEC section 2 does.
    #[test]
    fn the_core_agrees_with_the_naive_model(
        config_1 in config_valid(),
        config_2 in config_valid(),
        // Subscriptions made at the start, so most cases run with some.
        subs in prop::collection::vec((0usize..2, 0usize..2), 0..=3),
        steps in prop::collection::vec(step(), 60..=120),
    ) {
        run(&config_1, &config_2, &subs, &steps).map_err(TestCaseError::fail)?;
    }
}
