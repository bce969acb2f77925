//! Small disks: in a run whose profile may fill one (`disk-full`, and
//! `compound` and `mixed`, which draw it), each node's data directory sits
//! on its own size-capped tmpfs, and the `disk-full` fault fills one of
//! them with a filler file and frees it again.
//!
//! A fill leaves the node below its reserve (`limits.disk_free_bytes_min`)
//! but never at 0 bytes. A node whose disk is really full exits at its
//! first failed write (the reserve exists so that it does not), and
//! comes back only when restarted: so it cannot recover by itself, which
//! is what this fault checks. `tests/chaos/README.md` says what a really
//! full disk did when tried.
//!
//! The tmpfs of node `id` is mounted at `<dir>/disk-<id>`; the node's data
//! directory is `<dir>/disk-<id>/n<id>` (a subdirectory, so a wipe deletes
//! it and the mount stays) and the filler `<dir>/disk-<id>/filler`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lockstep_harness::Tmpfs;
use lockstep_proto as pb;
use rand::rngs::StdRng;
use rand::Rng;
use tonic::transport::Channel;

const MIB: u64 = 1024 * 1024;
/// Size of each node's tmpfs: a few times what a node writes in a long
/// run, so only the fault fills it.
pub(super) const DISK_SIZE_BYTES: u64 = 256 * MIB;
/// The nodes' `limits.disk_free_bytes_min` on these disks (the default,
/// 256 MiB, is the whole disk here).
pub(super) const DISK_RESERVE_BYTES: u64 = 64 * MIB;
/// What a fill leaves free, drawn between these, below the reserve: room
/// for what a node still writes while below it, for the whole hold (at
/// most 15 s), many times over. A follower appends all the leader sends,
/// a leader its acks and the rest; a debug-build node wrote about 50 KB/s
/// under the chaos workload.
const LEFT_BYTES_MIN: u64 = 16 * MIB;
const LEFT_BYTES_MAX: u64 = 48 * MIB;

/// The setting a leader names when it refuses for lack of disk space.
const RESERVE_KEY: &str = "limits.disk_free_bytes_min";
/// A queue never created. A leader checks its disk before anything else,
/// so an enqueue into this queue is refused (RESOURCE_EXHAUSTED, naming
/// [`RESERVE_KEY`]) while its disk is below the reserve and answered
/// NOT_FOUND otherwise: either way nothing is written, and the history
/// never sees it.
const PROBE_QUEUE: &str = "chaos-disk-probe";
/// How long a node may take to notice its free space crossed the reserve,
/// either way: it reads it every 500 ms; the rest is a loaded machine's
/// slack.
pub(super) const NOTICE_MS_MAX: u64 = 5_000;
/// Bound on one probe call (a NOT_FOUND takes a read-index round).
const PROBE_CALL_MS_MAX: u64 = 2_000;
/// Pause between probes.
const PROBE_EVERY_MS: u64 = 200;

/// The mount point of node `id`'s tmpfs.
fn mount_point(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("disk-{id}"))
}

/// `Spec::data_dir` for nodes on these disks.
pub(super) fn data_dir_pattern(dir: &Path) -> String {
    dir.join("disk-{id}").join("n{id}").display().to_string()
}

fn filler(dir: &Path, id: u64) -> PathBuf {
    mount_point(dir, id).join("filler")
}

/// The nodes' tmpfs, unmounted when dropped: drop it after the cluster.
#[derive(Debug)]
pub(super) struct Disks {
    _mounts: Vec<Tmpfs>,
}

/// Mounts a tmpfs of [`DISK_SIZE_BYTES`] for each of `ids` under `dir`.
/// Needs root; says so in one line otherwise.
pub(super) fn mount(dir: &Path, ids: &[u64]) -> Result<Disks, String> {
    let mut mounts = Vec::new();
    for id in ids {
        let mounted =
            Tmpfs::mount(&mount_point(dir, *id), DISK_SIZE_BYTES).map_err(|e| e.to_string())?;
        mounts.push(mounted);
    }
    Ok(Disks { _mounts: mounts })
}

/// Draws how many bytes the next fill leaves free.
pub(super) fn draw_left(rng: &mut StdRng) -> u64 {
    rng.random_range(LEFT_BYTES_MIN..=LEFT_BYTES_MAX)
}

/// Fills node `id`'s disk until `left` bytes are free; returns the bytes
/// free after.
pub(super) async fn fill(dir: &Path, id: u64, left: u64) -> Result<u64, String> {
    let (mount, filler) = (mount_point(dir, id), filler(dir, id));
    // Writing up to 256 MiB blocks; keep it off the runtime's threads.
    tokio::task::spawn_blocking(move || lockstep_harness::fill(&mount, &filler, left))
        .await
        .map_err(|e| format!("fill node {id}'s disk: {e}"))?
        .map_err(|e| e.to_string())
}

/// Gives node `id`'s disk its space back (no filler is no error).
pub(super) fn unfill(dir: &Path, id: u64) -> Result<(), String> {
    lockstep_harness::unfill(&filler(dir, id)).map_err(|e| e.to_string())
}

/// What a node answered a probe enqueue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Probe {
    /// Refused for disk space, naming the reserve's key.
    Refused,
    /// Past the disk check (NOT_FOUND: the probe queue does not exist).
    Taken,
    /// Anything else: no leader, a timeout, another refusal.
    Unknown(String),
}

async fn probe(channel: &Channel) -> Probe {
    let mut client = pb::queue_client::QueueClient::new(channel.clone());
    let call = client.enqueue(pb::EnqueueRequest {
        queue: PROBE_QUEUE.into(),
        jobs: vec![pb::Job {
            id: Some("probe".into()),
            payload: vec![b'p'; 8],
            ..Default::default()
        }],
        session: None,
    });
    match tokio::time::timeout(Duration::from_millis(PROBE_CALL_MS_MAX), call).await {
        Err(_) => Probe::Unknown(format!("no answer within {PROBE_CALL_MS_MAX} ms")),
        Ok(Err(s))
            if s.code() == tonic::Code::ResourceExhausted && s.message().contains(RESERVE_KEY) =>
        {
            Probe::Refused
        }
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => Probe::Taken,
        Ok(Err(s)) => Probe::Unknown(format!("{:?}: {}", s.code(), s.message())),
        Ok(Ok(_)) => Probe::Unknown(format!("{PROBE_QUEUE} exists")),
    }
}

/// Probes through `channel` until the answer is `want` or
/// [`NOTICE_MS_MAX`] has passed; returns the milliseconds taken and the
/// last answer.
pub(super) async fn probe_until(channel: &Channel, want: &Probe) -> (u64, Probe) {
    let start = Instant::now();
    let deadline = start + Duration::from_millis(NOTICE_MS_MAX);
    loop {
        let answer = probe(channel).await;
        if &answer == want || Instant::now() >= deadline {
            return (start.elapsed().as_millis() as u64, answer);
        }
        tokio::time::sleep(Duration::from_millis(PROBE_EVERY_MS)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rand::SeedableRng;

    use super::*;

    #[test]
    fn a_fill_leaves_the_disk_below_the_reserve_but_never_empty() {
        let mut rng = StdRng::seed_from_u64(5);
        let draws: Vec<u64> = (0..1_000).map(|_| draw_left(&mut rng)).collect();
        for left in &draws {
            assert!(*left < DISK_RESERVE_BYTES, "{left}");
            assert!(*left >= LEFT_BYTES_MIN && LEFT_BYTES_MIN > 0, "{left}");
        }
        assert!(
            draws.iter().any(|l| *l < LEFT_BYTES_MIN + MIB)
                && draws.iter().any(|l| *l > LEFT_BYTES_MAX - MIB),
            "the whole range is drawn"
        );
    }

    #[test]
    fn the_reserve_and_the_fill_fit_the_disk() {
        const { assert!(LEFT_BYTES_MAX < DISK_RESERVE_BYTES) };
        const { assert!(DISK_RESERVE_BYTES < DISK_SIZE_BYTES / 2) };
    }

    #[test]
    fn the_same_seed_draws_the_same_fills() {
        let draws = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20).map(|_| draw_left(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draws(3), draws(3));
    }

    #[test]
    fn data_directories_sit_inside_their_mounts() {
        let dir = Path::new("/run/x");
        assert_eq!(data_dir_pattern(dir), "/run/x/disk-{id}/n{id}");
        assert!(filler(dir, 2).starts_with(mount_point(dir, 2)));
    }
}
