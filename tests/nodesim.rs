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

/// Seeds run twice by `one_seed_gives_one_run`. Several, because one seed
/// repeating proved little: with tokio's generator unseeded, seed 7 gave
/// one run while 11 of seeds 1-20 (3, 5 and 6 among them) did not: runs
/// parted ways where a watch channel woke its waiters in another order.
const REPEATED_SEEDS: std::ops::Range<u64> = 1..7;

#[test]
fn one_seed_gives_one_run() {
    let _turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    unplant();
    let mut fingerprints = Vec::new();
    for seed in REPEATED_SEEDS {
        let a = run(&Options::new(seed));
        let b = run(&Options::new(seed));
        assert!(
            a.history.len() > 100,
            "seed {seed}: {} ops",
            a.history.len()
        );
        assert_eq!(a.trace, b.trace, "seed {seed}: the faults parted ways");
        assert_eq!(
            a.history, b.history,
            "seed {seed}: the histories parted ways"
        );
        assert_eq!(a.fingerprint, b.fingerprint, "seed {seed}");
        fingerprints.push(a.fingerprint);
    }
    // Another seed, another run.
    fingerprints.sort_unstable();
    fingerprints.dedup();
    assert_eq!(fingerprints.len(), REPEATED_SEEDS.count());
}

/// Seeds of the clean run that fail, with no bug planted, on a hole this
/// simulator found (2026-12-02): a member that lost its data and is
/// guarded answers Conflict while its log does not match a leader's, and
/// openraft's read index counts any answer but a higher vote as that
/// member confirming the leader. A deposed leader that never heard of its
/// successor and reaches only the wiped member thus confirms a read index
/// and refuses a queue its successor created (N). Fixed by refusing, while
/// guarded, to answer an empty AppendEntries with a conflict, and by the
/// leader's no-op entry that such a refusal asks for
/// (`lockstep_raft::EntriesWanted`).
const STALE_READ_INDEX_SEEDS: [u64; 3] = [2_678, 6_540, 8_497];

#[test]
fn a_deposed_leader_never_confirms_a_read_index_with_a_wiped_member() {
    let _turn = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    unplant();
    for seed in STALE_READ_INDEX_SEEDS {
        let outcome = run(&Options::new(seed));
        assert!(
            outcome.passed(),
            "seed {seed}: {:?} {:?}",
            outcome.report.counts,
            outcome.report.examples
        );
    }
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
        caught("wall-clock-time", 20);
    }

    #[test]
    fn retries_without_reply_cache_are_caught() {
        // Caught in 2 of 100 seeds: the one slow catch of the gate.
        caught("retries-without-reply-cache", 90);
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

    #[test]
    fn precheck_on_stale_state_is_caught() {
        caught("precheck-on-stale-state", 50);
    }

    #[test]
    fn ack_before_fsync_is_caught() {
        caught("ack-before-fsync", 10);
    }
}
