//! Every bound the core enforces, as a named constant with its unit last.
//!
//! Per-queue limits (SPEC 2.6) have a default and a hard ceiling: a queue's
//! configuration may lower or raise the default, never past the ceiling.
//! Ceilings exist so that one bad configuration cannot make a single Raft
//! entry, a single reply or a single snapshot unbounded.

/// Bytes in a job id. Ids are hashed to 128 bits for the dedup index, so the
/// length only bounds what a request may carry.
pub const ID_BYTES_MAX: usize = 256;
/// Bytes in a group key.
pub const GROUP_BYTES_MAX: usize = 256;
/// Bytes in a queue name.
pub const QUEUE_NAME_BYTES_MAX: usize = 128;
/// Bytes in a consumer name (shown as the lease holder).
pub const CONSUMER_BYTES_MAX: usize = 256;
/// Bytes in a dead-letter reason.
pub const REASON_BYTES_MAX: usize = 1024;
/// Headers on one job.
pub const HEADERS_COUNT_MAX: usize = 64;
/// Bytes of all header keys and values of one job together.
pub const HEADERS_BYTES_MAX: usize = 16 * 1024;
/// Queues in one cluster.
pub const QUEUES_COUNT_MAX: usize = 10_000;
/// Groups that may be paused while holding no job, per queue (a pause of an
/// empty group keeps a record so later jobs wait).
pub const PAUSED_EMPTY_GROUPS_MAX: usize = 100_000;
/// Rows in one page of a listing.
pub const PAGE_LIMIT_MAX: u32 = 1_000;
/// Highest priority; priorities run 0..=PRIORITY_MAX.
pub const PRIORITY_MAX: u8 = 9;
/// Queues one ack may enqueue chained jobs into (`Command::AckThen`); the
/// jobs per queue are bounded by that queue's `max_batch`.
pub const CHAINED_QUEUES_MAX: usize = 16;
/// Named subscriptions per queue (SPEC 2.3a), besides its default one.
/// Each costs every job enqueued after it one more record (see
/// ARCHITECTURE.md), so the bound keeps a queue's memory a small multiple
/// of its jobs.
pub const SUBSCRIPTIONS_MAX: usize = 16;
/// Bytes in a subscription name (the queue-name rules apply).
pub const SUBSCRIPTION_NAME_BYTES_MAX: usize = 128;
/// Attempt records kept per job for its dead-letter history.
pub const HISTORY_LEN_MAX: usize = 32;
/// Bytes in a fairness key (a tenant's name, SPEC 2.3a).
pub const FAIRNESS_KEY_BYTES_MAX: usize = 128;

/// The longest delay a job may be enqueued with: 30 days.
pub const DELAY_MS_MAX: u64 = 30 * 24 * 3_600_000;
/// The hard ceiling on any lease: 12 hours (SQS's visibility ceiling). A
/// request above it is refused; a request between the queue's `lease_ms_max`
/// and this ceiling is clamped to the queue's maximum (SPEC 2.3).
pub const LEASE_MS_LIMIT: u64 = 12 * 3_600_000;

/// Defaults and ceilings of the per-queue configuration.
pub const MAX_ATTEMPTS_DEFAULT: u32 = 5;
pub const MAX_ATTEMPTS_LIMIT: u32 = 1_000;
pub const DEDUP_WINDOW_MS_DEFAULT: u64 = 24 * 3_600_000;
pub const DEDUP_WINDOW_MS_LIMIT: u64 = 30 * 24 * 3_600_000;
pub const LEASE_MS_DEFAULT: u64 = 30_000;
pub const LEASE_MS_MAX_DEFAULT: u64 = 15 * 60_000;
pub const JOBS_MAX_DEFAULT: u64 = 10_000_000;
pub const JOBS_MAX_LIMIT: u64 = 1_000_000_000;
pub const BYTES_MAX_DEFAULT: u64 = 16 * 1024 * 1024 * 1024;
pub const BYTES_MAX_LIMIT: u64 = 1024 * 1024 * 1024 * 1024;
pub const PAYLOAD_BYTES_MAX_DEFAULT: u32 = 1024 * 1024;
pub const PAYLOAD_BYTES_MAX_LIMIT: u32 = 4 * 1024 * 1024;
pub const BATCH_MAX_DEFAULT: u32 = 1_000;
pub const BATCH_MAX_LIMIT: u32 = 10_000;
pub const BACKOFF_BASE_MS_DEFAULT: u64 = 1_000;
pub const BACKOFF_FACTOR_DEFAULT: u32 = 2;
pub const BACKOFF_FACTOR_LIMIT: u32 = 16;
pub const BACKOFF_CAP_MS_DEFAULT: u64 = 5 * 60_000;
pub const BACKOFF_JITTER_PCT_DEFAULT: u32 = 20;

/// Rate limits (`RateLimits`): tokens per window, and the longest window.
pub const RATE_MAX_LIMIT: u32 = 1_000_000;
pub const RATE_WINDOW_MS_DEFAULT: u64 = 1_000;
pub const RATE_WINDOW_MS_LIMIT: u64 = 24 * 3_600_000;
/// Groups whose delivery bucket is not yet full again, per queue: past it
/// the group rate limit cannot be kept, and a fetch that would pass it
/// takes fewer heads (`group_rate_max`).
pub const RATE_GROUPS_MAX: usize = 1_000_000;

/// Fairness (`Fairness`): named weights per queue, and the heaviest weight,
/// so one key gets at most this many deliveries per delivery of another.
pub const FAIRNESS_WEIGHTS_MAX: usize = 1_000;
pub const FAIRNESS_WEIGHT_MAX: u32 = 1_000;
/// The weight of a key the queue does not name (`weight_default` = 0).
pub const FAIRNESS_WEIGHT_DEFAULT: u32 = 1;
/// The virtual time one delivery costs a key of weight 1; a key of weight
/// `w` pays `FAIRNESS_VTIME_SCALE / w`. Large enough that the rounding of
/// that division is under a millionth of a step for every allowed weight,
/// and virtual times are `u128`, so they cannot overflow in any lifetime
/// (2^96 deliveries).
pub const FAIRNESS_VTIME_SCALE: u128 = 1 << 32;

/// Client sessions open at once (see `session.rs`); opening one more evicts
/// the longest-idle session.
pub const SESSIONS_COUNT_MAX: usize = 10_000;
/// Cluster time after which an unused session expires: 1 hour, far longer
/// than any client's retry loop.
pub const SESSION_IDLE_MS: u64 = 3_600_000;
/// Replies one session keeps: more requests than this in flight at once and
/// the oldest reply is forgotten (its retry answers "may have applied").
pub const SESSION_REPLIES_MAX: usize = 1_024;
/// Items (one per reply plus one per result in it) the reply cache holds in
/// all sessions together; past it the longest-idle session is evicted.
pub const REPLY_WEIGHT_MAX: u64 = 2_000_000;
