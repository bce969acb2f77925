//! Restart, snapshot transfer and corrupt-input tests of the RocksDB store.

mod common;

use std::time::Duration;

use common::{assert_matches, reopen, snapshot_bytes, Driver};
use lockstep_core::State;
use lockstep_store::open;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine, StorageHelper};
use openraft::RaftLogReader;
use openraft::{RaftSnapshotBuilder, StoredMembership};
use tokio::io::AsyncWriteExt;

/// Every test ends well within this, or fails.
const TEST_TIME_MAX: Duration = Duration::from_secs(60);

async fn bounded<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIME_MAX, f)
        .await
        .map_err(|_| anyhow::anyhow!("the test did not finish within {TEST_TIME_MAX:?}"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_rebuilds_the_state_from_the_snapshot_and_the_log_after_it() -> anyhow::Result<()> {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let mut d = Driver::start(dir.path()).await?;
        d.create_queue(common::QUEUE).await?;
        d.workload(0).await?;

        let snap = d.sm.get_snapshot_builder().await.build_snapshot().await?;
        let snap_id = snap
            .meta
            .last_log_id
            .ok_or_else(|| anyhow::anyhow!("empty snapshot"))?;
        // Compact the log as openraft would: nothing up to the snapshot can
        // be replayed after this, so the restart must start from the snapshot.
        d.log.purge(snap_id).await?;

        d.workload(1).await?;
        d.workload(2).await?;
        let last = d.sm.handle().last_applied()?;
        let Driver {
            log,
            sm,
            reference,
            reference_blobs,
            ..
        } = d;
        drop((log, sm));

        let (mut log, mut sm) = reopen(dir.path()).await?;
        let (applied, membership) = sm.applied_state().await?;
        assert_eq!(
            applied,
            Some(snap_id),
            "the state machine restarts from the snapshot"
        );
        assert_eq!(membership, snap.meta.last_membership);
        assert_eq!(log.get_log_state().await?.last_purged_log_id, Some(snap_id));

        // openraft's own start-up path: it re-applies the committed log.
        let state = StorageHelper::new(&mut log, &mut sm)
            .get_initial_state()
            .await?;
        assert_eq!(state.committed, last);
        assert_eq!(sm.applied_state().await?.0, last);
        assert_matches(&sm, &reference, &reference_blobs);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_a_snapshot_replays_the_whole_log() -> anyhow::Result<()> {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let mut d = Driver::start(dir.path()).await?;
        d.create_queue(common::QUEUE).await?;
        d.workload(0).await?;
        let last = d.sm.handle().last_applied()?;
        let Driver {
            log,
            sm,
            reference,
            reference_blobs,
            ..
        } = d;
        drop((log, sm));

        let (mut log, mut sm) = reopen(dir.path()).await?;
        assert_eq!(sm.applied_state().await?.0, None);
        StorageHelper::new(&mut log, &mut sm)
            .get_initial_state()
            .await?;
        assert_eq!(sm.applied_state().await?.0, last);
        assert_matches(&sm, &reference, &reference_blobs);
        Ok(())
    })
    .await
}

/// The snapshot a node keeps holds its core state only; the one it sends
/// carries the payloads it stores when it sends, those the snapshot's state
/// holds. A payload deleted after the snapshot is left out: the receiver
/// applies the log after the snapshot, which deletes it, and ends with the
/// sender's state and payloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_installed_elsewhere_gives_the_same_state_and_payloads() -> anyhow::Result<()> {
    bounded(async {
        let leader_dir = tempfile::tempdir()?;
        let mut leader = Driver::start(leader_dir.path()).await?;
        leader.create_queue(common::QUEUE).await?;
        leader.workload(0).await?;
        leader.workload(1).await?;
        let built = leader
            .sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await?;
        let kept = std::fs::metadata(built.snapshot.path())?.len();
        let at_build = leader.reference_blobs.blobs.len();
        assert!(at_build > 0, "the snapshot's state holds payloads");
        // Applies after the build do not leak into the snapshot's state;
        // this one acks jobs of the first two rounds, deleting payloads.
        leader.workload(2).await?;
        let (meta, bytes) = snapshot_bytes(&mut leader.sm).await?;
        assert_eq!(meta, built.meta);
        // openraft resends a snapshot under its id into the receiver's file
        // from offset 0 without truncating it, so one id is one set of
        // bytes, however many payloads are deleted between two sends.
        let at_send: Vec<_> = leader.reference_blobs.blobs.keys().copied().collect();
        leader.workload(3).await?;
        let (again_meta, again) = snapshot_bytes(&mut leader.sm).await?;
        assert_eq!(again_meta, meta);
        assert!(again == bytes, "a resend of one snapshot is the same bytes");
        assert!(
            (bytes.len() as u64) > kept,
            "the file sent ({} bytes) carries payloads the kept one ({kept} bytes) does not",
            bytes.len()
        );

        let follower_dir = tempfile::tempdir()?;
        let (mut flog, mut follower) = open(follower_dir.path()).await?;
        // Stream the bytes in as the network would, into the receiving file.
        let mut receiving = follower.begin_receiving_snapshot().await?;
        for chunk in bytes.chunks(1000) {
            receiving.write_all(chunk).await?;
        }
        follower.install_snapshot(&meta, receiving).await?;

        assert_eq!(
            follower.applied_state().await?,
            (meta.last_log_id, meta.last_membership.clone())
        );
        let (installed_meta, installed_bytes) = snapshot_bytes(&mut follower).await?;
        assert_eq!(installed_meta, meta);
        assert_eq!(
            installed_bytes, bytes,
            "the follower serves the same snapshot on"
        );

        // The snapshot is the leader's state as of the build, with the
        // payloads the leader held at the first send.
        let mut leader_at_build = Driver::start(tempfile::tempdir()?.path()).await?;
        leader_at_build.create_queue(common::QUEUE).await?;
        leader_at_build.workload(0).await?;
        leader_at_build.workload(1).await?;
        assert_eq!(
            leader_at_build.sm.handle().last_applied()?,
            meta.last_log_id,
            "the replay stops where the snapshot was built"
        );
        assert_eq!(
            follower.handle().digest()?,
            leader_at_build.reference.digest()
        );
        let deleted_since = leader_at_build
            .reference_blobs
            .blobs
            .keys()
            .filter(|key| !at_send.contains(key))
            .count();
        assert!(deleted_since > 0, "the third round deleted payloads");
        assert_eq!(
            follower.handle().blob_count()?,
            (at_build - deleted_since) as u64,
            "every payload of the snapshot's state but those deleted since"
        );

        // The log after the snapshot brings the follower to the leader's
        // state and payloads, and they survive a restart.
        let after = meta.last_log_id.map_or(0, |id| id.index + 1);
        let entries = leader
            .log
            .get_log_reader()
            .await
            .try_get_log_entries(after..leader.next_index)
            .await?;
        let last = entries.last().map(|e| e.log_id);
        let snapshot_id = meta
            .last_log_id
            .ok_or_else(|| anyhow::anyhow!("empty snapshot"))?;
        // As openraft does after an install: the log starts after it.
        flog.purge(snapshot_id).await?;
        flog.blocking_append(entries.clone()).await?;
        flog.save_committed(last).await?;
        follower.apply(entries).await?;
        assert_matches(&follower, &leader.reference, &leader.reference_blobs);
        drop((flog, follower));
        let (mut flog, mut follower) = reopen(follower_dir.path()).await?;
        StorageHelper::new(&mut flog, &mut follower)
            .get_initial_state()
            .await?;
        assert_eq!(follower.applied_state().await?.0, last);
        assert_matches(&follower, &leader.reference, &leader.reference_blobs);
        Ok(())
    })
    .await
}

/// A node's own snapshot (its core state without payloads) is never
/// installed: it would drop every payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_without_its_payloads_is_refused() -> anyhow::Result<()> {
    bounded(async {
        let leader_dir = tempfile::tempdir()?;
        let mut leader = Driver::start(leader_dir.path()).await?;
        leader.create_queue(common::QUEUE).await?;
        leader.workload(0).await?;
        let built = leader
            .sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await?;
        let kept = std::fs::read(built.snapshot.path())?;

        let follower_dir = tempfile::tempdir()?;
        let (_flog, mut follower) = open(follower_dir.path()).await?;
        let mut receiving = follower.begin_receiving_snapshot().await?;
        receiving.write_all(&kept).await?;
        let refused = follower
            .install_snapshot(&built.meta, receiving)
            .await
            .expect_err("a file without payloads must not be installed");
        assert!(
            refused.to_string().contains("without its payloads"),
            "{refused}"
        );
        assert_eq!(follower.applied_state().await?.0, None);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_truncated_snapshot_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    bounded(async {
        let leader_dir = tempfile::tempdir()?;
        let mut leader = Driver::start(leader_dir.path()).await?;
        leader.create_queue(common::QUEUE).await?;
        leader.workload(0).await?;
        leader
            .sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await?;
        let (meta, bytes) = snapshot_bytes(&mut leader.sm).await?;
        assert!(bytes.len() > 200, "a snapshot with content");

        let follower_dir = tempfile::tempdir()?;
        let (_flog, mut follower) = open(follower_dir.path()).await?;
        let mut flipped = bytes.clone();
        let middle = bytes.len() / 2;
        flipped[middle] ^= 0x40;
        let mut wrong_magic = bytes.clone();
        wrong_magic[0] = b'X';
        let mut trailing = bytes.clone();
        trailing.push(0);
        let mut huge_header = bytes.clone();
        huge_header[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let variants: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("magic only", bytes[..8].to_vec()),
            ("cut in half", bytes[..middle].to_vec()),
            ("last byte missing", bytes[..bytes.len() - 1].to_vec()),
            ("one bit flipped", flipped),
            ("wrong magic", wrong_magic),
            ("trailing byte", trailing),
            ("huge header length", huge_header),
        ];
        for (what, variant) in variants {
            let mut receiving = follower.begin_receiving_snapshot().await?;
            receiving.write_all(&variant).await?;
            let res = follower.install_snapshot(&meta, receiving).await;
            assert!(res.is_err(), "a snapshot with {what} was accepted");
        }

        // A valid file with a meta that is not the one it holds is refused too.
        let mut other_meta = meta.clone();
        other_meta.snapshot_id.push_str("-other");
        let mut receiving = follower.begin_receiving_snapshot().await?;
        receiving.write_all(&bytes).await?;
        assert!(follower
            .install_snapshot(&other_meta, receiving)
            .await
            .is_err());

        assert_eq!(
            follower.applied_state().await?,
            (None, StoredMembership::default())
        );
        assert!(follower.get_current_snapshot().await?.is_none());
        assert_eq!(follower.handle().digest()?, State::new().digest());
        assert_eq!(follower.handle().blob_count()?, 0);

        // The refused files are gone, and the store still opens clean.
        drop((_flog, follower));
        let (_flog, mut follower) = reopen(follower_dir.path()).await?;
        assert!(follower.get_current_snapshot().await?.is_none());
        let leftovers = std::fs::read_dir(follower_dir.path().join("snapshots"))?.count();
        assert_eq!(leftovers, 0, "no snapshot file is left behind");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_current_snapshot_stops_the_open_with_an_error() -> anyhow::Result<()> {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let mut d = Driver::start(dir.path()).await?;
        d.create_queue(common::QUEUE).await?;
        d.workload(0).await?;
        let snap = d.sm.get_snapshot_builder().await.build_snapshot().await?;
        let path = snap.snapshot.path().to_path_buf();
        drop(snap);
        drop(d);

        let bytes = std::fs::read(&path)?;
        std::fs::write(&path, &bytes[..bytes.len() - 3])?;
        let err = open(dir.path())
            .await
            .expect_err("a truncated snapshot must not load");
        assert!(err.to_string().contains("snapshot"), "{err}");
        Ok(())
    })
    .await
}

/// A replica's applied index and digest are read at one instant: while
/// entries are applied, every pair read matches the reference's digest at
/// that index. Read in two steps, an apply could slip between them and
/// pair a digest with the next index, which the chaos checker reported as
/// divergent replicas (X).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applied_index_and_its_digest_are_read_together() -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    /// Pairs the reader keeps; it stops reading at this many.
    const PAIRS_MAX: usize = 100_000;
    bounded(async {
        let dir = tempfile::tempdir()?;
        let mut driver = Driver::start(dir.path()).await?;
        driver.create_queue(common::QUEUE).await?;
        let mut expected = BTreeMap::new();
        expected.insert(driver.next_index - 1, driver.reference.digest());
        let handle = driver.sm.handle();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut pairs = Vec::new();
                while !stop.load(Ordering::Relaxed) && pairs.len() < PAIRS_MAX {
                    pairs.push(handle.applied_digest());
                }
                pairs
            })
        };
        for _ in 0..100 {
            driver.enqueue(common::QUEUE, 1, 10).await?;
            expected.insert(driver.next_index - 1, driver.reference.digest());
        }
        stop.store(true, Ordering::Relaxed);
        let pairs = reader
            .join()
            .map_err(|_| anyhow::anyhow!("the reader panicked"))?;
        let mut checked = 0;
        for pair in pairs {
            let (applied, digest) = pair?;
            if let Some(want) = applied.and_then(|l| expected.get(&l.index)) {
                anyhow::ensure!(
                    digest == *want,
                    "index {applied:?} read with another state's digest"
                );
                checked += 1;
            }
        }
        anyhow::ensure!(checked > 100, "only {checked} pairs read while applying");
        Ok(())
    })
    .await
}
