//! A damaged data directory is refused, never silently accepted (issue 7).
//!
//! A node that quietly lost part of its Raft log after acknowledging it
//! could vote for a leader that lacks committed entries. So a record that
//! is damaged in the middle of the write-ahead log, or a damaged table
//! file, stops `open` with an error that names the directory; only a torn
//! last record (a write cut off by a crash, never acknowledged because its
//! fsync never returned) is dropped.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Driver;
use lockstep_store::open;
use openraft::storage::RaftLogStorage as _;

const TEST_TIME_MAX: Duration = Duration::from_secs(60);

async fn bounded<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::time::timeout(TEST_TIME_MAX, f)
        .await
        .map_err(|_| anyhow::anyhow!("the test did not finish within {TEST_TIME_MAX:?}"))?
}

fn files(dir: &Path, ext: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir.join("db"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    Ok(out)
}

fn flip(path: &Path, at: u64) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path)?;
    let i = usize::try_from(at)?;
    anyhow::ensure!(
        i < bytes.len(),
        "{} has only {} bytes",
        path.display(),
        bytes.len()
    );
    bytes[i] ^= 0x5a;
    std::fs::write(path, bytes)?;
    Ok(())
}

/// A store with a few hundred entries in its write-ahead log, closed.
async fn filled(dir: &Path) -> anyhow::Result<()> {
    let mut d = Driver::start(dir).await?;
    d.create_queue(common::QUEUE).await?;
    for round in 0..4 {
        d.workload(round).await?;
    }
    drop(d);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_in_the_middle_of_the_log_is_refused() -> anyhow::Result<()> {
    bounded(async {
        let dir = tempfile::tempdir()?;
        filled(dir.path()).await?;
        let wal = files(dir.path(), "log")?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no write-ahead log"))?;
        let len = std::fs::metadata(&wal)?.len();
        flip(&wal, len / 2)?;
        let err = open(dir.path())
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a log damaged in the middle was opened as if whole"))?;
        let text = err.to_string();
        assert!(text.contains("Corruption"), "{text}");
        assert!(
            text.contains(&dir.path().display().to_string()),
            "names the directory: {text}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_dropped_and_the_rest_kept() -> anyhow::Result<()> {
    bounded(async {
        let dir = tempfile::tempdir()?;
        filled(dir.path()).await?;
        let wal = files(dir.path(), "log")?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no write-ahead log"))?;
        let len = std::fs::metadata(&wal)?.len();
        // Cut the file inside its last record, as a crash mid-write does.
        let f = std::fs::OpenOptions::new().write(true).open(&wal)?;
        f.set_len(len - 7)?;
        drop(f);
        let (mut log, _sm) = open(dir.path()).await?;
        let last = log.get_log_state().await?.last_log_id;
        assert!(
            last.is_some_and(|id| id.index > 10),
            "the intact prefix is kept: {last:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_table_file_is_refused() -> anyhow::Result<()> {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let mut d = Driver::start(dir.path()).await?;
        d.create_queue(common::QUEUE).await?;
        for round in 0..4 {
            d.workload(round).await?;
        }
        d.log.flush().await?;
        drop(d);
        let sst = files(dir.path(), "sst")?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no table file after a flush"))?;
        let len = std::fs::metadata(&sst)?.len();
        // Inside the data blocks, well before the footer.
        flip(&sst, len / 3)?;
        let refused = match open(dir.path()).await {
            Err(e) => Some(format!("at open: {e}")),
            // Opened: then reading the log (what a restarted node does
            // first) must fail rather than return damaged entries.
            Ok((mut log, _sm)) => {
                use openraft::storage::RaftLogReader as _;
                let last = log
                    .get_log_state()
                    .await?
                    .last_log_id
                    .map_or(0, |l| l.index);
                log.try_get_log_entries(0..last + 1)
                    .await
                    .err()
                    .map(|e| format!("at the first read: {e}"))
            }
        };
        let text =
            refused.ok_or_else(|| anyhow::anyhow!("a damaged table file was read as if whole"))?;
        assert!(
            text.contains("Corruption") || text.contains("checksum"),
            "{text}"
        );
        eprintln!("refused {text}");
        Ok(())
    })
    .await
}
