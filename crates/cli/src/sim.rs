//! `lockstep sim`: the deterministic simulator over a range of seeds.

use std::path::PathBuf;
use std::time::Instant;

use lockstep_chaos::checker::Counts;

use crate::commands::outln;

#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How many seeds, from `--seed` on.
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// Simulated milliseconds of workload and faults per seed.
    #[arg(long, default_value_t = lockstep_sim::DURATION_MS_DEFAULT)]
    pub duration_ms: u64,
    /// Run with this planted bug (see `lockstep chaos --plant`); needs a
    /// debug build with the `planted-bugs` feature. The command then
    /// succeeds when some seed catches it, and prints the first that did.
    #[arg(long)]
    pub plant: Option<String>,
    /// Write the history of the last seed run (the failing one, if any)
    /// to FILE, in the chaos harness's JSON-lines format
    /// (`lockstep chaos --recheck FILE` reads it).
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Print the faults and leaders of a failing seed (of the one seed
    /// run, failing or not, with `--seeds 1`).
    #[arg(long)]
    pub trace: bool,
    /// Run every seed even after one fails, and count the failures (the
    /// catch rate of a planted bug).
    #[arg(long)]
    pub keep_going: bool,
    /// On the first failing seed, find the shortest run of it that still
    /// fails: the same seed cut short after fewer simulated milliseconds
    /// of workload and faults (then healed and drained as always), in
    /// steps of `SHRINK_STEP_MS`.
    #[arg(long)]
    pub shrink: bool,
    /// What runs inside: `model`, the core behind a model of the node
    /// (thousands of seeds a second), or `node`, the real node layer
    /// (batcher, forwarding, vote guard, ticker, openraft, RocksDB on an
    /// in-memory disk) on a simulated network (a few seeds a second).
    #[arg(long, value_enum, default_value_t = Layer::Model)]
    pub layer: Layer,
    /// Nodes in the cluster (3 to 5); `--layer node` only.
    #[arg(long, default_value_t = lockstep_nodesim::NODES_DEFAULT)]
    pub nodes: usize,
}

/// The simulators `lockstep sim` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Layer {
    /// `lockstep-sim`: a model of the node around the real core.
    Model,
    /// `lockstep-nodesim`: the real node layer.
    Node,
}

/// One seed's run, whichever simulator ran it.
struct Ran {
    report: lockstep_chaos::checker::Report,
    faults: u64,
    stalled: Option<String>,
    trace: Vec<String>,
    history: Vec<lockstep_chaos::history::Op>,
    passed: bool,
}

/// Runs `seed` for `duration_ms` of workload on the chosen simulator.
fn run_seed(args: &SimArgs, seed: u64, duration_ms: u64) -> Ran {
    match args.layer {
        Layer::Model => {
            let mut options = lockstep_sim::Options::new(seed);
            options.duration_ms = duration_ms;
            let o = lockstep_sim::run(&options);
            Ran {
                passed: o.passed(),
                report: o.report,
                faults: o.faults,
                stalled: o.stalled,
                trace: o.trace,
                history: o.history,
            }
        }
        Layer::Node => {
            let mut options = lockstep_nodesim::Options::new(seed);
            options.duration_ms = duration_ms;
            options.nodes = args.nodes;
            let o = lockstep_nodesim::run(&options);
            Ran {
                passed: o.passed(),
                report: o.report,
                faults: o.faults,
                stalled: o.stalled,
                trace: o.trace,
                history: o.history,
            }
        }
    }
}

/// The flags that replay a seed of this command's layer and size.
fn replay_flags(args: &SimArgs) -> String {
    match args.layer {
        Layer::Model => String::new(),
        Layer::Node => format!(" --layer node --nodes {}", args.nodes),
    }
}

/// The step of `--shrink`, simulated ms.
const SHRINK_STEP_MS: u64 = 250;

/// The counts of a report as `L=0 U=0 ...`.
fn counts_line(counts: &Counts) -> String {
    Counts::LETTERS
        .iter()
        .zip(counts.in_order())
        .map(|(l, c)| format!("{l}={c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(args: SimArgs) -> Result<(), String> {
    if let Some(bug) = &args.plant {
        lockstep_sim::plant(bug)?;
    }
    let started = Instant::now();
    let (mut ops, mut enqueued, mut faults) = (0usize, 0usize, 0u64);
    let (mut run_seeds, mut failed) = (0u64, 0u64);
    let mut first_failed = None;
    let mut last = None;
    for seed in args.seed..args.seed.saturating_add(args.seeds) {
        let outcome = run_seed(&args, seed, args.duration_ms);
        run_seeds += 1;
        ops += outcome.report.ops;
        enqueued += outcome.report.enqueued_ok;
        faults += outcome.faults;
        if !outcome.passed {
            failed += 1;
            first_failed.get_or_insert(seed);
            print_failure(seed, &outcome, args.trace && failed == 1);
            if args.shrink && failed == 1 {
                shrink(&args, seed);
            }
        } else if args.trace && args.seeds == 1 {
            for line in &outcome.trace {
                outln(&format!("  | {line}"));
            }
        }
        last = Some(outcome);
        if failed > 0 && !args.keep_going {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    outln(&format!(
        "seeds={run_seeds} failed={failed} ops={ops} acked_enqueues={enqueued} faults={faults} \
         seconds={secs:.1} seeds_per_second={:.1}",
        run_seeds as f64 / secs.max(1e-9)
    ));
    if let (Some(path), Some(outcome)) = (&args.history, &last) {
        let text: String = outcome
            .history
            .iter()
            .map(|op| lockstep_chaos::history::to_line(op) + "\n")
            .collect();
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    match (&args.plant, first_failed) {
        (None, None) => Ok(()),
        (None, Some(seed)) => Err(format!(
            "{failed} of {run_seeds} seeds failed, the first {seed}; replay it with --seed {seed} \
             --seeds 1 --trace{}",
            replay_flags(&args)
        )),
        (Some(bug), Some(seed)) => {
            outln(&format!(
                "CAUGHT {bug}: first at seed {seed} ({} seeds run by then), in {failed} of \
                 {run_seeds} seeds",
                seed - args.seed + 1
            ));
            Ok(())
        }
        (Some(bug), None) => Err(format!(
            "{bug} went unnoticed in {} seeds from {}",
            args.seeds, args.seed
        )),
    }
}

/// The shortest run of `seed` that still fails, from `SHRINK_STEP_MS` up to
/// `--duration-ms`: a run cut short is the same run up to its cut (the
/// schedule's draws do not depend on the duration).
fn shrink(args: &SimArgs, seed: u64) {
    let duration_ms = args.duration_ms;
    let flags = replay_flags(args);
    let mut cut = SHRINK_STEP_MS;
    while cut < duration_ms {
        let outcome = run_seed(args, seed, cut);
        if !outcome.passed {
            outln(&format!(
                "SHRUNK seed={seed}: fails after {cut} ms of workload instead of {duration_ms} \
                 ({} ops, {} faults); replay: lockstep sim --seed {seed} --seeds 1 \
                 --duration-ms {cut} --trace{flags}",
                outcome.report.ops, outcome.faults
            ));
            print_failure(seed, &outcome, true);
            return;
        }
        cut += SHRINK_STEP_MS;
    }
    outln(&format!(
        "SHRUNK seed={seed}: no shorter run fails; replay: lockstep sim --seed {seed} --seeds 1 \
         --duration-ms {duration_ms} --trace{flags}"
    ));
}

/// One failing seed: its counts, a few examples, and with `trace` the
/// faults and leaders of the run.
fn print_failure(seed: u64, outcome: &Ran, trace: bool) {
    outln(&format!(
        "FAIL seed={seed} ops={} acked_enqueues={} faults={} {}{}",
        outcome.report.ops,
        outcome.report.enqueued_ok,
        outcome.faults,
        counts_line(&outcome.report.counts),
        outcome
            .stalled
            .as_deref()
            .map(|s| format!(" stalled: {s}"))
            .unwrap_or_default(),
    ));
    for (class, examples) in &outcome.report.examples {
        for e in examples.iter().take(3) {
            outln(&format!("  {class}: {e}"));
        }
    }
    if trace {
        for line in &outcome.trace {
            outln(&format!("  | {line}"));
        }
    }
    if !outcome.report.undrained.is_empty() {
        outln(&format!(
            "  undrained: {}",
            outcome.report.undrained.join(", ")
        ));
    }
}
