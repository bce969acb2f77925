//! Seed inputs for each target: valid records that reach deep paths from
//! the first run, which random bytes would take the fuzzer long to find.
//! `examples/seed_corpus.rs` writes them under `fuzz/corpus/<target>/`, and
//! `tests/corpus.rs` runs them too, so a seed that stops decoding fails a
//! test instead of silently going stale.

use lockstep_core::*;

use crate::command::{fixture, job, QUEUE_DEFAULT, QUEUE_PARKING};

/// Commands aimed at the `command` fixture: every variant, each naming a
/// queue, an offset and a fence the fixture holds.
pub fn commands() -> Vec<Command> {
    let q = |name: &str| name.to_string();
    vec![
        Command::CreateQueue {
            name: q("fresh"),
            config: QueueConfig::default(),
        },
        Command::CreateQueue {
            name: q(QUEUE_PARKING),
            config: crate::command::tight_config(),
        },
        Command::UpdateQueue {
            name: q(QUEUE_PARKING),
            config: QueueConfig {
                max_attempts: 1,
                ..crate::command::tight_config()
            },
        },
        Command::DeleteQueue {
            name: q(QUEUE_DEFAULT),
        },
        Command::Enqueue {
            queue: q(QUEUE_DEFAULT),
            jobs: vec![job("a", Some("g1"), 0, 0), job("z", Some("g2"), 3, 5)],
        },
        Command::Enqueue {
            queue: q(QUEUE_PARKING),
            jobs: vec![job("p1", Some("g"), 0, 0), job("p9", Some("g"), 0, 0)],
        },
        Command::Fetch {
            queue: q(QUEUE_DEFAULT),
            consumer: q("w9"),
            max: 10,
            lease_ms: 0,
        },
        Command::Fetch {
            queue: q(QUEUE_PARKING),
            consumer: q("w9"),
            max: 4,
            lease_ms: 60_000,
        },
        Command::Ack {
            queue: q(QUEUE_DEFAULT),
            items: vec![
                AckItem {
                    offset: 5,
                    fence: 4,
                },
                AckItem {
                    offset: 0,
                    fence: 4,
                },
                AckItem {
                    offset: 1,
                    fence: 4,
                },
            ],
        },
        Command::Nack {
            queue: q(QUEUE_PARKING),
            offset: 2,
            fence: 6,
            delay_ms: 0,
        },
        Command::Extend {
            queue: q(QUEUE_PARKING),
            offset: 3,
            fence: 6,
            lease_ms: 4_000,
        },
        Command::Release {
            queue: q(QUEUE_DEFAULT),
            offset: 5,
            fence: 4,
        },
        Command::DeadLetter {
            queue: q(QUEUE_PARKING),
            offset: 2,
            fence: 6,
            reason: q("bad"),
        },
        Command::Tick,
        Command::PauseGroup {
            queue: q(QUEUE_DEFAULT),
            group: q("g1"),
        },
        Command::ResumeGroup {
            queue: q(QUEUE_PARKING),
            group: q("g"),
        },
        Command::RequeueDeadLetter {
            queue: q(QUEUE_PARKING),
            offset: 0,
        },
        Command::PurgeDeadLetters {
            queue: q(QUEUE_PARKING),
            which: PurgeSelector::Offsets(vec![0, 1]),
        },
        Command::PurgeDeadLetters {
            queue: q(QUEUE_PARKING),
            which: PurgeSelector::All,
        },
        Command::CreateSubscription {
            queue: q(QUEUE_DEFAULT),
            name: q("audit"),
        },
        Command::InSubscription {
            subscription: q("audit"),
            command: Box::new(Command::Fetch {
                queue: q(QUEUE_DEFAULT),
                consumer: q("w"),
                max: 2,
                lease_ms: 0,
            }),
        },
        Command::DeleteSubscription {
            queue: q(QUEUE_DEFAULT),
            name: q("audit"),
        },
    ]
}

fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    codec::encode(value).expect("seeds encode")
}

/// A small deterministic byte stream (xorshift), so `sequence` seeds need
/// no RNG crate and are the same on every machine.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect()
}

/// The seeds of the target named `target` (empty for an unknown name).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "command" => commands().iter().map(encode).collect(),
        "records" => {
            let fixture = fixture();
            let mut effects = Vec::new();
            let mut state = fixture.state.clone();
            let stamp = fixture.stamp();
            let replies: Vec<std::result::Result<Reply, Error>> = commands()
                .into_iter()
                .map(|c| state.apply(stamp, c, &mut effects))
                .collect();
            let mut out: Vec<Vec<u8>> = commands().iter().map(encode).collect();
            out.push(encode(&(fixture.time_ms, commands())));
            out.push(encode(&replies));
            out.push(encode(&effects));
            out.push(encode(&fixture.state.list_queues()));
            out.push(fixture.state.snapshot());
            out.push(state.snapshot());
            out
        }
        "sequence" => (1..=8u64)
            .map(|seed| bytes(seed, 64 << (seed % 4)))
            .collect(),
        _ => Vec::new(),
    }
}
