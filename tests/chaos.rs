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
    let mut child = Command::new(lockstep_harness::lockstep_binary())
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

#[test]
fn chaos_wipe_leader() {
    run("wipe-leader", 22);
}

#[test]
fn chaos_clock() {
    run("clock", 23);
}

#[test]
fn chaos_lost_reply() {
    run("lost-reply", 24);
}

#[test]
fn chaos_slow_disk() {
    run("slow-disk", 25);
}

#[test]
fn chaos_operator() {
    run("operator", 26);
}

#[test]
fn chaos_compound() {
    run("compound", 27);
}

/// Each node's data directory on its own 256 MiB tmpfs (mounting needs
/// root, as the gate runs); one disk at a time filled below the node's
/// reserve and freed. The run fails if a leader below it took enqueues,
/// or still refused them after space returned.
#[test]
fn chaos_disk_full() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the disk-full profile mounts a tmpfs per node and needs root (the gate runs as root)"
    );
    run("disk-full", 28);
}

/// The iptables rules whose comment is `tag`.
fn rules_tagged(tag: &str) -> usize {
    let listed = Command::new("iptables")
        .args(["-S", "INPUT"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|line| line.split_whitespace().any(|w| w == tag))
        .count()
}

/// Processes whose command line mentions `dir` (the run's nodes).
fn processes_under(dir: &std::path::Path) -> usize {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|cmdline| String::from_utf8_lossy(cmdline).contains(&needle))
        .count()
}

/// Ctrl-C in the middle of a partition: the run stops, removes its
/// iptables rules and kills its nodes; none outlives it.
#[test]
fn an_interrupted_run_leaves_no_rule_and_no_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(lockstep_harness::lockstep_binary())
        .args(["chaos", "--profile", "partition-leader", "--seed", "41"])
        // Its own loopback net: a partition here cuts no other cluster.
        .args(["--duration-s", "60", "--net", "8", "--dir"])
        .arg(dir.path())
        .spawn()
        .unwrap();
    let tag = format!("lockstep-chaos-{}", child.id());
    // The first fault comes at most 10 s in; allow start-up on top.
    let deadline = Instant::now() + Duration::from_secs(60);
    while rules_tagged(&tag) == 0 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("no partition rule within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(processes_under(dir.path()) > 0, "the nodes are running");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run ignored SIGINT for 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "an interrupted run has no verdict");
    assert_eq!(rules_tagged(&tag), 0, "partition rules left behind");
    assert_eq!(processes_under(dir.path()), 0, "nodes left behind");
}

/// A run killed with SIGKILL cannot remove its rules; the next one does,
/// and leaves alone the rules of runs still alive.
#[test]
fn a_new_run_removes_the_rules_of_a_killed_one() {
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = format!("lockstep-chaos-{}", gone.id());
    gone.wait().unwrap();
    let live = format!("lockstep-chaos-{}", std::process::id());
    let rule = |action: &str, tag: &str| {
        Command::new("iptables")
            .arg(action)
            .args(["INPUT", "-s", "127.0.9.1", "-d", "127.0.9.2", "-j", "DROP"])
            .args(["-m", "comment", "--comment", tag])
            .status()
            .unwrap()
            .success()
    };
    assert!(rule("-A", &dead) && rule("-A", &live));
    drop(lockstep_chaos::run::Partitions::new());
    let (dead_left, live_left) = (rules_tagged(&dead), rules_tagged(&live));
    rule("-D", &live);
    rule("-D", &dead);
    assert_eq!(dead_left, 0, "the orphaned rule stayed");
    assert_eq!(live_left, 1, "a live run's rule was removed");
}

/// The tmpfs mounts whose source is `tag` (`/proc/self/mounts`).
fn mounts_tagged(tag: &str) -> usize {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|line| line.split_whitespace().next() == Some(tag))
        .count()
}

/// Ctrl-C in a run whose nodes sit on their own tmpfs: the run stops,
/// kills its nodes and unmounts every disk it mounted.
#[test]
fn an_interrupted_disk_full_run_leaves_no_mount() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(lockstep_harness::lockstep_binary())
        .args(["chaos", "--profile", "disk-full", "--seed", "42"])
        .args(["--duration-s", "60", "--net", "7", "--dir"])
        .arg(dir.path())
        .spawn()
        .unwrap();
    let tag = format!("lockstep-chaos-{}", child.id());
    // The disks are mounted before the nodes start; wait for the nodes too.
    let deadline = Instant::now() + Duration::from_secs(30);
    while mounts_tagged(&tag) < 3 || processes_under(dir.path()) == 0 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("no three mounts and running nodes within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run ignored SIGINT for 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(mounts_tagged(&tag), 0, "tmpfs mounts left behind");
    assert_eq!(processes_under(dir.path()), 0, "nodes left behind");
}

/// A run killed with SIGKILL cannot unmount its disks; the next mount
/// does, and leaves alone the mounts of runs still alive.
#[test]
fn a_new_mount_removes_the_disks_of_a_killed_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = format!("lockstep-chaos-{}", gone.id());
    gone.wait().unwrap();
    let orphan = dir.path().join("orphan");
    std::fs::create_dir(&orphan).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", &dead])
        .arg(&orphan)
        .status()
        .unwrap();
    assert!(mounted.success());
    let live = lockstep_harness::Tmpfs::mount(&dir.path().join("live"), 1024 * 1024).unwrap();
    let (dead_left, live_left) = (
        mounts_tagged(&dead),
        mounts_tagged(&format!("lockstep-chaos-{}", std::process::id())),
    );
    let _ = Command::new("umount").arg(&orphan).status();
    drop(live);
    assert_eq!(dead_left, 0, "the orphaned mount stayed");
    assert_eq!(live_left, 1, "a live run's mount was removed");
}

/// The checker is not vacuous: each planted bug makes the run fail with
/// the anomaly it causes.
#[cfg(feature = "planted-bugs")]
mod planted {
    use super::*;

    fn caught(bug: &str, profile: &str, seed: u64, count: &str) {
        caught_as(bug, profile, seed, 25, &[count]);
    }

    /// Runs `profile` for `seconds` with `bug` planted and asserts the run
    /// failed with at least one of `counts` above zero.
    fn caught_as(bug: &str, profile: &str, seed: u64, seconds: u64, counts: &[&str]) {
        if let Err(report) = caught_once(bug, profile, seed, seconds, counts) {
            panic!("{report}");
        }
    }

    /// One run of `profile` with `bug` planted: `Ok` if it failed with at
    /// least one of `counts` above zero, else what it reported.
    fn caught_once(
        bug: &str,
        profile: &str,
        seed: u64,
        seconds: u64,
        counts: &[&str],
    ) -> Result<(), String> {
        let (status, report) = chaos(&[
            "--profile",
            profile,
            "--seed",
            &seed.to_string(),
            "--duration-s",
            &seconds.to_string(),
            "--plant",
            bug,
        ]);
        let json: serde_json::Value = serde_json::from_str(&report).unwrap();
        let seen: Vec<(&str, u64)> = counts
            .iter()
            .map(|c| (*c, json["checker"]["counts"][c].as_u64().unwrap()))
            .collect();
        eprintln!("{bug}, {profile} seed {seed}: {seen:?}");
        if !status.success() && json["passed"] == false && seen.iter().any(|(_, n)| *n > 0) {
            Ok(())
        } else {
            Err(format!(
                "{bug} went unnoticed ({profile} seed {seed}; it should show as one of \
                 {counts:?}): {report}"
            ))
        }
    }

    /// The bug is caught within `seeds` (tried in order until one catches
    /// it): a fault schedule is seeded, but its interleaving with the
    /// workload is not, so one seed may miss a bug the next one catches.
    fn caught_within(bug: &str, profile: &str, seeds: &[u64], seconds: u64, counts: &[&str]) {
        let mut missed = Vec::new();
        for seed in seeds {
            match caught_once(bug, profile, *seed, seconds, counts) {
                Ok(()) => return,
                Err(report) => missed.push(report),
            }
        }
        panic!(
            "{bug} not caught within seeds {seeds:?}:\n{}",
            missed.join("\n")
        );
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

    /// What a leader elected without acknowledged jobs shows as: jobs lost
    /// when the old leader's log is overwritten, or delivered again, out
    /// of order, under a stale fence or at a second offset.
    const AMNESIA: &[&str] = &[
        "lost",
        "redelivered_after_ack",
        "fencing",
        "duplicated",
        "out_of_order",
    ];

    /// Wall-clock cluster time: a clock step on the leader ends leases
    /// early, and a held group is granted again on the harness's clock.
    #[test]
    fn wall_clock_cluster_time_shows_as_t_under_clock_steps() {
        caught_within("wall-clock-time", "clock", &[1, 2, 3], 40, &["overlap"]);
    }

    /// A bootstrap re-run through a wiped member initializes it and lifts
    /// its guard: with a lagging member it elects a leader without
    /// acknowledged jobs, whose log then overwrites theirs.
    #[test]
    fn a_guard_lifted_by_bootstrap_loses_or_repeats_jobs() {
        caught_within(
            "guard-lifted-by-bootstrap",
            "operator",
            &[1, 2, 3],
            40,
            AMNESIA,
        );
    }

    /// Without the reply cache, a library call retried after its answer was
    /// lost is applied again: a fetch leases jobs no one sees (A).
    #[test]
    fn retries_without_the_reply_cache_show_as_a_under_lost_replies() {
        caught_within(
            "retries-without-reply-cache",
            "lost-reply",
            &[1, 2, 3],
            40,
            &["unexplained_attempts"],
        );
    }

    /// A refusal from the precheck is final without the read-index round: a
    /// leader cut off from the others, not yet told of its successor,
    /// answers NOT_FOUND for a queue the new leader created (N).
    #[test]
    fn a_precheck_on_a_stale_state_shows_as_n_when_the_leader_is_cut_off() {
        caught_within(
            "precheck-on-stale-state",
            "partition-leader",
            &[1, 2, 3],
            40,
            &["stale_refusal"],
        );
    }

    /// A wiped member restarted mid-catch-up forgets its guard and votes a
    /// lagging member in.
    #[test]
    fn a_guard_not_persisted_loses_or_repeats_jobs() {
        caught_within("guard-not-persisted", "operator", &[1, 2, 3], 40, AMNESIA);
    }
}
