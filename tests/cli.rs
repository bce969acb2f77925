//! The `lockstep` command line (issue 4) against a real 3-node cluster: the
//! real binary, run as a person or a script would, with `--json` parsed and
//! asserted. Every command is bounded by `CMD_MAX`.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const CMD_MAX: Duration = Duration::from_secs(60);

struct Cli {
    addrs: String,
}

impl Cli {
    fn new(c: &Cluster) -> Cli {
        let addrs: Vec<String> = (1..=3).map(|id| c.addr(id).client.to_string()).collect();
        Cli {
            addrs: addrs.join(","),
        }
    }

    fn output(&self, args: &[&str]) -> Output {
        let mut child = Command::new(lockstep_harness::lockstep_binary())
            .arg("--addr")
            .arg(&self.addrs)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + CMD_MAX;
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("`lockstep {}` took longer than {CMD_MAX:?}", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "`lockstep {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(self.ok(&all).trim()).unwrap()
    }

    /// Runs a command that must fail; returns its stderr (one line).
    fn fails(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            !out.status.success(),
            "`lockstep {}` succeeded",
            args.join(" ")
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_drives_a_real_cluster() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (r, _leader) = start3().await;
        let cli = Cli::new(&r.cluster);
        let dir = tempfile::tempdir().unwrap();

        // Queues.
        assert_eq!(
            cli.json(&["queue", "create", "mail", "--max-attempts", "2"])["created"],
            true
        );
        assert_eq!(
            cli.json(&["queue", "create", "mail", "--max-attempts", "2"])["created"],
            false
        );
        let err = cli.fails(&["queue", "create", "mail"]);
        assert!(err.contains("lockstep queue update"), "{err}");
        let list = cli.json(&["queue", "list"]);
        assert_eq!(list[0]["name"], "mail");
        assert_eq!(list[0]["config"]["max_attempts"], 2);
        cli.ok(&["queue", "update", "mail", "--lease-default", "20s"]);
        let q = cli.json(&["queue", "get", "mail"]);
        assert_eq!(q["config"]["lease_ms_default"], 20_000);
        assert_eq!(q["config"]["max_attempts"], 2, "update keeps what it was not given");

        // One job, then the same id again.
        let e = cli.json(&["enqueue", "mail", "--group", "a", "--id", "a-1", "--data", "one"]);
        assert_eq!((e["outcome"].as_str(), e["offset"].as_u64()), (Some("created"), Some(0)));
        let e = cli.json(&["enqueue", "mail", "--group", "a", "--id", "a-1", "--data", "one"]);
        assert_eq!((e["outcome"].as_str(), e["offset"].as_u64()), (Some("duplicate"), Some(0)));

        // Bulk from a file: one job per line; a rerun with the same
        // prefix stores nothing new.
        let file = dir.path().join("jobs.txt");
        let lines: String = (0..1200).map(|i| format!("job {i}\n")).collect();
        std::fs::write(&file, lines).unwrap();
        let path = file.to_str().unwrap();
        let b = cli.json(&["enqueue", "mail", "--group", "b", "--id-prefix", "f", "--file", path]);
        assert_eq!((b["created"].as_u64(), b["duplicate"].as_u64()), (Some(1200), Some(0)));
        let b = cli.json(&["enqueue", "mail", "--group", "b", "--id-prefix", "f", "--file", path]);
        assert_eq!((b["created"].as_u64(), b["duplicate"].as_u64()), (Some(0), Some(1200)));

        let groups = cli.json(&["groups", "list", "mail"]);
        let backlog = |g: &str| {
            groups
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["group"] == g)
                .map(|x| x["backlog"].as_u64().unwrap())
        };
        assert_eq!((backlog("a"), backlog("b")), (Some(1), Some(1200)));

        // Fetch, nack, fetch again, ack.
        let got = cli.json(&["fetch", "mail", "--max", "10"]);
        let a = got.as_array().unwrap().iter().find(|d| d["group"] == "a").unwrap().clone();
        assert_eq!((a["offset"].as_u64(), a["payload"].as_str()), (Some(0), Some("one")));
        let (off, fence) = (a["offset"].to_string(), a["fence"].to_string());
        cli.ok(&["nack", "mail", &off, &fence, "--delay", "10ms"]);
        // The old fence is refused, with a line that says what to do.
        let err = cli.fails(&["ack", "mail", &off, &fence]);
        assert!(err.contains("fetch again"), "{err}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let again = loop {
            let got = cli.json(&["fetch", "mail", "--max", "10", "--wait", "500ms"]);
            if let Some(d) = got.as_array().unwrap().iter().find(|d| d["group"] == "a") {
                break d.clone();
            }
            assert!(Instant::now() < deadline, "the nacked job never came back");
        };
        assert_eq!(again["attempt"], 2);
        cli.ok(&["ack", "mail", &again["offset"].to_string(), &again["fence"].to_string()]);

        // `work` runs a command per job, in group order; exit 100
        // dead-letters. The fetched leases on group b expire after 20 s, so
        // use a fresh queue.
        cli.ok(&["queue", "create", "w"]);
        for (i, g) in ["x", "y", "x", "y", "x", "z"].iter().enumerate() {
            cli.ok(&["enqueue", "w", "--group", g, "--id", &format!("w{i}"), "--data", &format!("{g}{i}")]);
        }
        let log = dir.path().join("work.log");
        let script = format!(
            "read p; if [ \"$p\" = z5 ]; then exit 100; fi; echo \"$LOCKSTEP_GROUP $LOCKSTEP_OFFSET $p\" >> {}",
            log.display()
        );
        let report = cli.json(&["work", "w", "--concurrency", "2", "--max-jobs", "6", "--", "sh", "-c", &script]);
        assert_eq!((report["acked"].as_u64(), report["dead_lettered"].as_u64()), (Some(5), Some(1)));
        let done = std::fs::read_to_string(&log).unwrap();
        let x: Vec<&str> = done.lines().filter(|l| l.starts_with("x ")).collect();
        assert_eq!(x, ["x 0 x0", "x 2 x2", "x 4 x4"], "group x in offset order:\n{done}");

        // Dead letters: list, requeue, purge.
        let dead = cli.json(&["dlq", "list", "w"]);
        assert_eq!(dead[0]["id"], "w5");
        assert!(dead[0]["reason"].as_str().unwrap().contains("100"));
        let rq = cli.json(&["dlq", "requeue", "w", &dead[0]["offset"].to_string()]);
        assert_eq!(rq["new_offset"], 6);
        assert_eq!(cli.json(&["dlq", "list", "w"]).as_array().unwrap().len(), 0);

        // Errors: one line that says what to do.
        let err = cli.fails(&["queue", "get", "nope"]);
        assert!(err.contains("lockstep queue create"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        let unreachable = Command::new(lockstep_harness::lockstep_binary())
            .args(["--addr", "127.0.0.1:1", "queue", "list"])
            .output()
            .unwrap();
        let err = String::from_utf8(unreachable.stderr).unwrap();
        assert!(!unreachable.status.success());
        assert!(err.contains("is it running?"), "{err}");

        // Cluster status through the first address.
        let status = cli.ok(&["cluster", "status"]);
        assert!(status.contains("leader"), "{status}");
    })
    .await
    .expect("test timed out");
}

/// Group control (`groups get|top|drain|skip`) and a chained ack
/// (`ack --then-queue`) against a real cluster, through any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_controlled_and_acks_chain_from_the_command_line() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (r, _leader) = start3().await;
        let cli = Cli::new(&r.cluster);
        cli.ok(&["queue", "create", "ops", "--group-policy", "park"]);
        cli.ok(&["queue", "create", "next"]);
        for (i, g) in ["a", "a", "a", "b", "c", "c"].iter().enumerate() {
            cli.ok(&[
                "enqueue",
                "ops",
                "--group",
                g,
                "--id",
                &format!("o{i}"),
                "--data",
                "x",
            ]);
        }
        let keys = |v: Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|g| g["group"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            keys(cli.json(&["groups", "top", "ops", "--limit", "2"])),
            ["a", "c"]
        );
        assert_eq!(
            keys(cli.json(&["groups", "top", "ops", "--by", "age"])),
            ["a", "b", "c"]
        );

        let got = cli.json(&["fetch", "ops", "--max", "10", "--lease", "60s"]);
        let head = |g: &str| {
            got.as_array()
                .unwrap()
                .iter()
                .find(|d| d["group"] == g)
                .unwrap()
                .clone()
        };
        let (a, b) = (head("a"), head("b"));
        let info = cli.json(&["groups", "get", "ops", "a"]);
        assert_eq!(
            (info["lease_holder"].as_str(), info["backlog"].as_u64()),
            (Some("cli"), Some(3))
        );
        assert!(info["lease_deadline_ms"].as_u64().unwrap() > 0, "{info}");

        // A drain pauses the group; its job in flight still runs.
        let d = cli.json(&["groups", "drain", "ops", "b", "--wait", "300ms"]);
        assert_eq!(d["drained"], false, "{d}");
        // Finishing it hands off to the next queue in the same entry.
        let chained = cli.json(&[
            "ack",
            "ops",
            &b["offset"].to_string(),
            &b["fence"].to_string(),
            "--then-queue",
            "next",
            "--then-data",
            "step 2",
            "--then-id",
            "n-1",
        ]);
        assert_eq!(chained["then"]["outcome"], "created", "{chained}");
        assert_eq!(chained["then"]["id"], "n-1");
        let d = cli.json(&["groups", "drain", "ops", "b", "--wait", "2s"]);
        assert_eq!(d["drained"], true, "{d}");
        let next = cli.json(&["fetch", "next"]);
        assert_eq!(next[0]["payload"], "step 2");
        // A chained ack whose lease is gone enqueues nothing.
        let err = cli.fails(&[
            "ack",
            "ops",
            &b["offset"].to_string(),
            &(b["fence"].as_u64().unwrap() + 1).to_string(),
            "--then-queue",
            "next",
            "--then-data",
            "never",
        ]);
        assert!(err.contains("fetch again"), "{err}");

        // Skip the leased head of `a`: a dead letter, the group goes on
        // (not parked), and the old holder's ack is refused.
        let s = cli.json(&["groups", "skip", "ops", "a", "--reason", "stuck"]);
        assert_eq!(s["skipped"], a["offset"]);
        let dead = cli.json(&["dlq", "list", "ops"]);
        assert_eq!(dead[0]["reason"], "skipped: stuck");
        let info = cli.json(&["groups", "get", "ops", "a"]);
        assert_eq!(
            (info["paused"].as_bool(), info["backlog"].as_u64()),
            (Some(false), Some(2))
        );
        let err = cli.fails(&[
            "ack",
            "ops",
            &a["offset"].to_string(),
            &a["fence"].to_string(),
        ]);
        assert!(err.contains("fetch again"), "{err}");
        let err = cli.fails(&["groups", "get", "ops", "nobody"]);
        assert!(err.contains("nobody"), "{err}");
    })
    .await
    .expect("test timed out");
}

/// Subscriptions and fairness from the command line: two subscriptions
/// each get the same job with their own leases, a lease in one does not
/// hold the other back, an ack in one leaves the other's copy pending,
/// and `subs list` shows each one's counts; fairness weights round-trip
/// through `queue create` and `queue get`, and a bad weight is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_and_fairness_from_the_command_line() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (r, _leader) = start3().await;
        let cli = Cli::new(&r.cluster);
        cli.ok(&["queue", "create", "orders"]);
        let created = cli.json(&["subs", "create", "orders", "billing"]);
        assert_eq!(created["created"], true, "{created}");
        cli.ok(&["subs", "create", "orders", "audit"]);
        cli.ok(&[
            "enqueue", "orders", "--group", "o7", "--id", "a", "--data", "x",
        ]);
        cli.ok(&[
            "enqueue", "orders", "--group", "o7", "--id", "b", "--data", "y",
        ]);
        let billing = cli.json(&["fetch", "orders", "--subscription", "billing"]);
        let audit = cli.json(&["fetch", "orders", "--subscription", "audit"]);
        assert_eq!(billing[0]["offset"], 0, "{billing}");
        assert_eq!(audit[0]["offset"], 0, "audit is not held back: {audit}");
        let again = cli.json(&["fetch", "orders", "--subscription", "billing"]);
        assert_eq!(
            again.as_array().map(Vec::len),
            Some(0),
            "o7 locked: {again}"
        );
        let fence = billing[0]["fence"].to_string();
        cli.ok(&["ack", "orders", "0", &fence, "--subscription", "billing"]);
        let next = cli.json(&["fetch", "orders", "--subscription", "billing"]);
        assert_eq!(next[0]["offset"], 1, "{next}");
        let subs = cli.json(&["subs", "list", "orders"]);
        let row = |name: &str| {
            subs.as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == name)
                .cloned()
                .unwrap()
        };
        assert_eq!(row("billing")["ack_floor"], 1, "{subs}");
        assert_eq!(row("audit")["ack_floor"], 0, "{subs}");
        let err = cli.fails(&["fetch", "orders", "--subscription", "nope"]);
        assert!(err.contains("`nope`"), "{err}");

        // Group control and dead letters of one subscription leave the
        // others alone.
        let skipped = cli.json(&[
            "groups",
            "skip",
            "orders",
            "o7",
            "--reason",
            "bad",
            "--subscription",
            "audit",
        ]);
        assert_eq!(skipped["skipped"], 0, "{skipped}");
        let audit_dead = cli.json(&["dlq", "list", "orders", "--subscription", "audit"]);
        assert_eq!(audit_dead[0]["offset"], 0, "{audit_dead}");
        let default_dead = cli.json(&["dlq", "list", "orders"]);
        assert_eq!(
            default_dead.as_array().map(Vec::len),
            Some(0),
            "{default_dead}"
        );
        let group = cli.json(&["groups", "get", "orders", "o7", "--subscription", "billing"]);
        assert_eq!(
            group["head_offset"], 1,
            "billing still holds offset 1: {group}"
        );
        let purged = cli.json(&["dlq", "purge", "orders", "--subscription", "audit"]);
        assert_eq!(purged["purged"], 1, "{purged}");

        cli.ok(&["queue", "create", "t", "--fairness-weight", "gold=3"]);
        let q = cli.json(&["queue", "get", "t"]);
        assert_eq!(q["config"]["fairness_weights"]["gold"], 3, "{q}");
        let err = cli.fails(&["queue", "create", "t2", "--fairness-weight", "gold=0"]);
        assert!(err.contains("fairness"), "{err}");
        cli.ok(&["enqueue", "t", "--fairness-key", "gold", "--data", "g"]);
    })
    .await
    .expect("test timed out");
}
