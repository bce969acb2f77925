//! The RocksDB log append: what one fsynced write costs, and how much more
//! entries fit in it.
//!
//! Each iteration appends `n` entries in one `append` call, which is one
//! RocksDB write batch with `sync = true` (one fsync), and waits for the
//! flush callback, as openraft does. Every entry is a Raft entry holding one
//! enqueue command of 10 jobs with 256-byte payloads (the shape the batcher
//! proposes under load), encoded by the project codec.
//!
//! Conditions: release build, the data directory under `$TMPDIR` (set it to
//! the disk you mean to measure), one thread driving the store. The figure
//! that matters is time per iteration at n = 1: the fsync. Throughput per
//! entry grows with n until the batch's bytes dominate.
//!
//! Run: `cargo bench -p lockstep-store --bench append`.

#![allow(clippy::unwrap_used, missing_debug_implementations)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lockstep_core::{Command, NewJob};
use lockstep_store::{open, Batch, TypeConfig};
use lockstep_types::{Entry, LogId};
use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, EntryPayload};

const JOBS_PER_ENTRY: u64 = 10;
const PAYLOAD_BYTES: usize = 256;

fn entry(index: u64) -> Entry {
    let jobs = (0..JOBS_PER_ENTRY)
        .map(|j| NewJob {
            id: format!("job-{index}-{j}"),
            group: Some(format!("g{}", (index * JOBS_PER_ENTRY + j) % 1_000)),
            payload: vec![b'x'; PAYLOAD_BYTES],
            headers: Vec::new(),
            priority: 0,
            delay_ms: 0,
            fairness_key: None,
        })
        .collect();
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::<TypeConfig>::Normal(Batch {
            time_ms: 1_000 + index,
            commands: vec![Command::Enqueue {
                queue: "bench".into(),
                jobs,
            }],
        }),
    }
}

fn append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm) = runtime.block_on(open(dir.path())).unwrap();
    let mut next = 1u64;
    let mut group = c.benchmark_group("log_append_synced");
    group.sample_size(30);
    for n in [1u64, 4, 16, 64] {
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("entries_per_fsync", n), &n, |b, &n| {
            b.iter(|| {
                let entries: Vec<Entry> = (next..next + n).map(entry).collect();
                next += n;
                runtime.block_on(log.blocking_append(entries)).unwrap();
            });
        });
    }
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
