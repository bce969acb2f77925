//! `dlq list|requeue|purge`: a queue's dead letters, the jobs that used
//! up their attempts or were dead-lettered at once, with the reason.

use comfy_table::CellAlignment::{Left, Right};
use lockstep_client::{pb, Client, Consistency};
use serde_json::{json, Value};

use super::common::{payload_text, CliError, Out, LIST_LIMIT};
use crate::table;

#[derive(clap::Subcommand, Debug)]
pub enum DlqCmd {
    List {
        queue: String,
    },
    /// Give a dead letter a new offset at the tail of its group.
    Requeue {
        queue: String,
        offset: u64,
    },
    /// Delete dead letters for good (all of them without OFFSETs).
    Purge {
        queue: String,
        offsets: Vec<u64>,
    },
}

pub async fn run(client: &Client, out: &Out, cmd: DlqCmd) -> Result<(), CliError> {
    match cmd {
        DlqCmd::List { queue } => {
            let r = client
                .list_dead_letters(&queue, None, LIST_LIMIT, Consistency::Linearizable)
                .await?;
            let list: Vec<Value> = r
                .dead_letters
                .iter()
                .map(|d| {
                    json!({"offset": d.offset, "id": d.id, "group": d.group, "attempts": d.attempts,
                           "reason": d.reason, "payload": payload_text(&d.payload)})
                })
                .collect();
            out.value(&Value::Array(list), || dead_letters_table(&r.dead_letters));
        }
        DlqCmd::Requeue { queue, offset } => {
            let new = client.requeue_dead_letter(&queue, offset).await?;
            out.value(&json!({"offset": offset, "new_offset": new}), || {
                format!("dead letter {offset} requeued at offset {new}")
            });
        }
        DlqCmd::Purge { queue, offsets } => {
            let n = client.purge_dead_letters(&queue, offsets).await?;
            out.value(&json!({"purged": n}), || format!("{n} dead letters purged"));
        }
    }
    Ok(())
}

/// A dead letter a row, the reason last since it is the longest.
fn dead_letters_table(dead: &[pb::DeadLetter]) -> String {
    table::of(
        &[
            ("offset", Right),
            ("id", Left),
            ("group", Left),
            ("attempts", Right),
            ("reason", Left),
        ],
        dead.iter().map(|d| {
            vec![
                d.offset.to_string(),
                d.id.clone(),
                d.group.clone(),
                d.attempts.to_string(),
                d.reason.clone(),
            ]
        }),
    )
}
