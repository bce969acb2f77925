//! The short chaos tier: each fault profile once for 30 s on three real
//! nodes, then heal, drain and check. A failing seed is a product bug; the
//! report in the printed directory says what the checker found and how to
//! replay it.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

/// A run lasts 30 s plus start-up, healing and draining (at most 60 s).
const RUN_MAX: Duration = Duration::from_secs(150);

/// Runs `lockstep chaos` and returns its exit status and report.
fn chaos(args: &[&str]) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .arg("chaos")
        .args(args)
        .arg("--dir")
        .arg(dir.path())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_MAX {
            let _ = child.kill();
            panic!("chaos {args:?} ran past {RUN_MAX:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let report = std::fs::read_to_string(dir.path().join("report.json")).unwrap();
    (status, report)
}

fn run(profile: &str, seed: u64) {
    run_nodes(profile, seed, 3);
}

fn run_nodes(profile: &str, seed: u64, nodes: u64) {
    let (status, report) = chaos(&[
        "--profile",
        profile,
        "--seed",
        &seed.to_string(),
        "--duration-s",
        "30",
        "--nodes",
        &nodes.to_string(),
    ]);
    let json: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(
        status.success(),
        "chaos {profile} seed {seed} failed: {report}"
    );
    assert_eq!(json["passed"], true, "{report}");
    assert!(
        json["checker"]["enqueued_ok"].as_u64().unwrap() > 100,
        "the workload ran: {report}"
    );
    if profile != "none" {
        assert!(
            !json["faults"].as_array().unwrap().is_empty(),
            "faults were injected: {report}"
        );
    }
}

#[test]
fn chaos_none() {
    run("none", 11);
}

#[test]
fn chaos_kill() {
    run("kill", 12);
}

#[test]
fn chaos_pause() {
    run("pause", 13);
}

#[test]
fn chaos_wipe() {
    run("wipe", 14);
}

#[test]
fn chaos_partition_leader() {
    run("partition-leader", 15);
}

#[test]
fn chaos_mixed() {
    run("mixed", 16);
}

#[test]
fn chaos_kill_all() {
    run("kill-all", 17);
}

#[test]
fn chaos_partition_halves() {
    run("partition-halves", 18);
}

#[test]
fn chaos_partition_oneway() {
    run("partition-oneway", 19);
}

#[test]
fn chaos_membership() {
    run("membership", 20);
}

#[test]
fn chaos_mixed_five_nodes() {
    run_nodes("mixed", 21, 5);
}

/// The checker is not vacuous: each planted bug makes the run fail with
/// the anomaly it causes.
#[cfg(feature = "planted-bugs")]
mod planted {
    use super::*;

    fn caught(bug: &str, profile: &str, seed: u64, count: &str) {
        let (status, report) = chaos(&[
            "--profile",
            profile,
            "--seed",
            &seed.to_string(),
            "--duration-s",
            "25",
            "--plant",
            bug,
        ]);
        let json: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert!(!status.success(), "{bug} went unnoticed: {report}");
        assert_eq!(json["passed"], false, "{report}");
        let n = json["checker"]["counts"][count].as_u64().unwrap();
        eprintln!("{bug}: {count} = {n}");
        assert!(n > 0, "{bug} should show as {count}: {report}");
    }

    #[test]
    fn a_skipped_fence_check_shows_as_f() {
        caught("skip-fence", "none", 31, "fencing");
    }

    #[test]
    fn ignored_dedup_shows_as_d() {
        caught("ignore-dedup", "none", 32, "duplicated");
    }

    #[test]
    fn an_ack_before_fsync_shows_as_l_after_every_node_is_killed() {
        caught("ack-before-fsync", "kill-all", 33, "lost");
    }
}
