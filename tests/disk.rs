//! A full disk: a node whose data directory falls below
//! `limits.disk_free_bytes_min` refuses, as leader, what makes the state
//! grow with a code that names the key, keeps finishing work, and takes
//! writes again by itself once space returns. The three nodes' data
//! directories sit on one small tmpfs the test fills and frees (mounting
//! needs root, as the gate runs).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const Q: &str = "jobs";
/// The tmpfs holding the three data directories.
const TMPFS_SIZE: &str = "size=192m";
/// The reserve the nodes keep, and what the test leaves free when it fills
/// the disk (below it).
const RESERVE_BYTES: u64 = 64 * 1024 * 1024;
const LEFT_FREE_BYTES: u64 = 24 * 1024 * 1024;
/// How long the nodes may take to notice (they read every 500 ms).
const NOTICE_MAX: Duration = Duration::from_secs(10);

/// Unmounts the tmpfs when the test ends, however it ends.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(dir).unwrap();
    s.blocks_available() * s.fragment_size()
}

/// Writes zeros to `path` until `dir` has about `left` bytes free (a tmpfs
/// counts only pages written, so the file is written, not allocated).
fn fill(dir: &Path, path: &Path, left: u64) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1024 * 1024];
    while free_bytes(dir) > left + chunk.len() as u64 {
        file.write_all(&chunk).unwrap();
    }
    file.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_growth_by_name_keeps_acks_and_recovers_by_itself() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "mounting the test's tmpfs needs root (the gate runs as root)"
    );
    tokio::time::timeout(TEST_TIMEOUT, async {
        let outer = tempfile::tempdir().unwrap();
        let data = outer.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", TMPFS_SIZE, "tmpfs"])
            .arg(&data)
            .status()
            .unwrap();
        assert!(mounted.success(), "mount a tmpfs at {}", data.display());
        let _tmpfs = Tmpfs(data.clone());

        let mut spec = Spec::new(lockstep_harness::lockstep_binary(), &data)
            .set("raft.rpc_timeout_ms", 1_000)
            .set("limits.disk_free_bytes_min", RESERVE_BYTES);
        spec.log = "info,openraft=warn".into();
        let cluster = Cluster::start(spec, 3, 3).unwrap();
        cluster.bootstrap(3).await.unwrap();
        let leader = cluster.wait_leader(&[1, 2, 3], ELECTION_MAX).await.unwrap();
        let follower = (1..=3).find(|i| *i != leader).unwrap();
        create_queue(&cluster, leader, Q, None).await;
        let mut q = queue(&cluster, follower).await;
        let jobs: Vec<pb::Job> = (0..10).map(|k| job(&format!("before-{k}"), "g")).collect();
        for r in enqueue(&mut q, Q, jobs).await {
            assert_eq!(r.outcome, pb::EnqueueOutcome::Created as i32, "{r:?}");
        }
        let held = fetch(&mut q, Q, "w", 1).await;
        assert_eq!(held.len(), 1);

        // The disk fills: an enqueue through a follower is refused by the
        // leader, by name, and nothing is stored.
        let filler = data.join("filler");
        fill(&data, &filler, LEFT_FREE_BYTES);
        let deadline = Instant::now() + NOTICE_MAX;
        // Tries before the nodes notice may still store it (once: one id).
        let mut stored = 0;
        let refused = loop {
            let r = q
                .enqueue(pb::EnqueueRequest {
                    queue: Q.into(),
                    jobs: vec![job("during", "h")],
                    session: None,
                })
                .await;
            match r {
                Err(s) if s.code() == tonic::Code::ResourceExhausted => break s,
                Ok(resp)
                    if resp.get_ref().results[0].outcome == pb::EnqueueOutcome::Created as i32 =>
                {
                    stored = 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ if Instant::now() > deadline => {
                    panic!("no refusal within {NOTICE_MAX:?} of filling the disk: {r:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        assert!(
            refused.message().contains("limits.disk_free_bytes_min"),
            "{refused:?}"
        );
        // Work already handed out still finishes, and reads still answer.
        let acked = ack(&mut q, Q, &[(held[0].offset, held[0].fence)]).await;
        assert_eq!(acked[0].code, 0, "{acked:?}");
        let s = stats(&cluster, leader, Q).await;
        assert_eq!(
            s.next_offset,
            10 + stored,
            "a refused job is not stored: {s:?}"
        );

        // Space returns: writes resume by themselves, and every job
        // acknowledged before is there.
        std::fs::remove_file(&filler).unwrap();
        let deadline = Instant::now() + NOTICE_MAX;
        loop {
            let r = q
                .enqueue(pb::EnqueueRequest {
                    queue: Q.into(),
                    jobs: vec![job("after", "h")],
                    session: None,
                })
                .await;
            match r {
                Ok(_) => break,
                Err(s) if Instant::now() > deadline => {
                    panic!("writes did not resume within {NOTICE_MAX:?} of freeing space: {s:?}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let s = stats(&cluster, leader, Q).await;
        assert_eq!(s.next_offset, 11 + stored, "{s:?}");
        assert_eq!(
            s.ready,
            10 + stored,
            "nine left of the first ten, and the new ones: {s:?}"
        );
        drop(cluster);
    })
    .await
    .expect("test finished within its timeout");
}
