//! The node's side of the vote guard (`lockstep_raft::VoteGuard`): raising
//! it, synced, before Raft starts on an empty directory; keeping openraft
//! from campaigning while it is up; and lifting it once this node has
//! applied a commit index the leader confirmed with a majority.

use std::sync::Arc;
use std::time::Duration;

use lockstep_raft::{Forwarding, VoteGuard};
use lockstep_store::LogStore;
use lockstep_types::forward::{Read, ReadReply, Request, Response};
use lockstep_types::TypeConfig;
use openraft::Raft;
use tokio::sync::watch;

use crate::error::RunError;

/// How often a guarded node asks the leader for its confirmed commit index
/// and looks whether it has applied up to it.
const GUARD_CHECK_MS: u64 = 250;
/// Deadline of one such question to the leader.
const GUARD_ASK_MS_MAX: u64 = 2_000;

/// The vote guard with what raising and lifting it touch: the store that
/// records it and the Raft that must not campaign while it is up.
#[derive(Clone, Debug)]
pub(crate) struct Guard {
    pub(crate) vote: Arc<VoteGuard>,
    store: LogStore,
}

impl Guard {
    /// Reads the guard's state at start: up when the store says it was left
    /// up, or when the store is empty (`fresh`), in which case it is
    /// recorded, synced, before Raft can start.
    pub(crate) async fn open(store: LogStore, fresh: bool) -> Result<Guard, RunError> {
        let recorded = store.read_guarded().await?;
        if fresh && !recorded {
            store.save_guarded(true).await?;
        }
        // Planted bug (tests only): the recorded guard is forgotten.
        let guarded = fresh || (recorded && !crate::planted("guard-not-persisted"));
        if guarded {
            tracing::info!(
                fresh,
                "vote guard up: this node neither votes nor campaigns until it has applied a \
                 commit index the leader confirmed with a majority"
            );
        }
        Ok(Guard {
            vote: Arc::new(VoteGuard::new(guarded)),
            store,
        })
    }

    /// Whether the guard is up.
    pub(crate) fn is_up(&self) -> bool {
        !self.vote.allowed()
    }

    /// Lifts the guard: recorded, synced, first, so a crash right after
    /// voting never restarts guarded-yet-voted or voted-yet-unrecorded;
    /// then campaigning is allowed again.
    pub(crate) async fn lift(&self, raft: &Raft<TypeConfig>) -> Result<(), RunError> {
        if self.vote.allowed() {
            return Ok(());
        }
        self.store.save_guarded(false).await?;
        self.vote.allow();
        raft.runtime_config().elect(true);
        Ok(())
    }
}

/// While the guard is up: asks the leader for its confirmed commit index,
/// and lifts the guard once this node has applied up to it. Ends when the
/// guard is lifted or `stop` turns true.
pub(crate) async fn run(
    guard: Guard,
    raft: Raft<TypeConfig>,
    forwarding: Forwarding,
    mut stop: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(Duration::from_millis(GUARD_CHECK_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while guard.is_up() {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let asked = forwarding
            .to_leader_once(
                &Request::Read(Read::ConfirmedCommit),
                Duration::from_millis(GUARD_ASK_MS_MAX),
            )
            .await;
        match asked {
            Ok(Response::Read(Ok(ReadReply::ConfirmedCommit(index)))) => {
                guard.vote.confirmed(index)
            }
            Ok(other) => tracing::debug!(?other, "vote guard: no confirmed commit index yet"),
            Err(status) => tracing::debug!(%status, "vote guard: the leader did not answer"),
        }
        let applied = raft.metrics().borrow().last_applied.map(|l| l.index);
        if guard.vote.may_lift(applied) {
            if let Err(e) = guard.lift(&raft).await {
                tracing::warn!(error = %e, "vote guard: cannot record the lift; retrying");
            }
        }
    }
}
