//! Issue 7: a damaged data file on one node of a real 3-node cluster is not
//! silently accepted. The node refuses to start, saying so; once its data
//! directory is moved aside it rejoins empty, catches up, and the cluster
//! has lost no acknowledged job.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

const Q: &str = "jobs";
const JOBS: u64 = 300;

/// What is damaged on the stopped follower.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// kill -9 (no flush: the entries are only in the write-ahead log),
    /// then one byte in the middle of the log file.
    WriteAheadLog,
    /// SIGTERM (a graceful stop flushes the memtables into table files),
    /// then one byte in the middle of every table (SST) file. The restart
    /// re-applies the log after the last snapshot, so it reads the log's
    /// table blocks and meets the damage before serving.
    TableFiles,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_damaged_log_refuses_to_start_and_rejoins_after_a_wipe() {
    damaged_node_refuses_to_start_and_rejoins_after_a_wipe(Damage::WriteAheadLog).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_damaged_table_files_refuses_to_start_and_rejoins_after_a_wipe() {
    damaged_node_refuses_to_start_and_rejoins_after_a_wipe(Damage::TableFiles).await;
}

fn files_with_extension(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect()
}

fn flip_middle_byte(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

async fn damaged_node_refuses_to_start_and_rejoins_after_a_wipe(damage: Damage) {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (mut run, leader) = start3().await;
        let victim = (1..=3).find(|i| *i != leader).unwrap();
        create_queue(&run.cluster, leader, Q, None).await;
        let mut q = queue(&run.cluster, leader).await;
        for chunk in 0..JOBS / 50 {
            let jobs = (0..50)
                .map(|k| job(&format!("j{}", chunk * 50 + k), &format!("g{}", k % 7)))
                .collect();
            for r in enqueue(&mut q, Q, jobs).await {
                assert_eq!(r.outcome, pb::EnqueueOutcome::Created as i32);
            }
        }
        let applied = run.cluster.status(leader).await.unwrap().applied_index;
        run.cluster
            .wait_applied(&[victim], applied, Duration::from_secs(30))
            .await
            .unwrap();

        let db = run.cluster.data_dir(victim).join("db");
        match damage {
            Damage::WriteAheadLog => {
                run.cluster.kill(victim);
                let wal = files_with_extension(&db, "log")
                    .into_iter()
                    .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
                    .expect("a write-ahead log");
                flip_middle_byte(&wal);
            }
            Damage::TableFiles => {
                run.cluster.stop(victim).unwrap();
                let tables = files_with_extension(&db, "sst");
                assert!(!tables.is_empty(), "a graceful stop leaves table files");
                for table in &tables {
                    flip_middle_byte(table);
                }
            }
        }

        // It refuses to start, and says why and what to do.
        run.cluster.spawn(victim).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = run.cluster.exit_status(victim) {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the damaged node kept running:\n{}",
                run.cluster.log_tail(victim, 20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        run.cluster.kill(victim);
        assert!(!status.success(), "{status}");
        let log = run.cluster.log_tail(victim, 20);
        assert!(log.contains("is damaged"), "{log}");
        assert!(log.contains("Move the directory aside"), "{log}");

        // Meanwhile the other two serve.
        let mut q = queue(&run.cluster, leader).await;
        let r = enqueue(&mut q, Q, vec![job("during", "g0")]).await;
        assert_eq!(r[0].outcome, pb::EnqueueOutcome::Created as i32);

        // Moved aside (wiped), it rejoins and catches up; nothing acked is
        // lost: every id is a duplicate through the rebuilt node.
        run.cluster.wipe(victim).unwrap();
        run.cluster.spawn(victim).unwrap();
        assert_same_state(&run.cluster, &[1, 2, 3], Duration::from_secs(60)).await;
        let mut through = queue(&run.cluster, victim).await;
        for chunk in 0..JOBS / 50 {
            let jobs = (0..50)
                .map(|k| job(&format!("j{}", chunk * 50 + k), &format!("g{}", k % 7)))
                .collect();
            for r in enqueue(&mut through, Q, jobs).await {
                assert_eq!(r.outcome, pb::EnqueueOutcome::Duplicate as i32, "{r:?}");
            }
        }
        let s = stats(&run.cluster, victim, Q).await;
        assert_eq!(s.next_offset, JOBS + 1, "{s:?}");
    })
    .await
    .expect("test timed out");
}
