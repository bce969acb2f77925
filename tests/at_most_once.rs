//! Each state-changing request applies at most once, no write waits
//! without bound, and no leader refuses a request from a stale state
//! (issue 15, items 3, 4 and 6). Real processes; every wait is bounded.
//!
//! A retry after an unknown outcome resends the same request: these tests
//! send it twice on purpose, through different nodes, as a client whose
//! first answer was lost would.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

const Q: &str = "once";

async fn open_session(c: &Cluster, id: u64) -> u64 {
    queue(c, id)
        .await
        .open_session(pb::OpenSessionRequest {})
        .await
        .unwrap()
        .into_inner()
        .session
}

fn place(id: u64, seq: u64) -> Option<pb::Session> {
    Some(pb::Session {
        id,
        seq,
        floor: 1,
        attempt: 0,
    })
}

fn fetch_in(session: Option<pb::Session>, max: u32) -> pb::FetchRequest {
    pb::FetchRequest {
        subscription: String::new(),
        queue: Q.into(),
        consumer: "w".into(),
        max,
        lease_ms: 60_000,
        wait_ms: 0,
        session,
    }
}

/// The hole: a retried fetch left leases nobody holds and burned
/// attempts, and a retried nack answered "lease lost" although it applied.
/// Under a session the repeat, through another node, gets the first answer
/// and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_under_a_session_applies_once() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (run, leader) = start3().await;
        let c = &run.cluster;
        let follower = (1..=3).find(|i| *i != leader).unwrap();
        create_queue(c, leader, Q, None).await;
        let mut q = queue(c, leader).await;
        enqueue(&mut q, Q, vec![job("a", "ga"), job("b", "gb")]).await;
        let session = open_session(c, follower).await;

        let mut first = queue(c, follower).await;
        let mut again = queue(c, leader).await;
        let one = first
            .fetch(fetch_in(place(session, 1), 1))
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        let two = again
            .fetch(fetch_in(place(session, 1), 1))
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        assert_eq!(one.len(), 1, "{one:?}");
        let key = |d: &Vec<pb::Delivery>| d.iter().map(|d| (d.offset, d.fence)).collect::<Vec<_>>();
        assert_eq!(key(&one), key(&two), "the repeat must get the first leases");
        let s = stats(c, leader, Q).await;
        assert_eq!(s.leased, 1, "one fetch, one lease: {s:?}");
        assert_eq!(s.ready, 1, "the other group's job stays ready: {s:?}");

        let d = &one[0];
        let nack = |node_q: &mut Queue| {
            let mut node_q = node_q.clone();
            let request = pb::NackRequest {
                subscription: String::new(),
                queue: Q.into(),
                offset: d.offset,
                fence: d.fence,
                delay_ms: 0,
                session: place(session, 2),
            };
            async move { node_q.nack(request).await }
        };
        let a = nack(&mut first).await.unwrap().into_inner();
        let b = nack(&mut again)
            .await
            .expect("a repeated nack must get the first answer, not `lease lost`")
            .into_inner();
        assert_eq!(a, b);
    })
    .await
    .expect("test timed out");
}

/// A stale try of a long poll, one that reaches the leader after a later
/// try of the same number found nothing, is refused ABORTED and leases
/// nothing: its answer would go to nobody, and the job would sit leased
/// until the lease ran out. A later try still gets the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_try_of_an_empty_fetch_leases_nothing() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (run, leader) = start3().await;
        let c = &run.cluster;
        create_queue(c, leader, Q, None).await;
        let session = open_session(c, leader).await;
        let mut q = queue(c, leader).await;
        let at = |attempt: u32| {
            Some(pb::Session {
                id: session,
                seq: 1,
                floor: 1,
                attempt,
            })
        };

        let newer = q.fetch(fetch_in(at(1), 1)).await.unwrap().into_inner();
        assert!(newer.deliveries.is_empty(), "{newer:?}");
        enqueue(&mut q, Q, vec![job("a", "ga")]).await;

        let stale = q
            .fetch(fetch_in(at(0), 1))
            .await
            .expect_err("a try older than one applied must be refused");
        assert_eq!(stale.code(), tonic::Code::Aborted, "{stale:?}");
        assert!(stale.message().contains("superseded"), "{stale:?}");
        let s = stats(c, leader, Q).await;
        assert_eq!((s.leased, s.ready), (0, 1), "the stale try leased: {s:?}");

        let later = q.fetch(fetch_in(at(2), 1)).await.unwrap().into_inner();
        assert_eq!(later.deliveries.len(), 1, "{later:?}");
    })
    .await
    .expect("test timed out");
}

/// A leader cut off from its quorum answers within `limits.write_ms_max`,
/// ABORTED ("may have applied"), and sheds calls past
/// `limits.requests_in_flight_max` at once instead of queueing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_quorum_answers_in_bounded_time_and_sheds_load() {
    /// The write deadline these nodes run with.
    const WRITE_MS_MAX: u64 = 1_500;
    const IN_FLIGHT_MAX: u64 = 3;
    /// The longest the test waits for an answer that must come by the
    /// write deadline: the deadline plus room for a loaded machine.
    const ANSWER_MAX: Duration = Duration::from_secs(10);
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(&dir)
            .set("limits.write_ms_max", WRITE_MS_MAX)
            .set("limits.requests_in_flight_max", IN_FLIGHT_MAX);
        let (mut run, leader) = start(3, 4, spec, dir).await;
        create_queue(&run.cluster, leader, Q, None).await;
        let mut q = queue(&run.cluster, leader).await;
        enqueue(&mut q, Q, vec![job("a", "ga")]).await;
        let d = fetch(&mut q, Q, "w", 1).await.remove(0);
        for f in (1..=3).filter(|i| *i != leader) {
            run.cluster.pause(f).unwrap();
        }

        // No session: the answer must say the release may have applied.
        let started = Instant::now();
        let release = tokio::time::timeout(
            ANSWER_MAX,
            q.release(pb::ReleaseRequest {
                subscription: String::new(),
                queue: Q.into(),
                offset: d.offset,
                fence: d.fence,
                session: None,
            }),
        )
        .await
        .expect("a write on a leader without quorum must answer by limits.write_ms_max");
        let status = release.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
        assert!(
            status.message().contains("limits.write_ms_max"),
            "{status:?}"
        );
        eprintln!("answered ABORTED after {:?}", started.elapsed());

        // Fill every slot with writes that wait for the quorum; one more
        // is shed at once, naming the limit.
        let mut waiting = Vec::new();
        for k in 0..IN_FLIGHT_MAX {
            let mut q = q.clone();
            waiting.push(tokio::spawn(async move {
                q.enqueue(pb::EnqueueRequest {
                    queue: Q.into(),
                    jobs: vec![job(&format!("w{k}"), "gw")],
                    session: None,
                })
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let shed = tokio::time::timeout(
            ANSWER_MAX,
            q.enqueue(pb::EnqueueRequest {
                queue: Q.into(),
                jobs: vec![job("one-more", "gw")],
                session: None,
            }),
        )
        .await
        .expect("a call past the in-flight limit must be answered at once")
        .unwrap_err();
        assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");
        assert!(
            shed.message().contains("limits.requests_in_flight_max"),
            "{shed:?}"
        );
        for w in waiting {
            let answer = tokio::time::timeout(ANSWER_MAX, w).await.unwrap().unwrap();
            assert_eq!(answer.unwrap_err().code(), tonic::Code::Aborted);
        }
        for f in (1..=3).filter(|i| *i != leader) {
            run.cluster.resume(f).unwrap();
        }
    })
    .await
    .expect("test timed out");
}

/// The hole: a leader cut off from the others, which has not heard
/// of its successor, refused a request from its stale state with a
/// definite NOT_FOUND for a queue the new leader had created. A refusal
/// now needs a read-index round, which a deposed leader cannot complete:
/// it answers that it cannot tell, and proposes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_old_leader_never_refuses_what_its_successor_created() {
    const WRITE_MS_MAX: u64 = 2_000;
    /// The longest the test waits for the old leader's answer.
    const ANSWER_MAX: Duration = Duration::from_secs(15);
    let iptables = std::process::Command::new("iptables")
        .args(["-S", "INPUT"])
        .output();
    assert!(
        iptables.is_ok_and(|o| o.status.success()),
        "this test partitions loopback addresses with iptables: run it as root with iptables"
    );
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec(&dir).set("limits.write_ms_max", WRITE_MS_MAX);
        // Its own loopback net: the partition cuts no other test's nodes,
        // nor this test's client (which connects from 127.0.0.1).
        spec.net = 24;
        let (run, old) = start(3, 3, spec, dir).await;
        let c = &run.cluster;
        create_queue(c, old, Q, None).await;
        let others: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
        let ips: Vec<std::net::Ipv4Addr> = others.iter().map(|id| c.addr(*id).ip).collect();
        let mut partitions = lockstep_chaos::run::Partitions::new();
        partitions.isolate(c.addr(old).ip, &ips);
        let new = c.wait_leader(&others, ELECTION_MAX).await.unwrap();
        create_queue(c, new, "fresh", None).await;

        let mut q = queue(c, old).await;
        let started = Instant::now();
        let answer = tokio::time::timeout(
            ANSWER_MAX,
            q.enqueue(pb::EnqueueRequest {
                queue: "fresh".into(),
                jobs: vec![job("x", "g")],
                session: None,
            }),
        )
        .await
        .expect("the old leader must answer within its write deadline");
        let status = answer.expect_err("a leader without quorum cannot enqueue");
        eprintln!(
            "old leader answered {:?} after {:?}",
            status.code(),
            started.elapsed()
        );
        assert_ne!(
            status.code(),
            tonic::Code::NotFound,
            "a deposed leader refused a queue its successor created: {status:?}"
        );
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Aborted
            ),
            "{status:?}"
        );
        partitions.heal();
    })
    .await
    .expect("test timed out");
}
