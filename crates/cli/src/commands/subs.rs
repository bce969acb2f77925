//! `subs create|delete|list`: a queue's named subscriptions (fan-out): each
//! an independent consumer group over the same jobs.

use comfy_table::CellAlignment::{Left, Right};
use lockstep_client::{Client, Consistency};
use serde_json::{json, Value};

use super::common::{CliError, Out};
use crate::table;

#[derive(clap::Subcommand, Debug)]
pub enum SubsCmd {
    /// Create a named subscription: it gets every job enqueued from now on.
    Create { queue: String, name: String },
    /// Delete a subscription and its holds on every job.
    Delete { queue: String, name: String },
    /// Each subscription of a queue with its counts.
    List { queue: String },
}

pub async fn run(client: &Client, out: &Out, cmd: SubsCmd) -> Result<(), CliError> {
    match cmd {
        SubsCmd::Create { queue, name } => {
            let created = client.create_subscription(&queue, &name).await?;
            out.value(
                &json!({"queue": queue, "subscription": name, "created": created}),
                || {
                    if created {
                        format!("subscription `{name}` of `{queue}` created")
                    } else {
                        format!("subscription `{name}` of `{queue}` already exists")
                    }
                },
            );
        }
        SubsCmd::Delete { queue, name } => {
            client.delete_subscription(&queue, &name).await?;
            out.value(
                &json!({"queue": queue, "subscription": name, "deleted": true}),
                || format!("subscription `{name}` of `{queue}` deleted"),
            );
        }
        SubsCmd::List { queue } => {
            let subs = client
                .list_subscriptions(&queue, Consistency::Linearizable)
                .await?;
            let rows: Vec<Value> = subs
                .iter()
                .map(|s| {
                    let st = s.stats.unwrap_or_default();
                    json!({"name": s.name, "ready": st.ready, "delayed": st.delayed,
                           "leased": st.leased, "dead": st.dead, "ack_floor": st.ack_floor})
                })
                .collect();
            out.value(&Value::Array(rows), || {
                table::of(
                    &[
                        ("subscription", Left),
                        ("ready", Right),
                        ("delayed", Right),
                        ("leased", Right),
                        ("dead", Right),
                        ("ack_floor", Right),
                    ],
                    subs.iter().map(|s| {
                        let st = s.stats.unwrap_or_default();
                        vec![
                            s.name.clone(),
                            st.ready.to_string(),
                            st.delayed.to_string(),
                            st.leased.to_string(),
                            st.dead.to_string(),
                            st.ack_floor.to_string(),
                        ]
                    }),
                )
            });
        }
    }
    Ok(())
}
