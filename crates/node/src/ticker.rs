//! The leader's ticker: proposes a `Tick` whenever a lease or a delay is
//! due, so leases expire and delayed jobs become ready without client
//! traffic. "Due" is by the leader's cluster clock, the one the batcher
//! stamps with, never by the wall clock: a wall clock stepped ahead would
//! expire leases early, one stepped back would hold delayed jobs.
//!
//! It also proposes one `Tick` when a guarded member asked for entries
//! (`lockstep_raft::EntriesWanted`): an idle leader sends only empty
//! AppendEntries, which such a member may not answer with a conflict, so
//! without an entry it would never catch up and lift its guard.

use std::sync::Arc;
use std::time::Duration;

use lockstep_core::Command;
use tokio::sync::watch;

use crate::every::Every;
use crate::node::Node;

/// How often the leader's ticker checks for due leases and delays. A lease
/// expires at most this much after its deadline (plus a commit).
const TICK_CHECK_MS: u64 = 50;

/// While `node` leads, proposes a `Tick` whenever a lease or a delay is
/// due. Ends when `stop` turns true.
pub(crate) async fn run(node: Arc<Node>, stop: watch::Receiver<bool>) {
    let mut every = Every::new(Duration::from_millis(TICK_CHECK_MS), stop);
    loop {
        if !every.tick().await {
            return;
        }
        let leading = node.raft.metrics().borrow().current_leader == Some(node.id);
        if !leading {
            continue;
        }
        let due = node.state.read(|s| s.next_due_ms()).ok().flatten();
        let wanted = node.entries_wanted.take();
        if wanted || due.is_some_and(|t| t <= node.clock.now_ms()) {
            if let Err(failure) = node.batcher.submit(Command::Tick).await {
                tracing::debug!(?failure, "tick not applied");
            }
        }
    }
}
