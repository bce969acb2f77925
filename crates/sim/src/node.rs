//! One simulated node: a model of Raft around the real state machine.
//!
//! The model follows the contracts the real node keeps (ARCHITECTURE.md):
//! - a log entry counts toward a commit only once it is synced, on the
//!   leader as on a follower (the store's "fsync before acknowledging");
//! - the leader stamps commands with a cluster clock that runs on its own
//!   monotonic time from the last stamp it holds, never from its wall clock
//!   (`lockstep-node`'s `ClusterClock`);
//! - a precheck refusal becomes an answer only after a read-index round
//!   (leadership confirmed by a majority after the request arrived, and
//!   everything committed then applied), `Node::execute_local`;
//! - a node that lost its data starts guarded: it neither votes nor
//!   campaigns until it has applied a commit index a leader confirmed with
//!   a majority, and the guard survives a restart (`guard.rs`);
//! - while guarded it acknowledges no AppendEntries until a majority of
//!   the other members told it their terms, and then only from a leader of
//!   at least the highest of them: a stale leader must not count a node
//!   that forgot the newer term toward a commit;
//! - a re-run bootstrap changes nothing in a formed cluster
//!   (`bootstrap::form`).
//!
//! Each rule has a planted bug that breaks it ([`crate::planted::Model`]).

use std::collections::{BTreeMap, BTreeSet};

use lockstep_core::{BlobStore, Command, Effect, MemBlobStore, Reply, Stamp, State};
use rand::rngs::StdRng;
use rand::Rng;

use crate::net::{Addr, Answer, Append, Body, Entry, Envelope, Msg, NodeIx, Try, MAJORITY, NODES};
use crate::planted::{active, Model};

/// Election timeout range, simulated ms (openraft's defaults are 150-300).
pub(crate) const ELECTION_MS: (u64, u64) = (150, 300);
/// How often a leader sends AppendEntries with nothing new.
pub(crate) const HEARTBEAT_MS: u64 = 50;
/// Entries in one AppendEntries.
const APPEND_ENTRIES_MAX: usize = 64;
/// How often a guarded node asks the leader for a confirmed commit index.
const GUARD_PROBE_MS: u64 = 200;
/// How often the log is synced when appends are answered before their
/// sync (the planted bug `ack-before-fsync`).
pub(crate) const LAZY_SYNC_MS: u64 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Follower,
    Candidate,
    Leader,
}

/// A request waiting for the read-index round: leadership confirmed by a
/// majority after `after`, then everything committed by then applied.
#[derive(Clone, Debug)]
struct Read {
    kind: ReadKind,
    after: u64,
    index: Option<u64>,
}

#[derive(Clone, Debug)]
enum ReadKind {
    /// A request the precheck refused on this leader's applied state.
    Precheck {
        tr: Try,
        via: Option<NodeIx>,
        command: Command,
    },
    /// A guarded node's probe.
    Guard { node: NodeIx },
}

/// An append a follower answers once it is synced.
#[derive(Clone, Copy, Debug)]
struct Unsynced {
    leader: NodeIx,
    term: u64,
    index: u64,
    sent_at: u64,
}

/// What a handler asks of the world: messages to send, and a sync to
/// complete after the disk's delay.
#[derive(Debug, Default)]
pub(crate) struct Out {
    pub sends: Vec<Envelope>,
    /// Schedule `Node::synced(epoch)` after this node's fsync delay.
    pub sync: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub ix: NodeIx,
    pub up: bool,
    // Durable (survives a crash; `durable_len` bounds the log's part).
    pub term: u64,
    voted_for: Option<NodeIx>,
    pub log: Vec<Entry>,
    pub durable_len: usize,
    pub guarded: bool,
    // The applied state (durable as far as the durable log reaches).
    pub state: State,
    blobs: MemBlobStore,
    pub applied: u64,
    // Volatile.
    pub role: Role,
    pub commit: u64,
    pub leader_hint: Option<NodeIx>,
    election_deadline: u64,
    next_heartbeat: u64,
    next_probe: u64,
    guard_target: Option<u64>,
    /// Terms the other members reported while this node is guarded.
    guard_terms: BTreeMap<NodeIx, u64>,
    votes: BTreeSet<NodeIx>,
    next: [u64; NODES],
    matched: [u64; NODES],
    acked_sent_at: [u64; NODES],
    /// (cluster ms, simulated ms) when this node became leader.
    clock_base: (u64, u64),
    /// Index of this leader's blank entry.
    blank_index: u64,
    /// Entries this leader proposed for a waiting client, by index.
    proposed: BTreeMap<u64, (Try, Option<NodeIx>)>,
    reads: Vec<Read>,
    tick_index: Option<u64>,
    unsynced: Vec<Unsynced>,
    /// Bumped on a crash and on a truncation: a sync scheduled before it
    /// covers nothing after it.
    pub sync_epoch: u64,
    sync_inflight: bool,
    // The node's surroundings, set by the fault schedule.
    /// This node's wall clock minus simulated time, ms.
    pub wall_offset_ms: i64,
    /// How long a sync takes, ms.
    pub fsync_ms: u64,
    /// What this node did that a trace shows (votes, the guard), taken by
    /// the world after each step.
    pub notes: Vec<String>,
}

fn last_term(log: &[Entry]) -> u64 {
    log.last().map_or(0, |e| e.term)
}

impl Node {
    pub(crate) fn new(ix: NodeIx) -> Node {
        Node {
            ix,
            up: true,
            term: 0,
            voted_for: None,
            log: Vec::new(),
            durable_len: 0,
            guarded: false,
            state: State::new(),
            blobs: MemBlobStore::default(),
            applied: 0,
            role: Role::Follower,
            commit: 0,
            leader_hint: None,
            election_deadline: 0,
            next_heartbeat: 0,
            next_probe: 0,
            guard_target: None,
            guard_terms: BTreeMap::new(),
            votes: BTreeSet::new(),
            next: [1; NODES],
            matched: [0; NODES],
            acked_sent_at: [0; NODES],
            clock_base: (0, 0),
            blank_index: 0,
            proposed: BTreeMap::new(),
            reads: Vec::new(),
            tick_index: None,
            unsynced: Vec::new(),
            sync_epoch: 0,
            sync_inflight: false,
            wall_offset_ms: 0,
            fsync_ms: 0,
            notes: Vec::new(),
        }
    }

    fn send(&self, out: &mut Out, to: Addr, msg: Msg) {
        out.sends.push(Envelope {
            from: Addr::Node(self.ix),
            to,
            msg,
        });
    }

    fn term_at(&self, index: u64) -> u64 {
        if index == 0 {
            0
        } else {
            self.log.get(index as usize - 1).map_or(0, |e| e.term)
        }
    }

    fn reset_election(&mut self, now: u64, rng: &mut StdRng) {
        self.election_deadline = now + rng.random_range(ELECTION_MS.0..=ELECTION_MS.1);
    }

    /// The cluster time this node stamps as leader.
    pub(crate) fn cluster_now(&self, now: u64) -> u64 {
        if active(Model::WallClockTime) {
            return (now as i64 + self.wall_offset_ms).max(0) as u64;
        }
        self.clock_base.0 + (now - self.clock_base.1)
    }

    // ---- crash, restart, wipe ----

    /// Loses everything not durable; the node stays down until restarted.
    pub(crate) fn crash(&mut self) {
        self.up = false;
        self.step_down_volatile();
        self.sync_epoch += 1;
        self.sync_inflight = false;
        self.unsynced.clear();
        self.log.truncate(self.durable_len);
        let keep = self.applied.min(self.durable_len as u64);
        // The applied state is as durable as the log it came from:
        // rebuilt from it on restart.
        self.state = State::new();
        self.blobs = MemBlobStore::default();
        self.applied = 0;
        for index in 1..=keep {
            self.apply_entry(index);
        }
        self.commit = self.applied;
    }

    /// Loses the data directory too: an empty node, guarded.
    pub(crate) fn wipe(&mut self) {
        self.crash();
        self.term = 0;
        self.voted_for = None;
        self.log.clear();
        self.durable_len = 0;
        self.state = State::new();
        self.blobs = MemBlobStore::default();
        self.applied = 0;
        self.commit = 0;
        self.guarded = true;
    }

    pub(crate) fn restart(&mut self, now: u64, rng: &mut StdRng) {
        self.up = true;
        self.role = Role::Follower;
        self.leader_hint = None;
        if active(Model::GuardNotPersisted) && (!self.log.is_empty() || self.term > 0) {
            // The guard came from memory: a node with a vote or part of a
            // log looks like a member that never lost anything.
            self.guarded = false;
        }
        self.reset_election(now, rng);
    }

    /// The operator re-runs bootstrap: the cluster formed long ago, so
    /// nothing changes.
    pub(crate) fn bootstrap_rerun(&mut self) {
        if active(Model::GuardLiftedByBootstrap) {
            self.guarded = false;
        }
    }

    fn step_down_volatile(&mut self) {
        self.role = Role::Follower;
        self.proposed.clear();
        self.reads.clear();
        self.tick_index = None;
        self.votes.clear();
        self.guard_target = None;
        self.guard_terms.clear();
    }

    fn step_down(&mut self, term: u64, now: u64, rng: &mut StdRng) {
        if term > self.term {
            self.term = term;
            self.voted_for = None;
        }
        if self.role != Role::Follower {
            self.step_down_volatile();
            self.reset_election(now, rng);
        }
    }

    // ---- the log's durability ----

    fn synced_match(&self) -> u64 {
        if active(Model::AckBeforeFsync) {
            self.log.len() as u64
        } else {
            self.durable_len as u64
        }
    }

    /// After an append: sync now, or ask the world to finish a sync later.
    fn request_sync(&mut self, now: u64, out: &mut Out, rng: &mut StdRng) {
        if active(Model::AckBeforeFsync) {
            // Answered at once; the world syncs every `LAZY_SYNC_MS`.
            self.flush_unsynced(out, true);
            self.after_own_sync(now, out, rng);
            return;
        }
        if self.fsync_ms == 0 {
            self.durable_len = self.log.len();
            self.flush_unsynced(out, false);
            self.after_own_sync(now, out, rng);
        } else if !self.sync_inflight {
            self.sync_inflight = true;
            out.sync = Some(self.sync_epoch);
        }
    }

    /// A sync scheduled under `epoch` finished.
    pub(crate) fn synced(&mut self, epoch: u64, now: u64, out: &mut Out, rng: &mut StdRng) {
        if epoch != self.sync_epoch || !self.up {
            return;
        }
        self.sync_inflight = false;
        self.durable_len = self.log.len();
        self.flush_unsynced(out, false);
        self.apply_committed(now, out, rng);
        self.after_own_sync(now, out, rng);
    }

    /// The lazy sync of `ack-before-fsync`.
    pub(crate) fn lazy_sync(&mut self) {
        if self.up {
            self.durable_len = self.log.len();
        }
    }

    fn flush_unsynced(&mut self, out: &mut Out, all: bool) {
        let synced = if all {
            self.log.len() as u64
        } else {
            self.durable_len as u64
        };
        let (ready, wait): (Vec<Unsynced>, Vec<Unsynced>) =
            self.unsynced.drain(..).partition(|u| u.index <= synced);
        self.unsynced = wait;
        for u in ready {
            if u.term == self.term {
                let msg = Msg::AppendResp {
                    term: self.term,
                    success: true,
                    index: u.index,
                    sent_at: u.sent_at,
                };
                self.send(out, Addr::Node(u.leader), msg);
            }
        }
    }

    fn after_own_sync(&mut self, now: u64, out: &mut Out, rng: &mut StdRng) {
        if self.role == Role::Leader {
            self.advance_commit(now, out, rng);
        }
    }

    // ---- timers ----

    pub(crate) fn on_timer(&mut self, now: u64, out: &mut Out, rng: &mut StdRng) {
        match self.role {
            Role::Leader => {
                if now >= self.next_heartbeat {
                    self.next_heartbeat = now + HEARTBEAT_MS;
                    for p in 0..NODES {
                        if p != self.ix {
                            self.send_append(p, now, out);
                        }
                    }
                }
                self.maybe_tick(now, out, rng);
            }
            Role::Follower | Role::Candidate => {
                if self.guarded {
                    if now >= self.next_probe {
                        self.next_probe = now + GUARD_PROBE_MS;
                        if let Some(leader) = self.leader_hint {
                            self.send(out, Addr::Node(leader), Msg::GuardProbe);
                        }
                        if self.term_floor().is_none() {
                            for p in 0..NODES {
                                if p != self.ix {
                                    self.send(out, Addr::Node(p), Msg::TermProbe);
                                }
                            }
                        }
                    }
                } else if now >= self.election_deadline {
                    self.campaign(now, out, rng);
                }
            }
        }
    }

    /// The leader's ticker: a `Tick` when a lease or a delay is due by
    /// cluster time, one at a time.
    fn maybe_tick(&mut self, now: u64, out: &mut Out, rng: &mut StdRng) {
        if self.tick_index.is_some_and(|i| self.applied < i) {
            return;
        }
        let due = self.state.next_due_ms();
        if due.is_some_and(|d| d <= self.cluster_now(now)) {
            let index = self.propose(Command::Tick, now, out, rng);
            self.tick_index = Some(index);
        }
    }

    fn campaign(&mut self, now: u64, out: &mut Out, rng: &mut StdRng) {
        self.term += 1;
        self.voted_for = Some(self.ix);
        self.role = Role::Candidate;
        self.leader_hint = None;
        self.votes = BTreeSet::from([self.ix]);
        self.reset_election(now, rng);
        let msg = Msg::Vote {
            term: self.term,
            last_index: self.log.len() as u64,
            last_term: last_term(&self.log),
        };
        for p in 0..NODES {
            if p != self.ix {
                self.send(out, Addr::Node(p), msg.clone());
            }
        }
    }

    fn become_leader(&mut self, now: u64, out: &mut Out, rng: &mut StdRng) {
        self.role = Role::Leader;
        self.leader_hint = Some(self.ix);
        let len = self.log.len() as u64;
        self.next = [len + 1; NODES];
        self.matched = [0; NODES];
        self.acked_sent_at = [0; NODES];
        // Cluster time goes on from the latest stamp this node holds.
        let latest = self
            .log
            .iter()
            .filter_map(|e| match &e.body {
                Body::Cmd { time_ms, .. } => Some(*time_ms),
                Body::Blank => None,
            })
            .max()
            .unwrap_or(0)
            .max(self.state.clock_ms());
        self.clock_base = (latest, now);
        self.log.push(Entry {
            term: self.term,
            body: Body::Blank,
        });
        self.blank_index = self.log.len() as u64;
        self.next_heartbeat = now + HEARTBEAT_MS;
        for p in 0..NODES {
            if p != self.ix {
                self.send_append(p, now, out);
            }
        }
        self.request_sync(now, out, rng);
    }

    fn send_append(&self, p: NodeIx, now: u64, out: &mut Out) {
        let prev_index = self.next[p] - 1;
        let from = prev_index as usize;
        let to = self.log.len().min(from + APPEND_ENTRIES_MAX);
        let msg = Msg::Append(Append {
            term: self.term,
            prev_index,
            prev_term: self.term_at(prev_index),
            entries: self.log[from.min(to)..to].to_vec(),
            commit: self.commit,
            sent_at: now,
        });
        self.send(out, Addr::Node(p), msg);
    }

    /// Appends `command` as leader; returns its index.
    fn propose(&mut self, command: Command, now: u64, out: &mut Out, rng: &mut StdRng) -> u64 {
        self.log.push(Entry {
            term: self.term,
            body: Body::Cmd {
                time_ms: self.cluster_now(now),
                command,
            },
        });
        let index = self.log.len() as u64;
        for p in 0..NODES {
            if p != self.ix && self.next[p] == index {
                self.send_append(p, now, out);
            }
        }
        self.request_sync(now, out, rng);
        index
    }

    // ---- messages ----

    pub(crate) fn on_message(
        &mut self,
        from: crate::net::Addr,
        msg: Msg,
        now: u64,
        out: &mut Out,
        rng: &mut StdRng,
    ) {
        let peer = match from {
            Addr::Node(p) => Some(p),
            Addr::Client(_) => None,
        };
        match msg {
            Msg::Vote {
                term,
                last_index,
                last_term: their_last,
            } => {
                let Some(cand) = peer else { return };
                if self.guarded {
                    let msg = Msg::VoteResp {
                        term: self.term,
                        granted: false,
                    };
                    self.send(out, from, msg);
                    return;
                }
                if term > self.term {
                    self.step_down(term, now, rng);
                }
                let ours = last_term(&self.log);
                let up_to_date = their_last > ours
                    || (their_last == ours && last_index >= self.log.len() as u64);
                let granted =
                    term == self.term && up_to_date && self.voted_for.is_none_or(|v| v == cand);
                if granted {
                    self.voted_for = Some(cand);
                    self.reset_election(now, rng);
                    self.notes.push(format!(
                        "votes for n{} in term {term} (log {}/{})",
                        cand + 1,
                        self.log.len(),
                        last_term(&self.log)
                    ));
                }
                let msg = Msg::VoteResp {
                    term: self.term,
                    granted,
                };
                self.send(out, from, msg);
            }
            Msg::VoteResp { term, granted } => {
                let Some(p) = peer else { return };
                if term > self.term {
                    self.step_down(term, now, rng);
                    return;
                }
                if self.role == Role::Candidate && term == self.term && granted {
                    self.votes.insert(p);
                    if self.votes.len() >= MAJORITY {
                        self.become_leader(now, out, rng);
                    }
                }
            }
            Msg::Append(append) => {
                let Some(leader) = peer else { return };
                self.on_append(leader, append, now, out, rng);
            }
            Msg::AppendResp {
                term,
                success,
                index,
                sent_at,
            } => {
                let Some(p) = peer else { return };
                if term > self.term {
                    self.step_down(term, now, rng);
                    return;
                }
                if self.role != Role::Leader || term < self.term {
                    return;
                }
                if success {
                    self.matched[p] = self.matched[p].max(index);
                    self.next[p] = self.matched[p] + 1;
                    self.acked_sent_at[p] = self.acked_sent_at[p].max(sent_at);
                    self.advance_commit(now, out, rng);
                    self.serve_reads(now, out, rng);
                    if self.role == Role::Leader && self.next[p] <= self.log.len() as u64 {
                        self.send_append(p, now, out);
                    }
                } else {
                    self.next[p] = (self.next[p] - 1).min(index + 1).max(1);
                    self.send_append(p, now, out);
                }
            }
            Msg::Request { tr, command, via } => {
                if self.role == Role::Leader {
                    self.lead_request(tr, via, command, now, out, rng);
                } else if via.is_none() && self.leader_hint.is_some_and(|l| l != self.ix) {
                    let leader = self.leader_hint.unwrap_or(self.ix);
                    let msg = Msg::Request {
                        tr,
                        command,
                        via: Some(self.ix),
                    };
                    self.send(out, Addr::Node(leader), msg);
                } else {
                    self.answer(tr, via, Answer::Unavailable, out);
                }
            }
            Msg::Answer { tr, answer, .. } => {
                // A forwarded request's answer: relay it to the client.
                self.send(out, Addr::Client(tr.client), Msg::Answer { tr, answer });
            }
            Msg::GuardProbe => {
                let Some(node) = peer else { return };
                if self.role == Role::Leader {
                    self.reads.push(Read {
                        kind: ReadKind::Guard { node },
                        after: now,
                        index: None,
                    });
                    self.serve_reads(now, out, rng);
                }
            }
            Msg::TermProbe => {
                let msg = Msg::TermIs { term: self.term };
                self.send(out, from, msg);
            }
            Msg::TermIs { term } => {
                if let (Some(p), true) = (peer, self.guarded) {
                    self.guard_terms.insert(p, term);
                    // The newest term is learned, and kept, as a vote
                    // request would make it kept.
                    if let Some(floor) = self.term_floor() {
                        if floor > self.term {
                            self.term = floor;
                            self.voted_for = None;
                        }
                    }
                }
            }
            Msg::GuardIndex { index } => {
                if self.guarded {
                    self.guard_target = Some(self.guard_target.unwrap_or(0).max(index));
                    self.lift_guard();
                }
            }
        }
    }

    fn on_append(
        &mut self,
        leader: NodeIx,
        append: Append,
        now: u64,
        out: &mut Out,
        rng: &mut StdRng,
    ) {
        let Append {
            term,
            prev_index,
            prev_term,
            entries,
            commit,
            sent_at,
        } = append;
        // Whether a success may be answered (the guard's rule).
        let mut ack = true;
        if self.guarded && !active(Model::GuardAcksStaleLeader) {
            // The leader reports its own term by sending.
            let seen = self.guard_terms.entry(leader).or_insert(term);
            *seen = (*seen).max(term);
            match self.term_floor() {
                // Not yet told the newest term: take the entries (to learn
                // the log), acknowledge nothing, as the real node does.
                None => ack = false,
                Some(floor) if term < floor => {
                    // A deposed leader: tell it the newer term.
                    let msg = Msg::AppendResp {
                        term: floor,
                        success: false,
                        index: 0,
                        sent_at,
                    };
                    self.send(out, Addr::Node(leader), msg);
                    return;
                }
                Some(_) => {}
            }
        }
        if term < self.term {
            let msg = Msg::AppendResp {
                term: self.term,
                success: false,
                index: 0,
                sent_at,
            };
            self.send(out, Addr::Node(leader), msg);
            return;
        }
        if term > self.term || self.role != Role::Follower {
            self.step_down(term, now, rng);
            self.role = Role::Follower;
        }
        self.leader_hint = Some(leader);
        // The vote names the leader of the term, as openraft's does: a
        // node that lost its vote (wiped) and heard this leader grants no
        // second candidate of the same term.
        self.voted_for = Some(leader);
        self.reset_election(now, rng);
        let len = self.log.len() as u64;
        if prev_index > len || self.term_at(prev_index) != prev_term {
            let msg = Msg::AppendResp {
                term: self.term,
                success: false,
                index: len.min(prev_index.saturating_sub(1)),
                sent_at,
            };
            self.send(out, Addr::Node(leader), msg);
            return;
        }
        let mut appended = false;
        for (i, entry) in entries.iter().enumerate() {
            let index = prev_index + 1 + i as u64;
            if index <= self.log.len() as u64 {
                if self.term_at(index) == entry.term {
                    continue;
                }
                // A conflicting suffix: it was never committed.
                self.log.truncate(index as usize - 1);
                self.durable_len = self.durable_len.min(self.log.len());
                self.sync_epoch += 1;
                self.sync_inflight = false;
                self.unsynced.retain(|u| u.index < index);
            }
            self.log.push(entry.clone());
            appended = true;
        }
        let last_new = prev_index + entries.len() as u64;
        self.commit = self.commit.max(commit.min(last_new));
        self.apply_committed(now, out, rng);
        if !ack {
            if appended {
                self.request_sync(now, out, rng);
            }
        } else if appended || last_new > self.synced_match() {
            self.unsynced.push(Unsynced {
                leader,
                term: self.term,
                index: last_new,
                sent_at,
            });
            self.request_sync(now, out, rng);
        } else {
            let msg = Msg::AppendResp {
                term: self.term,
                success: true,
                index: last_new,
                sent_at,
            };
            self.send(out, Addr::Node(leader), msg);
        }
    }

    fn lead_request(
        &mut self,
        tr: Try,
        via: Option<NodeIx>,
        command: Command,
        now: u64,
        out: &mut Out,
        rng: &mut StdRng,
    ) {
        match self.state.precheck(&command) {
            Ok(()) => {
                let index = self.propose(command, now, out, rng);
                self.proposed.insert(index, (tr, via));
            }
            Err(e) if active(Model::PrecheckOnStaleState) => {
                self.answer(tr, via, Answer::Refused(e), out);
            }
            Err(_) => {
                self.reads.push(Read {
                    kind: ReadKind::Precheck { tr, via, command },
                    after: now,
                    index: None,
                });
                self.serve_reads(now, out, rng);
            }
        }
    }

    fn answer(&self, tr: Try, via: Option<NodeIx>, answer: Answer, out: &mut Out) {
        let to = match via {
            Some(node) => Addr::Node(node),
            None => Addr::Client(tr.client),
        };
        self.send(out, to, Msg::Answer { tr, answer });
    }

    /// Moves the read-index rounds on: confirm leadership, then wait for
    /// the apply, then answer.
    fn serve_reads(&mut self, now: u64, out: &mut Out, rng: &mut StdRng) {
        if self.role != Role::Leader || self.reads.is_empty() {
            return;
        }
        let committed_own = self.commit >= self.blank_index;
        let mut reads = std::mem::take(&mut self.reads);
        for read in &mut reads {
            if read.index.is_none() && committed_own {
                let acks = (0..NODES)
                    .filter(|&p| p != self.ix && self.acked_sent_at[p] > read.after)
                    .count();
                if acks + 1 >= MAJORITY {
                    read.index = Some(self.commit);
                }
            }
        }
        let (done, wait): (Vec<Read>, Vec<Read>) = reads
            .into_iter()
            .partition(|r| r.index.is_some_and(|i| self.applied >= i));
        self.reads = wait;
        for read in done {
            match read.kind {
                ReadKind::Precheck { tr, via, command } => match self.state.precheck(&command) {
                    Ok(()) => {
                        let index = self.propose(command, now, out, rng);
                        self.proposed.insert(index, (tr, via));
                    }
                    Err(e) => self.answer(tr, via, Answer::Refused(e), out),
                },
                ReadKind::Guard { node } => {
                    let msg = Msg::GuardIndex {
                        index: read.index.unwrap_or(0),
                    };
                    self.send(out, Addr::Node(node), msg);
                }
            }
        }
    }

    fn advance_commit(&mut self, now: u64, out: &mut Out, rng: &mut StdRng) {
        let own = self.synced_match();
        let len = self.log.len() as u64;
        for n in (self.commit + 1..=len).rev() {
            if self.term_at(n) != self.term {
                continue;
            }
            let acks = (0..NODES)
                .filter(|&p| {
                    if p == self.ix {
                        own >= n
                    } else {
                        self.matched[p] >= n
                    }
                })
                .count();
            if acks >= MAJORITY {
                self.commit = n;
                break;
            }
        }
        self.apply_committed(now, out, rng);
        self.serve_reads(now, out, rng);
    }

    /// Applies what is committed and durable here: the store makes an entry
    /// readable only once its write is synced, so nothing is applied that a
    /// crash could take back (and the guard, which lifts on the applied
    /// index, never lifts on entries the node may lose).
    fn apply_committed(&mut self, _now: u64, out: &mut Out, _rng: &mut StdRng) {
        let readable = self.synced_match();
        while self.applied < self.commit && self.applied < readable {
            let index = self.applied + 1;
            let result = self.apply_entry(index);
            if let Some((tr, via)) = self.proposed.remove(&index) {
                if let Some(result) = result {
                    let ids = match &result {
                        Ok(Reply::Fetched(ds)) => ds
                            .iter()
                            .map(|d| {
                                self.blobs
                                    .get(d.queue_id, d.blob)
                                    .map(|b| b.id)
                                    .unwrap_or_default()
                            })
                            .collect(),
                        _ => Vec::new(),
                    };
                    self.answer(tr, via, Answer::Applied { result, ids }, out);
                }
            }
        }
        self.lift_guard();
    }

    /// The id of the job whose payload is `blob`, as the payload store
    /// holds it (empty if it holds none).
    pub(crate) fn job_id(&self, queue_id: lockstep_core::QueueId, blob: u64) -> String {
        self.blobs
            .get(queue_id, blob)
            .map(|b| b.id)
            .unwrap_or_default()
    }

    /// While guarded: the highest term a majority of the other members
    /// reported, once they have. Every quorum that ever committed an
    /// entry includes one of them, so no leader below it holds everything
    /// committed.
    fn term_floor(&self) -> Option<u64> {
        (self.guard_terms.len() >= MAJORITY)
            .then(|| self.guard_terms.values().copied().max().unwrap_or(0))
    }

    fn lift_guard(&mut self) {
        if self.guarded && self.guard_target.is_some_and(|t| self.applied >= t) {
            self.guarded = false;
            self.notes.push(format!(
                "guard lifted: applied {} >= confirmed {:?}",
                self.applied, self.guard_target
            ));
            self.guard_target = None;
        }
    }

    /// Applies entry `index` (the next one); the command's result, if it
    /// carried one.
    fn apply_entry(&mut self, index: u64) -> Option<lockstep_core::Result<Reply>> {
        self.applied = index;
        let entry = self.log.get(index as usize - 1)?;
        match &entry.body {
            Body::Blank => None,
            Body::Cmd { time_ms, command } => {
                let mut effects: Vec<Effect> = Vec::new();
                let stamp = Stamp {
                    index,
                    time_ms: *time_ms,
                };
                let result = self.state.apply(stamp, command.clone(), &mut effects);
                self.blobs.apply_effects(&effects);
                Some(result)
            }
        }
    }
}
