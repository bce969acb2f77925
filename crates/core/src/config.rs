//! Per-queue configuration (SPEC 2.3a, 2.4, 2.6) and its validation.
//!
//! Field names follow the public API (`max_jobs`, `lease_ms_max`, ...), since
//! the proto and the TOML files use them; the constants behind them live in
//! [`crate::limits`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits::*;

/// What happens to a group when one of its jobs is dead-lettered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum GroupPolicy {
    /// The group moves on to its next job (SQS and Service Bus behaviour).
    #[default]
    Continue,
    /// The group stops until an operator resumes it, so nothing after the
    /// poison job runs out of order.
    Park,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// Deliveries a job gets before it is dead-lettered.
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    /// Each failed attempt multiplies the delay by this (integer) factor.
    pub backoff_factor: u32,
    pub backoff_cap_ms: u64,
    /// Up to this percentage of the delay is taken off, chosen by a hash of
    /// (job id, attempt), so retries of many jobs spread out deterministically.
    pub backoff_jitter_pct: u32,
    /// Lease used when a fetch asks for 0 ms.
    pub lease_ms_default: u64,
    /// Leases asked beyond this are clamped to it.
    pub lease_ms_max: u64,
    /// Dedup window, counted from the first acceptance of an id.
    pub dedup_window_ms: u64,
    /// Jobs held (pending plus dead-lettered).
    pub max_jobs: u64,
    /// Payload bytes held (pending plus dead-lettered).
    pub max_bytes: u64,
    pub max_payload_bytes: u32,
    /// Jobs in one enqueue, acks in one ack, deliveries in one fetch.
    pub max_batch: u32,
    pub group_policy: GroupPolicy,
    /// Token buckets on enqueues and on each group's deliveries. Last, so
    /// the fields before it keep their encoding.
    pub rates: RateLimits,
    /// How deliveries are shared across fairness keys. Last, after
    /// `rates`, for the same reason.
    pub fairness: Fairness,
}

/// Weights of fairness keys (SPEC 2.3a). Among ready group heads of equal
/// priority, each fairness key with ready heads gets deliveries in
/// proportion to its weight, whatever the number of its ready groups. Jobs
/// without a key share the key `""`, which may be weighted too.
///
/// A change applies to the virtual time of future deliveries only: what a
/// key was charged before stays charged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fairness {
    /// Weight of each named key, 1 to [`FAIRNESS_WEIGHT_MAX`]; at most
    /// [`FAIRNESS_WEIGHTS_MAX`] names.
    pub weights: BTreeMap<String, u32>,
    /// Weight of every key not named; 0 means [`FAIRNESS_WEIGHT_DEFAULT`]
    /// (so an API that sends 0 for "unset" gets the default).
    pub weight_default: u32,
}

impl Fairness {
    /// The weight deliveries to `key` are charged by.
    pub fn weight_of(&self, key: &str) -> u32 {
        match self.weights.get(key) {
            Some(&weight) => weight,
            None if self.weight_default == 0 => FAIRNESS_WEIGHT_DEFAULT,
            None => self.weight_default,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.weights.len() > FAIRNESS_WEIGHTS_MAX {
            return Err(Error::invalid(
                "fairness.weights",
                format!(
                    "{} weights exceed the limit of {FAIRNESS_WEIGHTS_MAX}",
                    self.weights.len()
                ),
            ));
        }
        range(
            "fairness.weight_default",
            self.weight_default,
            0,
            FAIRNESS_WEIGHT_MAX,
        )?;
        for (key, &weight) in &self.weights {
            // The empty key is allowed: it is the key of jobs without one.
            check_text(
                &format!("fairness.weights[{key:?}]"),
                key,
                FAIRNESS_KEY_BYTES_MAX,
                true,
            )?;
            range(
                &format!("fairness.weights[{key:?}]"),
                weight,
                1,
                FAIRNESS_WEIGHT_MAX,
            )?;
        }
        Ok(())
    }
}

/// Token-bucket rate limits in cluster time (SPEC 2.3a), each `rate_max`
/// tokens per `rate_window_ms`, refilled smoothly, holding at most `burst`
/// (0: `rate_max`). A `rate_max` of 0 turns that limit off.
///
/// Applied as GCRA (the generic cell rate algorithm: one "theoretical
/// arrival time" per bucket, in microseconds), so a bucket is one integer
/// and every replica computes the same answer from the stamps alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    /// New jobs a queue takes per window (duplicates take none). An enqueue
    /// past it is refused whole with RESOURCE_EXHAUSTED naming
    /// `enqueue_rate_max` and when to retry.
    pub enqueue_rate_max: u32,
    pub enqueue_burst: u32,
    /// Deliveries each group gets per window. A group past it is not ready
    /// (its head waits, shown as delayed), so order is kept.
    pub group_rate_max: u32,
    pub group_burst: u32,
    /// The window both rates count in; 0 means [`RATE_WINDOW_MS_DEFAULT`].
    pub rate_window_ms: u64,
}

/// One token bucket's shape, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bucket {
    /// Microseconds per token.
    pub interval_us: u64,
    /// Tokens it holds when full.
    pub burst: u64,
}

impl Bucket {
    fn of(rate_max: u32, burst: u32, window_ms: u64) -> Option<Bucket> {
        // `window_ms` is filled in by `RateLimits::window_ms`.
        if rate_max == 0 {
            return None;
        }
        Some(Bucket {
            interval_us: (window_ms * 1_000 / u64::from(rate_max)).max(1),
            burst: u64::from(if burst == 0 { rate_max } else { burst }),
        })
    }

    /// GCRA: with the bucket's arrival time at `tat_us`, when (µs) `n`
    /// tokens may be taken, and the arrival time after taking them then.
    pub fn take(self, tat_us: u64, now_us: u64, n: u64) -> (u64, u64) {
        let next = tat_us
            .max(now_us)
            .saturating_add(n.saturating_mul(self.interval_us));
        let allowed_at = next.saturating_sub(self.burst.saturating_mul(self.interval_us));
        (allowed_at, next)
    }
}

impl RateLimits {
    /// The window in ms, its default filled in.
    pub fn window_ms(&self) -> u64 {
        match self.rate_window_ms {
            0 => RATE_WINDOW_MS_DEFAULT,
            ms => ms,
        }
    }

    pub(crate) fn enqueue_bucket(&self) -> Option<Bucket> {
        Bucket::of(self.enqueue_rate_max, self.enqueue_burst, self.window_ms())
    }

    pub(crate) fn group_bucket(&self) -> Option<Bucket> {
        Bucket::of(self.group_rate_max, self.group_burst, self.window_ms())
    }

    fn validate(&self) -> Result<()> {
        range("enqueue_rate_max", self.enqueue_rate_max, 0, RATE_MAX_LIMIT)?;
        range("enqueue_burst", self.enqueue_burst, 0, RATE_MAX_LIMIT)?;
        range("group_rate_max", self.group_rate_max, 0, RATE_MAX_LIMIT)?;
        range("group_burst", self.group_burst, 0, RATE_MAX_LIMIT)?;
        range(
            "rate_window_ms",
            self.rate_window_ms,
            0,
            RATE_WINDOW_MS_LIMIT,
        )
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_attempts: MAX_ATTEMPTS_DEFAULT,
            backoff_base_ms: BACKOFF_BASE_MS_DEFAULT,
            backoff_factor: BACKOFF_FACTOR_DEFAULT,
            backoff_cap_ms: BACKOFF_CAP_MS_DEFAULT,
            backoff_jitter_pct: BACKOFF_JITTER_PCT_DEFAULT,
            lease_ms_default: LEASE_MS_DEFAULT,
            lease_ms_max: LEASE_MS_MAX_DEFAULT,
            dedup_window_ms: DEDUP_WINDOW_MS_DEFAULT,
            max_jobs: JOBS_MAX_DEFAULT,
            max_bytes: BYTES_MAX_DEFAULT,
            max_payload_bytes: PAYLOAD_BYTES_MAX_DEFAULT,
            max_batch: BATCH_MAX_DEFAULT,
            group_policy: GroupPolicy::Continue,
            rates: RateLimits::default(),
            fairness: Fairness::default(),
        }
    }
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: T,
    low: T,
    high: T,
) -> Result<()> {
    if value < low || value > high {
        return Err(Error::invalid(
            field,
            format!("{value} is outside the allowed range {low}..={high}"),
        ));
    }
    Ok(())
}

impl QueueConfig {
    /// Checks every field against its ceiling. Called before a create or an
    /// update is applied, so a bad configuration never reaches the state.
    pub fn validate(&self) -> Result<()> {
        range("max_attempts", self.max_attempts, 1, MAX_ATTEMPTS_LIMIT)?;
        range("backoff_base_ms", self.backoff_base_ms, 0, DELAY_MS_MAX)?;
        range(
            "backoff_factor",
            self.backoff_factor,
            1,
            BACKOFF_FACTOR_LIMIT,
        )?;
        range(
            "backoff_cap_ms",
            self.backoff_cap_ms,
            self.backoff_base_ms,
            DELAY_MS_MAX,
        )?;
        range("backoff_jitter_pct", self.backoff_jitter_pct, 0, 100)?;
        range("lease_ms_max", self.lease_ms_max, 1, LEASE_MS_LIMIT)?;
        range(
            "lease_ms_default",
            self.lease_ms_default,
            1,
            self.lease_ms_max,
        )?;
        range(
            "dedup_window_ms",
            self.dedup_window_ms,
            1,
            DEDUP_WINDOW_MS_LIMIT,
        )?;
        range("max_jobs", self.max_jobs, 1, JOBS_MAX_LIMIT)?;
        range("max_bytes", self.max_bytes, 1, BYTES_MAX_LIMIT)?;
        range(
            "max_payload_bytes",
            self.max_payload_bytes,
            1,
            PAYLOAD_BYTES_MAX_LIMIT,
        )?;
        range("max_batch", self.max_batch, 1, BATCH_MAX_LIMIT)?;
        self.rates.validate()?;
        self.fairness.validate()
    }
}

pub(crate) fn check_text(
    field: &str,
    value: &str,
    bytes_max: usize,
    allow_empty: bool,
) -> Result<()> {
    if value.is_empty() && !allow_empty {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > bytes_max {
        return Err(Error::invalid(
            field,
            format!(
                "{} bytes exceeds the limit of {bytes_max} bytes",
                value.len()
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}
