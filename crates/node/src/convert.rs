//! Between the wire (`lockstep.v1` protobuf) and the core's types, and from
//! core errors to gRPC statuses.
//!
//! Conversion checks what the protobuf types cannot express (a `uint32`
//! priority that does not fit the core's 0..=9) before anything reaches
//! Raft; the core validates the rest.

use lockstep_core as core;
use tonic::{Code, Status};

use crate::pb;

/// The gRPC code of a core error: one-to-one, per SPEC section 4.
pub fn code(code: core::Code) -> Code {
    match code {
        core::Code::InvalidArgument => Code::InvalidArgument,
        core::Code::NotFound => Code::NotFound,
        core::Code::AlreadyExists => Code::AlreadyExists,
        core::Code::FailedPrecondition => Code::FailedPrecondition,
        core::Code::ResourceExhausted => Code::ResourceExhausted,
        core::Code::Aborted => Code::Aborted,
    }
}

/// The metadata key that names the error of a status when its code alone
/// does not say what the client should do.
pub const ERROR_HEADER: &str = "x-lockstep-error";
/// [`ERROR_HEADER`]'s value for an unknown session: open a new one.
pub const SESSION_UNKNOWN: &str = "session-unknown";

pub fn status(error: &core::Error) -> Status {
    let mut status = Status::new(code(error.code()), error.to_string());
    if let core::Error::SessionUnknown { .. } = error {
        status.metadata_mut().insert(
            ERROR_HEADER,
            tonic::metadata::MetadataValue::from_static(SESSION_UNKNOWN),
        );
    }
    status
}

fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid argument `{field}`: {message}"))
}

/// A job from the wire. `make_id` supplies an id when the client sent none
/// (the server makes it before proposing, so a retry of the same proposal
/// keeps it).
pub fn new_job(
    job: pb::Job,
    index: usize,
    make_id: &mut impl FnMut() -> String,
) -> Result<core::NewJob, Status> {
    let priority = u8::try_from(job.priority)
        .ok()
        .filter(|p| *p <= core::limits::PRIORITY_MAX)
        .ok_or_else(|| {
            invalid(
                &format!("jobs[{index}].priority"),
                format!(
                    "{} is above the highest priority {}",
                    job.priority,
                    core::limits::PRIORITY_MAX
                ),
            )
        })?;
    Ok(core::NewJob {
        id: match job.id {
            None => make_id(),
            Some(id) if id.is_empty() => {
                return Err(invalid(
                    &format!("jobs[{index}].id"),
                    "must not be empty; leave it out to let the server make one",
                ))
            }
            Some(id) => id,
        },
        group: (!job.group.is_empty()).then_some(job.group),
        payload: job.payload,
        headers: job.headers.into_iter().map(|h| (h.key, h.value)).collect(),
        priority,
        delay_ms: job.delay_ms,
        fairness_key: (!job.fairness_key.is_empty()).then_some(job.fairness_key),
    })
}

pub fn job_state(state: core::JobState) -> pb::JobState {
    match state {
        core::JobState::Ready => pb::JobState::Ready,
        core::JobState::Delayed => pb::JobState::Delayed,
        core::JobState::Leased => pb::JobState::Leased,
        core::JobState::Done => pb::JobState::Done,
        core::JobState::Dead => pb::JobState::Dead,
    }
}

pub fn enqueue_result(result: core::EnqueueResult, id: String) -> pb::EnqueueResult {
    let (outcome, offset, state) = match result {
        core::EnqueueResult::Created { offset } => (
            pb::EnqueueOutcome::Created,
            offset,
            pb::JobState::Unspecified,
        ),
        core::EnqueueResult::Duplicate { offset, state } => {
            (pb::EnqueueOutcome::Duplicate, offset, job_state(state))
        }
        core::EnqueueResult::IdConflict { offset } => (
            pb::EnqueueOutcome::IdConflict,
            offset,
            pb::JobState::Unspecified,
        ),
    };
    pb::EnqueueResult {
        outcome: outcome.into(),
        offset,
        state: state.into(),
        id,
    }
}

pub fn ack_result(offset: u64, result: &core::AckResult) -> pb::AckResult {
    match result {
        core::AckResult::Acked | core::AckResult::AlreadyAcked => pb::AckResult {
            offset,
            code: Code::Ok as i32,
            message: String::new(),
        },
        core::AckResult::Failed(error) => pb::AckResult {
            offset,
            code: code(error.code()) as i32,
            message: error.to_string(),
        },
    }
}

/// A delivery from the core plus what the payload store holds for it.
pub fn delivery(d: core::Delivery, blob: core::JobBlob) -> pb::Delivery {
    pb::Delivery {
        offset: d.offset,
        id: blob.id,
        group: d.group.unwrap_or_default(),
        payload: blob.payload,
        headers: blob
            .headers
            .into_iter()
            .map(|(key, value)| pb::Header { key, value })
            .collect(),
        priority: u32::from(d.priority),
        attempt: d.attempt,
        fence: d.fence,
        lease_deadline_ms: d.deadline_ms,
    }
}

/// A queue configuration from the wire; zero fields take the defaults.
pub fn queue_config(c: Option<pb::QueueConfig>) -> Result<core::QueueConfig, Status> {
    let d = core::QueueConfig::default();
    let Some(c) = c else { return Ok(d) };
    let or = |v: u64, default: u64| if v == 0 { default } else { v };
    let or32 = |v: u32, default: u32| if v == 0 { default } else { v };
    let group_policy = match pb::GroupPolicy::try_from(c.group_policy) {
        Ok(pb::GroupPolicy::Unspecified | pb::GroupPolicy::Continue) => core::GroupPolicy::Continue,
        Ok(pb::GroupPolicy::Park) => core::GroupPolicy::Park,
        Err(_) => {
            return Err(invalid(
                "config.group_policy",
                format!("unknown value {}", c.group_policy),
            ))
        }
    };
    Ok(core::QueueConfig {
        max_attempts: or32(c.max_attempts, d.max_attempts),
        backoff_base_ms: or(c.backoff_base_ms, d.backoff_base_ms),
        backoff_factor: or32(c.backoff_factor, d.backoff_factor),
        backoff_cap_ms: or(c.backoff_cap_ms, d.backoff_cap_ms),
        backoff_jitter_pct: or32(c.backoff_jitter_pct, d.backoff_jitter_pct),
        lease_ms_default: or(c.lease_ms_default, d.lease_ms_default),
        lease_ms_max: or(c.lease_ms_max, d.lease_ms_max),
        dedup_window_ms: or(c.dedup_window_ms, d.dedup_window_ms),
        max_jobs: or(c.max_jobs, d.max_jobs),
        max_bytes: or(c.max_bytes, d.max_bytes),
        max_payload_bytes: or32(c.max_payload_bytes, d.max_payload_bytes),
        max_batch: or32(c.max_batch, d.max_batch),
        group_policy,
        // Zero is the default of each: no limit, a 1 s window.
        rates: core::RateLimits {
            enqueue_rate_max: c.enqueue_rate_max,
            enqueue_burst: c.enqueue_burst,
            group_rate_max: c.group_rate_max,
            group_burst: c.group_burst,
            rate_window_ms: c.rate_window_ms,
        },
        fairness: fairness(c.fairness_weights, c.fairness_weight_default)?,
    })
}

/// Fairness weights from the wire; the core checks their bounds, this only
/// that no key is given twice (the wire form is a list).
fn fairness(
    weights: Vec<pb::FairnessWeight>,
    weight_default: u32,
) -> Result<core::Fairness, Status> {
    let mut map = std::collections::BTreeMap::new();
    for w in weights {
        if map.insert(w.key.clone(), w.weight).is_some() {
            return Err(invalid(
                "config.fairness_weights",
                format!("key `{}` is given twice", w.key),
            ));
        }
    }
    Ok(core::Fairness {
        weights: map,
        weight_default,
    })
}

pub fn queue_config_to_pb(c: &core::QueueConfig) -> pb::QueueConfig {
    pb::QueueConfig {
        max_attempts: c.max_attempts,
        backoff_base_ms: c.backoff_base_ms,
        backoff_factor: c.backoff_factor,
        backoff_cap_ms: c.backoff_cap_ms,
        backoff_jitter_pct: c.backoff_jitter_pct,
        lease_ms_default: c.lease_ms_default,
        lease_ms_max: c.lease_ms_max,
        dedup_window_ms: c.dedup_window_ms,
        max_jobs: c.max_jobs,
        max_bytes: c.max_bytes,
        max_payload_bytes: c.max_payload_bytes,
        max_batch: c.max_batch,
        group_policy: match c.group_policy {
            core::GroupPolicy::Continue => pb::GroupPolicy::Continue,
            core::GroupPolicy::Park => pb::GroupPolicy::Park,
        }
        .into(),
        enqueue_rate_max: c.rates.enqueue_rate_max,
        enqueue_burst: c.rates.enqueue_burst,
        group_rate_max: c.rates.group_rate_max,
        group_burst: c.rates.group_burst,
        rate_window_ms: c.rates.rate_window_ms,
        fairness_weights: c
            .fairness
            .weights
            .iter()
            .map(|(key, weight)| pb::FairnessWeight {
                key: key.clone(),
                weight: *weight,
            })
            .collect(),
        fairness_weight_default: c.fairness.weight_default,
    }
}

/// The wire form of a queue's stats.
pub(crate) fn stats_to_pb(s: &core::QueueStats) -> pb::QueueStats {
    pb::QueueStats {
        ready: s.ready,
        delayed: s.delayed,
        leased: s.leased,
        dead: s.dead,
        bytes: s.bytes,
        ack_floor: s.ack_floor,
        next_offset: s.next_offset,
        oldest_ready_age_ms: s.oldest_ready_age_ms,
        groups: s.groups,
    }
}

/// The wire form of a queue: its name, configuration and stats.
pub(crate) fn queue_to_pb(q: core::QueueInfo) -> pb::QueueInfo {
    pb::QueueInfo {
        config: Some(queue_config_to_pb(&q.config)),
        stats: Some(stats_to_pb(&q.stats)),
        name: q.name,
    }
}

/// The wire name of how an attempt ended.
pub(crate) fn outcome_name(outcome: core::AttemptOutcome) -> &'static str {
    match outcome {
        core::AttemptOutcome::Expired => "expired",
        core::AttemptOutcome::Nacked => "nacked",
        core::AttemptOutcome::DeadLettered => "dead_lettered",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_error_maps_to_its_grpc_code() {
        let cases = [
            (
                core::Error::InvalidArgument {
                    field: "f".into(),
                    message: "m".into(),
                },
                Code::InvalidArgument,
            ),
            (
                core::Error::NotFound {
                    what: "queue `q`".into(),
                },
                Code::NotFound,
            ),
            (
                core::Error::AlreadyExists { queue: "q".into() },
                Code::AlreadyExists,
            ),
            (
                core::Error::LeaseLost {
                    offset: 1,
                    fence: 2,
                },
                Code::FailedPrecondition,
            ),
            (
                core::Error::FailedPrecondition {
                    message: "m".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                core::Error::ResourceExhausted {
                    limit: "max_jobs".into(),
                    max: 1,
                    message: "m".into(),
                },
                Code::ResourceExhausted,
            ),
        ];
        for (error, expected) in cases {
            let s = status(&error);
            assert_eq!(s.code(), expected);
            assert_eq!(s.message(), error.to_string());
        }
    }

    #[test]
    fn a_priority_beyond_nine_is_refused_before_it_reaches_the_core() {
        let job = pb::Job {
            id: Some("a".into()),
            priority: 300,
            ..Default::default()
        };
        let err =
            new_job(job, 2, &mut || unreachable!("the id was given")).expect_err("priority 300");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("jobs[2].priority"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn an_empty_id_is_made_by_the_server_and_an_empty_group_means_none() {
        let job = pb::Job {
            payload: b"x".to_vec(),
            priority: 9,
            ..Default::default()
        };
        let made = new_job(job, 0, &mut || "node1-7".to_string()).expect("valid");
        assert_eq!(
            (made.id.as_str(), made.group, made.priority),
            ("node1-7", None, 9)
        );
    }

    #[test]
    fn queue_config_round_trips_and_zero_means_default() {
        let custom = core::QueueConfig {
            max_attempts: 3,
            group_policy: core::GroupPolicy::Park,
            ..Default::default()
        };
        assert_eq!(
            queue_config(Some(queue_config_to_pb(&custom))).expect("valid"),
            custom
        );
        let zero = pb::QueueConfig::default();
        assert_eq!(
            queue_config(Some(zero)).expect("valid"),
            core::QueueConfig::default()
        );
        assert_eq!(
            queue_config(None).expect("valid"),
            core::QueueConfig::default()
        );
        let bad = pb::QueueConfig {
            group_policy: 42,
            ..Default::default()
        };
        assert_eq!(
            queue_config(Some(bad)).expect_err("bad enum").code(),
            Code::InvalidArgument
        );
    }
}
