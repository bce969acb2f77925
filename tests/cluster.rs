//! Black-box: three real `lockstep node` processes on 127.0.0.1–3, real
//! sockets, real RocksDB: forwarding and dedup (issue test 1), and a full
//! restart that keeps the state identical (issue test 4). Every wait is
//! bounded.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

const Q: &str = "jobs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_followers_are_forwarded_and_one_id_makes_one_job() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (run, leader) = start3().await;
        let c = &run.cluster;
        let followers: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
        create_queue(c, followers[0], Q, None).await;

        // Enqueue through each follower: forwarded, dense increasing offsets.
        let mut offsets = Vec::new();
        for (n, f) in followers.iter().enumerate() {
            let mut q = queue(c, *f).await;
            let jobs = (0..3).map(|k| job(&format!("j{n}-{k}"), "g")).collect();
            for r in enqueue(&mut q, Q, jobs).await {
                assert_eq!(r.outcome, pb::EnqueueOutcome::Created as i32);
                offsets.push(r.offset);
            }
        }
        assert_eq!(
            offsets,
            (0..6).collect::<Vec<u64>>(),
            "dense and increasing"
        );

        // The same id sent to all three nodes creates one job.
        let mut created = 0;
        for id in 1..=3 {
            let mut q = queue(c, id).await;
            let r = &enqueue(&mut q, Q, vec![job("same", "h")]).await[0];
            if r.outcome == pb::EnqueueOutcome::Created as i32 {
                created += 1;
            } else {
                assert_eq!(r.outcome, pb::EnqueueOutcome::Duplicate as i32);
                assert_eq!(r.offset, 6, "a duplicate names the original offset");
            }
        }
        assert_eq!(created, 1);

        // Fetch and ack through a follower; group order holds.
        let mut q = queue(c, followers[1]).await;
        let got = fetch(&mut q, Q, "w", 10).await;
        let mut heads: Vec<(String, u64)> =
            got.iter().map(|d| (d.group.clone(), d.offset)).collect();
        heads.sort();
        assert_eq!(
            heads,
            vec![("g".into(), 0), ("h".into(), 6)],
            "one head per group"
        );
        assert_eq!(
            got.iter().find(|d| d.offset == 0).unwrap().payload,
            b"payload-j0-0"
        );
        let items: Vec<(u64, u64)> = got.iter().map(|d| (d.offset, d.fence)).collect();
        for r in ack(&mut q, Q, &items).await {
            assert_eq!(r.code, 0, "{r:?}");
        }
        let next = fetch(&mut q, Q, "w", 10).await;
        assert_eq!(next.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![1]);

        // A stale fence is FAILED_PRECONDITION, through a follower too.
        let stale = q
            .nack(pb::NackRequest {
                subscription: String::new(),
                queue: Q.into(),
                offset: 1,
                fence: 1,
                delay_ms: 0,
                session: None,
            })
            .await
            .unwrap_err();
        assert_eq!(stale.code(), tonic::Code::FailedPrecondition);
    })
    .await
    .expect("test finished within its timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_keeps_the_state_identical() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (mut run, leader) = start3().await;
        let c = &run.cluster;
        create_queue(c, leader, Q, None).await;
        let mut q = queue(c, leader).await;
        let jobs = (0..20)
            .map(|k| job(&format!("r{k}"), &format!("g{}", k % 4)))
            .collect();
        enqueue(&mut q, Q, jobs).await;
        let got = fetch(&mut q, Q, "w", 3).await;
        ack(&mut q, Q, &[(got[0].offset, got[0].fence)]).await;
        let before = (stats(c, 1, Q).await, groups(c, 1, Q).await);
        let status_before = c.status(1).await.unwrap();
        let applied = c.status(leader).await.unwrap().applied_index;
        c.wait_applied(&[1, 2, 3], applied, Duration::from_secs(10))
            .await
            .unwrap();

        // kill -9 every node, then start them again on the same data.
        for id in 1..=3 {
            run.cluster.kill(id);
        }
        for id in 1..=3 {
            run.cluster.spawn(id).unwrap();
        }
        let c = &run.cluster;
        c.wait_leader(&[1, 2, 3], ELECTION_MAX).await.unwrap();
        let after = (stats(c, 1, Q).await, groups(c, 1, Q).await);
        assert_eq!(after, before, "stats and groups after a full restart");
        assert_ne!(after.0.leased, 0, "held leases survive the restart");
        // openraft 0.9 lets a node whose own vote was committed resume as
        // leader in the same term after a restart, so the term may not move.
        let s = c.status(1).await.unwrap();
        assert!(s.term >= status_before.term);
        assert_same_state(c, &[1, 2, 3], Duration::from_secs(30)).await;
    })
    .await
    .expect("test finished within its timeout");
}

/// A port range that was free when the harness checked it can be taken
/// before the nodes bind it (another test process picked it at the same
/// moment). The node that cannot bind exits naming the address; the
/// cluster moves to another range instead of failing the test that
/// asked for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_taken_before_the_nodes_bind_moves_the_cluster() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(&dir);
        let base = lockstep_harness::free_base_port(spec.net, 3).unwrap();
        // Node 2's client port (the first of its three) is taken now.
        let taken = std::net::TcpListener::bind(("127.0.0.2", base)).unwrap();
        let cluster = Cluster::start_on(spec, 3, 3, base).unwrap();
        assert_ne!(cluster.addr(2).client.port(), base, "moved off the range");
        cluster.bootstrap(3).await.unwrap();
        cluster.wait_leader(&[1, 2, 3], ELECTION_MAX).await.unwrap();
        drop(taken);
    })
    .await
    .expect("the test finished in time");
}
