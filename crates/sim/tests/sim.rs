//! The simulator's fixed budget in the gate: a clean range of seeds, the
//! same history from the same seed, and each planted bug caught within a
//! stated number of seeds.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use lockstep_sim::{run, Options};

/// Seeds of the clean run in the gate (about 20 a second in a debug
/// build). `lockstep sim --seeds 10000` runs the long one.
const CLEAN_SEEDS: u64 = 300;

/// Planted bugs are a process-wide switch: tests that plant one, or that
/// need none planted, take turns.
static SWITCH: Mutex<()> = Mutex::new(());

#[test]
fn clean_seeds_pass() {
    let _turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    lockstep_sim::unplant();
    let mut acked = 0;
    for seed in 1..=CLEAN_SEEDS {
        let outcome = run(&Options::new(seed));
        assert!(
            outcome.passed(),
            "seed {seed}: {:?} stalled={:?} examples={:?}\n{}",
            outcome.report.counts,
            outcome.stalled,
            outcome.report.examples,
            outcome.trace.join("\n")
        );
        acked += outcome.report.enqueued_ok;
    }
    // The workload did something: every seed acknowledges hundreds of jobs.
    assert!(
        acked as u64 > CLEAN_SEEDS * 100,
        "only {acked} acknowledged enqueues"
    );
}

#[test]
fn one_seed_gives_one_history() {
    let _turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    lockstep_sim::unplant();
    let a = run(&Options::new(42));
    let b = run(&Options::new(42));
    assert!(a.history.len() > 100);
    assert_eq!(a.history, b.history);
    assert_eq!(a.trace, b.trace);
    let c = run(&Options::new(43));
    assert_ne!(a.history, c.history);
}

/// Runs seeds 1..=`within` with `bug` planted; the first seed whose
/// history the checker fails.
#[cfg(feature = "planted-bugs")]
fn first_catch(bug: &str, within: u64) -> Option<(u64, String)> {
    let _turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    lockstep_sim::plant(bug).unwrap();
    let mut caught = None;
    for seed in 1..=within {
        let outcome = run(&Options::new(seed));
        if !outcome.passed() {
            caught = Some((seed, format!("{:?}", outcome.report.counts)));
            break;
        }
    }
    lockstep_sim::unplant();
    caught
}

#[cfg(feature = "planted-bugs")]
mod planted {
    use super::first_catch;

    /// Each bug with the seeds it must be caught within (the first catch
    /// measured, with room: tests/chaos/README.md, Table 2).
    fn caught(bug: &str, within: u64) {
        match first_catch(bug, within) {
            Some((seed, counts)) => eprintln!("{bug}: caught at seed {seed}: {counts}"),
            None => panic!("{bug} went unnoticed in seeds 1..={within}"),
        }
    }

    #[test]
    fn skip_fence() {
        caught("skip-fence", 20);
    }

    #[test]
    fn ignore_dedup() {
        caught("ignore-dedup", 20);
    }

    #[test]
    fn ack_before_fsync() {
        caught("ack-before-fsync", 40);
    }

    #[test]
    fn guard_lifted_by_bootstrap() {
        caught("guard-lifted-by-bootstrap", 60);
    }

    #[test]
    fn guard_not_persisted() {
        caught("guard-not-persisted", 60);
    }

    #[test]
    fn guard_acks_stale_leader() {
        caught("guard-acks-stale-leader", 60);
    }

    #[test]
    fn wall_clock_time() {
        caught("wall-clock-time", 60);
    }

    #[test]
    fn retries_without_reply_cache() {
        caught("retries-without-reply-cache", 40);
    }

    #[test]
    fn precheck_on_stale_state() {
        caught("precheck-on-stale-state", 80);
    }
}
