//! Lockstep's deterministic simulator of the real node layer.
//!
//! Three to five real nodes ([`lockstep_node::parts`]: the batcher, the
//! forwarding, the vote guard and its loop, the ticker, the cluster clock,
//! the core with its reply cache, all over openraft) run in one process,
//! on one thread, on Tokio's paused clock:
//!
//! - **Stores:** the real RocksDB stores on an in-memory disk
//!   ([`lockstep_store::MemoryDisk`]); a restart reopens the same disk, a
//!   wipe gives the node a new one. A stop is a crash: under the planted
//!   `ack-before-fsync` it loses every write after the node's last sync,
//!   as a power cut does.
//! - **Network:** every peer message crosses a simulated network as its
//!   encoded bytes ([`lockstep_raft::Transport`]), into the receiving node's
//!   real peer service; clients cross it too. It delays, drops and cuts,
//!   and loses replies, by the seed.
//! - **Clocks:** each node reads its own simulated clock
//!   ([`lockstep_node::parts::Clock`]), whose wall time the schedule steps
//!   and drifts.
//!
//! The workload and the checker are the chaos harness's: producers and
//! workers with sessions and retries, and an admin that creates side
//! queues during the run and probes each through every node, record a
//! history that
//! [`lockstep_chaos::check`] judges, after a safety phase with faults and
//! a liveness phase in which the cluster must heal, drain and converge.
//!
//! **Determinism.** Everything runs on one thread; simulated time moves
//! only when every task waits; every choice of the workload, the network
//! and the schedule comes from generators seeded by the run's seed;
//! storage work runs inline ([`lockstep_store::run_inline_on_this_thread`])
//! instead of on threads that would finish at real-time moments; and each
//! node's election timeout is drawn from the seed (openraft draws from a
//! range the simulator makes one ms wide). A run's [`Outcome::fingerprint`]
//! hashes its history and trace, so a replay can show it is the same run.
//!
//! Why not `turmoil`: its value is simulating sockets for code that opens
//! them. The node layer reaches its peers only through
//! [`lockstep_raft::Transport`] and its clients through
//! [`lockstep_node::parts::Assembled::execute`], so a network of our own
//! over those two seams is smaller and needs no socket shim, and Tokio's
//! own paused clock gives the simulated time turmoil would.
//!
//! Beside it, `lockstep-sim` simulates a model of the node around the real
//! core, thousands of seeds a second; this one runs the node itself, a few
//! seeds a second.

#![forbid(unsafe_code)]

// One seed, one run needs tokio's generator seeded (`run`), which tokio
// offers only under this cfg; `.cargo/config.toml` sets it for the
// workspace. Without it the simulator would build and quietly repeat
// nothing.
#[cfg(not(tokio_unstable))]
compile_error!(
    "lockstep-nodesim needs `--cfg tokio_unstable` (set in .cargo/config.toml) to seed tokio's generator"
);

mod client;
mod clock;
mod net;
mod world;

use std::hash::{Hash, Hasher};

use lockstep_chaos::checker::Report;
use lockstep_chaos::history::Op;

/// What one run does.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// Simulated milliseconds of workload and faults, before the heal and
    /// the drain.
    pub duration_ms: u64,
    /// Nodes in the cluster, 3 to 5.
    pub nodes: usize,
}

/// Simulated milliseconds of workload per run unless told otherwise.
pub const DURATION_MS_DEFAULT: u64 = 10_000;
/// The cluster's size unless told otherwise.
pub const NODES_DEFAULT: usize = 3;
/// The sizes a run may have.
pub const NODES_RANGE: std::ops::RangeInclusive<usize> = 3..=5;

impl Options {
    /// The defaults for `seed`.
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            duration_ms: DURATION_MS_DEFAULT,
            nodes: NODES_DEFAULT,
        }
    }
}

/// What one run produced.
#[derive(Debug)]
pub struct Outcome {
    pub history: Vec<Op>,
    pub report: Report,
    /// Faults the schedule applied.
    pub faults: u64,
    /// The run stopped on a bound rather than by itself (no leader, no
    /// drain, no convergence), and why.
    pub stalled: Option<String>,
    /// The faults, one line each with its simulated time.
    pub trace: Vec<String>,
    /// A hash of the history and the trace: equal for two runs of one seed.
    pub fingerprint: u64,
}

impl Outcome {
    /// No anomaly, the queue drained, the replicas converged, and the run
    /// ended by itself.
    pub fn passed(&self) -> bool {
        self.report.passed() && self.stalled.is_none()
    }
}

/// Runs one seed to the end: workload and faults, heal, drain, digests,
/// and the checker over the history.
pub fn run(options: &Options) -> Outcome {
    let failed = |why: String| Outcome {
        history: Vec::new(),
        report: lockstep_chaos::check(&[]),
        faults: 0,
        stalled: Some(why),
        trace: Vec::new(),
        fingerprint: 0,
    };
    if !NODES_RANGE.contains(&options.nodes) {
        return failed(format!(
            "nodes = {} is outside {NODES_RANGE:?}",
            options.nodes
        ));
    }
    // Tokio's own generator decides which ready branch of a `select!` goes
    // first and which waiter of a `watch` channel (openraft's metrics) wakes
    // first; seeded by the OS, one seed gave two runs. Seeded from the run,
    // the order is the seed's.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(
            &options.seed.to_le_bytes(),
        ))
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return failed(format!("cannot build the runtime: {e}")),
    };
    let dir = std::env::temp_dir().join(format!(
        "lockstep-nodesim-{}-{}",
        std::process::id(),
        options.seed
    ));
    let _inline = Inline::on();
    let outcome = runtime.block_on(async {
        let mut world = match world::World::new(options, dir.clone()) {
            Ok(world) => world,
            Err(e) => return failed(e),
        };
        world.run().await;
        world.shutdown().await;
        let history = std::mem::take(
            &mut *world
                .shared
                .history
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let report = lockstep_chaos::check(&history);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for op in &history {
            lockstep_chaos::history::to_line(op).hash(&mut hasher);
        }
        world.trace.hash(&mut hasher);
        Outcome {
            history,
            report,
            faults: world.faults,
            stalled: world.stalled.take(),
            trace: std::mem::take(&mut world.trace),
            fingerprint: hasher.finish(),
        }
    });
    // Tasks still parked (calls to stopped nodes) end with the runtime.
    drop(runtime);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// Storage work inline on this thread while it lives, also when a run
/// panics: the thread may go on to run other things.
struct Inline;

impl Inline {
    fn on() -> Inline {
        lockstep_store::run_inline_on_this_thread(true);
        Inline
    }
}

impl Drop for Inline {
    fn drop(&mut self) {
        lockstep_store::run_inline_on_this_thread(false);
    }
}
