//! `lockstep`: the one binary. `lockstep node` runs a node; the other
//! subcommands talk to a running cluster.

mod bench;
mod bench_plot;
mod chaos_plot;
mod commands;
mod devcerts;
mod malloc;
mod sim;
mod table;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lockstep_node::config::NodeConfig;

use crate::commands::outln;

#[derive(Parser, Debug)]
#[command(
    name = "lockstep",
    version,
    about = "A Raft-replicated job queue with ordered groups"
)]
struct Cli {
    #[command(flatten)]
    connect: crate::commands::Connect,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a node. Configuration: TOML file, then LOCKSTEP_* variables,
    /// then these flags.
    Node(NodeArgs),
    /// Cluster operations against a running node.
    #[command(subcommand)]
    Cluster(crate::commands::cluster::ClusterCmd),
    /// Start a fresh local cluster, run a workload under faults, heal,
    /// drain, and check the history. Exits non-zero on any anomaly.
    Chaos(ChaosArgs),
    /// Run the deterministic simulator over a range of seeds: three
    /// simulated nodes around the real state machine, seeded faults, and
    /// the chaos checker. Exits non-zero on the first failing seed.
    Sim(crate::sim::SimArgs),
    /// Load a running cluster and measure throughput and latency
    /// (enqueue, redup check, consume, or mixed).
    Bench(Box<crate::bench::BenchArgs>),
    /// Gather `lockstep bench --json` results into one file and draw them
    /// as SVG charts.
    BenchPlot(crate::bench_plot::PlotArgs),
    /// Write a throwaway CA and node certificates for trying TLS (ca.pem,
    /// ca.key, node-<i>.pem, node-<i>.key).
    DevCerts(crate::devcerts::DevCertsArgs),
    /// Make a new random bearer token and its entry for auth.tokens_file.
    Token {
        /// The token's name in the file, logs and errors.
        #[arg(long, default_value = "client")]
        name: String,
    },
    #[command(flatten)]
    Client(crate::commands::Command),
}

#[derive(clap::Args, Debug)]
struct ChaosArgs {
    /// none, kill, kill-all, pause, wipe, partition-leader,
    /// partition-halves, partition-oneway, membership or mixed.
    #[arg(long, default_value = "mixed")]
    profile: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    #[arg(long, default_value_t = 4)]
    producers: usize,
    #[arg(long, default_value_t = 4)]
    workers: usize,
    #[arg(long, default_value_t = 20)]
    groups: u64,
    /// Run every node with this planted bug (skip-fence, ignore-dedup,
    /// ack-before-fsync, guard-lifted-by-bootstrap, guard-not-persisted,
    /// wall-clock-time, retries-without-reply-cache,
    /// precheck-on-stale-state) to check that the checker notices; needs a
    /// debug build with the `planted-bugs` feature, as do the failpoints of
    /// the `lost-reply` and `slow-disk` profiles.
    #[arg(long)]
    plant: Option<String>,
    /// Put the nodes on 127.0.NET.1.. so that runs in parallel never
    /// share an address (a partition cuts by address).
    #[arg(long, default_value_t = 0)]
    net: u8,
    /// The queue's max_attempts (default: 3 for every third seed, so the
    /// server dead-letters on its own, else 1000).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Start nothing: check the history in FILE (a run's history.jsonl)
    /// again with this build's checker, print the counts and examples, and
    /// exit non-zero on any anomaly.
    #[arg(long, value_name = "FILE")]
    recheck: Option<PathBuf>,
    /// Append one tab-separated line with this run's counts to FILE
    /// (`scripts/chaos` builds its table from it).
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Where node data, logs, history.jsonl and report.json go (default: a
    /// new directory under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    id: Option<u64>,
    #[arg(long)]
    peer_addr: Option<String>,
    #[arg(long)]
    client_addr: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    metrics_addr: Option<String>,
    /// The web dashboard's address (`ui_addr`); off unless given.
    #[arg(long)]
    ui_addr: Option<String>,
    /// Any other key, as KEY=VALUE (for example raft.heartbeat_ms=100).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl NodeArgs {
    fn flags(&self) -> Result<Vec<(String, String)>, String> {
        let mut flags = Vec::new();
        let mut push = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                flags.push((key.to_string(), v));
            }
        };
        push("id", self.id.map(|v| v.to_string()));
        push("peer_addr", self.peer_addr.clone());
        push("client_addr", self.client_addr.clone());
        push(
            "data_dir",
            self.data_dir.as_ref().map(|p| p.display().to_string()),
        );
        push("metrics_addr", self.metrics_addr.clone());
        push("ui_addr", self.ui_addr.clone());
        for pair in &self.set {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("--set `{pair}`: expected KEY=VALUE"))?;
            flags.push((key.trim().to_string(), value.trim().to_string()));
        }
        Ok(flags)
    }
}

fn main() -> std::process::ExitCode {
    malloc::cap_arenas();
    let cli = Cli::parse();
    let connect = cli.connect;
    let result = match cli.command {
        Cmd::Node(args) => {
            malloc::trim_every_while_running();
            run_node(args)
        }
        Cmd::Cluster(cmd) => crate::commands::cluster::run(connect, cmd),
        Cmd::DevCerts(args) => crate::devcerts::dev_certs(&args).map(|files| {
            for f in files {
                outln(&f.display().to_string());
            }
        }),
        Cmd::Token { name } => {
            let (secret, entry) = crate::devcerts::new_token(&name);
            outln(&format!(
                "# The token; give it to the client (LOCKSTEP_TOKEN=...). It is shown once.\n{secret}\n\n# For the node's auth.tokens_file (it holds only the SHA-256); narrow the\n# permissions to the queue patterns this client needs.\n{entry}"
            ));
            Ok(())
        }
        Cmd::Chaos(args) => run_chaos(args),
        Cmd::Sim(args) => crate::sim::run(args),
        Cmd::Bench(mut args) => {
            args.connect = match connect.config() {
                Ok(c) => Some(c),
                Err(e) => return fail(e),
            };
            args.addrs = connect.addrs;
            // The global --json prints the results as JSON on stdout.
            if connect.json && args.json_out.is_none() {
                args.json_out = Some("-".into());
            }
            crate::bench::run(*args)
        }
        Cmd::BenchPlot(args) => crate::bench_plot::run(args),
        Cmd::Client(command) => crate::commands::run(connect, command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => fail(message),
    }
}

fn fail(message: String) -> std::process::ExitCode {
    eprintln!("lockstep: {message}");
    std::process::ExitCode::FAILURE
}

/// `lockstep chaos --recheck FILE`: the checker over a saved history.
fn recheck(path: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let history = lockstep_chaos::history::parse(&text)?;
    let report = lockstep_chaos::check(&history);
    let counts: Vec<String> = lockstep_chaos::checker::Counts::LETTERS
        .iter()
        .zip(report.counts.in_order())
        .map(|(letter, n)| format!("{letter}={n}"))
        .collect();
    outln(&format!(
        "{} ops={} enqueued_ok={} delivered={} dead_lettered={} {}",
        if report.passed() { "PASS" } else { "FAIL" },
        report.ops,
        report.enqueued_ok,
        report.delivered,
        report.dead_lettered,
        counts.join(" ")
    ));
    for (class, examples) in &report.examples {
        for example in examples {
            outln(&format!("{class}: {example}"));
        }
    }
    if report.passed() {
        Ok(())
    } else {
        Err(format!("{}: the checker found anomalies", path.display()))
    }
}

fn run_node(args: NodeArgs) -> Result<(), String> {
    let flags = args.flags()?;
    let config = NodeConfig::load(args.config.as_deref(), std::env::vars(), &flags)
        .map_err(|e| e.to_string())?;
    lockstep_node::run::run_node(config).map_err(|e| e.to_string())
}

fn run_chaos(args: ChaosArgs) -> Result<(), String> {
    if let Some(path) = &args.recheck {
        return recheck(path);
    }
    let profile = lockstep_chaos::run::Profile::parse(&args.profile)?;
    if !(1..=7).contains(&args.nodes) {
        return Err(format!("--nodes {}: expected 1 to 7", args.nodes));
    }
    let dir = match args.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "lockstep-chaos-{}-{}-{}",
            profile.name(),
            args.seed,
            std::process::id()
        )),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let options = lockstep_chaos::run::Options {
        bin: std::env::current_exe().map_err(|e| e.to_string())?,
        dir: dir.clone(),
        nodes: args.nodes,
        seed: args.seed,
        profile,
        duration: std::time::Duration::from_secs(args.duration_s),
        producers: args.producers,
        workers: args.workers,
        groups: args.groups.max(1),
        planted: args.plant.clone(),
        net: args.net,
        max_attempts: args.max_attempts,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // On Ctrl-C or SIGTERM (`scripts/chaos` runs each run under
    // `timeout`) the run is dropped where it stands: dropping it removes
    // its iptables rules and kills its nodes, which a default signal death
    // would leave behind.
    let outcomes = runtime.block_on(async {
        tokio::select! {
            outcome = lockstep_chaos::run::run(&options) => outcome,
            () = lockstep_node::run::shutdown_signal() => Err(format!(
                "stopped by a signal: partitions removed, nodes stopped, no report (node logs in {})",
                dir.display()
            )),
        }
    })?;
    let history: String = outcomes
        .history
        .iter()
        .map(|op| lockstep_chaos::history::to_line(op) + "\n")
        .collect();
    std::fs::write(dir.join("history.jsonl"), history).map_err(|e| e.to_string())?;
    let report = lockstep_chaos::run::report(&options, &outcomes);
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("report.json"), json).map_err(|e| e.to_string())?;
    let picture = crate::chaos_plot::timeline(
        &outcomes.history,
        &outcomes.faults,
        &format!("{} seed {}", options.profile.name(), options.seed),
    );
    std::fs::write(dir.join("timeline.svg"), picture).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("summary.txt"),
        lockstep_chaos::run::summary_page(&report),
    )
    .map_err(|e| e.to_string())?;
    #[allow(clippy::print_stdout)]
    {
        println!("{}", lockstep_chaos::run::summary(&report));
        println!(
            "history.jsonl, report.json, summary.txt and timeline.svg in {}",
            dir.display()
        );
    }
    if let Some(path) = &args.summary {
        use std::io::Write as _;
        let counts: Vec<String> = report
            .checker
            .counts
            .in_order()
            .iter()
            .map(u64::to_string)
            .collect();
        let line = format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            report.profile,
            report.seed,
            report.nodes,
            report.duration_s,
            if report.passed { "pass" } else { "FAIL" },
            report.checker.ops,
            report.checker.enqueued_ok,
            counts.join("\t"),
            report.faults.len() / 2,
            report
                .liveness
                .as_deref()
                .unwrap_or("ok")
                .replace(['\t', '\n'], " "),
        );
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| format!("--summary {}: {e}", path.display()))?;
    }
    if report.passed {
        Ok(())
    } else {
        Err(format!(
            "anomalies or a liveness failure; see {}",
            dir.join("report.json").display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every subcommand parses into its arguments: an argument id shared
    /// by a global flag and a subcommand's field only fails here, at
    /// parse time (as `bench --json` once did).
    #[test]
    fn every_subcommand_parses() {
        let lines: &[&[&str]] = &[
            &["node", "--id", "1"],
            &["cluster", "status"],
            &["cluster", "bootstrap", "--member", "1=a:1/b:2"],
            &[
                "cluster",
                "join",
                "4",
                "--peer-addr",
                "a:1",
                "--client-addr",
                "b:2",
            ],
            &["cluster", "remove", "4"],
            &["chaos", "--profile", "kill"],
            &["--json", "bench", "--jobs", "10", "--json-out", "x.json"],
            &["bench-plot", "a.json", "--out", "p"],
            &[
                "enqueue", "q", "--data", "x", "--group", "g", "--delay", "1s",
            ],
            &["fetch", "q", "--max", "2", "--wait", "500ms"],
            &["ack", "q", "1", "2"],
            &["nack", "q", "1", "2", "--delay", "1s"],
            &["work", "q", "--max-jobs", "1", "--", "true"],
            &[
                "--addr",
                "a:1,b:2",
                "queue",
                "create",
                "q",
                "--max-attempts",
                "3",
            ],
            &["queue", "update", "q", "--lease-default", "10s"],
            &["queue", "list"],
            &["groups", "list", "q"],
            &["groups", "pause", "q", "g"],
            &["dlq", "purge", "q", "1", "2"],
            &["dev-certs", "--out", "c", "--host", "127.0.0.1,n2"],
            &["token", "--name", "app"],
            &["--ca-file", "ca.pem", "--token", "t", "queue", "list"],
        ];
        for line in lines {
            let argv = std::iter::once("lockstep").chain(line.iter().copied());
            if let Err(e) = Cli::try_parse_from(argv) {
                panic!("`lockstep {}`: {e}", line.join(" "));
            }
        }
    }
}
