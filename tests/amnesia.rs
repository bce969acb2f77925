//! A node that lost its data may not help elect a leader that lacks what it
//! acknowledged, whatever an operator does meanwhile (the vote guard and
//! bootstrap's probe; ARCHITECTURE.md, "vote guard"). Real processes, kill
//! -9, SIGSTOP and a wiped data directory. Every wait is bounded.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

const Q: &str = "amnesia";
/// How long the tests watch for a leader that must not appear: several
/// election timeouts (1–2 s each by default).
const NO_LEADER_WATCH: Duration = Duration::from_secs(8);
/// Deadline of one client call made while no leader may exist.
const CALL_MAX: Duration = Duration::from_secs(2);

/// A cluster client of node `id`.
async fn cluster_client(
    c: &Cluster,
    id: u64,
) -> pb::cluster_client::ClusterClient<tonic::transport::Channel> {
    pb::cluster_client::ClusterClient::new(c.channel(id).await.unwrap())
}

/// The story: a follower is paused; 50 jobs are acknowledged by the
/// other two; one of those loses its data directory and the other is
/// killed. The operator restarts the empty node and runs bootstrap again
/// through it (as `scripts/cluster up` does on every `up`), then the
/// paused node returns. No leader may appear that lacks the 50 jobs: the
/// cluster waits until the killed node returns, and then every id is a
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_bootstrap_never_elects_a_leader_without_acknowledged_jobs() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (mut run, leader) = start3().await;
        let c = &run.cluster;
        create_queue(c, leader, Q, None).await;
        let followers: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
        let (paused, wiped) = (followers[0], followers[1]);
        run.cluster.pause(paused).unwrap();
        let c = &run.cluster;
        let jobs: Vec<pb::Job> = (0..50).map(|k| job(&format!("a-{k}"), "g")).collect();
        let mut q = queue(c, leader).await;
        for r in enqueue(&mut q, Q, jobs.clone()).await {
            assert_eq!(r.outcome, pb::EnqueueOutcome::Created as i32, "{r:?}");
        }

        run.cluster.kill(wiped);
        run.cluster.wipe(wiped).unwrap();
        run.cluster.kill(leader);
        run.cluster.spawn(wiped).unwrap();
        let c = &run.cluster;
        let members: Vec<pb::JoinRequest> = (1..=3).map(|id| c.addr(id).member()).collect();
        let rerun = tokio::time::timeout(
            Duration::from_secs(30),
            cluster_client(c, wiped)
                .await
                .bootstrap(pb::BootstrapRequest {
                    members,
                    this_node_only: false,
                }),
        )
        .await
        .expect("bootstrap answered within 30 s");
        assert!(
            rerun.is_err(),
            "a bootstrap through a node without data must fail: {rerun:?}"
        );

        run.cluster.resume(paused).unwrap();
        let c = &run.cluster;
        // Whatever leader the two might elect, it must not take these ids
        // as new: try them again and again for several election timeouts.
        let deadline = Instant::now() + NO_LEADER_WATCH;
        let mut q = queue(c, paused).await;
        while Instant::now() < deadline {
            let request = pb::EnqueueRequest {
                queue: Q.into(),
                jobs: jobs.clone(),
                session: None,
            };
            if let Ok(Ok(answer)) = tokio::time::timeout(CALL_MAX, q.enqueue(request)).await {
                let created = answer
                    .get_ref()
                    .results
                    .iter()
                    .filter(|r| r.outcome == pb::EnqueueOutcome::Created as i32)
                    .count();
                assert_eq!(
                    created, 0,
                    "a leader without the 50 acknowledged jobs took {created} of their ids as new"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // The killed node returns with its log: a leader appears, and every
        // id is a duplicate.
        run.cluster.spawn(leader).unwrap();
        let c = &run.cluster;
        c.wait_leader(&[1, 2, 3], ELECTION_MAX).await.unwrap();
        let mut q = queue(c, paused).await;
        for r in enqueue(&mut q, Q, jobs).await {
            assert_eq!(r.outcome, pb::EnqueueOutcome::Duplicate as i32, "{r:?}");
        }
    })
    .await
    .expect("test finished within its timeout");
}

/// The guard's state is visible, still up after a restart without a leader
/// to catch up from, and lifts once the node has applied a commit index the
/// leader confirmed: then the node votes again, and a leader kill elects a
/// new leader with its vote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vote_guard_survives_a_restart_and_lifts_once_caught_up() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (mut run, leader) = start3().await;
        let c = &run.cluster;
        create_queue(c, leader, Q, None).await;
        let followers: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
        let (other, wiped) = (followers[0], followers[1]);
        let mut q = queue(c, leader).await;
        let jobs: Vec<pb::Job> = (0..20).map(|k| job(&format!("b-{k}"), "g")).collect();
        enqueue(&mut q, Q, jobs.clone()).await;

        // Without a leader to catch up from, the wiped node stays guarded,
        // and a restart keeps it guarded.
        run.cluster.kill(wiped);
        run.cluster.wipe(wiped).unwrap();
        run.cluster.pause(leader).unwrap();
        run.cluster.pause(other).unwrap();
        run.cluster.spawn(wiped).unwrap();
        let c = &run.cluster;
        assert!(c.status(wiped).await.unwrap().vote_guarded);
        run.cluster.kill(wiped);
        run.cluster.spawn(wiped).unwrap();
        let c = &run.cluster;
        assert!(
            c.status(wiped).await.unwrap().vote_guarded,
            "the guard was forgotten by a restart"
        );

        // With the leader back, it catches up and the guard lifts.
        run.cluster.resume(leader).unwrap();
        run.cluster.resume(other).unwrap();
        let c = &run.cluster;
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.status(wiped).await.unwrap().vote_guarded {
            assert!(Instant::now() < deadline, "the guard never lifted");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // It votes: with the leader killed, the two elect one.
        run.cluster.kill(leader);
        let c = &run.cluster;
        c.wait_leader(&[other, wiped], ELECTION_MAX).await.unwrap();
        let mut q = queue(c, wiped).await;
        for r in enqueue(&mut q, Q, jobs).await {
            assert_eq!(r.outcome, pb::EnqueueOutcome::Duplicate as i32, "{r:?}");
        }
    })
    .await
    .expect("test finished within its timeout");
}
