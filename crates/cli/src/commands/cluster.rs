//! `cluster bootstrap|status|join|remove`: forming a cluster, reading its
//! members, and changing them.
//!
//! `bootstrap` and `status` speak to the first `--addr` only: forming a
//! cluster must go through one chosen node, and a status is one node's
//! view. Their errors name that node, and they print text even with
//! `--json`. `join` and `remove` go to whichever node leads, like the
//! other client commands.

use comfy_table::CellAlignment::{Left, Right};
use lockstep_client::{pb, Client, Consistency};
use serde_json::json;

use super::common::{block_on, explain, outln, CliError, Connect, Out};
use crate::table;

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCmd {
    /// Form a cluster from its initial members (harmless if already formed),
    /// through the first --addr.
    Bootstrap {
        /// ID=PEER_ADDR/CLIENT_ADDR, once per member.
        #[arg(long = "member", required = true)]
        members: Vec<String>,
    },
    /// Members, roles, leader, term, indexes and lag, as the first --addr
    /// sees them.
    Status,
    /// Add a node (started empty, without bootstrap) as a voter.
    Join {
        id: u64,
        #[arg(long)]
        peer_addr: String,
        #[arg(long)]
        client_addr: String,
    },
    /// Remove a member; stop its process afterwards.
    Remove { id: u64 },
}

/// Runs a cluster command; the error is the one line to print.
pub fn run(connect: Connect, command: ClusterCmd) -> Result<(), String> {
    match command {
        ClusterCmd::Bootstrap { members } => {
            let members = members
                .iter()
                .map(|m| parse_member(m))
                .collect::<Result<Vec<_>, _>>();
            through_first(&connect, |client, addr| async move {
                let initialized = client
                    .bootstrap(members?)
                    .await
                    .map_err(|e| format!("bootstrap through {addr} failed: {e}"))?;
                outln(if initialized {
                    "cluster formed"
                } else {
                    "cluster was already formed"
                });
                Ok(())
            })
        }
        ClusterCmd::Status => through_first(&connect, |client, addr| async move {
            let s = client
                .cluster_status(Consistency::Stale)
                .await
                .map_err(|e| format!("status from {addr} failed: {e}"))?;
            outln(&format!(
                "node {} term {} leader {} applied {} digest {}",
                s.node_id,
                s.term,
                s.leader_id.map_or("none".into(), |l| l.to_string()),
                s.applied_index,
                s.state_digest
            ));
            outln(&members_table(&s.members));
            Ok(())
        }),
        ClusterCmd::Join {
            id,
            peer_addr,
            client_addr,
        } => membership(&connect, |client| async move {
            client.join(id, &peer_addr, &client_addr).await?;
            Ok(json!({"joined": id}))
        }),
        ClusterCmd::Remove { id } => membership(&connect, |client| async move {
            client.remove(id).await?;
            Ok(json!({"removed": id}))
        }),
    }
}

/// Runs `work` with a client of the first `--addr` alone (and that
/// address, for its errors): the first call of a new client goes there.
fn through_first<W, F>(connect: &Connect, work: W) -> Result<(), String>
where
    W: FnOnce(Client, String) -> F,
    F: std::future::Future<Output = Result<(), String>>,
{
    let mut config = connect.config()?;
    config.endpoints.truncate(1);
    let addr = config.endpoints.first().cloned().unwrap_or_default();
    block_on(async move {
        let client = Client::connect(config).map_err(|e| e.to_string())?;
        work(client, addr).await
    })
}

/// Runs a membership change through every `--addr` and prints what it
/// answered.
fn membership<W, F>(connect: &Connect, work: W) -> Result<(), String>
where
    W: FnOnce(Client) -> F,
    F: std::future::Future<Output = Result<serde_json::Value, lockstep_client::Error>>,
{
    block_on(async move {
        let client = Client::connect(connect.config()?).map_err(|e| e.to_string())?;
        let done = work(client)
            .await
            .map_err(|e| explain(CliError::Client(e), &connect.addrs))?;
        Out { json: connect.json }.value(&done, || format!("{done}"));
        Ok(())
    })
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

/// A member a row, as the node asked sees it.
fn members_table(members: &[pb::Member]) -> String {
    table::of(
        &[
            ("id", Left),
            ("role", Left),
            ("peer", Left),
            ("client", Left),
            ("lag", Right),
        ],
        members.iter().map(|m| {
            vec![
                m.id.to_string(),
                m.role.clone(),
                m.peer_addr.clone(),
                m.client_addr.clone(),
                m.lag.to_string(),
            ]
        }),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_member_is_id_peer_and_client() {
        let m = parse_member("2=127.0.0.2:7101/127.0.0.2:7100").unwrap();
        assert_eq!(
            (m.id, m.peer_addr.as_str(), m.client_addr.as_str()),
            (2, "127.0.0.2:7101", "127.0.0.2:7100")
        );
        let err = parse_member("2=127.0.0.2:7101").unwrap_err();
        assert!(err.contains("ID=PEER_ADDR/CLIENT_ADDR"), "{err}");
    }

    #[test]
    fn the_members_table_has_the_status_columns() {
        let m = |id: u64, role: &str, lag| pb::Member {
            id,
            role: role.into(),
            peer_addr: format!("127.0.0.{id}:7101"),
            client_addr: format!("127.0.0.{id}:7100"),
            lag,
            ..Default::default()
        };
        assert_eq!(
            members_table(&[m(1, "leader", 0), m(2, "follower", 1250)]),
            "id role     peer           client          lag\n\
             1  leader   127.0.0.1:7101 127.0.0.1:7100    0\n\
             2  follower 127.0.0.2:7101 127.0.0.2:7100 1250"
        );
    }
}
