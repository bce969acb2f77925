//! Client-side subcommands of the binary that talk to a running cluster.
//! Printing their answers to stdout is their job.

#![allow(clippy::print_stdout)]

use lockstep_client::pb;

/// `println!` that drops the write when stdout is closed (`| head`)
/// instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Debug)]
pub enum ClusterCommand {
    Bootstrap { members: Vec<String> },
    Status,
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

/// Runs `command` through the node of `config`'s first endpoint (the
/// first `--addr`): the first call of a new client goes there.
pub fn cluster(
    mut config: lockstep_client::ClientConfig,
    command: ClusterCommand,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        config.endpoints.truncate(1);
        let addr = config.endpoints.first().cloned().unwrap_or_default();
        let client = lockstep_client::Client::connect(config).map_err(|e| e.to_string())?;
        match command {
            ClusterCommand::Bootstrap { members } => {
                let members = members
                    .iter()
                    .map(|m| parse_member(m))
                    .collect::<Result<Vec<_>, _>>()?;
                let initialized = client
                    .bootstrap(members)
                    .await
                    .map_err(|e| format!("bootstrap through {addr} failed: {e}"))?;
                let said = if initialized {
                    "cluster formed"
                } else {
                    "cluster was already formed"
                };
                outln!("{said}");
            }
            ClusterCommand::Status => {
                let s = client
                    .cluster_status(lockstep_client::Consistency::Stale)
                    .await
                    .map_err(|e| format!("status from {addr} failed: {e}"))?;
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
