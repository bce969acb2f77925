//! Throughput of the core's apply path, and its memory per pending job.
//!
//! Conditions: one queue holding 1,000,000 pending jobs spread over 100,000
//! groups (10 per group), 256-byte payloads (handed to the payload store as
//! effects, so they do not stay in the core), one thread, release build. The
//! numbers are the core alone: no Raft, no RocksDB, no network.
//!
//! Run: `cargo bench -p lockstep-core --bench apply`. It prints the bytes of
//! core memory per pending job, measured with a counting allocator, before
//! the criterion figures.

// The counting allocator below is the only unsafe code: it forwards to the
// system allocator unchanged. A bench measures time, so it may read a clock.
#![allow(
    unsafe_code,
    clippy::disallowed_methods,
    clippy::print_stdout,
    clippy::unwrap_used,
    missing_debug_implementations
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lockstep_core::*;

/// Counts live heap bytes so the bench can report memory per job.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const QUEUE: &str = "bench";
const JOBS: u64 = 1_000_000;
const GROUPS: u64 = 100_000;
const PAYLOAD_BYTES: usize = 256;
const BATCH: u64 = 100;

struct Bench {
    state: State,
    index: u64,
    next_id: u64,
    effects: Vec<Effect>,
}

impl Bench {
    fn new() -> Bench {
        let mut bench = Bench {
            state: State::new(),
            index: 0,
            next_id: 0,
            effects: Vec::new(),
        };
        let config = QueueConfig {
            max_jobs: 100 * JOBS,
            max_batch: 10_000,
            ..QueueConfig::default()
        };
        bench.apply(Command::CreateQueue {
            name: QUEUE.into(),
            config,
        });
        bench
    }

    fn apply(&mut self, command: Command) -> Reply {
        self.index += 1;
        self.effects.clear();
        // One millisecond per entry keeps time moving without expiring the
        // default 30 s leases during a run.
        let stamp = Stamp {
            index: self.index,
            time_ms: self.index / 100,
        };
        self.state.apply(stamp, command, &mut self.effects).unwrap()
    }

    fn jobs(&mut self, n: u64) -> Vec<NewJob> {
        (0..n)
            .map(|_| {
                let i = self.next_id;
                self.next_id += 1;
                NewJob {
                    id: format!("job-{i:012}"),
                    group: Some(format!("group-{:06}", i % GROUPS)),
                    payload: vec![0xab; PAYLOAD_BYTES],
                    headers: vec![],
                    priority: 0,
                    delay_ms: 0,
                    fairness_key: None,
                }
            })
            .collect()
    }

    fn enqueue(&mut self, n: u64) {
        let jobs = self.jobs(n);
        self.apply(Command::Enqueue {
            queue: QUEUE.into(),
            jobs,
        });
    }

    fn fill_to(&mut self, pending: u64) {
        while self.state.stats(QUEUE).unwrap().ready + self.state.stats(QUEUE).unwrap().leased
            < pending
        {
            self.enqueue(5_000);
        }
    }
}

fn memory_per_job() {
    let before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut bench = Bench::new();
    bench.fill_to(JOBS);
    let filled = started.elapsed();
    bench.effects = Vec::new();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "memory: {JOBS} pending jobs over {GROUPS} groups hold {bytes} bytes of core state = {} bytes per pending job (filled in {filled:?})",
        bytes as u64 / JOBS
    );
}

fn apply(c: &mut Criterion) {
    memory_per_job();
    let mut group = c.benchmark_group("apply_1M_jobs_100k_groups");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(BATCH));

    let mut bench = Bench::new();
    bench.fill_to(JOBS);
    group.bench_function("enqueue_batch_of_100", |b| {
        b.iter_custom(|iters| {
            let batches: Vec<Vec<NewJob>> = (0..iters).map(|_| bench.jobs(BATCH)).collect();
            let start = Instant::now();
            for jobs in batches {
                bench.apply(Command::Enqueue {
                    queue: QUEUE.into(),
                    jobs,
                });
            }
            start.elapsed()
        })
    });

    let mut bench = Bench::new();
    bench.fill_to(JOBS);
    group.bench_function("fetch_100_then_ack_100", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                if bench.state.stats(QUEUE).unwrap().ready < JOBS / 2 {
                    bench.fill_to(JOBS);
                }
                let start = Instant::now();
                let fetch = Command::Fetch {
                    queue: QUEUE.into(),
                    consumer: "w".into(),
                    max: BATCH as u32,
                    lease_ms: 0,
                };
                let Reply::Fetched(deliveries) = bench.apply(fetch) else {
                    unreachable!()
                };
                let items = deliveries
                    .iter()
                    .map(|d| AckItem {
                        offset: d.offset,
                        fence: d.fence,
                    })
                    .collect();
                bench.apply(Command::Ack {
                    queue: QUEUE.into(),
                    items,
                });
                elapsed += start.elapsed();
            }
            elapsed
        })
    });

    let mut bench = Bench::new();
    bench.fill_to(JOBS);
    let bytes = bench.state.snapshot();
    println!("snapshot: {} bytes for {JOBS} pending jobs", bytes.len());
    group.throughput(Throughput::Elements(JOBS));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("snapshot_encode_1M", |b| {
        b.iter(|| bench.state.snapshot().len())
    });
    group.bench_function("snapshot_restore_1M", |b| {
        b.iter(|| State::restore(&bytes).unwrap().last_index())
    });
    group.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
