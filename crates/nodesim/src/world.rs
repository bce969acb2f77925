//! One run: the nodes, the fault schedule and its phases.
//!
//! - **Safety phase** (`duration_ms`): producers and workers run while the
//!   schedule kills and restarts nodes (the leader often, now and then all
//!   of them at once, as a power cut does), wipes one, cuts
//!   links both ways or one way, drops messages, loses replies to clients,
//!   and steps and drifts wall clocks. Half the seeds also play one
//!   incident of several steps ([`Story`]), the ones the vote guard's
//!   rules exist for.
//! - **Liveness phase**: every fault is healed and every node restarted;
//!   the cluster must elect a leader, every node that lost its data must
//!   lift its vote guard before any client writes again, the drain must
//!   empty the queue, and every replica must converge on one state, each
//!   within its bound.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lockstep_chaos::history::{Call, Op, Outcome};
use lockstep_node::config::NodeConfig;
use lockstep_node::parts::{Assembled, Parts};
use lockstep_raft::PeerNetworkFactory;
use lockstep_store::{MemoryDisk, StoreError};
use lockstep_types::{NodeId, NodeInfo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{Client, Shared, DRAIN_PROCESS, PRODUCERS, WORKERS};
use crate::clock::SimClock;
use crate::net::{Net, NodeLink};
use crate::Options;

/// Raft's heartbeat in the simulation, ms.
const HEARTBEAT_MS: u64 = 50;
/// Each node's election timeout is drawn from this range at every start,
/// ms. openraft draws it from `election_timeout_min..max` with a
/// generator of its own; the simulator gives each node a range one ms
/// wide, so the draw is the seed's.
const ELECTION_TIMEOUT_MS: (u64, u64) = (300, 700);
/// Gap between two faults, ms.
const FAULT_GAP_MS: (u64, u64) = (300, 1_500);
/// How long a fault lasts before it heals, ms.
const FAULT_MS: (u64, u64) = (200, 2_500);
/// How long an isolated leader stays cut off, ms: past an election and a
/// commit under its successor.
const LEADER_CUT_MS: (u64, u64) = (1_500, 3_500);
/// Wall-clock steps, ms: seconds to an hour, either way.
const CLOCK_STEPS_MS: [i64; 6] = [-3_600_000, -60_000, -2_000, 2_000, 60_000, 3_600_000];
/// Drift of a wall clock, parts per million.
const DRIFT_PPM: i64 = 500;
/// Chance a message is lost while the network is lossy, ppm.
const LOSSY_PPM: u32 = 100_000;
/// Longest wait for a leader after the heal, ms.
const LEADER_WAIT_MS_MAX: u64 = 30_000;
/// Longest a node that lost its data may take to lift its vote guard once
/// a leader leads a healed cluster with no client writing, ms: an idle
/// leader must still send it entries (`lockstep_raft::EntriesWanted`).
const GUARD_LIFT_MS_MAX: u64 = 20_000;
/// Longest the drain may take, ms.
const DRAIN_MS_MAX: u64 = 60_000;
/// Longest the replicas may take to converge after the drain, ms.
const CONVERGE_MS_MAX: u64 = 20_000;
/// Longest a restart waits for the stopped instance's last tasks to let go
/// of its database, ms.
const REOPEN_WAIT_MS_MAX: u64 = 30_000;
/// Longest the workload's clients take to finish their last call after the
/// safety phase, ms.
const CLIENTS_STOP_MS_MAX: u64 = 30_000;
/// Tries of forming the cluster at the start.
const BOOTSTRAP_TRIES_MAX: u32 = 20;

/// One simulated node: its disk, its clock and, while it runs, the node.
struct SimNode {
    id: NodeId,
    disk: MemoryDisk,
    clock: Arc<SimClock>,
    running: Option<Arc<Assembled>>,
    /// Wipes so far: each gives the node a new disk and a new directory
    /// name (its database's path on the disk, and its snapshot directory).
    wipes: u32,
}

/// An incident of several steps, played once in half the seeds: the
/// stories behind the vote guard's rules (ARCHITECTURE.md, "vote guard").
#[derive(Clone, Copy, Debug)]
enum Story {
    /// A re-run bootstrap through a wiped member while the others lag and
    /// the leader dies.
    Rebootstrap,
    /// A deposed leader that missed a newer term reaches a wiped member.
    StaleLeader,
    /// A wiped member dies part-way through catching up, with the leader.
    RestartMidCatchUp,
}

/// When a story starts, ms into the run.
const STORY_AT_MS: (u64, u64) = (2_000, 6_000);
/// How long a story waits for a settled cluster before trying again, ms.
const STORY_RETRY_MS: u64 = 250;
/// How long a wiped node catches up before `RestartMidCatchUp` kills it,
/// ms: long enough for the leader to find where their logs meet and land
/// one AppendEntries (`APPEND_ENTRIES_MAX` entries), far too short for
/// the whole log (its guard then keeps it from acknowledging more).
const STORY_CATCH_UP_MS: u64 = 300;
/// Entries in one AppendEntries: few, so a catch-up takes several rounds
/// and can be cut off part-way.
const APPEND_ENTRIES_MAX: u64 = 16;
/// Longest a story waits for the others to elect a leader, ms.
const STORY_ELECTION_MS_MAX: u64 = 5_000;

/// A fault that heals by itself at `due`.
#[derive(Debug)]
enum Heal {
    /// Starts the node again; `rebootstrap`: an operator then re-runs the
    /// bootstrap from it (the README's story of a replaced disk), which
    /// must change nothing on a formed cluster.
    Restart {
        ix: usize,
        rebootstrap: bool,
    },
    Mend(NodeId, NodeId),
    MendOne(NodeId, NodeId),
    Lossless,
    Replies(NodeId),
}

/// The run.
pub(crate) struct World {
    options: Options,
    rng: StdRng,
    net: Arc<Net>,
    start: Instant,
    nodes: Vec<SimNode>,
    members: Vec<(NodeId, NodeInfo)>,
    heals: Vec<(Instant, Heal)>,
    /// Where snapshot files would go (none are built: see `config`).
    dir: PathBuf,
    pub(crate) shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
    pub(crate) trace: Vec<String>,
    pub(crate) faults: u64,
    pub(crate) stalled: Option<String>,
}

impl World {
    pub(crate) fn new(options: &Options, dir: PathBuf) -> Result<World, String> {
        let start = Instant::now();
        let net = Net::new(options.seed ^ 0x6e65_7477_6f72_6b21);
        let mut nodes = Vec::new();
        let mut members = Vec::new();
        for id in 1..=options.nodes as NodeId {
            nodes.push(SimNode {
                id,
                disk: MemoryDisk::new().map_err(|e| e.to_string())?,
                clock: Arc::new(SimClock::new(start)),
                running: None,
                wipes: 0,
            });
            members.push((
                id,
                NodeInfo {
                    peer_addr: format!("sim-{id}:7101"),
                    client_addr: format!("sim-{id}:7100"),
                },
            ));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            net: net.clone(),
            start,
            nodes: members.iter().map(|(id, _)| *id).collect(),
            history: Default::default(),
            stop: stop_rx,
        });
        Ok(World {
            options: options.clone(),
            rng: StdRng::seed_from_u64(options.seed),
            net,
            start,
            nodes,
            members,
            heals: Vec::new(),
            dir,
            shared,
            stop_tx,
            trace: Vec::new(),
            faults: 0,
            stalled: None,
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn note(&mut self, what: String) {
        let line = format!("{:>7} ms  {what}", self.now_ms());
        self.trace.push(line);
    }

    /// The node settings of a simulated node: no address is bound, and no
    /// snapshot is built (the snapshot files are the real file system's;
    /// the real-process harness covers them).
    fn config(&self, id: NodeId, wipes: u32) -> NodeConfig {
        let mut config = NodeConfig {
            id,
            peer_addr: format!("sim-{id}:7101"),
            client_addr: String::new(),
            data_dir: self.dir.join(format!("n{id}-w{wipes}")),
            ..NodeConfig::default()
        };
        config.raft.heartbeat_ms = HEARTBEAT_MS;
        config.raft.rpc_timeout_ms = 1_000;
        config.raft.append_entries_max = APPEND_ENTRIES_MAX;
        config.raft.snapshot_every_entries = u64::MAX / 2;
        config.limits.disk_free_bytes_min = 0;
        config.limits.write_ms_max = 3_000;
        config.limits.forward_retry_ms_max = 2_000;
        config
    }

    /// Starts node `ix` on its disk. A restart first waits for the stopped
    /// instance to let go of the database.
    async fn start_node(&mut self, ix: usize) -> Result<(), String> {
        let id = self.nodes[ix].id;
        let config = self.config(id, self.nodes[ix].wipes);
        let deadline = Instant::now() + Duration::from_millis(REOPEN_WAIT_MS_MAX);
        let (log_store, state_machine) = loop {
            match lockstep_store::open_in_memory(&self.nodes[ix].disk, &config.data_dir) {
                Ok(stores) => break stores,
                Err(StoreError::StillOpen) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(format!("node {id}: open its stores: {e}")),
            }
        };
        let timeout = self
            .rng
            .random_range(ELECTION_TIMEOUT_MS.0..ELECTION_TIMEOUT_MS.1);
        let mut raft = lockstep_node::parts::raft_config(&config).map_err(|e| e.to_string())?;
        raft.election_timeout_min = timeout;
        raft.election_timeout_max = timeout + 1;
        let network = PeerNetworkFactory::with_transport(
            id,
            Arc::new(NodeLink {
                from: id,
                net: self.net.clone(),
            }),
        );
        let parts = Parts {
            config,
            raft,
            log_store,
            state_machine,
            network,
            clock: self.nodes[ix].clock.clone(),
        };
        let node = Arc::new(
            Assembled::start(parts)
                .await
                .map_err(|e| format!("node {id}: start: {e}"))?,
        );
        self.net.set_up(id, Some(node.clone()));
        self.nodes[ix].running = Some(node);
        Ok(())
    }

    async fn stop_node(&mut self, ix: usize) {
        let id = self.nodes[ix].id;
        self.net.set_up(id, None);
        if let Some(node) = self.nodes[ix].running.take() {
            node.stop().await;
        }
    }

    /// Stops node `ix` as a crash does, to start again on the same disk
    /// at `due`.
    async fn crash(&mut self, ix: usize, due: Instant) {
        self.stop_node(ix).await;
        self.heals.push((
            due,
            Heal::Restart {
                ix,
                rebootstrap: false,
            },
        ));
    }

    /// The leader as the running nodes see it: the one that says it leads.
    fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| {
            n.running
                .as_ref()
                .is_some_and(|a| a.raft().metrics().borrow().current_leader == Some(n.id))
        })
    }

    /// Forms the cluster, creates the queue, runs the workload under the
    /// schedule, heals, drains and reads every replica's digest.
    pub(crate) async fn run(&mut self) {
        for ix in 0..self.nodes.len() {
            if let Err(e) = self.start_node(ix).await {
                self.stalled = Some(e);
                return;
            }
        }
        if !self.bootstrap().await {
            self.stalled = Some("the cluster did not form".into());
            return;
        }
        // Cluster time follows a leader's wall clock within skew_ms_max,
        // and the schedule steps wall clocks: deadlines in cluster time are
        // read with that much slack.
        let at = self.shared.now_ms();
        self.shared.record(Op {
            invoke_ms: at,
            complete_ms: at,
            node: 0,
            process: 0,
            outcome: Outcome::Ok,
            call: Call::ClockBound {
                ms: NodeConfig::default().clock.skew_ms_max,
            },
        });
        let mut admin = Client::new(self.shared.clone(), 100, self.options.seed);
        let deadline = Instant::now() + Duration::from_millis(LEADER_WAIT_MS_MAX);
        while !admin.create_queue().await {
            if Instant::now() >= deadline {
                self.stalled = Some("the queue was not created".into());
                return;
            }
        }
        let mut clients = vec![tokio::spawn(admin.administer())];
        for p in 1..=PRODUCERS {
            let c = Client::new(self.shared.clone(), p, self.options.seed);
            clients.push(tokio::spawn(c.produce()));
        }
        for w in 1..=WORKERS {
            let c = Client::new(self.shared.clone(), 10 + w, self.options.seed);
            clients.push(tokio::spawn(c.work()));
        }
        self.safety_phase().await;
        let _ = self.stop_tx.send(true);
        let stopped = Instant::now() + Duration::from_millis(CLIENTS_STOP_MS_MAX);
        for c in clients {
            if tokio::time::timeout_at(stopped, c).await.is_err() {
                self.stalled = Some("a client did not finish its last call".into());
                return;
            }
        }
        self.liveness_phase().await;
    }

    async fn bootstrap(&mut self) -> bool {
        for _ in 0..BOOTSTRAP_TRIES_MAX {
            let Some(first) = self.nodes[0].running.clone() else {
                return false;
            };
            // `Ok(false)`: node 1 already had a log or a vote, so an
            // earlier try formed the cluster and only its answer was lost.
            if first.bootstrap(&self.members).await.is_ok() {
                self.note("formed the cluster from node 1".into());
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    async fn safety_phase(&mut self) {
        let end = self.start + Duration::from_millis(self.options.duration_ms);
        let mut next_fault = Instant::now() + self.gap();
        // Half the seeds also play one incident of several steps, drawn
        // from a generator of its own so the other half run as before.
        let mut story_rng = StdRng::seed_from_u64(self.options.seed ^ 0x5354_4f52_5921);
        let mut story = story_rng.random_bool(0.5).then(|| {
            let at = self.start
                + Duration::from_millis(story_rng.random_range(STORY_AT_MS.0..STORY_AT_MS.1));
            let story = match story_rng.random_range(0..3) {
                0 => Story::Rebootstrap,
                1 => Story::StaleLeader,
                _ => Story::RestartMidCatchUp,
            };
            (at, story)
        });
        loop {
            let next_heal = self.heals.iter().map(|(t, _)| *t).min();
            let mut wake = next_heal.map_or(next_fault, |h| h.min(next_fault)).min(end);
            if let Some((at, _)) = story {
                wake = wake.min(at);
            }
            tokio::time::sleep_until(wake).await;
            self.apply_due_heals().await;
            if Instant::now() >= end {
                return;
            }
            if let Some((at, kind)) = story {
                if Instant::now() >= at {
                    // Played on a settled cluster only: every node up,
                    // none guarded, no fault waiting to heal.
                    if self.settled() {
                        story = None;
                        self.play(kind).await;
                        next_fault = Instant::now() + self.gap();
                    } else {
                        story =
                            Some((Instant::now() + Duration::from_millis(STORY_RETRY_MS), kind));
                    }
                    continue;
                }
            }
            if Instant::now() >= next_fault {
                self.fault().await;
                next_fault = Instant::now() + self.gap();
            }
        }
    }

    /// Every node up, none guarded, no fault waiting to heal, a leader.
    fn settled(&self) -> bool {
        self.heals.is_empty()
            && self
                .nodes
                .iter()
                .all(|n| n.running.as_ref().is_some_and(|a| !a.guarded()))
            && self.leader().is_some()
    }

    /// Cuts `id` off every other node (both ways), or mends it.
    fn isolate(&self, id: NodeId, cut: bool) {
        for other in self.nodes.iter().map(|n| n.id).filter(|o| *o != id) {
            self.net.cut_both(id, other, cut);
        }
    }

    /// Stops node `ix` and gives it an empty disk. False (the run stalled)
    /// when no disk could be made.
    async fn wipe(&mut self, ix: usize) -> bool {
        self.stop_node(ix).await;
        self.nodes[ix].wipes += 1;
        match MemoryDisk::new() {
            Ok(disk) => {
                self.nodes[ix].disk = disk;
                true
            }
            Err(e) => {
                self.stalled = Some(e.to_string());
                false
            }
        }
    }

    /// Stops node `ix`, gives it an empty disk and starts it again.
    async fn wipe_and_restart(&mut self, ix: usize) -> bool {
        if !self.wipe(ix).await {
            return false;
        }
        match self.start_node(ix).await {
            Ok(()) => true,
            Err(e) => {
                self.stalled = Some(e);
                false
            }
        }
    }

    /// The first steps of `Rebootstrap` and `RestartMidCatchUp`: every
    /// node but the leader and W (the first of `others`) is cut off for
    /// 1.5 s, while the leader and W commit. Returns W's index and id, and
    /// the ids of those cut off.
    async fn fall_behind(
        &mut self,
        leader: NodeId,
        others: &[usize],
    ) -> (usize, NodeId, Vec<NodeId>) {
        let w = others[0];
        let w_id = self.nodes[w].id;
        let lagging_ids: Vec<NodeId> = others[1..].iter().map(|ix| self.nodes[*ix].id).collect();
        self.note(format!(
            "story: nodes {lagging_ids:?} fall behind leader {leader} and node {w_id}"
        ));
        for id in &lagging_ids {
            self.isolate(*id, true);
        }
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        (w, w_id, lagging_ids)
    }

    /// The last steps of `Rebootstrap` and `RestartMidCatchUp`: those cut
    /// off come back, and 3 s later the dead leader (`l`) restarts.
    async fn come_back(&mut self, lagging_ids: &[NodeId], l: usize) {
        for id in lagging_ids {
            self.isolate(*id, false);
        }
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        let leader = self.nodes[l].id;
        self.note(format!("story: restart node {leader}"));
        if let Err(e) = self.start_node(l).await {
            self.stalled = Some(e);
        }
    }

    /// Plays one incident (see [`Story`]). Every step the vote guard must
    /// make safe; the planted guard bugs make each lose acknowledged jobs.
    async fn play(&mut self, story: Story) {
        let Some(l) = self.leader() else { return };
        let leader = self.nodes[l].id;
        let others: Vec<usize> = (0..self.nodes.len()).filter(|ix| *ix != l).collect();
        self.faults += 1;
        match story {
            Story::Rebootstrap => {
                // W keeps up with the leader while the rest (P) fall behind;
                // then W loses its data and an operator re-runs the
                // bootstrap from it, and the leader dies as P come back.
                // Only W's guard keeps P, whose logs lack what the leader
                // and W committed, from electing one of themselves.
                let (w, w_id, lagging_ids) = self.fall_behind(leader, &others).await;
                // The leader dies first, so the wiped W finds no one to
                // catch up from before the operator's bootstrap runs.
                self.note(format!(
                    "story: kill leader {leader}, wipe node {w_id}; an operator re-runs \
                     bootstrap from it; then {lagging_ids:?} come back"
                ));
                self.stop_node(l).await;
                if !self.wipe_and_restart(w).await {
                    return;
                }
                if let Some(node) = self.nodes[w].running.clone() {
                    let formed = node.bootstrap(&self.members).await;
                    let formed = formed.map_err(|s| s.message().to_string());
                    self.note(format!("story: bootstrap on node {w_id}: {formed:?}"));
                }
                self.come_back(&lagging_ids, l).await;
            }
            Story::RestartMidCatchUp => {
                // As in `Rebootstrap`, the rest (P) fall behind; then W loses
                // its data, starts catching up from the leader, and dies
                // with part of the log; the leader dies too. W restarted
                // holds a vote and a short log: only the guard it recorded
                // keeps it from electing one of P, whose logs lack what
                // the leader and W committed.
                let (w, w_id, lagging_ids) = self.fall_behind(leader, &others).await;
                self.note(format!(
                    "story: wipe node {w_id}; kill it and leader {leader} mid-catch-up; \
                     restart it; then {lagging_ids:?} come back"
                ));
                if !self.wipe_and_restart(w).await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(STORY_CATCH_UP_MS)).await;
                self.stop_node(w).await;
                self.stop_node(l).await;
                if let Err(e) = self.start_node(w).await {
                    self.stalled = Some(e);
                    return;
                }
                self.come_back(&lagging_ids, l).await;
            }
            Story::StaleLeader => {
                // The leader is cut off and the others elect a new one, which
                // commits; W, one of them, loses its data; then the new
                // leader is cut off and the deposed one, which never heard
                // of the newer term, reaches W. Only W's guard keeps the two
                // from committing over what the newer term committed.
                self.note(format!("story: isolate leader {leader}"));
                self.isolate(leader, true);
                let deadline = Instant::now() + Duration::from_millis(STORY_ELECTION_MS_MAX);
                let newer = loop {
                    let found = others.iter().copied().find(|ix| {
                        self.nodes[*ix].running.as_ref().is_some_and(|a| {
                            a.raft().metrics().borrow().current_leader == Some(self.nodes[*ix].id)
                        })
                    });
                    if let Some(ix) = found {
                        break Some(ix);
                    }
                    if Instant::now() >= deadline {
                        break None;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                let Some(f) = newer else {
                    self.note("story: no newer leader; mend".into());
                    self.isolate(leader, false);
                    return;
                };
                let f_id = self.nodes[f].id;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(w) = others.iter().copied().find(|ix| *ix != f) else {
                    self.isolate(leader, false);
                    return;
                };
                let w_id = self.nodes[w].id;
                self.note(format!(
                    "story: node {f_id} leads; wipe node {w_id}, cut {f_id} off, let {leader} reach {w_id}"
                ));
                if !self.wipe_and_restart(w).await {
                    return;
                }
                self.isolate(f_id, true);
                self.net.cut_both(leader, w_id, false);
                tokio::time::sleep(Duration::from_millis(2_000)).await;
                self.note("story: mend every link".into());
                self.net.heal();
            }
        }
    }

    fn gap(&mut self) -> Duration {
        Duration::from_millis(self.rng.random_range(FAULT_GAP_MS.0..FAULT_GAP_MS.1))
    }

    fn later(&mut self) -> Instant {
        Instant::now() + Duration::from_millis(self.rng.random_range(FAULT_MS.0..FAULT_MS.1))
    }

    async fn apply_due_heals(&mut self) {
        let now = Instant::now();
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.heals)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.heals = rest;
        for (_, heal) in due {
            self.heal(heal).await;
        }
    }

    async fn heal(&mut self, heal: Heal) {
        match heal {
            Heal::Restart { ix, rebootstrap } => {
                if self.nodes[ix].running.is_none() {
                    let id = self.nodes[ix].id;
                    self.note(format!("restart node {id}"));
                    if let Err(e) = self.start_node(ix).await {
                        self.stalled = Some(e);
                        return;
                    }
                    if rebootstrap {
                        if let Some(node) = self.nodes[ix].running.clone() {
                            let formed = node.bootstrap(&self.members).await;
                            let formed = formed.map_err(|s| s.message().to_string());
                            self.note(format!(
                                "operator re-runs bootstrap on node {id}: {formed:?}"
                            ));
                        }
                    }
                }
            }
            Heal::Mend(a, b) => {
                self.note(format!("mend {a} <-> {b}"));
                self.net.cut_both(a, b, false);
            }
            Heal::MendOne(a, b) => {
                self.note(format!("mend {a} -> {b}"));
                self.net.cut_one(a, b, false);
            }
            Heal::Lossless => {
                self.note("network lossless".into());
                self.net.set_drop_ppm(0);
            }
            Heal::Replies(id) => {
                self.note(format!("replies of node {id} delivered"));
                self.net.lose_replies(id, false);
            }
        }
    }

    /// A node to hit: the leader half the time, else any.
    fn victim(&mut self) -> usize {
        match self.leader() {
            Some(l) if self.rng.random_bool(0.5) => l,
            _ => self.rng.random_range(0..self.nodes.len()),
        }
    }

    /// Applies one fault from the schedule.
    async fn fault(&mut self) {
        let n = self.nodes.len();
        let ix = self.victim();
        let id = self.nodes[ix].id;
        let leader = self.leader() == Some(ix);
        let role = if leader { " (leader)" } else { "" };
        // One node without its data at a time: a wipe waits until every
        // node runs and none is still catching up behind its vote guard.
        // Two at once would leave too few members with the log to elect
        // anyone, which Raft rightly cannot survive.
        let all_up = self
            .nodes
            .iter()
            .all(|n| n.running.as_ref().is_some_and(|a| !a.guarded()));
        let due = self.later();
        self.faults += 1;
        match self.rng.random_range(0..9) {
            0 | 1 if self.nodes[ix].running.is_some() => {
                self.note(format!("kill node {id}{role}"));
                self.crash(ix, due).await;
            }
            2 if all_up => {
                // One node's data lost: it comes back empty, guarded.
                self.note(format!("wipe node {id}{role}"));
                self.wipe(ix).await;
                let rebootstrap = self.rng.random_bool(0.5);
                self.heals.push((due, Heal::Restart { ix, rebootstrap }));
            }
            3 => {
                self.note(format!("isolate node {id}{role}"));
                // A leader stays cut off long enough for the others to
                // elect a successor and commit under it while it still
                // takes itself for the leader (a client may still reach
                // it): what a precheck on its stale state would answer
                // wrongly.
                let due = if leader {
                    Instant::now()
                        + Duration::from_millis(
                            self.rng.random_range(LEADER_CUT_MS.0..LEADER_CUT_MS.1),
                        )
                } else {
                    due
                };
                for other in 1..=n as NodeId {
                    if other != id {
                        self.net.cut_both(id, other, true);
                        self.heals.push((due, Heal::Mend(id, other)));
                    }
                }
            }
            4 => {
                let other = self.nodes[(ix + 1 + self.rng.random_range(0..n - 1)) % n].id;
                let (from, to) = if self.rng.random_bool(0.5) {
                    (id, other)
                } else {
                    (other, id)
                };
                self.note(format!("cut {from} -> {to}"));
                self.net.cut_one(from, to, true);
                self.heals.push((due, Heal::MendOne(from, to)));
            }
            5 => {
                self.note(format!("lossy network ({LOSSY_PPM} ppm)"));
                self.net.set_drop_ppm(LOSSY_PPM);
                self.heals.push((due, Heal::Lossless));
            }
            6 => {
                self.note(format!("replies of node {id}{role} lost"));
                self.net.lose_replies(id, true);
                self.heals.push((due, Heal::Replies(id)));
            }
            8 => {
                // A power cut of the whole cluster: every node stops at once,
                // each keeping only what it synced, and all come back at the
                // heal (the real-process harness's `kill-all`).
                self.note("power cut: every node stops".into());
                // Off the network together first, so none elects or syncs
                // while the others are being stopped.
                let up: Vec<usize> = (0..n)
                    .filter(|ix| self.nodes[*ix].running.is_some())
                    .collect();
                for ix in &up {
                    self.net.set_up(self.nodes[*ix].id, None);
                }
                // Only the nodes this cut stopped: one already down keeps
                // its own heal (a wiped node's re-run bootstrap).
                for ix in up {
                    self.crash(ix, due).await;
                }
            }
            _ => {
                let step = CLOCK_STEPS_MS[self.rng.random_range(0..CLOCK_STEPS_MS.len())];
                let drift = self.rng.random_range(-DRIFT_PPM..=DRIFT_PPM);
                self.note(format!(
                    "step node {id}{role}'s wall clock {step:+} ms, drift {drift:+} ppm"
                ));
                self.nodes[ix].clock.step(step);
                self.nodes[ix].clock.drift(drift);
            }
        }
    }

    /// Heals everything, then drains and reads the replicas' digests.
    async fn liveness_phase(&mut self) {
        self.net.heal();
        self.heals.clear();
        for ix in 0..self.nodes.len() {
            if self.nodes[ix].running.is_none() {
                if let Err(e) = self.start_node(ix).await {
                    self.stalled = Some(e);
                    return;
                }
            }
        }
        self.note("healed: every node up, every link mended".into());
        let deadline = Instant::now() + Duration::from_millis(LEADER_WAIT_MS_MAX);
        while self.leader().is_none() {
            if Instant::now() >= deadline {
                self.stalled = Some(format!("no leader {LEADER_WAIT_MS_MAX} ms after the heal"));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Before the drain, so no client writes: catching up must not
        // depend on traffic.
        let deadline = Instant::now() + Duration::from_millis(GUARD_LIFT_MS_MAX);
        loop {
            let guarded: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|n| n.running.as_ref().is_some_and(|a| a.guarded()))
                .map(|n| n.id)
                .collect();
            if guarded.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                self.stalled = Some(format!(
                    "nodes {guarded:?} still guarded {GUARD_LIFT_MS_MAX} ms after a leader \
                     led the healed cluster, with no client writing"
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut drain = Client::new(self.shared.clone(), DRAIN_PROCESS, self.options.seed);
        let deadline = Instant::now() + Duration::from_millis(DRAIN_MS_MAX);
        if !drain.drain(deadline).await {
            self.stalled = Some(format!("the drain did not finish in {DRAIN_MS_MAX} ms"));
            return;
        }
        self.note("drained".into());
        self.digests().await;
    }

    /// Waits until every replica applied the same index, then records each
    /// one's digest.
    async fn digests(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(CONVERGE_MS_MAX);
        loop {
            let applied: std::collections::BTreeSet<u64> = self
                .nodes
                .iter()
                .filter_map(|n| n.running.as_ref())
                .map(|a| {
                    a.state()
                        .last_applied()
                        .ok()
                        .flatten()
                        .map_or(0, |l| l.index)
                })
                .collect();
            if applied.len() == 1 {
                break;
            }
            if Instant::now() >= deadline {
                self.stalled = Some(format!(
                    "replicas did not converge in {CONVERGE_MS_MAX} ms: applied {applied:?}"
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let at = self.shared.now_ms();
        for n in &self.nodes {
            let Some(a) = &n.running else { continue };
            let Ok((applied, digest)) = a.state().applied_digest() else {
                continue;
            };
            self.shared.record(Op {
                invoke_ms: at,
                complete_ms: at,
                node: n.id,
                process: 0,
                outcome: Outcome::Ok,
                call: Call::Digest {
                    applied_index: applied.map_or(0, |l| l.index),
                    digest: format!("{digest:032x}"),
                },
            });
        }
    }

    /// Stops every node.
    pub(crate) async fn shutdown(&mut self) {
        for ix in 0..self.nodes.len() {
            self.stop_node(ix).await;
        }
    }
}
