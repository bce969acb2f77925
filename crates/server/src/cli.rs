//! Client-side subcommands of the binary that talk to a running cluster.
//! Printing their answers to stdout is their job.

#![allow(clippy::print_stdout)]

use std::time::Duration;

use crate::pb;

/// `println!` that drops the write when stdout is closed (`| head`)
/// instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Deadline of one admin call from the command line.
const CALL_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug)]
pub enum ClusterCommand {
    Bootstrap { addr: String, members: Vec<String> },
    Status { addr: String },
}

fn parse_member(text: &str) -> Result<pb::JoinRequest, String> {
    let bad = || {
        format!("--member `{text}`: expected ID=PEER_ADDR/CLIENT_ADDR, e.g. 1=127.0.0.1:7101/127.0.0.1:7100")
    };
    let (id, addrs) = text.split_once('=').ok_or_else(bad)?;
    let (peer, client) = addrs.split_once('/').ok_or_else(bad)?;
    Ok(pb::JoinRequest {
        id: id.trim().parse().map_err(|_| bad())?,
        peer_addr: peer.trim().into(),
        client_addr: client.trim().into(),
    })
}

pub fn cluster(command: ClusterCommand) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let addr = match &command {
            ClusterCommand::Bootstrap { addr, .. } | ClusterCommand::Status { addr } => {
                addr.clone()
            }
        };
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("address `{addr}`: {e}"))?
            .timeout(Duration::from_millis(CALL_TIMEOUT_MS))
            .connect()
            .await
            .map_err(|e| format!("cannot reach a node at {addr}: {e}; is it running?"))?;
        let mut client = pb::cluster_client::ClusterClient::new(channel);
        match command {
            ClusterCommand::Bootstrap { members, .. } => {
                let members = members
                    .iter()
                    .map(|m| parse_member(m))
                    .collect::<Result<Vec<_>, _>>()?;
                let reply = client
                    .bootstrap(pb::BootstrapRequest {
                        members,
                        this_node_only: false,
                    })
                    .await
                    .map_err(|s| format!("bootstrap failed: {}", s.message()))?
                    .into_inner();
                let said = if reply.initialized {
                    "cluster formed"
                } else {
                    "cluster was already formed"
                };
                outln!("{said}");
            }
            ClusterCommand::Status { .. } => {
                let s = client
                    .status(pb::StatusRequest { read: None })
                    .await
                    .map_err(|s| format!("status failed: {}", s.message()))?
                    .into_inner();
                outln!(
                    "node {} term {} leader {} applied {} digest {}",
                    s.node_id,
                    s.term,
                    s.leader_id.map_or("none".into(), |l| l.to_string()),
                    s.applied_index,
                    s.state_digest
                );
                outln!(
                    "{:<4} {:<10} {:<22} {:<22} {:>8}",
                    "id",
                    "role",
                    "peer",
                    "client",
                    "lag"
                );
                for m in s.members {
                    outln!(
                        "{:<4} {:<10} {:<22} {:<22} {:>8}",
                        m.id,
                        m.role,
                        m.peer_addr,
                        m.client_addr,
                        m.lag
                    );
                }
            }
        }
        Ok(())
    })
}
