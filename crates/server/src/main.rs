//! `lockstep`: the one binary. `lockstep node` runs a node; the other
//! subcommands talk to a running cluster.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lockstep_server::config::NodeConfig;

#[derive(Parser, Debug)]
#[command(
    name = "lockstep",
    version,
    about = "A Raft-replicated job queue with ordered groups"
)]
struct Cli {
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
    Cluster(ClusterCmd),
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
    /// Any other key, as KEY=VALUE (for example raft.heartbeat_ms=100).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Form a cluster from its initial members (harmless if already formed).
    Bootstrap {
        /// Client address of any member.
        #[arg(long)]
        addr: String,
        /// ID=PEER_ADDR/CLIENT_ADDR, once per member.
        #[arg(long = "member", required = true)]
        members: Vec<String>,
    },
    /// Members, roles, leader, term, indexes and lag.
    Status {
        #[arg(long)]
        addr: String,
    },
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
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Node(args) => run_node(args),
        Cmd::Cluster(cmd) => lockstep_server::cli::cluster(cmd.into()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lockstep: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

impl From<ClusterCmd> for lockstep_server::cli::ClusterCommand {
    fn from(cmd: ClusterCmd) -> Self {
        match cmd {
            ClusterCmd::Bootstrap { addr, members } => Self::Bootstrap { addr, members },
            ClusterCmd::Status { addr } => Self::Status { addr },
        }
    }
}

fn run_node(args: NodeArgs) -> Result<(), String> {
    let flags = args.flags()?;
    let config = NodeConfig::load(args.config.as_deref(), std::env::vars(), &flags)
        .map_err(|e| e.to_string())?;
    lockstep_server::run::run_node(config).map_err(|e| e.to_string())
}
