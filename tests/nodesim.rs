//! The node-layer simulator's fixed budget in the gate: a clean range of
//! seeds, the same run from the same seed, and planted bugs of the core and
//! the node caught within a stated number of seeds (tests/chaos/README.md,
//! Table 3). `lockstep sim --layer node` runs the long ones.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use lockstep_nodesim::{run, Options};

/// Seeds of the clean run in the gate.
const CLEAN_SEEDS: u64 = 12;

/// Planted bugs are a process-wide switch: tests that plant one, or that
/// need none planted, take turns.
static SWITCH: Mutex<()> = Mutex::new(());

fn unplant() {
    #[cfg(feature = "planted-bugs")]
    lockstep_core::planted::clear();
}

#[test]
fn clean_seeds_pass() {
    let _turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    unplant();
    let mut acked = 0;
    let mut faults = 0;
    for seed in 1..=CLEAN_SEEDS {
        let mut options = Options::new(seed);
        // Every size the simulator supports takes its turn.
        options.nodes = 3 + (seed % 3) as usize;
        let outcome = run(&options);
        assert!(
            outcome.passed(),
            "seed {seed} ({} nodes): {:?} stalled={:?} examples={:?}\n{}",
            options.nodes,
            outcome.report.counts,
            outcome.stalled,
            outcome.report.examples,
            outcome.trace.join("\n")
        );
        acked += outcome.report.enqueued_ok;
        faults += outcome.faults;
    }
    // The workload and the schedule did something in every seed.
    assert!(
        acked as u64 > CLEAN_SEEDS * 100,
        "only {acked} acknowledged enqueues"
    );
    assert!(faults >= CLEAN_SEEDS * 3, "only {faults} faults");
}

#[test]
fn one_seed_gives_one_run() {
    let _turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    unplant();
    let a = run(&Options::new(7));
    let b = run(&Options::new(7));
    assert!(a.history.len() > 100, "{} ops", a.history.len());
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.history, b.history);
    assert_eq!(a.fingerprint, b.fingerprint);
    let c = run(&Options::new(8));
    assert_ne!(a.fingerprint, c.fingerprint);
}

#[cfg(feature = "planted-bugs")]
mod planted {
    use super::*;

    /// Runs seeds 1..=`within` with `bug` planted; the first seed that
    /// fails, with its counts.
    fn first_catch(bug: &str, within: u64) -> Option<(u64, String)> {
        let _turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
        let parsed = lockstep_core::planted::Bug::parse(bug).unwrap();
        lockstep_core::planted::plant(parsed);
        let mut caught = None;
        for seed in 1..=within {
            let outcome = run(&Options::new(seed));
            if !outcome.passed() {
                caught = Some((seed, format!("{:?}", outcome.report.counts)));
                break;
            }
        }
        lockstep_core::planted::clear();
        caught
    }

    fn caught(bug: &str, within: u64) {
        match first_catch(bug, within) {
            Some((seed, counts)) => eprintln!("{bug}: caught at seed {seed}: {counts}"),
            None => panic!("{bug} went unnoticed in seeds 1..={within}"),
        }
    }

    // The bounds: the first catch measured over seeds 1-100 (Table 3),
    // with room. A run is a function of its seed and the code, so a bound
    // moves only when the code does.
    #[test]
    fn skip_fence_is_caught() {
        caught("skip-fence", 10);
    }

    #[test]
    fn ignore_dedup_is_caught() {
        caught("ignore-dedup", 5);
    }

    #[test]
    fn wall_clock_time_is_caught() {
        caught("wall-clock-time", 10);
    }

    #[test]
    fn retries_without_reply_cache_are_caught() {
        caught("retries-without-reply-cache", 40);
    }

    #[test]
    fn guard_not_persisted_is_caught() {
        caught("guard-not-persisted", 20);
    }

    #[test]
    fn guard_lifted_by_bootstrap_is_caught() {
        caught("guard-lifted-by-bootstrap", 15);
    }

    #[test]
    fn guard_acks_stale_leader_is_caught() {
        caught("guard-acks-stale-leader", 20);
    }
}
