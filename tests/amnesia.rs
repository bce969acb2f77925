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
/// election timeouts (400-600 ms each by default).
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
            assert_none_created(&mut q, &jobs).await;
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

/// How long a wiped node may take to catch up from the leader.
const CATCH_UP_MAX: Duration = Duration::from_secs(60);
/// How long a test watches a guard that must stay up: many of the guard's
/// checks (every 250 ms) and several election timeouts.
const GUARD_WATCH: Duration = Duration::from_secs(6);
/// How often a test polls a node's status while it waits.
const POLL: Duration = Duration::from_millis(20);

/// Sends `jobs` again; if a node answers within `CALL_MAX`, none of them
/// may be CREATED: a leader that took an acknowledged id as new lacks the
/// acknowledged jobs.
async fn assert_none_created(q: &mut Queue, jobs: &[pb::Job]) {
    let request = pb::EnqueueRequest {
        queue: Q.into(),
        jobs: jobs.to_vec(),
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
            "a leader without the acknowledged jobs took {created} of their ids as new"
        );
    }
}

/// Once a leader of all three is elected, every one of `jobs` must be a
/// duplicate: the acknowledged jobs survived.
async fn assert_all_duplicates(c: &Cluster, jobs: Vec<pb::Job>) {
    let leader = c.wait_leader(&[1, 2, 3], ELECTION_MAX).await.unwrap();
    let mut q = queue(c, leader).await;
    for r in enqueue(&mut q, Q, jobs).await {
        assert_eq!(r.outcome, pb::EnqueueOutcome::Duplicate as i32, "{r:?}");
    }
}

/// The comment of this test process's own iptables rules.
fn rule_tag() -> String {
    format!("lockstep-amnesia-{}", std::process::id())
}

/// Fails the test at once, saying why, when iptables cannot be used: the
/// partition tests need root and the `iptables` command.
fn require_iptables() {
    let listed = std::process::Command::new("iptables")
        .args(["-S", "INPUT"])
        .output();
    assert!(
        listed.is_ok_and(|o| o.status.success()),
        "these tests partition loopback addresses with iptables: run them as root with \
         iptables installed"
    );
}

/// One iptables rule in INPUT, tagged with this process's id, removed on
/// drop (also when the test panics).
struct Rule(Vec<String>);

impl Rule {
    fn add(matches: &[&str]) -> Rule {
        let mut rule: Vec<String> = vec!["INPUT".into()];
        rule.extend(matches.iter().map(|s| s.to_string()));
        rule.extend(["-j", "DROP", "-m", "comment", "--comment"].map(String::from));
        rule.push(rule_tag());
        let added = std::process::Command::new("iptables")
            .arg("-A")
            .args(&rule)
            .status()
            .is_ok_and(|s| s.success());
        assert!(added, "iptables -A {}", rule.join(" "));
        Rule(rule)
    }

    /// Drops the connections node `from` opens to `to`'s peer port, and
    /// nothing else: `to`'s own connections to `from` (its AppendEntries)
    /// still flow both ways. A guarded `from` can then take the log from
    /// the leader `to` but never ask it for a confirmed commit index.
    fn block_peer_calls(c: &Cluster, from: u64, to: u64) -> Rule {
        let (from, to) = (c.addr(from), c.addr(to));
        Rule::add(&[
            "-s",
            &from.ip.to_string(),
            "-d",
            &to.ip.to_string(),
            "-p",
            "tcp",
            "--dport",
            &to.peer.port().to_string(),
        ])
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables")
            .arg("-D")
            .args(&self.0)
            .status();
    }
}

/// A cluster of `n` on its own loopback net `net`, so partitions by
/// address cut neither another test's nodes nor the test's own client
/// (which connects from 127.0.0.1).
async fn start_on_net(n: u64, net: u8, settings: &[(&str, &str)]) -> (Running, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir);
    spec.net = net;
    for (key, value) in settings {
        spec = spec.set(key, value);
    }
    start(n, n, spec, dir).await
}

/// Waits until node `id` reports `applied_index >= index`; its status.
async fn wait_applied_on(c: &Cluster, id: u64, index: u64, within: Duration) -> pb::StatusResponse {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Ok(s)) = tokio::time::timeout(CALL_MAX, c.status(id)).await {
            if s.applied_index >= index {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not apply index {index} within {within:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Watches `ids` for `watch` and fails if any of them reports itself the
/// leader, or if `guarded` ever reports its guard down.
async fn assert_no_leader_and_guarded(c: &Cluster, ids: &[u64], guarded: u64, watch: Duration) {
    let deadline = Instant::now() + watch;
    while Instant::now() < deadline {
        for &id in ids {
            if let Ok(Ok(s)) = tokio::time::timeout(CALL_MAX, c.status(id)).await {
                assert_ne!(
                    s.leader_id,
                    Some(id),
                    "node {id} became leader (term {}) though the only other live node is \
                     guarded",
                    s.term
                );
                if id == guarded {
                    assert!(s.vote_guarded, "node {id}'s guard came down: {s:?}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Issue 15, vote guard (a): the guard's state is persisted, synced, and
/// kept until it lifts, so a wiped node restarted in the middle of catching
/// up, with part of a log, starts guarded. The wiped node takes the log
/// from the leader but cannot ask it for a confirmed commit index (its own
/// calls to the leader's peer port are dropped), so its guard stays up;
/// then it is killed and restarted with that log. It must come back
/// guarded and refuse its vote: with the leader dead, the other node
/// cannot be elected. Before the guard work (b2f0967) the guard was
/// recomputed at start from "is the store empty?", so the restarted node,
/// whose store held a log, came back unguarded and voted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_restarted_mid_catch_up_starts_still_guarded() {
    require_iptables();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (mut run, leader) = start_on_net(3, 21, &[]).await;
        let c = &run.cluster;
        create_queue(c, leader, Q, None).await;
        let followers: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
        let (other, wiped) = (followers[0], followers[1]);
        let jobs: Vec<pb::Job> = (0..20).map(|k| job(&format!("c-{k}"), "g")).collect();
        let mut q = queue(c, leader).await;
        enqueue(&mut q, Q, jobs.clone()).await;
        let committed = c.status(leader).await.unwrap().applied_index;

        run.cluster.kill(wiped);
        run.cluster.wipe(wiped).unwrap();
        let blocked = Rule::block_peer_calls(&run.cluster, wiped, leader);
        run.cluster.spawn(wiped).unwrap();
        let c = &run.cluster;
        let s = wait_applied_on(c, wiped, committed, CATCH_UP_MAX).await;
        assert!(
            s.vote_guarded,
            "guard down without a confirmed commit index: {s:?}"
        );

        // Killed mid-catch-up (the guard not lifted) and restarted with
        // part of a log: still guarded.
        run.cluster.kill(wiped);
        run.cluster.spawn(wiped).unwrap();
        let c = &run.cluster;
        let s = c.status(wiped).await.unwrap();
        assert!(s.applied_index > 0, "the restarted node has a log: {s:?}");
        assert!(s.vote_guarded, "a restart forgot the guard: {s:?}");

        // And it acts on it: with the leader dead, it gives the other node
        // no vote, so no leader appears.
        run.cluster.kill(leader);
        let c = &run.cluster;
        assert_no_leader_and_guarded(c, &[other, wiped], wiped, GUARD_WATCH).await;

        // The leader returns and the block goes: the node confirms, lifts,
        // and nothing acknowledged is lost.
        drop(blocked);
        run.cluster.spawn(leader).unwrap();
        let c = &run.cluster;
        c.wait_leader(&[1, 2, 3], ELECTION_MAX).await.unwrap();
        let deadline = Instant::now() + CATCH_UP_MAX;
        while c.status(wiped).await.unwrap().vote_guarded {
            assert!(Instant::now() < deadline, "the guard never lifted");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_all_duplicates(c, jobs).await;
    })
    .await
    .expect("test finished within its timeout");
}

/// Issue 15, vote guard (b): a guarded node never campaigns, so it never
/// wins, and while a majority of the other members cannot tell it the
/// newest term it acknowledges nothing, so it gives no leader a majority
/// either. A follower is paused; the leader and the other follower
/// acknowledge jobs; that follower loses its data and restarts. It may
/// take part of the log, but it answers no AppendEntries as taken (the
/// paused node cannot report its term), so the leader's replication to it
/// does not advance. The leader dies and the paused node resumes: no
/// leader may appear, and no acknowledged id is taken as new. Before the
/// guard work (b2f0967) a guarded node refused votes but openraft's
/// `elect` stayed on: it campaigned, voted for itself, won with the
/// resumed node's vote, and took the missing ids as new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_node_with_a_partial_log_never_campaigns_or_wins() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // One entry per AppendEntries, so catching up takes long enough to
        // be stopped halfway.
        let (mut run, leader) = start_on_net(3, 22, &[("raft.append_entries_max", "1")]).await;
        let c = &run.cluster;
        create_queue(c, leader, Q, None).await;
        let followers: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
        let (paused, wiped) = (followers[0], followers[1]);
        let mut q = queue(c, leader).await;
        enqueue(&mut q, Q, vec![job("d-first", "g")]).await;
        let before = c.status(leader).await.unwrap().applied_index;
        c.wait_applied(&[1, 2, 3], before, ELECTION_MAX)
            .await
            .unwrap();

        run.cluster.pause(paused).unwrap();
        let c = &run.cluster;
        // One entry per job, so the wiped node's log can end between them.
        const JOBS: usize = 300;
        let jobs: Vec<pb::Job> = (0..JOBS).map(|k| job(&format!("d-{k}"), "g")).collect();
        for j in &jobs {
            enqueue(&mut q, Q, vec![j.clone()]).await;
        }
        let acked = c.status(leader).await.unwrap().applied_index;

        run.cluster.kill(wiped);
        run.cluster.wipe(wiped).unwrap();
        run.cluster.spawn(wiped).unwrap();
        let c = &run.cluster;
        // It cannot catch up: the leader's term is reported, the paused
        // node's cannot be, and one of two is no majority of the others.
        assert_no_leader_and_guarded(c, &[wiped], wiped, GUARD_WATCH / 2).await;
        run.cluster.pause(leader).unwrap();
        let c = &run.cluster;
        let s = c.status(wiped).await.unwrap();
        assert!(
            s.applied_index < acked,
            "the wiped node caught up ({} of {acked}) without a majority of the other \
             members reporting the newest term",
            s.applied_index
        );
        assert!(s.vote_guarded, "guarded while catching up: {s:?}");
        run.cluster.kill(leader);
        run.cluster.resume(paused).unwrap();
        let c = &run.cluster;

        // No leader, however long the two wait, and no acknowledged id is
        // taken as new.
        assert_no_leader_and_guarded(c, &[paused, wiped], wiped, GUARD_WATCH).await;
        let mut q = queue(c, paused).await;
        assert_none_created(&mut q, &jobs).await;

        // The leader returns: every acknowledged id is a duplicate.
        run.cluster.spawn(leader).unwrap();
        let c = &run.cluster;
        assert_all_duplicates(c, jobs).await;
    })
    .await
    .expect("test finished within its timeout");
}

/// Issue 15, vote guard (c): an AppendEntries from a stale, partitioned
/// old leader does not lift the guard. Five nodes; the leader and one
/// follower are cut off from the other three, which elect a new leader in
/// a higher term. The follower inside the old leader's side loses its
/// data and restarts: it takes the old leader's log, whose commit index
/// that log covers, but the old leader cannot confirm any commit index
/// with a majority, so the guard stays up. Once the partition heals, the
/// node hears from the real leader and the guard lifts. Before the guard
/// work (b2f0967), one AppendEntries whose commit index the node's log
/// covered lifted the guard: here, the stale leader's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_from_a_stale_partitioned_leader_does_not_lift_the_guard() {
    require_iptables();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (mut run, old) = start_on_net(5, 23, &[]).await;
        let c = &run.cluster;
        create_queue(c, old, Q, None).await;
        let mut q = queue(c, old).await;
        let jobs: Vec<pb::Job> = (0..20).map(|k| job(&format!("e-{k}"), "g")).collect();
        enqueue(&mut q, Q, jobs.clone()).await;
        let committed = c.status(old).await.unwrap().applied_index;
        c.wait_applied(&[1, 2, 3, 4, 5], committed, ELECTION_MAX)
            .await
            .unwrap();
        let others: Vec<u64> = (1..=5).filter(|i| *i != old).collect();
        let (wiped, majority) = (others[0], others[1..].to_vec());
        let old_term = c.status(old).await.unwrap().term;

        // {old, wiped} | {the other three}.
        let mut partitions = lockstep_chaos::run::Partitions::new();
        let ips = |ids: &[u64]| -> Vec<std::net::Ipv4Addr> {
            ids.iter().map(|id| run.cluster.addr(*id).ip).collect()
        };
        for id in [old, wiped] {
            partitions.isolate(run.cluster.addr(id).ip, &ips(&majority));
        }
        let c = &run.cluster;
        let new = c.wait_leader(&majority, ELECTION_MAX).await.unwrap();
        let new_term = c.status(new).await.unwrap().term;
        assert!(new_term > old_term);

        run.cluster.kill(wiped);
        run.cluster.wipe(wiped).unwrap();
        run.cluster.spawn(wiped).unwrap();
        let c = &run.cluster;
        // It takes the stale leader's log, with a commit index it covers.
        let s = wait_applied_on(c, wiped, committed, CATCH_UP_MAX).await;
        assert_eq!(s.leader_id, Some(old), "the stale leader feeds it: {s:?}");
        assert!(s.term < new_term, "it never heard of the new term: {s:?}");
        let deadline = Instant::now() + GUARD_WATCH;
        while Instant::now() < deadline {
            let s = c.status(wiped).await.unwrap();
            assert!(
                s.vote_guarded,
                "a stale leader's AppendEntries lifted the guard (leader {:?}, term {}, \
                 applied {}): {s:?}",
                s.leader_id, s.term, s.applied_index
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Healed: the real leader's commit index, confirmed by a majority,
        // lifts it.
        partitions.heal();
        let deadline = Instant::now() + CATCH_UP_MAX;
        while c.status(wiped).await.unwrap().vote_guarded {
            assert!(
                Instant::now() < deadline,
                "the guard never lifted after the heal"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let leader = c.wait_leader(&[1, 2, 3, 4, 5], ELECTION_MAX).await.unwrap();
        let mut q = queue(c, leader).await;
        for r in enqueue(&mut q, Q, jobs).await {
            assert_eq!(r.outcome, pb::EnqueueOutcome::Duplicate as i32, "{r:?}");
        }
    })
    .await
    .expect("test finished within its timeout");
}

/// Found by the simulator (`crates/sim`, story "stale leader"): a node that
/// lost its data forgot the newest term, so a deposed leader that never
/// heard of that term could count the wiped node's acknowledgement toward
/// a commit. Here the leader is cut off and the other two elect a new one,
/// which acknowledges 30 jobs with the third; the deposed leader is stopped
/// before the cut heals, so it still takes itself for leader. Then the
/// third loses its data and the new leader is killed: the 30 jobs live only
/// on the dead node's disk. The deposed leader resumes. It must not gain a
/// majority with the wiped node: until a majority of the other members has
/// told the wiped node their terms, it acknowledges nothing. Before the
/// fix the deposed leader and the wiped node formed a majority without the
/// 30 jobs and took their ids as new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_gives_no_majority_to_a_leader_that_missed_a_newer_term() {
    require_iptables();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (mut run, old) = start_on_net(3, 25, &[]).await;
        let c = &run.cluster;
        create_queue(c, old, Q, None).await;
        let others: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
        let old_term = c.status(old).await.unwrap().term;

        let mut partitions = lockstep_chaos::run::Partitions::new();
        let ips: Vec<std::net::Ipv4Addr> = others.iter().map(|id| c.addr(*id).ip).collect();
        partitions.isolate(c.addr(old).ip, &ips);
        let new = c.wait_leader(&others, ELECTION_MAX).await.unwrap();
        assert!(c.status(new).await.unwrap().term > old_term);
        let third = others.iter().copied().find(|id| *id != new).unwrap();
        let jobs: Vec<pb::Job> = (0..30).map(|k| job(&format!("s-{k}"), "g")).collect();
        let mut q = queue(c, new).await;
        for r in enqueue(&mut q, Q, jobs.clone()).await {
            assert_eq!(r.outcome, pb::EnqueueOutcome::Created as i32, "{r:?}");
        }

        // Stopped before the cut heals: it never hears of the new term.
        run.cluster.pause(old).unwrap();
        partitions.heal();
        run.cluster.kill(third);
        run.cluster.wipe(third).unwrap();
        run.cluster.spawn(third).unwrap();
        run.cluster.kill(new);
        run.cluster.resume(old).unwrap();
        let c = &run.cluster;
        let deadline = Instant::now() + NO_LEADER_WATCH;
        let mut q = queue(c, old).await;
        while Instant::now() < deadline {
            assert_none_created(&mut q, &jobs).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // The new leader returns with its log: every id is a duplicate.
        run.cluster.spawn(new).unwrap();
        assert_all_duplicates(&run.cluster, jobs).await;
    })
    .await
    .expect("test finished within its timeout");
}
