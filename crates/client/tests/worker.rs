//! The worker against a `FakeNode` test double: each outcome finishes the
//! job as the handler said, leases are extended while handlers run, a lost
//! lease cancels the handler and is never acked, and shutdown releases what
//! could not finish.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstep_client::{
    pb, CancellationToken, Client, ClientConfig, Code, ConsumeMode, Job, Outcome, Worker,
    WorkerConfig, WorkerReport,
};
use support::fake_node::{delivery, Call, FakeNode, Scripted};
use support::{bounded, eventually};

const WITHIN: Duration = Duration::from_secs(5);

fn client(node: &FakeNode) -> Client {
    let mut config = ClientConfig::new([node.addr.as_str()]);
    config.retry.backoff_min = Duration::from_millis(5);
    config.retry.backoff_max = Duration::from_millis(20);
    Client::connect(config).unwrap()
}

/// A worker config with short waits, so tests run in well under a second.
fn config() -> WorkerConfig {
    let mut c = WorkerConfig::new("q");
    c.concurrency = 4;
    c.lease = Duration::from_millis(300);
    c.wait = Duration::from_millis(100);
    c.shutdown_grace = Duration::from_secs(2);
    c.release_timeout = Duration::from_secs(2);
    c.fetch_backoff_min = Duration::from_millis(10);
    c.fetch_backoff_max = Duration::from_millis(50);
    // The fake node scripts fetches; the stream runs on real nodes
    // (tests/worker.rs at the workspace root).
    c.consume = ConsumeMode::Fetch;
    c
}

fn acks(node: &FakeNode) -> Vec<pb::AckItem> {
    node.fake
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Ack(r) => Some(r.items),
            _ => None,
        })
        .flatten()
        .collect()
}

async fn stop_and_report(
    stop: CancellationToken,
    run: tokio::task::JoinHandle<Result<WorkerReport, lockstep_client::Error>>,
) -> WorkerReport {
    stop.cancel();
    run.await.unwrap().unwrap()
}

#[tokio::test]
async fn each_outcome_finishes_the_job_as_the_handler_says() {
    bounded(async {
        let node = FakeNode::start().await;
        node.fake.push_delivery(delivery(1, 11, "ack"));
        node.fake.push_delivery(delivery(2, 12, "retry"));
        node.fake.push_delivery(delivery(3, 13, "poison"));
        let worker = Worker::new(client(&node), config(), |job: Job, _| async move {
            match job.payload.as_slice() {
                b"ack" => Outcome::Ack,
                b"retry" => Outcome::Retry,
                _ => Outcome::Poison(format!("cannot parse job {}", job.id)),
            }
        })
        .unwrap();
        let stop = CancellationToken::new();
        let run = tokio::spawn(worker.run(stop.clone()));
        eventually("three jobs finished", WITHIN, || {
            node.fake.count("ack") + node.fake.count("nack") + node.fake.count("dead_letter") == 3
        })
        .await;
        let report = stop_and_report(stop, run).await;

        let acked: Vec<(u64, u64)> = acks(&node).iter().map(|i| (i.offset, i.fence)).collect();
        assert_eq!(acked, [(1, 11)]);
        for call in node.fake.calls() {
            match call {
                Call::Nack(n) => {
                    assert_eq!((n.offset, n.fence), (2, 12));
                    assert_eq!(n.delay_ms, 0, "the queue's backoff decides");
                }
                Call::DeadLetter(d) => {
                    assert_eq!((d.offset, d.fence), (3, 13));
                    assert_eq!(d.reason, "cannot parse job job-3");
                }
                Call::Fetch(f) => {
                    assert_eq!(f.queue, "q");
                    assert_eq!((f.lease_ms, f.wait_ms), (300, 100));
                    assert!(f.max >= 1 && f.max <= 4, "{f:?}");
                }
                _ => {}
            }
        }
        assert_eq!(node.fake.count("release"), 0);
        assert_eq!(
            report,
            WorkerReport {
                fetched: 3,
                acked: 1,
                retried: 1,
                poisoned: 1,
                ..Default::default()
            }
        );
    })
    .await;
}

#[tokio::test]
async fn the_lease_is_extended_while_the_handler_runs() {
    bounded(async {
        let node = FakeNode::start().await;
        node.fake.push_delivery(delivery(5, 50, "slow"));
        // Lease 300 ms: extends every 100 ms; the handler takes 550 ms.
        let worker = Worker::new(client(&node), config(), |_job, _| async {
            tokio::time::sleep(Duration::from_millis(550)).await;
            Outcome::Ack
        })
        .unwrap();
        let stop = CancellationToken::new();
        let run = tokio::spawn(worker.run(stop.clone()));
        eventually("the job acked", WITHIN, || node.fake.count("ack") == 1).await;
        let report = stop_and_report(stop, run).await;

        let extends: Vec<pb::ExtendRequest> = node
            .fake
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Extend(e) => Some(e),
                _ => None,
            })
            .collect();
        assert!(extends.len() >= 3, "{} extends", extends.len());
        for e in &extends {
            assert_eq!((e.offset, e.fence, e.lease_ms), (5, 50, 300));
        }
        assert_eq!(report.acked, 1);
        assert_eq!(report.lease_lost, 0);
    })
    .await;
}

#[tokio::test]
async fn a_lost_lease_cancels_the_handler_and_the_job_is_never_acked() {
    bounded(async {
        let node = FakeNode::start().await;
        node.fake.push_delivery(delivery(7, 70, "x"));
        node.fake
            .script("extend", Scripted::fail(Code::FailedPrecondition));
        let tokens: Arc<Mutex<Vec<CancellationToken>>> = Arc::default();
        let seen = tokens.clone();
        let worker = Worker::new(
            client(&node),
            config(),
            move |_job, cancel: CancellationToken| {
                seen.lock().unwrap().push(cancel.clone());
                async move {
                    // A handler that would ack once told to stop: the worker
                    // must drop it rather than let that ack through.
                    cancel.cancelled().await;
                    Outcome::Ack
                }
            },
        )
        .unwrap();
        let stop = CancellationToken::new();
        let run = tokio::spawn(worker.run(stop.clone()));
        eventually("the handler's token cancelled", WITHIN, || {
            tokens
                .lock()
                .unwrap()
                .first()
                .is_some_and(|t| t.is_cancelled())
        })
        .await;
        // Give a wrong ack time to show up, then stop.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let report = stop_and_report(stop, run).await;

        assert_eq!(node.fake.count("extend"), 1);
        assert!(acks(&node).is_empty(), "acked with a stale fence");
        assert_eq!(node.fake.count("nack"), 0);
        assert_eq!(node.fake.count("dead_letter"), 0);
        assert_eq!(node.fake.count("release"), 0);
        assert_eq!(report.lease_lost, 1);
        assert_eq!(report.acked, 0);
    })
    .await;
}

#[tokio::test]
async fn shutdown_lets_handlers_finish_within_the_grace() {
    bounded(async {
        let node = FakeNode::start().await;
        node.fake.push_delivery(delivery(8, 80, "x"));
        let started = Arc::new(tokio::sync::Notify::new());
        let started_tx = started.clone();
        let worker = Worker::new(client(&node), config(), move |_job, _| {
            started_tx.notify_one();
            async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Outcome::Ack
            }
        })
        .unwrap();
        let stop = CancellationToken::new();
        let run = tokio::spawn(worker.run(stop.clone()));
        started.notified().await;
        let report = stop_and_report(stop, run).await;
        assert_eq!(report.acked, 1);
        assert_eq!(report.released, 0);
        assert_eq!(acks(&node).len(), 1);
    })
    .await;
}

#[tokio::test]
async fn shutdown_releases_the_jobs_still_running_after_the_grace() {
    bounded(async {
        let node = FakeNode::start().await;
        node.fake.push_delivery(delivery(9, 90, "stuck"));
        let tokens: Arc<Mutex<Vec<CancellationToken>>> = Arc::default();
        let seen = tokens.clone();
        let mut c = config();
        c.shutdown_grace = Duration::from_millis(200);
        let worker = Worker::new(client(&node), c, move |_job, cancel: CancellationToken| {
            seen.lock().unwrap().push(cancel.clone());
            // Never finishes on its own, and ignores the token.
            std::future::pending::<Outcome>()
        })
        .unwrap();
        let stop = CancellationToken::new();
        let run = tokio::spawn(worker.run(stop.clone()));
        eventually("the job started", WITHIN, || {
            !tokens.lock().unwrap().is_empty()
        })
        .await;
        let report = stop_and_report(stop, run).await;

        let released: Vec<(u64, u64)> = node
            .fake
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Release(r) => Some((r.offset, r.fence)),
                _ => None,
            })
            .collect();
        assert_eq!(released, [(9, 90)]);
        assert!(tokens.lock().unwrap()[0].is_cancelled());
        assert!(acks(&node).is_empty());
        assert_eq!(report.released, 1);
    })
    .await;
}

#[tokio::test]
async fn a_fetch_that_can_never_succeed_stops_the_worker_with_its_error() {
    bounded(async {
        let node = FakeNode::start().await;
        node.fake.script("fetch", Scripted::fail(Code::NotFound));
        let worker =
            Worker::new(client(&node), config(), |_job, _| async { Outcome::Ack }).unwrap();
        let err = worker.run(CancellationToken::new()).await.unwrap_err();
        assert!(err.is_not_found(), "{err:?}");
        assert_eq!(node.fake.count("fetch"), 1);
    })
    .await;
}

#[tokio::test]
async fn a_failing_fetch_is_retried_with_backoff() {
    bounded(async {
        let node = FakeNode::start().await;
        // Each scripted failure outlasts the client's own retries.
        for _ in 0..30 {
            node.fake
                .script("fetch", Scripted::fail(Code::ResourceExhausted));
        }
        node.fake.push_delivery(delivery(4, 40, "x"));
        let worker =
            Worker::new(client(&node), config(), |_job, _| async { Outcome::Ack }).unwrap();
        let stop = CancellationToken::new();
        let run = tokio::spawn(worker.run(stop.clone()));
        eventually("the job acked after the failures", WITHIN, || {
            node.fake.count("ack") == 1
        })
        .await;
        let report = stop_and_report(stop, run).await;
        assert!(node.fake.count("fetch") > 30);
        assert_eq!(report.acked, 1);
    })
    .await;
}

/// Handlers that keep answering `Retry` open the breaker: the jobs still
/// running are released (no attempt burnt), nothing is fetched during the
/// cool-down, then one job at a time is tried, and its success closes it.
#[tokio::test]
async fn a_failing_handler_opens_the_breaker_which_releases_held_jobs_and_probes_one() {
    bounded(async {
        let node = FakeNode::start().await;
        for (offset, payload) in [
            (1, "hold"),
            (2, "hold"),
            (3, "fail"),
            (4, "fail"),
            (5, "fail"),
        ] {
            node.fake
                .push_delivery(delivery(offset, 10 + offset, payload));
        }
        let mut config = config();
        config.breaker.failures_max = 3;
        config.breaker.window = Duration::from_secs(10);
        config.breaker.cool_down = Duration::from_millis(300);
        let worker = Worker::new(
            client(&node),
            config,
            |job: Job, cancel: CancellationToken| async move {
                match job.payload.as_slice() {
                    b"fail" => Outcome::Retry,
                    // Runs until the worker takes it back.
                    b"hold" => {
                        cancel.cancelled().await;
                        Outcome::Ack
                    }
                    _ => Outcome::Ack,
                }
            },
        )
        .unwrap();
        let stop = CancellationToken::new();
        let run = tokio::spawn(worker.run(stop.clone()));
        eventually("three failures and two releases", WITHIN, || {
            node.fake.count("nack") == 3 && node.fake.count("release") == 2
        })
        .await;
        let after_release = |calls: &[Call]| -> Vec<u32> {
            let first = calls
                .iter()
                .position(|c| matches!(c, Call::Release(_)))
                .unwrap();
            calls[first..]
                .iter()
                .filter_map(|c| match c {
                    Call::Fetch(f) => Some(f.max),
                    _ => None,
                })
                .collect()
        };
        eventually("a half-open probe", WITHIN, || {
            !after_release(&node.fake.calls()).is_empty()
        })
        .await;
        node.fake.push_delivery(delivery(6, 16, "ok"));
        eventually("the probe acked", WITHIN, || acks(&node).len() == 1).await;
        let report = stop_and_report(stop, run).await;

        let fetches = after_release(&node.fake.calls());
        let until_ack = {
            let calls = node.fake.calls();
            let first = calls
                .iter()
                .position(|c| matches!(c, Call::Release(_)))
                .unwrap();
            let ack = calls
                .iter()
                .position(|c| matches!(c, Call::Ack(_)))
                .unwrap();
            calls[first..ack]
                .iter()
                .filter(|c| matches!(c, Call::Fetch(_)))
                .count()
        };
        assert!(
            fetches[..until_ack].iter().all(|max| *max == 1),
            "while open nothing is fetched, then one job at a time: {fetches:?}"
        );
        let released: Vec<u64> = node
            .fake
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Release(r) => Some(r.offset),
                _ => None,
            })
            .collect();
        assert_eq!(released.len(), 2);
        assert!(released.iter().all(|o| *o == 1 || *o == 2), "{released:?}");
        assert_eq!(
            acks(&node).iter().map(|i| i.offset).collect::<Vec<_>>(),
            [6]
        );
        assert_eq!(
            (
                report.retried,
                report.released,
                report.breaker_opened,
                report.acked
            ),
            (3, 2, 1, 1),
            "{report:?}"
        );
    })
    .await;
}
