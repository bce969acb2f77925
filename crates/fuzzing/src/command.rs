//! Target `command`: bytes → `codec::decode::<Command>` → `precheck` →
//! `apply` → `check_invariants`, on a state that holds two queues with
//! ready, delayed, leased, dead-lettered and parked jobs.
//!
//! This is what a peer or the log hands the state machine. A command that
//! decodes is applied three times: in a new entry, again in the same entry
//! (so fences repeat), and in a later entry two hours on (so leases expire
//! and delays end first). Every apply goes through [`Harness::step`].

use std::sync::OnceLock;

use lockstep_core::{codec, AckItem, Command, GroupPolicy, NewJob, QueueConfig};

use crate::harness::Harness;

/// Names of the fixture's queues; the seeds and the fuzzer address them.
pub const QUEUE_DEFAULT: &str = "jobs";
pub const QUEUE_PARKING: &str = "parked";

/// Cluster time of the fixture's first command: a realistic epoch time, so
/// deadlines are nowhere near `u64::MAX`.
pub const FIXTURE_TIME_MS: u64 = 1_700_000_000_000;

/// How far the third apply of a fuzzed command jumps ahead.
const LATER_MS: u64 = 2 * 3_600_000;

/// The configuration of the fixture's second queue: small limits, so a
/// short input reaches them, and `Park`, so a dead letter stops its group.
pub fn tight_config() -> QueueConfig {
    QueueConfig {
        max_attempts: 2,
        backoff_base_ms: 100,
        backoff_factor: 2,
        backoff_cap_ms: 1_000,
        backoff_jitter_pct: 50,
        lease_ms_default: 1_000,
        lease_ms_max: 5_000,
        dedup_window_ms: 60_000,
        max_jobs: 8,
        max_bytes: 64,
        max_payload_bytes: 16,
        max_batch: 4,
        group_policy: GroupPolicy::Park,
        rates: Default::default(),
        fairness: Default::default(),
    }
}

pub(crate) fn job(id: &str, group: Option<&str>, priority: u8, delay_ms: u64) -> NewJob {
    NewJob {
        id: id.to_string(),
        group: group.map(str::to_string),
        payload: id.as_bytes().to_vec(),
        headers: vec![("k".to_string(), "v".to_string())],
        priority,
        delay_ms,
        fairness_key: None,
    }
}

fn build_fixture() -> Harness {
    let mut h = Harness::new(1, FIXTURE_TIME_MS);
    let run = |h: &mut Harness, command: Command| {
        let shown = format!("{command:?}");
        let reply = h
            .step(command)
            .unwrap_or_else(|e| panic!("fixture step {shown} refused: {e}"));
        h.index += 1;
        h.time_ms += 10;
        reply
    };
    run(
        &mut h,
        Command::CreateQueue {
            name: QUEUE_DEFAULT.into(),
            config: QueueConfig::default(),
        },
    );
    run(
        &mut h,
        Command::CreateQueue {
            name: QUEUE_PARKING.into(),
            config: tight_config(),
        },
    );
    // jobs: a0 b1 (g1), c2 (g2, priority 5), d3 (no group), e4 (g3,
    // delayed), f5 (no group, priority 9).
    run(
        &mut h,
        Command::Enqueue {
            queue: QUEUE_DEFAULT.into(),
            jobs: vec![
                job("a", Some("g1"), 0, 0),
                job("b", Some("g1"), 0, 0),
                job("c", Some("g2"), 5, 0),
                job("d", None, 0, 0),
                job("e", Some("g3"), 0, 10_000),
                job("f", None, 9, 0),
            ],
        },
    );
    // Leases on f5, c2 and a0 under fence 4.
    run(
        &mut h,
        Command::Fetch {
            queue: QUEUE_DEFAULT.into(),
            consumer: "w1".into(),
            max: 3,
            lease_ms: 0,
        },
    );
    // parked: p0 p1 (g), p2 (h), p3 (no group).
    run(
        &mut h,
        Command::Enqueue {
            queue: QUEUE_PARKING.into(),
            jobs: vec![
                job("p0", Some("g"), 0, 0),
                job("p1", Some("g"), 0, 0),
                job("p2", Some("h"), 1, 0),
                job("p3", None, 2, 0),
            ],
        },
    );
    // Leases on p3, p2 and p0 under fence 6.
    run(
        &mut h,
        Command::Fetch {
            queue: QUEUE_PARKING.into(),
            consumer: "w2".into(),
            max: 4,
            lease_ms: 0,
        },
    );
    // p0 dead: group g is parked with p1 waiting behind it.
    run(
        &mut h,
        Command::DeadLetter {
            queue: QUEUE_PARKING.into(),
            offset: 0,
            fence: 6,
            reason: "poison".into(),
        },
    );
    // c2 backs off; a0 is acked, so b1 leads g1.
    run(
        &mut h,
        Command::Nack {
            queue: QUEUE_DEFAULT.into(),
            offset: 2,
            fence: 4,
            delay_ms: 0,
        },
    );
    run(
        &mut h,
        Command::Ack {
            queue: QUEUE_DEFAULT.into(),
            items: vec![AckItem {
                offset: 0,
                fence: 4,
            }],
        },
    );
    // A paused group that holds no job.
    run(
        &mut h,
        Command::PauseGroup {
            queue: QUEUE_DEFAULT.into(),
            group: "idle".into(),
        },
    );
    h
}

/// The fixture every `command` input starts from (built once, checked by
/// the harness as it is built).
pub fn fixture() -> &'static Harness {
    static FIXTURE: OnceLock<Harness> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

/// The `command` target.
pub fn command(data: &[u8]) {
    let Ok(command) = codec::decode::<Command>(data) else {
        return;
    };
    // What decodes must encode back to a record that decodes the same.
    let again = codec::encode(&command).expect("a decoded command encodes");
    assert_eq!(
        codec::decode::<Command>(&again).as_ref(),
        Ok(&command),
        "re-encoded command decodes differently"
    );

    let mut h = fixture().clone();
    let _ = h.step(command.clone());
    // The same command again in the same entry, under the same fence.
    let _ = h.step(command.clone());
    h.index += 1;
    h.time_ms += LATER_MS;
    let _ = h.step(command);
}
