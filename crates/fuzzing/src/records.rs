//! Target `records`: arbitrary bytes decoded as every type the core
//! persists or replicates, and as a core snapshot through `State::restore`.
//!
//! Each decode must return an error or a value; a value must encode to a
//! record that decodes to the same value, and every strict prefix of that
//! record (a truncated write, a short read) must be refused. The record path
//! and the snapshot path of the codec must agree. A state that `restore`
//! accepts must snapshot to the same bytes it restores from, and must be
//! usable: reads, a `Tick`, and a fetch and ack on each queue keep every
//! invariant (a restored state is what a node applies the log on).
//!
//! Allocation is bounded by the fuzzer (`-rss_limit_mb`, `-malloc_limit_mb`
//! under AddressSanitizer); the codec's own bound is tested in
//! `crates/core/tests/codec_bounds.rs`.

use std::fmt::Debug;

use lockstep_core::limits::PAGE_LIMIT_MAX;
use lockstep_core::*;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::harness::Harness;

/// The application data of one Raft entry, `lockstep_store::Batch`, mirrored
/// field for field: the store crate links RocksDB, which the fuzz build must
/// not. bincode encodes a struct as its fields in order, so the bytes are the
/// same; change both together.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Batch {
    time_ms: u64,
    commands: Vec<Command>,
}

/// The answer to one entry, `lockstep_store::BatchReply`, mirrored likewise.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct BatchReply(Vec<Result<Reply, Error>>);

/// Strict prefixes checked per record: all of a short one, an even spread
/// of a long one.
const PREFIXES_CHECKED_MAX: usize = 64;

/// How far past the restored clock the checks of a restored state run.
const LATER_MS: u64 = 24 * 3_600_000;

/// Decodes `data` as `T` through both codec paths and checks the value.
fn check<T>(data: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let as_record = codec::decode::<T>(data);
    if data.len() <= codec::RECORD_BYTES_MAX {
        assert_eq!(
            as_record,
            codec::decode_snapshot::<T>(data),
            "record and snapshot paths disagree on {}",
            std::any::type_name::<T>()
        );
    }
    let Ok(value) = as_record else {
        return;
    };
    let bytes = codec::encode(&value).expect("a decoded value encodes");
    assert_eq!(
        codec::decode::<T>(&bytes).as_ref(),
        Ok(&value),
        "{} does not survive a round trip",
        std::any::type_name::<T>()
    );
    check_prefixes_refused::<T>(&bytes);
}

/// Every strict prefix of a valid record is refused, never read as some
/// other value.
fn check_prefixes_refused<T>(bytes: &[u8])
where
    T: DeserializeOwned + Debug,
{
    let len = bytes.len();
    let step = len.div_ceil(PREFIXES_CHECKED_MAX).max(1);
    for cut in (0..len).step_by(step).chain(len.saturating_sub(2)..len) {
        if let Ok(value) = codec::decode::<T>(&bytes[..cut]) {
            panic!(
                "{} of {len} bytes cut to {cut} decoded as {value:?}",
                std::any::type_name::<T>()
            );
        }
    }
}

/// A state `restore` accepted: it round-trips, and reads and writes on it
/// keep every invariant.
fn check_restored(state: State) {
    let bytes = state.snapshot();
    let again = State::restore(&bytes).expect("the snapshot of a restored state restores");
    assert_eq!(again, state, "restore of a snapshot differs");
    assert_eq!(again.digest(), state.digest(), "digest differs");
    check_prefixes_refused::<State>(&bytes);

    let names: Vec<String> = state.list_queues().into_iter().map(|q| q.name).collect();
    for name in &names {
        state.queue_info(name).expect("a listed queue has info");
        let filter = GroupFilter::default();
        state
            .list_groups(name, &filter, None, PAGE_LIMIT_MAX)
            .expect("a listed queue lists groups");
        state
            .list_dead_letters(name, None, PAGE_LIMIT_MAX)
            .expect("a listed queue lists dead letters");
    }

    let mut store = MemBlobStore::default();
    for key in state.referenced_blobs() {
        store.blobs.insert(
            key,
            JobBlob {
                id: format!("{key:?}"),
                headers: Vec::new(),
                payload: Vec::new(),
            },
        );
    }
    let mut h = Harness {
        index: state.last_index().saturating_add(1),
        time_ms: state.clock_ms().saturating_add(LATER_MS),
        state,
        store,
    };
    let _ = h.step(Command::Tick);
    for name in names {
        h.index = h.index.saturating_add(1);
        let fetched = h.step(Command::Fetch {
            queue: name.clone(),
            consumer: "restored".into(),
            max: 1,
            lease_ms: 0,
        });
        if let Ok(Reply::Fetched(deliveries)) = fetched {
            let items: Vec<AckItem> = deliveries
                .iter()
                .map(|d| AckItem {
                    offset: d.offset,
                    fence: d.fence,
                })
                .collect();
            if !items.is_empty() {
                h.index = h.index.saturating_add(1);
                let _ = h.step(Command::Ack { queue: name, items });
            }
        }
    }
}

/// The `records` target.
pub fn records(data: &[u8]) {
    // Replicated and logged: a Raft entry's commands and their answers.
    check::<Command>(data);
    check::<Vec<Command>>(data);
    check::<Batch>(data);
    check::<BatchReply>(data);
    check::<Result<Reply, Error>>(data);
    check::<Reply>(data);
    check::<Error>(data);
    check::<Stamp>(data);
    check::<NewJob>(data);
    check::<AckItem>(data);
    check::<QueueConfig>(data);
    check::<Delivery>(data);
    check::<EnqueueResult>(data);
    check::<AckResult>(data);
    // Persisted beside the state: payloads, and the effects that write them.
    check::<JobBlob>(data);
    check::<Effect>(data);
    check::<Vec<Effect>>(data);
    // Forwarded reads.
    check::<QueueInfo>(data);
    check::<Vec<QueueInfo>>(data);
    check::<GroupFilter>(data);
    check::<GroupPage>(data);
    check::<DeadLetterPage>(data);
    // The snapshot of the whole state.
    if let Ok(state) = State::restore(data) {
        check_restored(state);
    }
}
