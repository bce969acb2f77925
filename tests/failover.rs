//! Failover, recovery and membership on three (or four) real node
//! processes: kill -9 of the leader with leases held, retried ids after a
//! failover, a wiped follower catching up by snapshot, and a join and a
//! remove under load.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const Q: &str = "jobs";

/// Issue tests 2 and 3: kill -9 the leader while leases are held and jobs
/// are pending, then check leases, offsets, acks and dedup through the new
/// leader and the followers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_keeps_leases_offsets_and_ids() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (mut run, leader) = start3().await;
        let c = &run.cluster;
        let follower = (1..=3).find(|i| *i != leader).unwrap();
        create_queue(c, follower, Q, None).await;

        // 8 groups of 5 jobs, enqueued through a follower.
        let mut expected = Expected::default();
        let mut offsets_by_id = BTreeMap::new();
        let mut q = queue(c, follower).await;
        let jobs: Vec<pb::Job> = (0..40)
            .map(|k| job(&format!("e{k}"), &format!("g{}", k % 8)))
            .collect();
        for (r, j) in enqueue(&mut q, Q, jobs.clone()).await.iter().zip(&jobs) {
            assert_eq!(r.outcome, pb::EnqueueOutcome::Created as i32);
            expected.created(&j.group, r.offset);
            offsets_by_id.insert(j.id.clone().unwrap(), r.offset);
        }

        // Lease the heads of 4 groups; ack 2 and hold 2.
        let got = fetch(&mut q, Q, "w1", 4).await;
        assert_eq!(got.len(), 4);
        let (acked, held) = got.split_at(2);
        let items: Vec<(u64, u64)> = acked.iter().map(|d| (d.offset, d.fence)).collect();
        for r in ack(&mut q, Q, &items).await {
            assert_eq!(r.code, 0);
        }
        for d in acked {
            expected.acked(&d.group, d.offset);
        }
        let before = stats(c, leader, Q).await;
        assert_eq!(before.leased, 2);
        let applied = c.status(leader).await.unwrap().applied_index;
        c.wait_applied(&[1, 2, 3], applied, Duration::from_secs(10))
            .await
            .unwrap();

        // kill -9 the leader.
        let killed_at = Instant::now();
        run.cluster.kill(leader);
        let c = &run.cluster;
        let rest: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
        let new_leader = c.wait_leader(&rest, ELECTION_MAX).await.unwrap();
        eprintln!(
            "figure: new leader {new_leader} agreed {} ms after kill -9 of leader {leader}",
            killed_at.elapsed().as_millis()
        );
        let other = *rest.iter().find(|i| **i != new_leader).unwrap();

        // Acked jobs stay gone, unacked jobs stay: the stats are the same.
        let after = stats(c, other, Q).await;
        assert_eq!(after.ready + after.delayed + after.leased, expected.count());
        assert_eq!(after.leased, 2, "held leases survive: {after:?}");
        assert_eq!(after.next_offset, before.next_offset);
        // Held leases keep their holder.
        for g in groups(c, other, Q).await {
            let holds = held.iter().any(|d| d.group == g.key);
            assert_eq!(g.lease_holder == "w1", holds, "group {g:?}");
        }

        // No group gets a second lease: a fetch of everything skips the
        // two held groups and hands out the heads of the other six.
        let mut q = queue(c, other).await;
        let second = fetch(&mut q, Q, "w2", 100).await;
        assert_eq!(second.len(), 6, "{second:?}");
        for d in &second {
            assert!(
                held.iter().all(|h| h.group != d.group),
                "second lease on {}",
                d.group
            );
            expected.check_head(d);
        }

        // The old fence still acks through the new leader; a wrong fence
        // fails with FAILED_PRECONDITION and changes nothing.
        let mut lq = queue(c, new_leader).await;
        let wrong = lq
            .ack(pb::AckRequest {
                subscription: String::new(),
                queue: Q.into(),
                items: vec![pb::AckItem {
                    offset: held[0].offset,
                    fence: held[0].fence + 1_000,
                }],
                then: Vec::new(),
                session: None,
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        assert_eq!(wrong[0].code, tonic::Code::FailedPrecondition as i32);
        let mut to_ack: Vec<(u64, u64)> = held.iter().map(|d| (d.offset, d.fence)).collect();
        to_ack.extend(second.iter().map(|d| (d.offset, d.fence)));
        for r in ack(&mut lq, Q, &to_ack).await {
            assert_eq!(
                r.code, 0,
                "ack with the fence granted before the failover: {r:?}"
            );
        }
        for d in held.iter().chain(&second) {
            expected.acked(&d.group, d.offset);
        }

        // Issue test 3: the same ids retried through another node after the
        // failover are DUPLICATE with their original offsets.
        let mut q = queue(c, other).await;
        for (r, j) in enqueue(&mut q, Q, jobs.clone()).await.iter().zip(&jobs) {
            assert_eq!(r.outcome, pb::EnqueueOutcome::Duplicate as i32, "{r:?}");
            assert_eq!(r.offset, offsets_by_id[j.id.as_ref().unwrap()]);
        }

        // New offsets continue with no reuse.
        let more: Vec<pb::Job> = (40..48)
            .map(|k| job(&format!("e{k}"), &format!("g{}", k % 8)))
            .collect();
        for (n, (r, j)) in enqueue(&mut q, Q, more.clone())
            .await
            .iter()
            .zip(&more)
            .enumerate()
        {
            assert_eq!(r.outcome, pb::EnqueueOutcome::Created as i32);
            assert_eq!(r.offset, before.next_offset + n as u64, "offsets continue");
            expected.created(&j.group, r.offset);
        }

        // The killed node comes back; group order holds to the end; all
        // three agree on the state.
        run.cluster.spawn(leader).unwrap();
        let c = &run.cluster;
        drain(c, leader, Q, &mut expected, 50).await;
        assert_same_state(c, &[1, 2, 3], Duration::from_secs(30)).await;
    })
    .await
    .expect("test finished within its timeout");
}

/// Issue test 5: a follower whose data dir is wiped rejoins by snapshot,
/// and a later leader kill loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_follower_catches_up_by_snapshot() {
    // Snapshot and purge often, so the leader no longer has the log a
    // wiped node would need.
    wiped_follower_catches_up(&[
        ("raft.snapshot_every_entries", 40),
        ("raft.logs_kept_after_snapshot", 5),
    ])
    .await;
}

/// The same with snapshots and purges by payload bytes only: the entry
/// counts are far above what the test writes, so without the byte bounds
/// (`crate::compact` in the node) nothing is purged and the test fails.
/// The snapshot the wiped node installs was written when sent, with the
/// payloads the leader held then, some acked since the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_follower_catches_up_by_snapshot_taken_for_payload_bytes() {
    wiped_follower_catches_up(&[
        ("raft.snapshot_every_entries", 1_000_000),
        ("raft.logs_kept_after_snapshot", 1_000_000),
        ("raft.snapshot_every_bytes", 1_024),
        ("raft.log_bytes_kept", 256),
    ])
    .await;
}

async fn wiped_follower_catches_up(settings: &[(&str, i64)]) {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let spec = settings
            .iter()
            .fold(spec(&dir), |spec, &(key, value)| spec.set(key, value));
        let (mut run, leader) = start(3, 3, spec, dir).await;
        let c = &run.cluster;
        create_queue(c, leader, Q, None).await;
        let wiped = (1..=3).find(|i| *i != leader).unwrap();

        let mut expected = Expected::default();
        let mut ids = Vec::new();
        let mut q = queue(c, leader).await;
        // One entry per call: 120 entries, several snapshots.
        for k in 0..120 {
            let j = job(&format!("s{k}"), &format!("g{}", k % 10));
            let r = enqueue(&mut q, Q, vec![j.clone()]).await;
            expected.created(&j.group, r[0].offset);
            ids.push(j);
        }
        run.cluster.wipe(wiped).unwrap();
        let c = &run.cluster;
        // More writes while it is gone, with leases and acks.
        let mut q = queue(c, leader).await;
        for k in 120..160 {
            let j = job(&format!("s{k}"), &format!("g{}", k % 10));
            let r = enqueue(&mut q, Q, vec![j.clone()]).await;
            expected.created(&j.group, r[0].offset);
            ids.push(j);
        }
        let got = fetch(&mut q, Q, "w", 5).await;
        let items: Vec<(u64, u64)> = got.iter().map(|d| (d.offset, d.fence)).collect();
        ack(&mut q, Q, &items).await;
        for d in &got {
            expected.acked(&d.group, d.offset);
        }
        let s = c.status(leader).await.unwrap();
        assert!(
            s.purged_index > 0,
            "the leader purged its log head, so only a snapshot can catch a new node up: {s:?}"
        );

        run.cluster.spawn(wiped).unwrap();
        let c = &run.cluster;
        c.wait_applied(&[wiped], s.applied_index, Duration::from_secs(60))
            .await
            .unwrap();
        let w = c.status(wiped).await.unwrap();
        assert!(
            w.snapshot_index >= s.purged_index,
            "installed a snapshot: {w:?}"
        );
        assert_same_state(c, &[1, 2, 3], Duration::from_secs(30)).await;
        // It votes again only once the leader confirmed a commit index it
        // has applied (the vote guard); an operator waits for this too.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while c.status(wiped).await.unwrap().vote_guarded {
            assert!(
                std::time::Instant::now() < deadline,
                "the vote guard never lifted"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Now kill the leader: the wiped-and-rebuilt node is part of the
        // new majority, and nothing acked is lost.
        run.cluster.kill(leader);
        let c = &run.cluster;
        let rest: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
        c.wait_leader(&rest, ELECTION_MAX).await.unwrap();
        let after = stats(c, wiped, Q).await;
        assert_eq!(after.ready + after.delayed + after.leased, expected.count());
        let mut q = queue(c, wiped).await;
        for chunk in ids.chunks(50) {
            for r in enqueue(&mut q, Q, chunk.to_vec()).await {
                assert_eq!(r.outcome, pb::EnqueueOutcome::Duplicate as i32, "{r:?}");
            }
        }
        drain(c, wiped, Q, &mut expected, 50).await;
    })
    .await
    .expect("test finished within its timeout");
}

/// Issue test 6: a fourth node joins under load (through a follower, so
/// the join is forwarded), then a node is removed; no acked job is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_remove_under_load_lose_nothing() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (mut run, leader) = start3().await;
        create_queue(&run.cluster, leader, Q, None).await;

        // A producer that enqueues through nodes 1..=3 in turn, retrying an
        // unknown outcome with the same ids, and records what was acked.
        let stop = Arc::new(AtomicBool::new(false));
        let mut channels = Vec::new();
        for id in 1..=3 {
            channels.push(run.cluster.channel(id).await.unwrap());
        }
        let producer = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut acked: Vec<pb::Job> = Vec::new();
                let mut batch_no = 0u64;
                while !stop.load(Ordering::Relaxed) && batch_no < 2_000 {
                    let jobs: Vec<pb::Job> = (0..10)
                        .map(|k| job(&format!("l{batch_no}-{k}"), &format!("g{}", k % 7)))
                        .collect();
                    for attempt in 0..50u64 {
                        let channel = channels[((batch_no + attempt) % 3) as usize].clone();
                        let mut q = pb::queue_client::QueueClient::new(channel);
                        let r = q
                            .enqueue(pb::EnqueueRequest {
                                queue: Q.into(),
                                jobs: jobs.clone(),
                                session: None,
                            })
                            .await;
                        match r {
                            Ok(_) => {
                                acked.extend(jobs.iter().cloned());
                                break;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                    batch_no += 1;
                }
                (acked, batch_no)
            })
        };

        tokio::time::sleep(Duration::from_secs(2)).await;
        // Node 4 joins, asked through a follower.
        run.cluster.spawn(4).unwrap();
        let c = &run.cluster;
        let follower = (1..=3).find(|i| *i != leader).unwrap();
        let mut cluster =
            pb::cluster_client::ClusterClient::new(c.channel(follower).await.unwrap());
        cluster
            .join(c.addr(4).member())
            .await
            .expect("join through a follower");
        let s = c.status(leader).await.unwrap();
        let roles: BTreeMap<u64, String> =
            s.members.iter().map(|m| (m.id, m.role.clone())).collect();
        assert_eq!(roles.len(), 4, "{roles:?}");
        assert_ne!(roles[&4], "learner", "node 4 was promoted: {roles:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Remove a follower other than node 4, asked through node 4.
        let removed = (1..=3).find(|i| *i != leader && *i != follower).unwrap();
        let mut via4 = pb::cluster_client::ClusterClient::new(c.channel(4).await.unwrap());
        via4.remove(pb::RemoveRequest { id: removed })
            .await
            .expect("remove through the new node");
        run.cluster.stop(removed).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let (acked, batches) = producer.await.unwrap();
        eprintln!("producer: {batches} batches, {} jobs acked", acked.len());
        assert!(acked.len() >= 100, "the load ran: {} jobs", acked.len());

        let c = &run.cluster;
        let members: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|i| *i != removed).collect();
        let s = c.status(4).await.unwrap();
        let ids: Vec<u64> = s.members.iter().map(|m| m.id).collect();
        assert_eq!(ids, members, "membership after the remove");

        // Every acked job is there exactly once.
        let mut q = queue(c, 4).await;
        for chunk in acked.chunks(100) {
            for r in enqueue(&mut q, Q, chunk.to_vec()).await {
                assert_eq!(r.outcome, pb::EnqueueOutcome::Duplicate as i32, "{r:?}");
            }
        }
        let st = stats(c, 4, Q).await;
        assert!(
            st.ready >= acked.len() as u64 && st.ready <= batches * 10,
            "{} acked, {} attempted, {st:?}",
            acked.len(),
            batches * 10
        );
        assert_same_state(c, &members, Duration::from_secs(30)).await;
    })
    .await
    .expect("test finished within its timeout");
}

/// How long a follower stays stopped in
/// `a_follower_back_from_a_pause_never_disturbs_the_leader`: far past the
/// longest wait before a campaign (the lease plus the spread of the
/// election timeouts, 800 ms with the default 400-600 ms).
const PAUSE: Duration = Duration::from_secs(6);
/// Pauses in that test. Without a pre-vote, about half of the resumed
/// followers raised the term and deposed the leader (7 of 14 trials), so
/// four make a miss unlikely.
const PAUSES: usize = 4;

/// A follower resumed after a SIGSTOP longer than any election timeout
/// must not raise the term: it asks the others first (the elector's
/// pre-vote), and both heard from the healthy leader within the lease.
/// Writes go on through the leader meanwhile, so the returning follower is
/// also behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_back_from_a_pause_never_disturbs_the_leader() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (mut run, leader) = start3().await;
        create_queue(&run.cluster, leader, Q, None).await;
        let follower = (1..=3).find(|i| *i != leader).unwrap();
        let term = run.cluster.status(leader).await.unwrap().term;
        let mut q = queue(&run.cluster, leader).await;
        let mut sent = 0u64;
        for pause in 0..PAUSES {
            run.cluster.pause(follower).unwrap();
            let resume_at = Instant::now() + PAUSE;
            while Instant::now() < resume_at {
                sent += 1;
                let created = enqueue(&mut q, Q, vec![job(&format!("p{sent}"), "g")]).await;
                assert_eq!(created[0].outcome, pb::EnqueueOutcome::Created as i32);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            run.cluster.resume(follower).unwrap();
            // The follower's elector looks every 50 ms; give it time to
            // campaign if it were going to, and the leader to step down.
            tokio::time::sleep(Duration::from_secs(3)).await;
            for id in 1..=3 {
                let status = run.cluster.status(id).await.unwrap();
                assert_eq!(
                    (status.term, status.leader_id),
                    (term, Some(leader)),
                    "node {id} after pause {pause} of follower {follower}: the term moved \
                     or the leader changed"
                );
            }
        }
        assert!(sent > 0);
    })
    .await
    .expect("test exceeded its bound");
}

/// The deadline of each try in `a_paused_leader_is_left_while_it_is_still_paused`:
/// far longer than a failover, so a client that waits for its call to time
/// out on the silent node cannot pass.
const PAUSED_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long that test waits for the enqueue while the leader is stopped:
/// the client's silence timeout, the follower's forward waiting for its
/// peer keep-alive (2 s + 2 s) and an election, with room for a loaded
/// machine; far below `PAUSED_CALL_TIMEOUT`.
const PAUSED_WRITE_MAX: Duration = Duration::from_secs(15);

/// A leader stopped with SIGSTOP still accepts TCP connections and answers
/// nothing. A client call waiting on it must fail over to the new leader
/// (the client's `silence_timeout` drops a connection whose node stopped
/// answering pings), and complete while the old leader is still stopped,
/// not when the call's own deadline passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_left_while_it_is_still_paused() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (mut run, leader) = start3().await;
        create_queue(&run.cluster, leader, Q, None).await;
        let endpoints: Vec<String> = (1..=3)
            .map(|id| run.cluster.addr(id).client.to_string())
            .collect();
        let mut config = lockstep_client::ClientConfig::new(endpoints);
        config.call_timeout = PAUSED_CALL_TIMEOUT;
        let client = lockstep_client::Client::connect(config).unwrap();
        // The client learns the leader, so its next call goes there.
        let first = client.enqueue(Q, vec![job("before", "g")]).await.unwrap();
        assert_eq!(first[0].outcome, lockstep_client::EnqueueOutcome::Created);

        run.cluster.pause(leader).unwrap();
        let during = tokio::time::timeout(
            PAUSED_WRITE_MAX,
            client.enqueue(Q, vec![job("during", "g")]),
        )
        .await;
        run.cluster.resume(leader).unwrap();
        let during = during
            .expect("the enqueue waited on the stopped leader instead of failing over")
            .expect("the enqueue failed");
        assert_eq!(during[0].outcome, lockstep_client::EnqueueOutcome::Created);
        assert_replaced(&run.cluster, leader).await;
    })
    .await
    .expect("test exceeded its bound");
}

/// How long `a_follower_holds_a_forward_to_a_silent_leader` waits after
/// stopping the leader before it calls the follower: well past the silence
/// that makes a follower hold a forward (two heartbeats, 300 ms with the
/// default 150 ms), as the follower's own Raft core measures it from the
/// last AppendEntries it handled. 800 ms was once too little in the full
/// gate on two loaded cores (the follower forwarded, and the call was
/// ABORTED after 5 s), most likely a follower that handled the leader's
/// last heartbeats late; no election can end while two of the three are
/// stopped, so waiting longer changes nothing else.
const SILENCE_WAIT: Duration = Duration::from_millis(2_500);
/// The bound on the call in that test and in
/// `a_follower_gives_up_a_forward_to_a_replaced_leader`: past the
/// follower's own forward deadline (`limits.forward_retry_ms_max`, 5 s and
/// 3 s), with room for a loaded machine, so the node's answer is what the
/// test sees.
const HELD_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A follower that has not heard from its leader for two heartbeats does
/// not send it a forward: a stopped leader accepts the connection and
/// answers nothing, so a forward sent there waits for the peer channel's
/// keep-alive and then "may have applied", while a held one is known not
/// to have. With the leader and the other follower stopped no election can
/// end, so the follower's answer after its forward deadline tells which it
/// did: UNAVAILABLE (held, not applied), not ABORTED (sent, outcome
/// unknown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_holds_a_forward_to_a_silent_leader() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (mut run, leader) = start3().await;
        create_queue(&run.cluster, leader, Q, None).await;
        let mut others = (1..=3).filter(|i| *i != leader);
        let (follower, stopped) = (others.next().unwrap(), others.next().unwrap());
        let mut q = queue(&run.cluster, follower).await;
        // Through the follower while all run: it forwards, and knows the
        // queue, so the later call can fail only on the way to the leader.
        let created = enqueue(&mut q, Q, vec![job("before", "g")]).await;
        assert_eq!(created[0].outcome, pb::EnqueueOutcome::Created as i32);

        run.cluster.pause(stopped).unwrap();
        run.cluster.pause(leader).unwrap();
        tokio::time::sleep(SILENCE_WAIT).await;
        let during = enqueue_within(&mut q, "during", HELD_CALL_TIMEOUT).await;
        run.cluster.resume(leader).unwrap();
        run.cluster.resume(stopped).unwrap();
        let status = during.expect_err("no leader could have taken the enqueue");
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "the follower sent its forward to the silent leader: {status}"
        );

        // Not applied, so the same id is new once the leader is back.
        let leader = run
            .cluster
            .wait_leader(&[1, 2, 3], ELECTION_MAX)
            .await
            .unwrap();
        let mut q = queue(&run.cluster, leader).await;
        let again = enqueue(&mut q, Q, vec![job("during", "g")]).await;
        assert_eq!(again[0].outcome, pb::EnqueueOutcome::Created as i32);
    })
    .await
    .expect("test exceeded its bound");
}

/// The forward deadline in
/// `a_follower_gives_up_a_forward_to_a_replaced_leader`: shorter than the
/// peer channel's keep-alive takes to drop a stopped leader's connection
/// (a ping 2 s after the last frame read, unanswered for 2 s more: about
/// 4 s after the call just before the pause), so a forward that waits for
/// it cannot be retried in time; and several times what an election on
/// loopback takes (400-600 ms election timeout, then the pre-vote and the
/// vote), for a loaded machine.
const REPLACED_FORWARD_MS_MAX: u64 = 3_000;

/// A follower's forward sent just before its leader stopped waits on a
/// connection that is open and silent. Once the follower knows another
/// leader it gives such a forward up and sends it there, when sending it
/// again is harmless (an enqueue, whose ids are fixed). Sent right after
/// the SIGSTOP, the follower has heard from the leader within two
/// heartbeats, so it does not hold the forward (see
/// `a_follower_holds_a_forward_to_a_silent_leader`); waiting for the
/// keep-alive would outlast `limits.forward_retry_ms_max` and answer
/// ABORTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_gives_up_a_forward_to_a_replaced_leader() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(&dir).set("limits.forward_retry_ms_max", REPLACED_FORWARD_MS_MAX);
        let (mut run, leader) = start(3, 4, spec, dir).await;
        create_queue(&run.cluster, leader, Q, None).await;
        let follower = (1..=3).find(|i| *i != leader).unwrap();
        let mut q = queue(&run.cluster, follower).await;
        // Through the follower while all run: the connection to the leader
        // is made, and the follower knows the queue.
        let created = enqueue(&mut q, Q, vec![job("before", "g")]).await;
        assert_eq!(created[0].outcome, pb::EnqueueOutcome::Created as i32);

        run.cluster.pause(leader).unwrap();
        let during = enqueue_within(&mut q, "during", HELD_CALL_TIMEOUT).await;
        run.cluster.resume(leader).unwrap();
        let during = during
            .expect("the follower waited on the stopped leader past its forward deadline")
            .into_inner();
        assert_eq!(
            during.results[0].outcome,
            pb::EnqueueOutcome::Created as i32
        );
        assert_replaced(&run.cluster, leader).await;
    })
    .await
    .expect("test exceeded its bound");
}

/// Enqueues job `id` (group `g`) through `q` in one raw call whose
/// deadline is `timeout`, with no client retry: the node's own answer.
async fn enqueue_within(
    q: &mut Queue,
    id: &str,
    timeout: Duration,
) -> Result<tonic::Response<pb::EnqueueResponse>, tonic::Status> {
    let mut call = tonic::Request::new(pb::EnqueueRequest {
        queue: Q.into(),
        jobs: vec![job(id, "g")],
        session: None,
    });
    call.set_timeout(timeout);
    q.enqueue(call).await
}

/// Waits for the three nodes to agree on a leader, and checks that it is
/// not `stopped`, the leader a test paused and resumed.
async fn assert_replaced(c: &Cluster, stopped: u64) {
    let leader = c.wait_leader(&[1, 2, 3], ELECTION_MAX).await.unwrap();
    assert_ne!(leader, stopped, "the stopped leader was replaced");
}
