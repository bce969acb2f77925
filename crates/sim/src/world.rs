//! The simulated world: one event queue, the network between nodes and
//! clients, the fault schedule, and the end of a run (heal, drain,
//! digests).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use lockstep_chaos::history::{Call, DeadJob, Op, Outcome as OpOutcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::client::{clients, Client, DRAIN_PROCESS};
use crate::net::{Addr, Envelope, Msg, NodeIx, NODES};
use crate::net::{Answer, Try};
use crate::node::{Node, Out, Role, LAZY_SYNC_MS};
use crate::Options;

/// How often each node's timer runs (heartbeats, elections, the ticker).
const NODE_TIMER_MS: u64 = 10;
/// One-way message latency, simulated ms.
const LATENCY_MS: (u64, u64) = (1, 4);
/// Time between two faults of the schedule.
const FAULT_GAP_MS: (u64, u64) = (300, 1_500);
/// After the workload stops: time for calls in flight to end before the
/// drain starts.
const SETTLE_MS: u64 = 3_000;
/// The longest the drain may take, simulated ms; past it the run is a
/// liveness failure.
const DRAIN_MS_MAX: u64 = 60_000;
/// The longest the nodes may take to agree on an applied index after the
/// drain.
const CONVERGE_MS_MAX: u64 = 10_000;
/// Events one run may process; a run past it reports a stall.
const EVENTS_MAX: u64 = 20_000_000;
/// Wall-clock steps the `clock` fault draws from, ms.
const CLOCK_STEPS_MS: [i64; 8] = [
    -3 * 3_600_000,
    -600_000,
    -30_000,
    -2_000,
    2_000,
    30_000,
    600_000,
    3 * 3_600_000,
];
/// When a run's scripted incident may start, simulated ms.
const STORY_START_MS: (u64, u64) = (2_000, 6_000);
/// How long a scripted incident runs, at the most.
const STORY_MS: u64 = 4_000;
/// Sync latencies the `slow-disk` fault draws from, ms.
const SLOW_DISK_MS: [u64; 3] = [20, 100, 400];

#[derive(Debug)]
enum Event {
    Deliver(Envelope),
    NodeTimer(NodeIx),
    Sync(NodeIx, u64),
    LazySync,
    /// A client's next step, if `token` is still its current one.
    ClientWake(usize, u64),
    /// A client's try `try_id` gets no answer.
    TryTimeout(usize, u64),
    Fault,
    Restart(NodeIx),
    Heal(Heal),
    Story(Story, usize),
    EndWorkload,
    StartDrain,
}

#[derive(Clone, Copy, Debug)]
enum Heal {
    Partition,
    LostReplies,
    SlowDisk(NodeIx),
}

/// A scripted incident of a node that lost its data, as the real
/// harness's `operator` profile plays it: a lagging member, a wiped
/// member and a killed leader at once. `roles` are (leader, wiped,
/// lagging).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Story {
    /// The wiped member is the target of a re-run bootstrap.
    Bootstrap { roles: (NodeIx, NodeIx, NodeIx) },
    /// The wiped member is restarted mid-catch-up, with part of a log.
    Restart { roles: (NodeIx, NodeIx, NodeIx) },
    /// A deposed leader that never heard of the newer term comes back
    /// while a member is wiped and the new leader is down. `roles` are
    /// (deposed leader, wiped, new leader).
    StaleLeader { roles: (NodeIx, NodeIx, NodeIx) },
}

/// What the world hands to the clients' code (`workload.rs`), which it
/// does not know.
#[derive(Debug)]
pub(crate) enum ClientEvent {
    /// A client's next step.
    Wake(usize),
    /// A client's try got no answer in time.
    TimedOut(usize, u64),
    /// An answer reached a client.
    Answered(usize, Try, Answer),
}

/// The clients' code: what a client does on an event.
pub(crate) type OnClient = fn(&mut World, ClientEvent);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Workload,
    Settle,
    Drain,
    Done,
}

pub(crate) struct World {
    on_client: OnClient,
    pub rng: StdRng,
    pub now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    pub nodes: Vec<Node>,
    paused_until: [u64; NODES],
    /// Directed links that drop every message.
    cut: BTreeSet<(NodeIx, NodeIx)>,
    /// Answers are dropped with this chance (percent) while it is set.
    lost_replies_pct: u32,
    pub clients: Vec<Client>,
    pub history: Vec<Op>,
    pub phase: Phase,
    /// Queues whose creation was acknowledged, in that order.
    pub queues: Vec<String>,
    pub max_attempts: u32,
    faults: u64,
    events_done: u64,
    story_active: bool,
    pub stalled: Option<String>,
    drain_deadline: u64,
    /// What the schedule did and who led, with simulated times.
    trace: Vec<String>,
    leader_seen: Option<(NodeIx, u64)>,
}

impl World {
    pub(crate) fn new(options: &Options, on_client: OnClient) -> World {
        let mut rng = StdRng::seed_from_u64(options.seed);
        let max_attempts = if options.seed % 3 == 0 { 3 } else { 5 };
        let mut world = World {
            on_client,
            rng: StdRng::seed_from_u64(0),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes: (0..NODES).map(Node::new).collect(),
            paused_until: [0; NODES],
            cut: BTreeSet::new(),
            lost_replies_pct: 0,
            clients: clients(),
            history: Vec::new(),
            phase: Phase::Workload,
            queues: Vec::new(),
            max_attempts,
            faults: 0,
            events_done: 0,
            story_active: false,
            stalled: None,
            drain_deadline: 0,
            trace: Vec::new(),
            leader_seen: None,
        };
        for ix in 0..NODES {
            let offset = rng.random_range(0..NODE_TIMER_MS);
            world.at(offset, Event::NodeTimer(ix));
        }
        for cx in 0..world.clients.len() {
            let offset = rng.random_range(0..50);
            world.at(offset, Event::ClientWake(cx, 0));
        }
        world.at(
            rng.random_range(FAULT_GAP_MS.0..=FAULT_GAP_MS.1),
            Event::Fault,
        );
        world.at(LAZY_SYNC_MS, Event::LazySync);
        // Drawn whatever the duration, so a shorter run of the same seed
        // is the same run cut short (what `lockstep sim --shrink` needs).
        let told = rng.random_bool(0.5);
        let start = rng.random_range(STORY_START_MS.0..=STORY_START_MS.1);
        let roles = (0, 0, 0);
        let story = match rng.random_range(0..3) {
            0 => Story::Bootstrap { roles },
            1 => Story::Restart { roles },
            _ => Story::StaleLeader { roles },
        };
        if told && start + STORY_MS <= options.duration_ms {
            world.at(start, Event::Story(story, 0));
        }
        world.at(options.duration_ms, Event::EndWorkload);
        world.rng = rng;
        world
    }

    fn at(&mut self, time: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((time, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn after(&mut self, delay: u64, event: Event) {
        self.at(self.now + delay, event);
    }

    pub(crate) fn wake_client(&mut self, cx: usize, delay: u64) {
        let token = self.clients[cx].next_token();
        self.after(delay, Event::ClientWake(cx, token));
    }

    pub(crate) fn try_timeout(&mut self, cx: usize, try_id: u64, delay: u64) {
        self.after(delay, Event::TryTimeout(cx, try_id));
    }

    pub(crate) fn run(&mut self) {
        while let Some(Reverse((time, seq))) = self.queue.pop() {
            let Some(event) = self.events.remove(&seq) else {
                continue;
            };
            self.now = time;
            self.events_done += 1;
            if self.events_done > EVENTS_MAX {
                self.stalled = Some(format!("stopped after {EVENTS_MAX} events"));
                return;
            }
            if self.phase == Phase::Drain && self.now > self.drain_deadline {
                self.stalled = Some(format!(
                    "the drain did not finish within {DRAIN_MS_MAX} ms (simulated)"
                ));
                return;
            }
            self.dispatch(event);
            self.note_leader();
            if self.phase == Phase::Done {
                return;
            }
        }
        self.stalled = Some("the event queue ran dry".into());
    }

    fn note(&mut self, what: String) {
        self.trace.push(format!("{:>6} ms  {what}", self.now));
    }

    /// Traces each new leader (node and term).
    fn note_leader(&mut self) {
        if let Some(l) = self.leader() {
            let seen = Some((l, self.nodes[l].term));
            if seen != self.leader_seen {
                self.leader_seen = seen;
                self.note(format!("leader n{} term {}", l + 1, self.nodes[l].term));
            }
        }
    }

    fn paused(&self, ix: NodeIx) -> bool {
        self.paused_until[ix] > self.now
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Deliver(env) => self.deliver(env),
            Event::NodeTimer(ix) => {
                self.after(NODE_TIMER_MS, Event::NodeTimer(ix));
                if self.nodes[ix].up && !self.paused(ix) {
                    let mut out = Out::default();
                    let now = self.now;
                    self.nodes[ix].on_timer(now, &mut out, &mut self.rng);
                    self.emit(ix, out);
                }
            }
            Event::Sync(ix, epoch) => {
                if self.paused(ix) {
                    let at = self.paused_until[ix];
                    self.at(at, Event::Sync(ix, epoch));
                    return;
                }
                let mut out = Out::default();
                let now = self.now;
                self.nodes[ix].synced(epoch, now, &mut out, &mut self.rng);
                self.emit(ix, out);
            }
            Event::LazySync => {
                self.after(LAZY_SYNC_MS, Event::LazySync);
                for node in &mut self.nodes {
                    node.lazy_sync();
                }
            }
            Event::ClientWake(cx, token) => {
                if self.clients[cx].token == token {
                    (self.on_client)(self, ClientEvent::Wake(cx));
                }
            }
            Event::TryTimeout(cx, try_id) => {
                (self.on_client)(self, ClientEvent::TimedOut(cx, try_id));
            }
            Event::Fault => {
                if self.phase == Phase::Workload {
                    if !self.story_active {
                        self.fault();
                    }
                    let gap = self.rng.random_range(FAULT_GAP_MS.0..=FAULT_GAP_MS.1);
                    self.after(gap, Event::Fault);
                }
            }
            Event::Restart(ix) => self.restart(ix),
            Event::Heal(heal) => match heal {
                Heal::Partition => self.cut.clear(),
                Heal::LostReplies => self.lost_replies_pct = 0,
                Heal::SlowDisk(ix) => self.nodes[ix].fsync_ms = 0,
            },
            Event::Story(story, step) => self.story(story, step),
            Event::EndWorkload => {
                self.phase = Phase::Settle;
                self.heal_all();
                self.after(SETTLE_MS, Event::StartDrain);
            }
            Event::StartDrain => {
                self.heal_all();
                self.phase = Phase::Drain;
                self.drain_deadline = self.now + DRAIN_MS_MAX;
                let drain = self.clients.len() - 1;
                self.wake_client(drain, 0);
            }
        }
    }

    /// Hands a node's messages to the network and schedules its sync.
    fn emit(&mut self, ix: NodeIx, out: Out) {
        let notes = std::mem::take(&mut self.nodes[ix].notes);
        for note in notes {
            self.note(format!("n{} {note}", ix + 1));
        }
        for env in out.sends {
            self.send(env);
        }
        if let Some(epoch) = out.sync {
            let delay = self.nodes[ix].fsync_ms;
            self.after(delay, Event::Sync(ix, epoch));
        }
    }

    pub(crate) fn send(&mut self, env: Envelope) {
        if let (Addr::Node(a), Addr::Node(b)) = (env.from, env.to) {
            if self.cut.contains(&(a, b)) {
                return;
            }
        }
        if matches!(env.msg, Msg::Answer { .. })
            && self.lost_replies_pct > 0
            && self.rng.random_range(0..100) < self.lost_replies_pct
        {
            return;
        }
        let latency = self.rng.random_range(LATENCY_MS.0..=LATENCY_MS.1);
        self.after(latency, Event::Deliver(env));
    }

    fn deliver(&mut self, env: Envelope) {
        match env.to {
            Addr::Client(cx) => {
                if let Msg::Answer { tr, answer, .. } = env.msg {
                    (self.on_client)(self, ClientEvent::Answered(cx, tr, answer));
                }
            }
            Addr::Node(ix) => {
                if !self.nodes[ix].up {
                    return;
                }
                if self.paused(ix) {
                    let at = self.paused_until[ix];
                    self.at(at, Event::Deliver(env));
                    return;
                }
                let mut out = Out::default();
                let now = self.now;
                self.nodes[ix].on_message(env.from, env.msg, now, &mut out, &mut self.rng);
                self.emit(ix, out);
            }
        }
    }

    /// The node that takes itself for leader with the highest term, if any
    /// is up.
    pub(crate) fn leader(&self) -> Option<NodeIx> {
        (0..NODES)
            .filter(|&i| self.nodes[i].up && self.nodes[i].role == Role::Leader)
            .max_by_key(|&i| self.nodes[i].term)
    }

    fn restart(&mut self, ix: NodeIx) {
        if !self.nodes[ix].up {
            let now = self.now;
            self.nodes[ix].restart(now, &mut self.rng);
        }
    }

    fn heal_all(&mut self) {
        self.cut.clear();
        self.lost_replies_pct = 0;
        for ix in 0..NODES {
            self.paused_until[ix] = self.paused_until[ix].min(self.now);
            self.nodes[ix].fsync_ms = 0;
            self.restart(ix);
        }
    }

    fn random_node(&mut self) -> NodeIx {
        self.rng.random_range(0..NODES)
    }

    /// The leader half the time, else any node.
    fn leader_or_any(&mut self) -> NodeIx {
        match self.leader() {
            Some(l) if self.rng.random_bool(0.5) => l,
            _ => self.random_node(),
        }
    }

    fn all_up_unguarded(&self) -> bool {
        (0..NODES).all(|i| self.nodes[i].up && !self.nodes[i].guarded && !self.paused(i))
    }

    /// One fault of the schedule, drawn by weight. Faults overlap: one may
    /// start while another still holds.
    fn fault(&mut self) {
        const WEIGHTS: [(u32, &str); 10] = [
            (14, "kill"),
            (5, "kill-all"),
            (12, "pause"),
            (8, "wipe"),
            (14, "partition"),
            (8, "clock"),
            (12, "lost-reply"),
            (8, "slow-disk"),
            (4, "bootstrap"),
            (4, "restart-guarded"),
        ];
        let total: u32 = WEIGHTS.iter().map(|w| w.0).sum();
        let mut pick = self.rng.random_range(0..total);
        let mut kind = "kill";
        for (w, name) in WEIGHTS {
            if pick < w {
                kind = name;
                break;
            }
            pick -= w;
        }
        self.faults += 1;
        let before = self.trace.len();
        self.fault_kind(kind);
        if self.trace.len() == before {
            self.note(kind.to_string());
        }
    }

    fn fault_kind(&mut self, kind: &str) {
        match kind {
            "kill" => {
                let ix = self.leader_or_any();
                self.nodes[ix].crash();
                let back = self.rng.random_range(100..1_500);
                self.after(back, Event::Restart(ix));
                self.note(format!("kill n{} for {back} ms", ix + 1));
            }
            "kill-all" => {
                for ix in 0..NODES {
                    self.nodes[ix].crash();
                    let back = self.rng.random_range(50..500);
                    self.after(back, Event::Restart(ix));
                }
                self.note("kill-all".into());
            }
            "pause" => {
                let ix = self.leader_or_any();
                let ms = self.rng.random_range(200..2_500);
                self.paused_until[ix] = self.paused_until[ix].max(self.now + ms);
                self.note(format!("pause n{} for {ms} ms", ix + 1));
            }
            "wipe" => {
                // One amnesiac at a time: a second before the first caught
                // up could lose acknowledged writes whatever the guard does.
                if self.all_up_unguarded() {
                    let ix = self.leader_or_any();
                    self.nodes[ix].wipe();
                    let back = self.rng.random_range(50..500);
                    self.after(back, Event::Restart(ix));
                    self.note(format!("wipe n{}, back in {back} ms", ix + 1));
                } else {
                    self.faults -= 1;
                }
            }
            "partition" => {
                let ix = self.leader_or_any();
                self.cut.clear();
                let one_way = self.rng.random_bool(0.25);
                for p in 0..NODES {
                    if p != ix {
                        self.cut.insert((p, ix));
                        if !one_way {
                            self.cut.insert((ix, p));
                        }
                    }
                }
                let ms = self.rng.random_range(300..3_000);
                self.after(ms, Event::Heal(Heal::Partition));
                let way = if one_way { "one way" } else { "both ways" };
                self.note(format!("partition n{} ({way}) for {ms} ms", ix + 1));
            }
            "clock" => {
                let ix = self.leader_or_any();
                let step = CLOCK_STEPS_MS[self.rng.random_range(0..CLOCK_STEPS_MS.len())];
                self.nodes[ix].wall_offset_ms += step;
                self.note(format!("clock n{} stepped {step} ms", ix + 1));
            }
            "lost-reply" => {
                self.lost_replies_pct = self.rng.random_range(30..=80);
                let ms = self.rng.random_range(500..2_500);
                self.after(ms, Event::Heal(Heal::LostReplies));
                let pct = self.lost_replies_pct;
                self.note(format!("lose {pct}% of answers for {ms} ms"));
            }
            "slow-disk" => {
                let ix = self.leader_or_any();
                self.nodes[ix].fsync_ms =
                    SLOW_DISK_MS[self.rng.random_range(0..SLOW_DISK_MS.len())];
                let ms = self.rng.random_range(500..3_000);
                self.after(ms, Event::Heal(Heal::SlowDisk(ix)));
                let sync = self.nodes[ix].fsync_ms;
                self.note(format!(
                    "slow disk n{} ({sync} ms syncs) for {ms} ms",
                    ix + 1
                ));
            }
            "bootstrap" => {
                for node in &mut self.nodes {
                    if node.up {
                        node.bootstrap_rerun();
                    }
                }
            }
            _ => {
                // restart-guarded: a wiped member restarted mid-catch-up.
                match (0..NODES).find(|&i| self.nodes[i].up && self.nodes[i].guarded) {
                    Some(ix) => {
                        self.nodes[ix].crash();
                        let back = self.rng.random_range(20..300);
                        self.after(back, Event::Restart(ix));
                        self.note(format!("restart guarded n{} in {back} ms", ix + 1));
                    }
                    None => self.faults -= 1,
                }
            }
        }
    }

    /// One step of a scripted story (see [`Story`]).
    fn story(&mut self, story: Story, step: usize) {
        if self.phase != Phase::Workload {
            self.story_active = false;
            return;
        }
        let roles = match story {
            Story::Bootstrap { roles } | Story::Restart { roles } => roles,
            Story::StaleLeader { .. } => return self.stale_leader_story(story, step),
        };
        let (leader, wiped, lagging) = roles;
        let bootstrap = matches!(story, Story::Bootstrap { .. });
        match step {
            0 => {
                let Some(leader) = self.leader() else { return };
                if !self.all_up_unguarded() {
                    return;
                }
                let others: Vec<NodeIx> = (0..NODES).filter(|&i| i != leader).collect();
                let (wiped, lagging) = if self.rng.random_bool(0.5) {
                    (others[0], others[1])
                } else {
                    (others[1], others[0])
                };
                let roles = (leader, wiped, lagging);
                let story = if bootstrap {
                    Story::Bootstrap { roles }
                } else {
                    Story::Restart { roles }
                };
                self.story_active = true;
                self.faults += 1;
                self.note(format!(
                    "story {story:?}: leader n{}, wiped n{}, lagging n{}",
                    leader + 1,
                    wiped + 1,
                    lagging + 1
                ));
                if bootstrap {
                    // The lagging member stops hearing anything.
                    self.paused_until[lagging] = self.now + 3_000;
                } else {
                    // The lagging member is cut off from the leader only:
                    // it still answers the wiped member's term probes.
                    self.cut.insert((leader, lagging));
                    self.cut.insert((lagging, leader));
                }
                self.after(600, Event::Story(story, 1));
            }
            1 => {
                self.nodes[wiped].wipe();
                self.after(50, Event::Restart(wiped));
                // Its disk is slow while it catches up, so it is still
                // behind when the leader goes.
                self.nodes[wiped].fsync_ms = 100;
                self.after(3_000, Event::Heal(Heal::SlowDisk(wiped)));
                self.after(60, Event::Story(story, 2));
            }
            2 if bootstrap => {
                self.nodes[wiped].bootstrap_rerun();
                self.after(10, Event::Story(story, 4));
            }
            2 => {
                // Killed mid-catch-up: a vote, and perhaps part of a log, on
                // disk.
                self.after(140, Event::Story(story, 3));
            }
            3 => {
                self.nodes[wiped].crash();
                self.after(50, Event::Restart(wiped));
                self.after(20, Event::Story(story, 4));
            }
            4 => {
                self.nodes[leader].crash();
                self.after(2_800, Event::Restart(leader));
                if bootstrap {
                    self.paused_until[lagging] = self.now + 30;
                } else {
                    self.after(2_800, Event::Heal(Heal::Partition));
                }
                self.after(2_900, Event::Story(story, 5));
            }
            _ => self.story_active = false,
        }
    }

    /// [`Story::StaleLeader`], step by step.
    fn stale_leader_story(&mut self, story: Story, step: usize) {
        let Story::StaleLeader {
            roles: (deposed, wiped, _),
        } = story
        else {
            return;
        };
        match step {
            0 => {
                let Some(deposed) = self.leader() else { return };
                if !self.all_up_unguarded() {
                    return;
                }
                self.story_active = true;
                self.faults += 1;
                // Cut off: the others elect a new leader it never hears of.
                self.cut.clear();
                for p in (0..NODES).filter(|&p| p != deposed) {
                    self.cut.insert((p, deposed));
                    self.cut.insert((deposed, p));
                }
                let roles = (deposed, 0, 0);
                self.after(1_200, Event::Story(Story::StaleLeader { roles }, 1));
            }
            1 => {
                // Stopped before the cut heals, so it still takes itself
                // for leader when it resumes.
                self.paused_until[deposed] = self.now + 3_000;
                self.cut.clear();
                self.after(600, Event::Story(story, 2));
            }
            2 => {
                let Some(new) = self.leader().filter(|&l| l != deposed) else {
                    self.paused_until[deposed] = self.now;
                    self.story_active = false;
                    return;
                };
                let wiped = (0..NODES).find(|&p| p != deposed && p != new).unwrap_or(0);
                let roles = (deposed, wiped, new);
                self.note(format!(
                    "story stale leader: deposed n{}, wiped n{}, new leader n{} killed",
                    deposed + 1,
                    wiped + 1,
                    new + 1
                ));
                self.nodes[wiped].wipe();
                self.after(50, Event::Restart(wiped));
                self.nodes[new].crash();
                self.after(2_800, Event::Restart(new));
                self.after(100, Event::Story(Story::StaleLeader { roles }, 3));
            }
            3 => {
                self.paused_until[deposed] = self.now;
                let _ = wiped;
                self.after(2_800, Event::Story(story, 4));
            }
            _ => self.story_active = false,
        }
    }

    /// After the drain: every node's applied index and digest, once they
    /// agree on the applied index (or the bound passes).
    pub(crate) fn finish_digests(&mut self) {
        let deadline = self.now + CONVERGE_MS_MAX;
        loop {
            let applied: BTreeSet<u64> = self.nodes.iter().map(|n| n.applied).collect();
            if applied.len() == 1 || self.now >= deadline {
                break;
            }
            // Run the cluster on, with no clients.
            let Some(Reverse((time, seq))) = self.queue.pop() else {
                break;
            };
            let Some(event) = self.events.remove(&seq) else {
                continue;
            };
            self.now = time;
            if matches!(event, Event::ClientWake(..) | Event::TryTimeout(..)) {
                continue;
            }
            self.dispatch(event);
        }
        for ix in 0..NODES {
            let node = &self.nodes[ix];
            let op = Op {
                invoke_ms: self.now,
                complete_ms: self.now,
                node: ix as u64 + 1,
                process: DRAIN_PROCESS,
                outcome: OpOutcome::Ok,
                call: Call::Digest {
                    applied_index: node.applied,
                    digest: format!("{:032x}", node.state.digest()),
                },
            };
            self.history.push(op);
        }
    }

    /// The leader's applied state, if it has applied everything committed
    /// in its own term: what a linearizable read would see.
    pub(crate) fn settled_leader(&self) -> Option<NodeIx> {
        let l = self.leader()?;
        let node = &self.nodes[l];
        (node.applied == node.commit
            && node.commit as usize == node.log.len()
            && node.log.last().is_some_and(|e| e.term == node.term))
        .then_some(l)
    }

    /// The dead letters of `queue` on `node`, as the history records them.
    pub(crate) fn dead_letters(&self, node: NodeIx, queue: &str) -> Vec<DeadJob> {
        let n = &self.nodes[node];
        let mut jobs = Vec::new();
        let mut after = None;
        while let Ok(page) = n.state.list_dead_letters(queue, after, 1_000) {
            for d in &page.dead_letters {
                jobs.push(DeadJob {
                    offset: d.offset,
                    id: n.job_id(d.queue_id, d.blob),
                    group: d.group.clone().unwrap_or_default(),
                    attempts: d.attempts,
                    reason: d.reason.clone(),
                });
            }
            match page.next_after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
        jobs
    }

    pub(crate) fn done(&mut self) {
        self.phase = Phase::Done;
    }

    pub(crate) fn finish(mut self) -> crate::Outcome {
        if self.stalled.is_none() {
            self.finish_digests();
        }
        let report = lockstep_chaos::check(&self.history);
        crate::Outcome {
            history: self.history,
            report,
            faults: self.faults,
            events: self.events_done,
            stalled: self.stalled,
            trace: self.trace,
        }
    }
}
