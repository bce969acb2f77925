//! Embedded mode (issue 4): three instances of `examples/embedded.rs`, each
//! a process with a Lockstep node inside, form a cluster, enqueue and work.
//! One is killed with SIGKILL mid-work; the other two finish every job, and
//! every group's jobs finish in offset order.
//!
//! The example's code is compiled into this test (`#[path]`), and each
//! instance is this test binary re-run with `--exact embedded_instance`: no
//! separately built (and possibly stale) example binary is involved.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[allow(dead_code, unreachable_pub)]
#[path = "../crates/lockstep/examples/embedded.rs"]
mod app;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use lockstep_node::pb;

/// The environment variable that makes `embedded_instance` run one instance.
const ARGS_VAR: &str = "LOCKSTEP_EMBEDDED_ARGS";
const JOBS_EACH: u64 = 200;
const GROUPS: u64 = 20;
const TEST_MAX: Duration = Duration::from_secs(240);

/// The entry point of each child process; does nothing unless run by
/// `three_instances_finish_every_job_after_one_is_killed`.
#[test]
#[ignore = "run as a child process by three_instances_finish_every_job_after_one_is_killed"]
fn embedded_instance() {
    let Ok(args) = std::env::var(ARGS_VAR) else {
        return;
    };
    let args = app::Args::parse_from(
        std::iter::once("embedded".to_string()).chain(args.split(' ').map(str::to_string)),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(app::run(args)).unwrap();
}

struct Instance {
    id: u64,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Instance {
    fn spawn(id: u64, dir: &Path, base: u16) -> Instance {
        let args = format!(
            "--id {id} --dir {} --bootstrap --jobs {JOBS_EACH} --groups {GROUPS} --expect {} \
             --work-ms 60 --concurrency 4 --peer-port {} --client-port {base} --out {}",
            dir.join(format!("data{id}")).display(),
            JOBS_EACH * 3,
            base + 1,
            dir.join(format!("done{id}.log")).display(),
        );
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "embedded_instance", "--ignored", "--nocapture"])
            .env(ARGS_VAR, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join(format!("stderr{id}.log"))).unwrap(),
            ))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Instance {
            id,
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until this instance printed a line starting with `prefix`.
    fn wait_for(&mut self, prefix: &str, deadline: Instant) -> String {
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.starts_with(prefix)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(e) => panic!(
                    "instance {} never printed {prefix} ({e:?}); it printed {:?}",
                    self.id, self.seen
                ),
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One finished job, as an instance wrote it.
#[derive(Debug)]
struct Done {
    micros: u128,
    group: String,
    offset: u64,
    id: String,
    attempt: u32,
}

fn done_lines(dir: &Path) -> Vec<Done> {
    let mut all = Vec::new();
    for id in 1..=3 {
        let Ok(text) = std::fs::read_to_string(dir.join(format!("done{id}.log"))) else {
            continue;
        };
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 6, "bad line {line:?}");
            all.push(Done {
                micros: f[0].parse().unwrap(),
                group: f[1].to_string(),
                offset: f[2].parse().unwrap(),
                id: f[3].to_string(),
                attempt: f[4].parse().unwrap(),
            });
        }
    }
    all
}

#[test]
fn three_instances_finish_every_job_after_one_is_killed() {
    let dir = tempfile::Builder::new()
        .prefix("lockstep-embedded-")
        .tempdir()
        .unwrap();
    let base = lockstep_harness::free_base_port(0, 3).unwrap();
    let deadline = Instant::now() + TEST_MAX;
    let mut instances: Vec<Instance> = (1..=3)
        .map(|id| Instance::spawn(id, dir.path(), base))
        .collect();
    for i in &mut instances {
        i.wait_for("ENQUEUED", deadline);
    }
    // Kill the leader once some work is done.
    while done_lines(dir.path()).len() < 150 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let leader = runtime.block_on(async {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{base}").parse().unwrap();
        let channel = lockstep_harness::channel(addr).await.unwrap();
        let mut cluster = pb::cluster_client::ClusterClient::new(channel);
        let status = cluster
            .status(pb::StatusRequest { read: None })
            .await
            .unwrap()
            .into_inner();
        status.leader_id.expect("a leader")
    });
    let done_before_kill = done_lines(dir.path()).len();
    let mut victim = instances.remove((leader - 1) as usize);
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    println!("killed instance {leader} (the leader) after {done_before_kill} jobs were done");

    for i in &mut instances {
        let line = i.wait_for("ALL-DONE", deadline);
        assert!(
            line.contains(&format!("next_offset={}", JOBS_EACH * 3)),
            "{line}"
        );
        assert!(line.ends_with("dead=0"), "{line}");
    }
    for i in &mut instances {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
    for i in &mut instances {
        let line = i.wait_for("STOPPED", deadline);
        println!("instance {}: {line}", i.id);
    }

    // Every job was finished, and within each group in offset order.
    let mut done = done_lines(dir.path());
    done.sort_by_key(|d| d.micros);
    let ids: BTreeSet<&str> = done.iter().map(|d| d.id.as_str()).collect();
    for instance in 1..=3 {
        for k in 0..JOBS_EACH {
            let id = format!("i{instance}-{k}");
            assert!(ids.contains(id.as_str()), "job {id} was never finished");
        }
    }
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for d in &done {
        if let Some(prev) = last.insert(&d.group, d.offset) {
            // Equal: a job finished twice, by the killed instance (never
            // acknowledged) and again by a survivor.
            assert!(
                d.offset >= prev,
                "group {} finished offset {} after {prev}",
                d.group,
                d.offset
            );
        }
    }
    let after_kill = done.len() - done_before_kill;
    let redone = done.iter().filter(|d| d.attempt > 1).count();
    println!(
        "{} jobs finished, {after_kill} after the kill, {redone} on a later attempt",
        done.len()
    );
    assert!(after_kill > 0, "no work was done after the kill");
}
