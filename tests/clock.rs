//! Wall-clock steps on real node processes. Each node runs under
//! libfaketime (Debian's `faketime`, installed by `scripts/install-deps`)
//! with its own offset file, which the test rewrites to step that node's
//! wall clock as an NTP step would. Only the wall clock moves
//! (`FAKETIME_DONT_FAKE_MONOTONIC=1`): cluster time must follow the leader's
//! monotonic clock, so a step moves no lease deadline and freezes no delay.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use lockstep_harness::LIBFAKETIME;

const Q: &str = "jobs";
/// The lease consumer A holds through the step: far longer than the test
/// watches it, so any redelivery is the step's doing.
const LEASE_MS: u64 = 60_000;
/// How long consumer B keeps trying to take the leased group after the step.
const WATCH_MS: u64 = 5_000;
/// The delay of the job enqueued after the failover, and how long it may
/// take to become deliverable (the delay, an election, commits, margin).
const DELAY_MS: u64 = 2_000;
const DELIVER_MS_MAX: u64 = 10_000;
/// A wall-clock step of ten minutes, forward or back, in libfaketime's
/// offset syntax (seconds).
const STEP_FORWARD: &str = "+600";
const STEP_BACK: &str = "-600";

/// Sets node `id`'s wall-clock offset (libfaketime's syntax, seconds).
fn step_clock(dir: &Path, id: u64, offset: &str) {
    lockstep_harness::set_clock(dir, id, offset).unwrap();
}

async fn fetch_wait(q: &mut Queue, consumer: &str, wait_ms: u64) -> Vec<pb::Delivery> {
    q.fetch(pb::FetchRequest {
        subscription: String::new(),
        queue: Q.into(),
        consumer: consumer.into(),
        max: 10,
        lease_ms: LEASE_MS,
        wait_ms,
        session: None,
    })
    .await
    .unwrap()
    .into_inner()
    .deliveries
}

/// `GET /metrics` of node `id`: the body.
async fn scrape(c: &Cluster, id: u64) -> String {
    scrape_metrics(c.addr(id).metrics).await.1
}

/// The leader's wall clock jumps ten minutes ahead while a 60 s lease is
/// held: the group stays excluded and the holder can still ack. Then the
/// clock comes back, the leader is killed, and the new leader's wall clock
/// steps ten minutes back: a 2 s delay still ends after about 2 s.
///
/// Every failure is collected and reported together, so one run shows
/// every symptom.
/// Nodes under libfaketime, each reading its wall clock's offset from its
/// own file `clock-<id>` in `dir` (see `step_clock`).
fn faketime_spec(dir: &tempfile::TempDir) -> Spec {
    spec(dir).with_faketime()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_moves_no_lease_and_freezes_no_delay() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: run scripts/install-deps (Debian package `faketime`)"
    );
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        for id in 1..=3 {
            step_clock(dir.path(), id, "+0");
        }
        let spec = faketime_spec(&dir);
        let (mut run, _) = start(3, 3, spec, dir).await;
        let dir = run.dir.path().to_path_buf();
        let mut failures: Vec<String> = Vec::new();

        // 1. A holds the head of group "g" for 60 s; the leader's wall
        //    clock jumps 10 minutes ahead.
        let c = &run.cluster;
        let leader = c.wait_leader(&[1, 2, 3], ELECTION_MAX).await.unwrap();
        create_queue(c, leader, Q, None).await;
        let mut q = queue(c, leader).await;
        enqueue(&mut q, Q, vec![job("j1", "g")]).await;
        let held = fetch_wait(&mut q, "A", 0).await;
        assert_eq!(held.len(), 1, "A takes the head of g: {held:?}");
        let held = held[0].clone();
        assert_eq!(held.attempt, 1);

        step_clock(&dir, leader, STEP_FORWARD);
        let watch = Instant::now();
        let mut stolen = Vec::new();
        while watch.elapsed() < Duration::from_millis(WATCH_MS) {
            for d in fetch_wait(&mut q, "B", 500).await {
                if d.group == "g" {
                    stolen.push((watch.elapsed().as_millis(), d));
                }
            }
        }
        if let Some((after_ms, d)) = stolen.first() {
            failures.push(format!(
                "group exclusion broken: {after_ms} ms after the leader's wall clock stepped \
                 {STEP_FORWARD} s, consumer B got {} (attempt {}, lease deadline {}) while A \
                 held it under a {LEASE_MS} ms lease (deadline {})",
                d.id, d.attempt, d.lease_deadline_ms, held.lease_deadline_ms
            ));
        }
        let acked = ack(&mut q, Q, &[(held.offset, held.fence)]).await;
        if acked[0].code != 0 {
            failures.push(format!(
                "A's ack within its 60 s lease was refused after the step: {:?}",
                acked[0]
            ));
        }
        let metrics = scrape(c, leader).await;
        let skew = metric_value(&metrics, "lockstep_clock_skew_exceeded_total");
        if !skew.is_some_and(|n| n > 0.0) {
            failures.push(format!(
                "the leader's lockstep_clock_skew_exceeded_total is {skew:?} after a \
                 {STEP_FORWARD} s step, not above 0"
            ));
        }

        // 2. The clock comes back, the leader dies, and the new leader's
        //    wall clock steps 10 minutes back.
        step_clock(&dir, leader, "+0");
        run.cluster.kill(leader);
        let c = &run.cluster;
        let rest: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
        let new_leader = c.wait_leader(&rest, ELECTION_MAX).await.unwrap();
        step_clock(&dir, new_leader, STEP_BACK);
        let mut q = queue(c, new_leader).await;
        let enqueued = Instant::now();
        let delayed = pb::Job {
            delay_ms: DELAY_MS,
            ..job("d1", "d")
        };
        enqueue(&mut q, Q, vec![delayed]).await;
        let mut delivered = None;
        while enqueued.elapsed() < Duration::from_millis(DELIVER_MS_MAX) {
            let got = fetch_wait(&mut q, "C", 500).await;
            if let Some(d) = got.into_iter().find(|d| d.id == "d1") {
                delivered = Some((enqueued.elapsed(), d));
                break;
            }
        }
        match delivered {
            None => failures.push(format!(
                "time froze: a job enqueued with a {DELAY_MS} ms delay on new leader \
                 {new_leader} (wall clock {STEP_BACK} s) was not deliverable \
                 {DELIVER_MS_MAX} ms later"
            )),
            Some((after, _)) if after < Duration::from_millis(DELAY_MS * 3 / 4) => {
                failures.push(format!(
                    "a {DELAY_MS} ms delay ended after only {} ms",
                    after.as_millis()
                ))
            }
            Some((after, _)) => eprintln!(
                "figure: a {DELAY_MS} ms delay ended after {} ms (new leader {new_leader}, \
                 wall clock {STEP_BACK} s)",
                after.as_millis()
            ),
        }

        // The nodes' clock warnings, without openraft's noise about the
        // killed leader.
        let warnings: Vec<String> = (1..=3)
            .flat_map(|id| {
                c.log_tail(id, 400)
                    .lines()
                    .filter(|l| l.contains("clock"))
                    .map(|l| format!("n{id}: {l}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            failures.is_empty(),
            "wall-clock steps moved cluster time:\n- {}\n--- clock lines of the node logs\n{}",
            failures.join("\n- "),
            warnings.join("\n")
        );
    })
    .await
    .expect("test timed out");
}

/// A frozen wall clock in libfaketime's syntax: an absolute time without
/// `@` stops the clock there.
const FROZEN: &str = "2026-01-01 00:00:00";

/// Issue 15: server-made job ids do not depend on the wall clock. A node
/// whose wall clock reads the same after a restart (frozen here; a step
/// back does the same) makes ids that never repeat the ones it made
/// before. Before, an id was node id, wall-clock start time and a counter
/// from 0, so the first job enqueued without an id after the restart got
/// the id of the first one before it: ID_CONFLICT (a different payload),
/// and the job was not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_made_ids_never_repeat_under_a_frozen_wall_clock() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: run scripts/install-deps (Debian package `faketime`)"
    );
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        step_clock(dir.path(), 1, FROZEN);
        let spec = faketime_spec(&dir);
        let (mut run, leader) = start(1, 1, spec, dir).await;
        create_queue(&run.cluster, leader, Q, None).await;
        let unnamed = |payload: &str| pb::Job {
            id: None,
            payload: payload.as_bytes().to_vec(),
            ..Default::default()
        };
        let mut q = queue(&run.cluster, leader).await;
        let before = enqueue(&mut q, Q, vec![unnamed("before")]).await;
        assert_eq!(before[0].outcome(), pb::EnqueueOutcome::Created);
        drop(q);

        run.cluster.stop(leader).unwrap();
        run.cluster.spawn(leader).unwrap();
        run.cluster
            .wait_leader(&[leader], ELECTION_MAX)
            .await
            .unwrap();
        let mut q = queue(&run.cluster, leader).await;
        let after = enqueue(&mut q, Q, vec![unnamed("after")]).await;
        assert_eq!(
            (after[0].outcome(), after[0].id != before[0].id),
            (pb::EnqueueOutcome::Created, true),
            "the first server-made id after the restart ({:?}) repeats the first one \
             before it ({:?}): {after:?}",
            after[0].id,
            before[0].id
        );
        assert_eq!(
            stats(&run.cluster, leader, Q).await.ready,
            2,
            "both jobs stored"
        );
    })
    .await
    .expect("test timed out");
}
