//! The node's side of the vote guard (`lockstep_raft::VoteGuard`): raising
//! it, synced, before Raft starts on an empty directory; keeping the elector
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
use crate::every::Every;

/// How often a guarded node asks the leader for its confirmed commit index
/// and looks whether it has applied up to it.
const GUARD_CHECK_MS: u64 = 250;
/// Deadline of one such question to the leader, and of one probe of a
/// member for its term.
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
        let vote = Arc::new(VoteGuard::new(guarded));
        // Planted bug (tests only): appends from any leader are
        // acknowledged, as if the newest term were known to be 0.
        if crate::planted("guard-acks-stale-leader") {
            vote.learned_floor(0);
        }
        Ok(Guard { vote, store })
    }

    /// The id of this node's last log entry, as its store holds it (the
    /// elector's pre-vote compares logs as a vote would).
    pub(crate) async fn last_log_id(&self) -> Result<Option<lockstep_types::LogId>, RunError> {
        use openraft::storage::RaftLogStorage;
        let state = self
            .store
            .clone()
            .get_log_state()
            .await
            .map_err(|e| RunError::Raft(e.to_string()))?;
        Ok(state.last_log_id)
    }

    /// Whether the guard is up.
    pub(crate) fn is_up(&self) -> bool {
        !self.vote.allowed()
    }

    /// Lifts the guard: recorded, synced, first, so a crash right after
    /// voting never restarts guarded-yet-voted or voted-yet-unrecorded;
    /// then the elector may campaign again (`crate::elector`).
    pub(crate) async fn lift(&self) -> Result<(), RunError> {
        if self.vote.allowed() {
            return Ok(());
        }
        self.store.save_guarded(false).await?;
        self.vote.allow();
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
    stop: watch::Receiver<bool>,
) {
    let mut every = Every::new(Duration::from_millis(GUARD_CHECK_MS), stop);
    while guard.is_up() {
        if !every.tick().await {
            return;
        }
        if guard.vote.floor().is_none() {
            if let Some(floor) = probe_terms(&raft, &forwarding, &guard.vote).await {
                tracing::info!(
                    floor,
                    "vote guard: a majority of the other members reported their terms; \
                     appends are acknowledged from leaders of term {floor} or later"
                );
                guard.vote.learned_floor(floor);
            }
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
            if let Err(e) = guard.lift().await {
                tracing::warn!(error = %e, "vote guard: cannot record the lift; retrying");
            }
        }
    }
}

/// Asks every other voter of the membership this node holds for the term of
/// its vote, at once, and counts the terms the leaders' AppendEntries
/// reported too; the highest, once a majority of the voters other than
/// this node reported (every majority that committed anything shares a
/// member with them). `None` while too few did, or while this node holds
/// no membership yet (it learns one from the first appends it takes).
async fn probe_terms(
    raft: &Raft<TypeConfig>,
    forwarding: &Forwarding,
    guard: &VoteGuard,
) -> Option<u64> {
    let (needed, others) = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let voters: Vec<_> = membership.voter_ids().collect();
        if voters.is_empty() {
            return None;
        }
        let others: Vec<_> = voters
            .iter()
            .filter(|id| **id != metrics.id)
            .filter_map(|id| membership.get_node(id).map(|info| (*id, info.clone())))
            .collect();
        ((voters.len() / 2 + 1).min(others.len()), others)
    };
    let timeout = Duration::from_millis(GUARD_ASK_MS_MAX);
    let mut calls = tokio::task::JoinSet::new();
    for (id, info) in others.iter().cloned() {
        let forwarding = forwarding.clone();
        calls.spawn(async move {
            let answer = forwarding
                .to_node(id, &info, &Request::Probe, timeout)
                .await;
            (id, answer)
        });
    }
    while let Some(answer) = calls.join_next().await {
        if let Ok((id, Ok(Response::Probe(probed)))) = answer {
            guard.report_term(id, probed.vote_term);
        }
    }
    let reports = guard.reported_terms();
    let terms: Vec<u64> = others
        .iter()
        .filter_map(|(id, _)| reports.get(id).copied())
        .collect();
    (terms.len() >= needed).then(|| terms.into_iter().max().unwrap_or(0))
}
