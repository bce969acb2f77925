//! The project codec (`lockstep_core::codec`: bincode 2 behind a format
//! version byte) on the records it carries most: a Raft entry's batch of
//! commands. Encode and decode of one enqueue command of 100 jobs with
//! 256-byte payloads (about 30 KB), one thread, release build.
//!
//! Run: `cargo bench -p lockstep-core --bench codec`.

#![allow(clippy::unwrap_used, missing_debug_implementations)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lockstep_core::{codec, Command, NewJob};

fn command() -> Command {
    Command::Enqueue {
        queue: "bench".into(),
        jobs: (0..100u64)
            .map(|n| NewJob {
                id: format!("0f3c2a9e-job-{n}"),
                group: Some(format!("customer-{}", n % 17)),
                payload: vec![b'x'; 256],
                headers: vec![("trace".into(), format!("t-{n}"))],
                priority: 0,
                delay_ms: 0,
                fairness_key: None,
            })
            .collect(),
    }
}

fn bench(c: &mut Criterion) {
    let cmd = command();
    let bytes = codec::encode(&cmd).unwrap();
    let mut group = c.benchmark_group("codec_enqueue_100_jobs");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode", |b| b.iter(|| codec::encode(&cmd).unwrap()));
    group.bench_function("decode", |b| {
        b.iter(|| codec::decode::<Command>(&bytes).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
