//! Lockstep's deterministic simulator.
//!
//! Three simulated nodes run the real queue state machine
//! ([`lockstep_core::State::apply`]) behind a model of what the node does
//! around it: Raft replication and elections, the leader's cluster clock,
//! the precheck and its read-index round, the vote guard of a node that
//! lost its data, and a log that is durable only once synced. Clients with
//! sessions and retries drive a workload through them, a seeded schedule
//! of faults (kills, power cuts, pauses, wipes, partitions, clock steps,
//! lost replies, slow disks, the operator's stories) runs beside it, and
//! the chaos checker ([`lockstep_chaos::check`]) judges the history, the
//! same checker that judges the real processes.
//!
//! One seed is one run: the same seed gives the same history, byte for
//! byte, because everything happens on one thread in the order of one
//! event queue, and every choice comes from one seeded generator. A failing
//! seed is replayed exactly with `lockstep sim --seed N --history FILE`.
//!
//! What it is not: the real node. The replication, the guard and the clock
//! here are models of `lockstep-node`, `lockstep-raft` and openraft, written
//! from their contracts (ARCHITECTURE.md); the real processes are tested by
//! the chaos harness (`crates/chaos`). The simulator is beside them: it
//! tries thousands of interleavings a second where the harness tries one a
//! minute, and it runs the core's own code.

#![forbid(unsafe_code)]

pub mod calls;
mod client;
mod net;
mod node;
mod planted;
mod workload;
mod world;

use lockstep_chaos::checker::Report;
use lockstep_chaos::history::Op;

pub use planted::{plant, unplant};

/// What one simulated run does.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// Simulated milliseconds of workload and faults, before the heal and
    /// the drain.
    pub duration_ms: u64,
}

impl Options {
    /// The defaults for `seed`: 10 simulated seconds.
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            duration_ms: DURATION_MS_DEFAULT,
        }
    }
}

/// Simulated milliseconds of workload per run unless told otherwise.
pub const DURATION_MS_DEFAULT: u64 = 10_000;

/// What one run produced.
#[derive(Debug)]
pub struct Outcome {
    pub history: Vec<Op>,
    pub report: Report,
    /// Faults the schedule applied.
    pub faults: u64,
    /// Simulated events processed (messages, timers, client steps).
    pub events: u64,
    /// The run stopped on a bound rather than by itself (events, drain).
    pub stalled: Option<String>,
    /// The faults and the leaders, one line each with its simulated time.
    pub trace: Vec<String>,
}

impl Outcome {
    /// No anomaly, every queue drained, and the run ended by itself.
    pub fn passed(&self) -> bool {
        self.report.passed() && self.stalled.is_none()
    }
}

/// Runs one seed to the end: workload and faults, heal, drain, digests,
/// and the checker over the history.
pub fn run(options: &Options) -> Outcome {
    let mut world = world::World::new(options, workload::on_client);
    world.run();
    world.finish()
}
