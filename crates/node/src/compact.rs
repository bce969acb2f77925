//! Snapshots and log purges by payload bytes, beside openraft's by entries.
//!
//! openraft 0.9 snapshots after a number of entries and keeps a number of
//! entries behind the snapshot. An entry may carry a few hundred bytes or a
//! megabyte of payload, so counting entries bounds neither: with 1,000,000
//! pending 1 KiB jobs in calls of 100 (2,700 entries) no snapshot was ever
//! due, and every payload sat in the log as well as in the payload store.
//! So the node also asks for a snapshot once the log carried
//! `raft.snapshot_every_bytes` of payload since the last one, and purges the
//! log up to the newest snapshot that leaves `raft.log_bytes_kept` of
//! payload after it. A snapshot no longer copies the payloads (the store
//! writes them only into a snapshot it sends), so it costs the core state.
//!
//! Both are requests: openraft builds one snapshot at a time, purges only
//! what a snapshot covers, and waits for replication that still reads the
//! entries. Its purge on request ignores `raft.logs_kept_after_snapshot`,
//! and a snapshot being sent does not hold a purge back, so a leader never
//! asks to purge past the entries its slowest follower has: a follower
//! catching up (by the log, or by a snapshot that takes longer to send
//! than the cluster takes to write `raft.log_bytes_kept`) then finds the
//! entries after it, instead of needing snapshot after snapshot (openraft
//! #1706). A follower that stays away holds the byte purge back; the
//! entry bounds still purge.

use std::sync::Arc;
use std::time::Duration;

use lockstep_store::LogPayload;
use tokio::sync::watch;

use crate::every::Every;
use crate::node::Node;

/// How often the log's payload bytes are read.
const COMPACT_CHECK_MS: u64 = 500;

/// Checks every [`COMPACT_CHECK_MS`] until `stop` turns true.
pub(crate) async fn run(node: Arc<Node>, stop: watch::Receiver<bool>) {
    let mut every = Every::new(Duration::from_millis(COMPACT_CHECK_MS), stop);
    let mut asked = Asked::default();
    while every.tick().await {
        check(&node, &mut asked).await;
    }
}

/// The last purge asked for, so it is not asked again while openraft
/// waits on replication to do it.
#[derive(Debug, Default)]
struct Asked {
    purged_upto: Option<u64>,
}

/// Asks for a snapshot or a purge when the log's payload calls for one.
async fn check(node: &Node, asked: &mut Asked) {
    let r = &node.config.raft;
    let log = match node.state.log_payload(r.log_bytes_kept) {
        Ok(log) => log,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the log's payload bytes");
            return;
        }
    };
    // A leader purges up to its slowest follower's matched entry.
    let slowest = node
        .raft
        .metrics()
        .borrow()
        .replication
        .as_ref()
        .map(|replication| {
            replication
                .values()
                .map(|matched| matched.map_or(0, |id| id.index))
                .min()
                .unwrap_or(u64::MAX)
        });
    let (snapshot, purge) = due(log, r.snapshot_every_bytes, slowest, asked);
    if snapshot {
        tracing::debug!(
            payload_bytes = log.since_snapshot,
            "the log carried raft.snapshot_every_bytes since the last snapshot: snapshotting"
        );
        if let Err(e) = node.raft.trigger().snapshot().await {
            tracing::warn!(error = %e, "cannot ask for a snapshot");
        }
    }
    if let Some(upto) = purge {
        asked.purged_upto = Some(upto);
        if let Err(e) = node.raft.trigger().purge_log(upto).await {
            tracing::warn!(error = %e, upto, "cannot ask for a log purge");
        }
    }
}

/// Whether to ask for a snapshot, and up to where to purge: the log's
/// purge point, capped at `slowest` (a leader's slowest follower's matched
/// index), when it is past what was asked for already.
///
/// A snapshot is asked for at every check while the count is over: openraft
/// ignores the ask while it builds one, and the capture of the next resets
/// the count.
fn due(
    log: LogPayload,
    snapshot_every_bytes: u64,
    slowest: Option<u64>,
    asked: &Asked,
) -> (bool, Option<u64>) {
    let snapshot = log.since_snapshot >= snapshot_every_bytes;
    let purge = log
        .purge_upto
        .map(|upto| slowest.map_or(upto, |slowest| upto.min(slowest)))
        .filter(|&upto| upto > 0 && asked.purged_upto.is_none_or(|done| upto > done));
    (snapshot, purge)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(since_snapshot: u64, purge_upto: Option<u64>) -> LogPayload {
        LogPayload {
            since_snapshot,
            purge_upto,
        }
    }

    #[test]
    fn a_snapshot_is_asked_for_while_the_count_is_over() {
        let asked = Asked::default();
        assert_eq!(due(log(99, None), 100, None, &asked), (false, None));
        assert_eq!(due(log(100, None), 100, None, &asked), (true, None));
        assert_eq!(due(log(150, None), 100, None, &asked), (true, None));
    }

    #[test]
    fn a_purge_is_asked_for_once_per_snapshot() {
        let mut asked = Asked::default();
        assert_eq!(due(log(0, Some(40)), 100, None, &asked), (false, Some(40)));
        asked.purged_upto = Some(40);
        assert_eq!(due(log(0, Some(40)), 100, None, &asked), (false, None));
        assert_eq!(due(log(0, Some(90)), 100, None, &asked), (false, Some(90)));
    }

    #[test]
    fn a_leader_purges_no_further_than_its_slowest_follower() {
        let mut asked = Asked::default();
        assert_eq!(
            due(log(0, Some(90)), 100, Some(30), &asked),
            (false, Some(30))
        );
        asked.purged_upto = Some(30);
        assert_eq!(due(log(0, Some(90)), 100, Some(30), &asked), (false, None));
        assert_eq!(
            due(log(0, Some(90)), 100, Some(0), &asked),
            (false, None),
            "nothing matched"
        );
        assert_eq!(
            due(log(0, Some(90)), 100, Some(120), &asked),
            (false, Some(90))
        );
    }
}
