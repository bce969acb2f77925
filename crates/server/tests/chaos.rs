//! The short chaos tier: each fault profile once for 30 s on three real
//! nodes, then heal, drain and check. A failing seed is a product bug; the
//! report in the printed directory says what the checker found and how to
//! replay it.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

/// A run lasts 30 s plus start-up, healing and draining (at most 60 s).
const RUN_MAX: Duration = Duration::from_secs(150);

fn run(profile: &str, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["chaos", "--profile", profile, "--seed", &seed.to_string()])
        .args(["--duration-s", "30", "--dir"])
        .arg(dir.path())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_MAX {
            let _ = child.kill();
            panic!("chaos {profile} seed {seed} ran past {RUN_MAX:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let report = std::fs::read_to_string(dir.path().join("report.json")).unwrap();
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
