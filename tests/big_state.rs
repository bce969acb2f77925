//! Issue 15, item 5: whole-state work never blocks the async path. Three
//! real node processes hold 1,000,000 pending jobs; a `Cluster.Status`
//! loop (which digests the whole state) runs against the leader while
//! enqueues, fetches and acks go on through it. No node's term may change:
//! a term change means the leader's heartbeats stopped, which is what a
//! tokio worker parked on the state lock behind O(state) work looks like.
//! Every wait is bounded.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const Q: &str = "big";
/// Pending jobs the node holds while the loop runs.
const JOBS: u64 = 1_000_000;
/// Jobs per enqueue call while filling: the queue's `max_batch`, at the
/// hard limit, so the fill takes a hundred calls.
const FILL_BATCH: u64 = 10_000;
/// Fill calls in flight at once.
const FILL_CONCURRENCY: u64 = 2;
/// Bound on filling the queue (measured at about 150 s on a loaded 2-core
/// machine in a debug build).
const FILL_MS_MAX: u64 = 400_000;
/// How long the Status loop and the load run together.
const LOOP_MS: u64 = 20_000;
/// Status calls in flight at once: one per tokio worker of a 2-core node
/// and more, so a handler that blocks its worker blocks them all.
const STATUS_CONCURRENCY: usize = 4;
/// Bound on one call; in the loop a slower answer is counted, not failed,
/// since what the test proves is that Raft kept its leader.
const CALL_MS_MAX: u64 = 60_000;
/// Bound on the whole test.
const BIG_TEST_MS_MAX: u64 = 540_000;

/// A channel whose calls may take CALL_MS_MAX: the harness's own give up
/// after 10 s, sooner than a digest of a million jobs takes in a debug
/// build, or an enqueue of 10,000 on a busy machine.
async fn slow_channel(c: &Cluster, id: u64) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", c.addr(id).client))
        .unwrap()
        .connect_timeout(Duration::from_millis(CALL_MS_MAX))
        .timeout(Duration::from_millis(CALL_MS_MAX))
        .connect()
        .await
        .unwrap()
}

/// Node `id`'s Raft term, from its metrics: a read that touches no state.
async fn term(c: &Cluster, id: u64) -> u64 {
    let (_, body) = tokio::time::timeout(
        Duration::from_millis(CALL_MS_MAX),
        scrape_metrics(c.addr(id).metrics),
    )
    .await
    .expect("a scrape answered within CALL_MS_MAX");
    metric_value(&body, "lockstep_raft_term").expect("the scrape has the term") as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_loop_on_a_million_jobs_changes_no_term() {
    tokio::time::timeout(Duration::from_millis(BIG_TEST_MS_MAX), async {
        let (run, leader) = start3().await;
        let c = &run.cluster;
        let config = pb::QueueConfig {
            max_batch: FILL_BATCH as u32,
            ..Default::default()
        };
        create_queue(c, leader, Q, Some(config)).await;

        // Fill: tiny payloads, no groups, in the largest batches allowed.
        let started = Instant::now();
        let next = Arc::new(AtomicU64::new(0));
        let mut fillers = Vec::new();
        for _ in 0..FILL_CONCURRENCY {
            let mut q = pb::queue_client::QueueClient::new(slow_channel(c, leader).await);
            let next = next.clone();
            fillers.push(tokio::spawn(async move {
                loop {
                    let batch = next.fetch_add(1, Ordering::Relaxed);
                    if batch * FILL_BATCH >= JOBS {
                        return;
                    }
                    let jobs = (batch * FILL_BATCH..(batch + 1) * FILL_BATCH)
                        .map(|n| pb::Job {
                            id: Some(n.to_string()),
                            payload: b"x".to_vec(),
                            ..Default::default()
                        })
                        .collect();
                    let results = enqueue(&mut q, Q, jobs).await;
                    assert_eq!(results.len() as u64, FILL_BATCH);
                }
            }));
        }
        tokio::time::timeout(Duration::from_millis(FILL_MS_MAX), async {
            for f in fillers {
                f.await.unwrap();
            }
        })
        .await
        .expect("the fill ended within FILL_MS_MAX");
        let fill_ms = started.elapsed().as_millis();
        eprintln!("enqueued {JOBS} jobs in {fill_ms} ms");
        let s = stats(c, leader, Q).await;
        assert_eq!(s.ready, JOBS, "{s:?}");
        // Every node holds them all before the loop starts (a stale read:
        // each node's own applied state).
        let deadline = Instant::now() + Duration::from_millis(FILL_MS_MAX);
        for id in 1..=3 {
            let mut admin = admin(c, id).await;
            loop {
                let s = admin
                    .get_queue(pb::GetQueueRequest {
                        name: Q.into(),
                        read: Some(pb::ReadOptions { stale: true }),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .queue
                    .and_then(|q| q.stats);
                if s.is_some_and(|s| s.ready == JOBS) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {id} never held {JOBS} jobs"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        eprintln!(
            "every node holds {JOBS} jobs after {} ms",
            started.elapsed().as_millis()
        );

        let mut terms_before = Vec::new();
        for id in 1..=3 {
            terms_before.push((id, term(c, id).await));
        }

        // The loop and the load, together, for LOOP_MS.
        let stop = Arc::new(AtomicBool::new(false));
        let call_max = Duration::from_millis(CALL_MS_MAX);
        let mut statuses = Vec::new();
        for _ in 0..STATUS_CONCURRENCY {
            let channel = slow_channel(c, leader).await;
            let stop = stop.clone();
            statuses.push(tokio::spawn(async move {
                let mut client = pb::cluster_client::ClusterClient::new(channel);
                let (mut calls, mut slowest) = (0u64, Duration::ZERO);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let answer =
                        tokio::time::timeout(call_max, client.status(pb::StatusRequest::default()))
                            .await;
                    slowest = slowest.max(t.elapsed());
                    if matches!(answer, Ok(Ok(_))) {
                        calls += 1;
                    }
                }
                (calls, slowest)
            }));
        }
        let load = {
            let mut q = pb::queue_client::QueueClient::new(slow_channel(c, leader).await);
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ops, mut slowest, mut n) = (0u64, Duration::ZERO, JOBS);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let jobs = (n..n + 10)
                        .map(|n| pb::Job {
                            id: Some(n.to_string()),
                            payload: b"y".to_vec(),
                            ..Default::default()
                        })
                        .collect();
                    n += 10;
                    let round = async {
                        q.enqueue(pb::EnqueueRequest {
                            queue: Q.into(),
                            jobs,
                            session: None,
                        })
                        .await?;
                        let got = q
                            .fetch(pb::FetchRequest {
                                subscription: String::new(),
                                queue: Q.into(),
                                consumer: "load".into(),
                                max: 10,
                                lease_ms: 60_000,
                                wait_ms: 0,
                                session: None,
                            })
                            .await?
                            .into_inner()
                            .deliveries;
                        let items = got
                            .iter()
                            .map(|d| pb::AckItem {
                                offset: d.offset,
                                fence: d.fence,
                            })
                            .collect();
                        q.ack(pb::AckRequest {
                            subscription: String::new(),
                            queue: Q.into(),
                            items,
                            then: Vec::new(),
                            session: None,
                        })
                        .await?;
                        Ok::<_, tonic::Status>(())
                    };
                    if let Ok(Ok(())) = tokio::time::timeout(call_max, round).await {
                        ops += 1;
                    }
                    slowest = slowest.max(t.elapsed());
                }
                (ops, slowest)
            })
        };
        tokio::time::sleep(Duration::from_millis(LOOP_MS)).await;
        stop.store(true, Ordering::Relaxed);
        let mut status_calls = 0;
        let mut status_slowest = Duration::ZERO;
        for s in statuses {
            let (calls, slowest) = s.await.unwrap();
            status_calls += calls;
            status_slowest = status_slowest.max(slowest);
        }
        let (load_rounds, load_slowest) = load.await.unwrap();
        eprintln!(
            "in {LOOP_MS} ms: {status_calls} Status answers (slowest {status_slowest:?}), \
             {load_rounds} enqueue+fetch+ack rounds (slowest {load_slowest:?})"
        );

        let mut terms_after = Vec::new();
        for id in 1..=3 {
            terms_after.push((id, term(c, id).await));
        }
        let logs: Vec<String> = (1..=3)
            .map(|id| format!("--- node {id}\n{}", c.log_tail(id, 20)))
            .collect();
        assert_eq!(
            terms_before,
            terms_after,
            "a term changed while Status looped over {JOBS} jobs (node, term)\n{}",
            logs.join("\n")
        );
        assert!(status_calls > 0, "no Status call was answered");
        assert!(load_rounds > 0, "no load round finished");
    })
    .await
    .expect("the test ended within BIG_TEST_MS_MAX");
}
