//! What a stop takes from a simulated disk (`MemoryDisk`): nothing a node
//! synced, and, under the planted `ack-before-fsync`, every write after the
//! last sync, as a power cut takes it. The node-layer simulator catches
//! that bug only because of this (tests/chaos/README.md, Table 3).
#![cfg(feature = "planted-bugs")]

use std::path::Path;
use std::time::Duration;

use lockstep_store::{open_in_memory, run_inline_on_this_thread, LogStore, MemoryDisk};
use lockstep_types::{Entry, LogId};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, Vote};

/// Every test ends well within this, or fails.
const TEST_TIME_MAX: Duration = Duration::from_secs(60);

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

async fn append(log: &mut LogStore, indexes: std::ops::Range<u64>) -> anyhow::Result<()> {
    let entries = indexes.map(|index| Entry {
        log_id: log_id(index),
        payload: EntryPayload::Blank,
    });
    log.blocking_append(entries).await?;
    Ok(())
}

/// The last index in the log after the node on `disk` stopped and started
/// again.
async fn last_after_restart(disk: &MemoryDisk, dir: &Path) -> anyhow::Result<Option<u64>> {
    let (mut log, _sm) = open_in_memory(disk, dir)?;
    Ok(log.get_log_state().await?.last_log_id.map(|id| id.index))
}

/// Runs `f` as the simulator runs storage work: inline, on one thread.
fn simulated<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    run_inline_on_this_thread(true);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        tokio::time::timeout(TEST_TIME_MAX, f)
            .await
            .map_err(|_| anyhow::anyhow!("the test did not finish within {TEST_TIME_MAX:?}"))?
    });
    run_inline_on_this_thread(false);
    result
}

/// One test, so the process-wide planted switch is never flipped under
/// another test of this binary.
#[test]
fn a_stop_loses_only_what_was_never_synced() -> anyhow::Result<()> {
    simulated(async {
        let dir = tempfile::tempdir()?;
        let dir = dir.path();

        // A correct node syncs each append: a stop loses none of it.
        lockstep_core::planted::clear();
        let disk = MemoryDisk::new()?;
        {
            let (mut log, _sm) = open_in_memory(&disk, dir)?;
            append(&mut log, 0..5).await?;
        }
        assert_eq!(last_after_restart(&disk, dir).await?, Some(4));

        // The planted bug acknowledges appends it never synced: the stop
        // takes every one of them.
        lockstep_core::planted::plant(lockstep_core::planted::Bug::AckBeforeFsync);
        let disk = MemoryDisk::new()?;
        {
            let (mut log, _sm) = open_in_memory(&disk, dir)?;
            append(&mut log, 0..3).await?;
            // A synced write (a vote) covers every write before it, as one
            // fsync of the write-ahead log does.
            log.save_vote(&Vote::new(1, 1)).await?;
            append(&mut log, 3..8).await?;
        }
        let last = last_after_restart(&disk, dir).await;
        lockstep_core::planted::clear();
        assert_eq!(last?, Some(2), "the appends after the vote are lost");
        Ok(())
    })
}
