//! `groups list|pause|resume`: a queue's ordered groups, with the backlog,
//! head and lease holder of each, and the pause switch of one.

use comfy_table::CellAlignment::{Left, Right};
use lockstep_client::{pb, Client};
use serde_json::{json, Value};

use super::common::{CliError, Out, LIST_LIMIT};
use crate::table;

#[derive(clap::Subcommand, Debug)]
pub enum GroupsCmd {
    List {
        queue: String,
        #[arg(long, default_value = "")]
        prefix: String,
    },
    Pause {
        queue: String,
        group: String,
    },
    Resume {
        queue: String,
        group: String,
    },
}

pub async fn run(client: &Client, out: &Out, cmd: GroupsCmd) -> Result<(), CliError> {
    match cmd {
        GroupsCmd::List { queue, prefix } => {
            let r = client
                .list_groups(pb::ListGroupsRequest {
                    queue: queue.clone(),
                    key_prefix: prefix,
                    limit: LIST_LIMIT,
                    ..Default::default()
                })
                .await?;
            let list: Vec<Value> = r
                .groups
                .iter()
                .map(|g| {
                    json!({"group": g.key, "backlog": g.backlog, "head_offset": g.head_offset,
                           "head_age_ms": g.head_age_ms, "lease_holder": g.lease_holder,
                           "attempts": g.attempts, "paused": g.paused, "parked_reason": g.parked_reason})
                })
                .collect();
            out.value(&Value::Array(list), || {
                let mut t = groups_table(&r.groups);
                if !r.next_after.is_empty() {
                    t.push_str(&format!("\n(first {LIST_LIMIT} groups shown)"));
                }
                t
            });
        }
        GroupsCmd::Pause { queue, group } => {
            client.pause_group(&queue, &group).await?;
            out.value(&json!({"group": group, "paused": true}), || {
                format!("group `{group}` paused")
            });
        }
        GroupsCmd::Resume { queue, group } => {
            client.resume_group(&queue, &group).await?;
            out.value(&json!({"group": group, "paused": false}), || {
                format!("group `{group}` resumed")
            });
        }
    }
    Ok(())
}

/// A group a row; `-` where a group has no head or no lease holder.
fn groups_table(groups: &[pb::GroupInfo]) -> String {
    table::of(
        &[
            ("group", Left),
            ("backlog", Right),
            ("head", Right),
            ("head age", Right),
            ("lease holder", Left),
            ("attempts", Right),
            ("paused", Left),
        ],
        groups.iter().map(|g| {
            vec![
                g.key.clone(),
                g.backlog.to_string(),
                g.head_offset.map_or("-".into(), |o| o.to_string()),
                format!("{}s", g.head_age_ms / 1_000),
                if g.lease_holder.is_empty() {
                    "-".into()
                } else {
                    g.lease_holder.clone()
                },
                g.attempts.to_string(),
                (if g.paused { "yes" } else { "no" }).into(),
            ]
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of the README's `groups list` example.
    #[test]
    fn the_groups_table_reads_like_the_readme() {
        let g = |key: &str, head: u64, age_ms: u64| pb::GroupInfo {
            key: key.into(),
            backlog: 3,
            head_offset: Some(head),
            head_age_ms: age_ms,
            lease_holder: "worker-00f0260d51a2".into(),
            ..Default::default()
        };
        assert_eq!(
            groups_table(&[g("alice", 0, 1_200), g("bob", 3, 1_100), g("carol", 6, 300)]),
            "group backlog head head age lease holder        attempts paused\n\
             alice       3    0       1s worker-00f0260d51a2        0 no\n\
             bob         3    3       1s worker-00f0260d51a2        0 no\n\
             carol       3    6       0s worker-00f0260d51a2        0 no"
        );
    }
}
