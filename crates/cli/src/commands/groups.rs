//! `groups list|get|top|pause|resume|skip|drain`: a queue's ordered
//! groups, with the backlog, head and lease holder of each; the pause
//! switch of one, its head skipped to the dead letters, or its deliveries
//! drained.

use std::time::Duration;

use comfy_table::CellAlignment::{Left, Right};
use lockstep_client::{pb, Client, Consistency};
use serde_json::{json, Value};

use super::common::{duration, CliError, Out, LIST_LIMIT};
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
    /// One group: head, attempts, lease holder and deadline, backlog.
    Get {
        queue: String,
        group: String,
    },
    /// The groups with the most jobs (or, with --by age, the oldest heads).
    Top {
        queue: String,
        #[arg(long, value_enum, default_value = "backlog")]
        by: Rank,
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
    /// Move the group's head to the dead letters, leased or not; the group
    /// goes on with its next job.
    Skip {
        queue: String,
        group: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Pause the group and wait for its job in flight to finish.
    Drain {
        queue: String,
        group: String,
        #[arg(long, value_parser = duration, default_value = "10s")]
        wait: Duration,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Rank {
    Backlog,
    Age,
}

fn group_json(g: &pb::GroupInfo) -> Value {
    json!({"group": g.key, "backlog": g.backlog, "head_offset": g.head_offset,
           "head_age_ms": g.head_age_ms, "lease_holder": g.lease_holder,
           "lease_deadline_ms": g.lease_deadline_ms,
           "attempts": g.attempts, "paused": g.paused, "parked_reason": g.parked_reason})
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
            let list: Vec<Value> = r.groups.iter().map(group_json).collect();
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
        GroupsCmd::Get { queue, group } => {
            let g = client
                .get_group(&queue, &group, Consistency::Linearizable)
                .await?;
            out.value(&group_json(&g), || {
                let mut t = groups_table(std::slice::from_ref(&g));
                if g.lease_deadline_ms > 0 {
                    t.push_str(&format!(
                        "\nlease ends at {} (cluster ms)",
                        g.lease_deadline_ms
                    ));
                }
                if !g.parked_reason.is_empty() {
                    t.push_str(&format!("\nparked: {}", g.parked_reason));
                }
                t
            });
        }
        GroupsCmd::Top { queue, by, limit } => {
            let rank = match by {
                Rank::Backlog => pb::GroupRank::Backlog,
                Rank::Age => pb::GroupRank::Age,
            };
            let groups = client
                .top_groups(&queue, rank, limit, Consistency::Linearizable)
                .await?;
            out.value(
                &Value::Array(groups.iter().map(group_json).collect()),
                || groups_table(&groups),
            );
        }
        GroupsCmd::Skip {
            queue,
            group,
            reason,
        } => {
            let offset = client.skip_group_head(&queue, &group, &reason).await?;
            out.value(&json!({"group": group, "skipped": offset}), || {
                format!("group `{group}`: offset {offset} moved to the dead letters")
            });
        }
        GroupsCmd::Drain { queue, group, wait } => {
            let r = client.drain_group(&queue, &group, wait).await?;
            let g = r.group.unwrap_or_default();
            out.value(
                &json!({"group": group, "drained": r.drained, "lease_holder": g.lease_holder}),
                || {
                    if r.drained {
                        format!("group `{group}` paused and drained: nothing of it is running")
                    } else {
                        format!(
                            "group `{group}` paused; offset {} is still leased by {} until {} (cluster ms)",
                            g.head_offset.unwrap_or_default(),
                            g.lease_holder,
                            g.lease_deadline_ms
                        )
                    }
                },
            );
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
