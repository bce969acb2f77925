//! The data directory's free space, and the rule it feeds.
//!
//! A write that meets a full disk fails inside RocksDB before it is
//! acknowledged, so nothing acknowledged is lost; but the failed write stops
//! Raft, and the node exits, to return only when restarted. So a node keeps
//! a reserve: while its data directory has less than
//! `limits.disk_free_bytes_min` free, it refuses, as leader, what makes the
//! state grow (enqueues, fetches, new queues, new sessions) with
//! RESOURCE_EXHAUSTED naming the key, and lets through what finishes work
//! (acks, nacks, releases, dead-letters, extends, purges, deletes), whose
//! entries are small. When space returns, the next check lifts the refusal:
//! nothing to restart. etcd's NOSPACE alarm refuses puts and keeps deletes
//! the same way.
//!
//! Only the leader's own disk is read: a follower low on space still
//! appends what the leader sends, from its reserve.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lockstep_core::Command;
use tokio::sync::watch;

use crate::every::Every;
use crate::metrics::registry::Metrics;

/// How often the free space is read.
pub(crate) const DISK_CHECK_MS: u64 = 500;

/// The data directory's free space as last read, against the reserve.
#[derive(Debug)]
pub(crate) struct DiskSpace {
    dir: PathBuf,
    /// `limits.disk_free_bytes_min`; 0 turns the rule off.
    min: u64,
    free: AtomicU64,
    low: AtomicBool,
}

impl DiskSpace {
    pub(crate) fn new(dir: PathBuf, min: u64) -> Arc<DiskSpace> {
        Arc::new(DiskSpace {
            dir,
            min,
            free: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
        })
    }

    /// Reads the free space now; logs when it crosses the reserve.
    pub(crate) fn check(&self) -> Option<u64> {
        let free = free_bytes(&self.dir)?;
        self.free.store(free, Ordering::Relaxed);
        let low = self.min > 0 && free < self.min;
        if self.low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::warn!(
                    free,
                    min = self.min,
                    dir = %self.dir.display(),
                    "the data directory is below limits.disk_free_bytes_min: this node, as \
                     leader, refuses enqueues, fetches, new queues and new sessions until \
                     space returns; acks and the rest still work"
                );
            } else {
                tracing::info!(free, min = self.min, "disk space is back above the reserve");
            }
        }
        Some(free)
    }

    /// The refusal (RESOURCE_EXHAUSTED, naming the key) of a command that
    /// grows the state while the disk is below the reserve; `None`
    /// otherwise. A reply, not a transport error, so a forwarding follower
    /// relays it as certain: nothing was proposed.
    pub(crate) fn refusal(&self, command: &Command) -> Option<lockstep_core::Error> {
        if !self.low.load(Ordering::Relaxed) || !grows(command) {
            return None;
        }
        Some(lockstep_core::Error::ResourceExhausted {
            limit: "limits.disk_free_bytes_min".into(),
            max: self.min,
            message: format!(
                "disk full: the leader's data directory has {} bytes free; enqueues, fetches, \
                 new queues and new sessions are refused until space returns (acks and the \
                 rest still work)",
                self.free.load(Ordering::Relaxed)
            ),
        })
    }
}

/// Whether `command` makes the state grow (and so waits for disk space).
fn grows(command: &Command) -> bool {
    match command {
        Command::Sequenced { command, .. } | Command::InSubscription { command, .. } => {
            grows(command)
        }
        Command::Enqueue { .. }
        | Command::Fetch { .. }
        | Command::CreateQueue { .. }
        | Command::CreateSubscription { .. }
        | Command::OpenSession => true,
        _ => false,
    }
}

/// Free bytes for an unprivileged writer on the filesystem of `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => Some(s.blocks_available().saturating_mul(s.fragment_size())),
        Err(e) => {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot read the free disk space");
            None
        }
    }
}

/// Reads the free space every [`DISK_CHECK_MS`] until `stop` turns true.
pub(crate) async fn run(space: Arc<DiskSpace>, metrics: Arc<Metrics>, stop: watch::Receiver<bool>) {
    let mut every = Every::new(Duration::from_millis(DISK_CHECK_MS), stop);
    loop {
        if !every.tick().await {
            return;
        }
        let reading = {
            let space = space.clone();
            tokio::task::spawn_blocking(move || space.check()).await
        };
        if let Ok(Some(free)) = reading {
            metrics.observe_disk_free(free);
        }
    }
}
