//! What a named subscription costs in memory (SPEC 2.3a, SPEC 7): live
//! heap bytes of a state holding 100,000 pending jobs in 1,000 groups with
//! no, one and two named subscriptions, counted by a global allocator.
//!
//! Run it with the figure shown:
//!
//! ```text
//! cargo test --release -p lockstep-core --test subscription_memory -- --nocapture
//! ```

// A global allocator is an `unsafe impl`; it only counts and forwards
// every call to the system allocator unchanged.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use lockstep_core::*;

/// Live heap bytes of this test binary.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const JOBS: usize = 100_000;
const GROUPS: usize = 1_000;
/// The bound this test holds the cost to, per named subscription per
/// pending job (ARCHITECTURE.md states the measured figure).
const BYTES_PER_SUBSCRIPTION_PER_JOB_MAX: f64 = 160.0;

/// Live bytes of a state with `JOBS` pending jobs and `subs` named
/// subscriptions, all created before the first job.
fn live_bytes_with(subs: usize) -> isize {
    let before = LIVE.load(Ordering::Relaxed);
    let mut state = State::new();
    let mut index = 0;
    let mut run = |state: &mut State, command: Command| {
        index += 1;
        let stamp = Stamp {
            index,
            time_ms: 1_000,
        };
        // Payload writes go to the store: dropped here, as a node does
        // once they are written.
        let mut effects = Vec::new();
        state.apply(stamp, command, &mut effects).expect("applies");
    };
    run(
        &mut state,
        Command::CreateQueue {
            name: "q".into(),
            config: QueueConfig::default(),
        },
    );
    for i in 0..subs {
        run(
            &mut state,
            Command::CreateSubscription {
                queue: "q".into(),
                name: format!("s{i}"),
            },
        );
    }
    for batch in 0..JOBS / 1_000 {
        let jobs = (0..1_000)
            .map(|i| {
                let n = batch * 1_000 + i;
                NewJob {
                    id: format!("job-{n}"),
                    group: Some(format!("group-{}", n % GROUPS)),
                    payload: vec![7; 16],
                    headers: vec![],
                    priority: 0,
                    delay_ms: 0,
                    fairness_key: None,
                }
            })
            .collect();
        run(
            &mut state,
            Command::Enqueue {
                queue: "q".into(),
                jobs,
            },
        );
    }
    let stats = state.stats("q").expect("stats");
    assert_eq!(stats.ready + stats.delayed + stats.leased, JOBS as u64);
    for sub in state.list_subscriptions("q").expect("subscriptions") {
        assert_eq!(sub.stats.ready, JOBS as u64);
    }
    let live = LIVE.load(Ordering::Relaxed) - before;
    drop(state);
    live
}

#[test]
fn a_subscription_costs_a_bounded_number_of_bytes_per_pending_job() {
    let base = live_bytes_with(0);
    let one = live_bytes_with(1);
    let two = live_bytes_with(2);
    let per_job = |bytes: isize, subs: f64| bytes as f64 / subs / JOBS as f64;
    let first = per_job(one - base, 1.0);
    let each = per_job(two - base, 2.0);
    eprintln!(
        "{JOBS} pending jobs in {GROUPS} groups: {base} live bytes with no named \
         subscription ({:.1} per job), {one} with one, {two} with two: \
         {first:.1} bytes per pending job for the first subscription, \
         {each:.1} per subscription per pending job with two",
        per_job(base, 1.0)
    );
    assert!(
        first <= BYTES_PER_SUBSCRIPTION_PER_JOB_MAX && each <= BYTES_PER_SUBSCRIPTION_PER_JOB_MAX,
        "a subscription costs {first:.1} / {each:.1} bytes per pending job, above \
         {BYTES_PER_SUBSCRIPTION_PER_JOB_MAX}"
    );
    assert!(
        first > 0.0 && each > 0.0,
        "a subscription holds a record per job"
    );
}
