//! At-most-once application of client requests: client sessions and the
//! replicated reply cache (Raft dissertation, section 6.3).
//!
//! A client opens a session once (`Command::OpenSession`, a Raft entry, so
//! every replica knows it) and numbers its state-changing requests 1, 2, 3...
//! Each request travels as `Command::Sequenced` with its session, its
//! sequence number, and the client's floor: the lowest number it still waits
//! for. The first time a (session, seq) is applied its result is kept; a
//! retry of the same pair, whatever path it took and however many times
//! forwarding re-sent it, gets that first result and changes nothing. So a
//! retry after an unknown outcome (a leader died mid-write, a deadline
//! passed) is always safe.
//!
//! Everything is bounded, and a bound that forgets is never silent:
//! - a reply below the client's floor is dropped (the client has its answer);
//! - a session keeps at most [`SESSION_REPLIES_MAX`] replies; the oldest goes
//!   first and raises the floor, so a late retry of it is answered "may
//!   have applied" (`Error::ReplyForgotten`), never applied twice;
//! - at most [`SESSIONS_COUNT_MAX`] sessions and [`REPLY_WEIGHT_MAX`] cached
//!   items in all; past either, the longest-idle session goes whole;
//! - a session idle for [`SESSION_IDLE_MS`] of cluster time expires at the
//!   next tick.
//!
//! Tries of one request can overtake each other on the way to the log: a
//! forward that broke after sending, or a client's earlier
//! try through another node, may reach the log after a later try. That is
//! harmless when the first applied try's result is kept, and it is kept
//! for everything but an empty fetch. So each try carries its
//! [`TryNumber`], the session keeps the newest try applied of every
//! number whose result it did not keep (a fence), and an older try is
//! refused (`Error::Superseded`): otherwise a long poll's stale try could
//! lease jobs to a reply nobody waits for, and they would sit until their
//! lease ran out. The fences are bounded like the replies.
//!
//! A request on a session that is gone is refused (`Error::SessionUnknown`)
//! before it changes anything, so the client may open a new session and
//! resend it if that was its first send, and must report "may have applied"
//! if it was a retry.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{Command, Reply, Sequence, TryNumber};
use crate::error::{Error, Result};
use crate::limits::{REPLY_WEIGHT_MAX, SESSIONS_COUNT_MAX, SESSION_IDLE_MS, SESSION_REPLIES_MAX};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Cached {
    result: Result<Reply>,
    weight: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// Numbers below it are answered `ReplyForgotten`.
    floor: u64,
    last_ms: u64,
    replies: BTreeMap<u64, Cached>,
    /// The newest try applied of each number whose result was not
    /// kept (an empty fetch): an older try of it is refused.
    fences: BTreeMap<u64, TryNumber>,
}

/// What the cache knows of a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Never applied: apply it, then [`Sessions::record`] the result.
    New,
    /// Applied before: this is its first result.
    Replay(Result<Reply>),
}

/// Every open session of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sessions {
    next_id: u64,
    by_id: BTreeMap<u64, Session>,
    /// (last use in cluster ms, id): the idle order for expiry and eviction.
    idle: BTreeSet<(u64, u64)>,
    /// Items of every cached reply together (see [`weight`]).
    weight: u64,
}

/// How much a reply costs the cache: one, plus one per result it carries.
fn weight(result: &Result<Reply>) -> u64 {
    1 + match result {
        Ok(Reply::Enqueued(r)) => r.len() as u64,
        Ok(Reply::Fetched(d)) => d.len() as u64,
        Ok(Reply::Acked(r)) => r.len() as u64,
        Ok(Reply::AckedThen { acked, then }) => {
            (acked.len() + then.iter().map(Vec::len).sum::<usize>()) as u64
        }
        _ => 0,
    }
}

/// What `replies` cost the cache together.
fn weight_of(replies: &BTreeMap<u64, Cached>) -> u64 {
    replies.values().map(|c| c.weight).sum()
}

impl Sessions {
    /// Opens a session at cluster time `now_ms`; its id is never reused.
    pub(crate) fn open(&mut self, now_ms: u64) -> u64 {
        while self.by_id.len() >= SESSIONS_COUNT_MAX {
            self.evict_idlest(None);
        }
        self.next_id += 1;
        let id = self.next_id;
        self.by_id.insert(
            id,
            Session {
                floor: 0,
                last_ms: now_ms,
                replies: BTreeMap::new(),
                fences: BTreeMap::new(),
            },
        );
        self.idle.insert((now_ms, id));
        id
    }

    /// What a precheck may say without changing anything: refuses an
    /// unknown session, and is `true` when the request was answered before
    /// (or forgotten), so the inner command's checks no longer apply.
    pub(crate) fn peek(&self, sequence: Sequence) -> Result<bool> {
        let session = self
            .by_id
            .get(&sequence.session)
            .ok_or(Error::SessionUnknown {
                session: sequence.session,
            })?;
        if sequence.seq < session.floor.max(sequence.floor)
            || session.replies.contains_key(&sequence.seq)
        {
            return Ok(true);
        }
        superseded(session, sequence)?;
        Ok(false)
    }

    /// Looks `sequence` up at cluster time `now_ms`, first dropping the
    /// replies below the client's floor.
    pub(crate) fn lookup(&mut self, sequence: Sequence, now_ms: u64) -> Result<Lookup> {
        let Sequence {
            session: id,
            seq,
            floor,
            try_number: _,
        } = sequence;
        let session = self
            .by_id
            .get_mut(&id)
            .ok_or(Error::SessionUnknown { session: id })?;
        if seq == 0 {
            return Err(Error::InvalidArgument {
                field: "session.seq".into(),
                message: "sequence numbers start at 1".into(),
            });
        }
        self.idle.remove(&(session.last_ms, id));
        session.last_ms = session.last_ms.max(now_ms);
        self.idle.insert((session.last_ms, id));
        if floor > session.floor {
            session.floor = floor;
            let kept = session.replies.split_off(&floor);
            let dropped = std::mem::replace(&mut session.replies, kept);
            self.weight -= weight_of(&dropped);
            session.fences = session.fences.split_off(&floor);
        }
        if let Some(cached) = session.replies.get(&seq) {
            // Planted bug (tests only): a retry is applied again.
            if !crate::planted_no_reply_cache() {
                return Ok(Lookup::Replay(cached.result.clone()));
            }
        }
        if seq < session.floor {
            return Err(Error::ReplyForgotten { session: id, seq });
        }
        superseded(session, sequence)?;
        Ok(Lookup::New)
    }

    /// Keeps the first result of `sequence`, which [`Sessions::lookup`]
    /// found `New`. An empty fetch is not kept: it changed nothing, so
    /// applying it again is harmless, and a long poll repeats it under one
    /// number until work arrives. Its try number is kept instead, as the
    /// fence older tries of the number must pass.
    pub(crate) fn record(&mut self, sequence: Sequence, result: &Result<Reply>) {
        let Some(session) = self.by_id.get_mut(&sequence.session) else {
            return;
        };
        if matches!(result, Ok(Reply::Fetched(d)) if d.is_empty()) {
            let fence = session.fences.entry(sequence.seq).or_default();
            *fence = (*fence).max(sequence.try_number);
            while session.fences.len() > SESSION_REPLIES_MAX {
                // Forgetting a fence raises the floor, as forgetting a
                // reply does: a late try of that number is then answered
                // "may have applied", never let through unfenced.
                let Some((seq, _)) = session.fences.pop_first() else {
                    break;
                };
                session.floor = session.floor.max(seq + 1);
            }
            return;
        }
        session.fences.remove(&sequence.seq);
        let cached = Cached {
            result: result.clone(),
            weight: weight(result),
        };
        self.weight += cached.weight;
        if let Some(old) = session.replies.insert(sequence.seq, cached) {
            self.weight -= old.weight;
        }
        while session.replies.len() > SESSION_REPLIES_MAX {
            let Some((seq, old)) = session.replies.pop_first() else {
                break;
            };
            self.weight -= old.weight;
            session.floor = session.floor.max(seq + 1);
        }
        while self.weight > REPLY_WEIGHT_MAX {
            if !self.evict_idlest(Some(sequence.session)) {
                break;
            }
        }
    }

    /// Expires every session idle since before `now_ms - SESSION_IDLE_MS`.
    pub(crate) fn expire(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(SESSION_IDLE_MS);
        while let Some(&(last_ms, id)) = self.idle.first() {
            if last_ms >= cutoff {
                break;
            }
            self.remove(id);
        }
    }

    /// Removes the longest-idle session other than `keep`; false if none.
    fn evict_idlest(&mut self, keep: Option<u64>) -> bool {
        let victim = self
            .idle
            .iter()
            .map(|&(_, id)| id)
            .find(|id| Some(*id) != keep);
        match victim {
            Some(id) => {
                self.remove(id);
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(session) = self.by_id.remove(&id) {
            self.idle.remove(&(session.last_ms, id));
            self.weight -= weight_of(&session.replies);
        }
    }

    /// Open sessions, for Status and metrics.
    pub(crate) fn count(&self) -> usize {
        self.by_id.len()
    }

    /// The checks `State::check_invariants` runs: the idle index and the
    /// weight agree with the sessions.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        if self.idle.len() != self.by_id.len() {
            return Err(format!(
                "sessions: {} in the idle index, {} open",
                self.idle.len(),
                self.by_id.len()
            ));
        }
        let mut weight = 0;
        for (id, s) in &self.by_id {
            if !self.idle.contains(&(s.last_ms, *id)) {
                return Err(format!("session {id} is missing from the idle index"));
            }
            if *id > self.next_id {
                return Err(format!(
                    "session {id} is above the next id {}",
                    self.next_id
                ));
            }
            weight += weight_of(&s.replies);
        }
        if weight != self.weight {
            return Err(format!(
                "sessions: cached weight {} but replies weigh {weight}",
                self.weight
            ));
        }
        Ok(())
    }
}

/// Refuses `sequence` when a newer try of its number was applied first.
fn superseded(session: &Session, sequence: Sequence) -> Result<()> {
    match session.fences.get(&sequence.seq) {
        Some(fence) if *fence > sequence.try_number => Err(Error::Superseded {
            session: sequence.session,
            seq: sequence.seq,
        }),
        _ => Ok(()),
    }
}

/// Whether `command` may be sequenced: a plain state-changing command, not
/// a session command and not a tick (which only the leader proposes).
pub(crate) fn sequenceable(command: &Command) -> bool {
    !matches!(
        command,
        Command::OpenSession | Command::Sequenced { .. } | Command::Tick
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn seq(session: u64, seq: u64, floor: u64) -> Sequence {
        Sequence {
            session,
            seq,
            floor,
            try_number: TryNumber::default(),
        }
    }

    #[test]
    fn a_retry_gets_the_first_result() {
        let mut s = Sessions::default();
        let id = s.open(0);
        assert_eq!(s.lookup(seq(id, 1, 1), 0), Ok(Lookup::New));
        s.record(seq(id, 1, 1), &Ok(Reply::Released));
        assert_eq!(
            s.lookup(seq(id, 1, 1), 5),
            Ok(Lookup::Replay(Ok(Reply::Released)))
        );
        s.check().unwrap();
    }

    #[test]
    fn a_reply_below_the_floor_is_forgotten_loudly() {
        let mut s = Sessions::default();
        let id = s.open(0);
        s.lookup(seq(id, 1, 1), 0).unwrap();
        s.record(seq(id, 1, 1), &Ok(Reply::Released));
        assert_eq!(s.lookup(seq(id, 2, 2), 0), Ok(Lookup::New));
        assert_eq!(
            s.lookup(seq(id, 1, 2), 0),
            Err(Error::ReplyForgotten {
                session: id,
                seq: 1
            })
        );
        assert_eq!(s.weight, 0);
        s.check().unwrap();
    }

    #[test]
    fn an_unknown_session_changes_nothing() {
        let mut s = Sessions::default();
        let before = s.clone();
        assert_eq!(
            s.lookup(seq(7, 1, 1), 0),
            Err(Error::SessionUnknown { session: 7 })
        );
        assert_eq!(s, before);
    }

    #[test]
    fn the_oldest_reply_goes_first_and_raises_the_floor() {
        let mut s = Sessions::default();
        let id = s.open(0);
        for n in 1..=(SESSION_REPLIES_MAX as u64 + 1) {
            assert_eq!(s.lookup(seq(id, n, 1), 0), Ok(Lookup::New));
            s.record(seq(id, n, 1), &Ok(Reply::Released));
        }
        assert_eq!(
            s.lookup(seq(id, 1, 1), 0),
            Err(Error::ReplyForgotten {
                session: id,
                seq: 1
            })
        );
        assert!(matches!(s.lookup(seq(id, 2, 1), 0), Ok(Lookup::Replay(_))));
        s.check().unwrap();
    }

    #[test]
    fn idle_sessions_expire_and_the_count_is_bounded() {
        let mut s = Sessions::default();
        let old = s.open(0);
        let young = s.open(SESSION_IDLE_MS);
        s.expire(SESSION_IDLE_MS + 1);
        assert_eq!(s.count(), 1);
        assert!(s.peek(seq(old, 1, 1)).is_err());
        assert!(s.peek(seq(young, 1, 1)).is_ok());
        for _ in 0..SESSIONS_COUNT_MAX {
            s.open(SESSION_IDLE_MS + 2);
        }
        assert_eq!(s.count(), SESSIONS_COUNT_MAX);
        assert!(s.peek(seq(young, 1, 1)).is_err(), "the idlest went first");
        s.check().unwrap();
    }

    #[test]
    fn an_empty_fetch_is_not_kept() {
        let mut s = Sessions::default();
        let id = s.open(0);
        s.lookup(seq(id, 1, 1), 0).unwrap();
        s.record(seq(id, 1, 1), &Ok(Reply::Fetched(Vec::new())));
        assert_eq!(s.lookup(seq(id, 1, 1), 0), Ok(Lookup::New));
    }
}

#[cfg(test)]
mod fence_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::command::Delivery;

    /// Request `n` of session `id`, floor 1, as try `try_number`.
    fn nth_try(id: u64, n: u64, try_number: TryNumber) -> Sequence {
        Sequence {
            session: id,
            seq: n,
            floor: 1,
            try_number,
        }
    }

    fn try_of(id: u64, try_number: TryNumber) -> Sequence {
        nth_try(id, 1, try_number)
    }

    fn at(client: u32, round: u32, forward: u32) -> TryNumber {
        TryNumber {
            client,
            round,
            forward,
        }
    }

    #[test]
    fn attempts_order_by_client_then_round_then_forward() {
        assert!(at(0, 0, 9) < at(0, 1, 0));
        assert!(at(0, 9, 9) < at(1, 0, 0));
        assert!(at(1, 2, 3) < at(1, 2, 4));
    }

    #[test]
    fn an_older_try_after_a_newer_empty_fetch_is_superseded() {
        let mut s = Sessions::default();
        let id = s.open(0);
        // Round 1's try reaches the log first and finds nothing...
        let newer = try_of(id, at(0, 1, 0));
        assert_eq!(s.lookup(newer, 0), Ok(Lookup::New));
        s.record(newer, &Ok(Reply::Fetched(Vec::new())));
        // ...then round 0's forward, which broke after sending, arrives: it
        // must not lease jobs to a reply nobody waits for.
        let older = try_of(id, at(0, 0, 1));
        let superseded = Error::Superseded {
            session: id,
            seq: 1,
        };
        assert_eq!(s.peek(older), Err(superseded.clone()));
        assert_eq!(s.lookup(older, 0), Err(superseded));
        // The same try again, or a newer one, still applies.
        assert_eq!(s.lookup(newer, 0), Ok(Lookup::New));
        assert_eq!(s.lookup(try_of(id, at(1, 0, 0)), 0), Ok(Lookup::New));
        s.check().unwrap();
    }

    #[test]
    fn a_kept_result_answers_every_try_and_drops_the_fence() {
        let mut s = Sessions::default();
        let id = s.open(0);
        let empty = try_of(id, at(0, 1, 0));
        s.lookup(empty, 0).unwrap();
        s.record(empty, &Ok(Reply::Fetched(Vec::new())));
        let found = try_of(id, at(0, 2, 0));
        s.lookup(found, 0).unwrap();
        let reply = Ok(Reply::Fetched(vec![Delivery {
            queue_id: 1,
            offset: 0,
            blob: 0,
            group: None,
            priority: 0,
            attempt: 1,
            fence: 2,
            deadline_ms: 30_000,
        }]));
        s.record(found, &reply);
        assert!(s.by_id[&id].fences.is_empty());
        assert_eq!(
            s.lookup(try_of(id, at(0, 0, 0)), 0),
            Ok(Lookup::Replay(reply))
        );
        s.check().unwrap();
    }

    #[test]
    fn fences_are_bounded_and_forgetting_one_raises_the_floor() {
        let mut s = Sessions::default();
        let id = s.open(0);
        for n in 1..=(SESSION_REPLIES_MAX as u64 + 1) {
            let sequence = nth_try(id, n, at(0, 1, 0));
            s.lookup(sequence, 0).unwrap();
            s.record(sequence, &Ok(Reply::Fetched(Vec::new())));
        }
        assert_eq!(s.by_id[&id].fences.len(), SESSION_REPLIES_MAX);
        assert_eq!(
            s.lookup(try_of(id, at(0, 0, 0)), 0),
            Err(Error::ReplyForgotten {
                session: id,
                seq: 1
            })
        );
        s.check().unwrap();
    }

    #[test]
    fn a_raised_client_floor_drops_the_fences_below_it() {
        let mut s = Sessions::default();
        let id = s.open(0);
        let empty = try_of(id, at(0, 1, 0));
        s.lookup(empty, 0).unwrap();
        s.record(empty, &Ok(Reply::Fetched(Vec::new())));
        let next = Sequence {
            floor: 2,
            ..nth_try(id, 2, TryNumber::default())
        };
        s.lookup(next, 0).unwrap();
        assert!(s.by_id[&id].fences.is_empty());
    }
}
