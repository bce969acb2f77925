//! `queue create|update|delete|get|list`: a queue's settings, and its
//! counts for people (a table) or scripts (`--json`).

use std::time::Duration;

use comfy_table::CellAlignment::{Left, Right};
use lockstep_client::{pb, Client, Consistency};
use serde_json::{json, Value};

use super::common::{duration, CliError, Out};
use crate::table;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct QueueFlags {
    #[arg(long)]
    max_attempts: Option<u32>,
    #[arg(long, value_parser = duration)]
    lease_default: Option<Duration>,
    #[arg(long, value_parser = duration)]
    lease_max: Option<Duration>,
    #[arg(long, value_parser = duration)]
    backoff_base: Option<Duration>,
    #[arg(long, value_parser = duration)]
    backoff_cap: Option<Duration>,
    #[arg(long, value_parser = duration)]
    dedup_window: Option<Duration>,
    #[arg(long)]
    max_jobs: Option<u64>,
    #[arg(long)]
    max_payload_bytes: Option<u32>,
    /// `continue` (later jobs of a group run after a dead letter) or `park`.
    #[arg(long)]
    group_policy: Option<String>,
    /// New jobs the queue takes per --rate-window (0: no limit).
    #[arg(long)]
    enqueue_rate: Option<u32>,
    /// Jobs the enqueue bucket holds when full (0: --enqueue-rate).
    #[arg(long)]
    enqueue_burst: Option<u32>,
    /// Deliveries each group gets per --rate-window (0: no limit).
    #[arg(long)]
    group_rate: Option<u32>,
    /// Deliveries a group's bucket holds when full (0: --group-rate).
    #[arg(long)]
    group_burst: Option<u32>,
    /// The window the rates count in (default 1s).
    #[arg(long, value_parser = duration)]
    rate_window: Option<Duration>,
    /// `KEY=WEIGHT`: deliveries are shared across jobs' fairness keys by
    /// weight (repeat for each key). On update, the weights given replace
    /// all of the queue's named weights.
    #[arg(long = "fairness-weight", value_parser = fairness_weight)]
    fairness_weights: Vec<(String, u32)>,
    /// Weight of every fairness key not named (default 1).
    #[arg(long)]
    fairness_weight_default: Option<u32>,
}

fn fairness_weight(s: &str) -> Result<(String, u32), String> {
    let (key, weight) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("`{s}`: expected KEY=WEIGHT"))?;
    let weight = weight
        .parse()
        .map_err(|_| format!("`{s}`: the weight `{weight}` is not a whole number"))?;
    Ok((key.to_string(), weight))
}

#[derive(clap::Subcommand, Debug)]
pub enum QueueCmd {
    Create {
        name: String,
        #[command(flatten)]
        flags: QueueFlags,
    },
    /// Change the given settings; the others stay.
    Update {
        name: String,
        #[command(flatten)]
        flags: QueueFlags,
    },
    Delete {
        name: String,
    },
    Get {
        name: String,
    },
    List,
}

pub async fn run(client: &Client, out: &Out, cmd: QueueCmd) -> Result<(), CliError> {
    match cmd {
        QueueCmd::Create { name, flags } => {
            let created = client.create_queue(&name, config(&flags)?).await?;
            out.value(&json!({"name": name, "created": created}), || {
                if created {
                    format!("queue `{name}` created")
                } else {
                    format!("queue `{name}` already exists; `lockstep queue update` changes its settings")
                }
            });
        }
        QueueCmd::Update { name, flags } => {
            let mut current = client
                .get_queue(&name, Consistency::Linearizable)
                .await?
                .config
                .unwrap_or_default();
            let given = config(&flags)?;
            // Zero is "not given" in a QueueConfig: only the flags given
            // replace what the queue has.
            macro_rules! take {
                ($($f:ident),*) => { $( if given.$f != 0 { current.$f = given.$f; } )* };
            }
            take!(
                max_attempts,
                lease_ms_default,
                lease_ms_max,
                backoff_base_ms,
                backoff_cap_ms,
                dedup_window_ms,
                max_jobs,
                max_payload_bytes,
                group_policy
            );
            // A rate given as 0 turns its limit off, so these go by
            // whether the flag was given at all.
            let rates = [
                (flags.enqueue_rate, &mut current.enqueue_rate_max),
                (flags.enqueue_burst, &mut current.enqueue_burst),
                (flags.group_rate, &mut current.group_rate_max),
                (flags.group_burst, &mut current.group_burst),
            ];
            for (flag, field) in rates {
                if let Some(v) = flag {
                    *field = v;
                }
            }
            if let Some(window) = flags.rate_window {
                current.rate_window_ms = window.as_millis() as u64;
            }
            if !flags.fairness_weights.is_empty() {
                current.fairness_weights = given.fairness_weights;
            }
            if let Some(w) = flags.fairness_weight_default {
                current.fairness_weight_default = w;
            }
            client.update_queue(&name, current).await?;
            out.value(&json!({"name": name, "updated": true}), || {
                format!("queue `{name}` updated")
            });
        }
        QueueCmd::Delete { name } => {
            client.delete_queue(&name).await?;
            out.value(&json!({"name": name, "deleted": true}), || {
                format!("queue `{name}` deleted")
            });
        }
        QueueCmd::Get { name } => {
            let q = client.get_queue(&name, Consistency::Linearizable).await?;
            let v = queue_json(&q);
            out.value(&v, || {
                format!(
                    "{}\nconfig: {}",
                    queues_table(std::slice::from_ref(&q)),
                    v["config"]
                )
            });
        }
        QueueCmd::List => {
            let qs = client.list_queues(Consistency::Linearizable).await?;
            out.value(&Value::Array(qs.iter().map(queue_json).collect()), || {
                queues_table(&qs)
            });
        }
    }
    Ok(())
}

/// The settings the flags give; zero for each one not given.
fn config(flags: &QueueFlags) -> Result<pb::QueueConfig, CliError> {
    let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis() as u64);
    let group_policy = match flags.group_policy.as_deref() {
        None => pb::GroupPolicy::Unspecified,
        Some("continue") => pb::GroupPolicy::Continue,
        Some("park") => pb::GroupPolicy::Park,
        Some(other) => {
            return Err(CliError::Usage(format!(
                "--group-policy `{other}`: expected `continue` or `park`"
            )))
        }
    };
    Ok(pb::QueueConfig {
        max_attempts: flags.max_attempts.unwrap_or(0),
        lease_ms_default: ms(flags.lease_default),
        lease_ms_max: ms(flags.lease_max),
        backoff_base_ms: ms(flags.backoff_base),
        backoff_cap_ms: ms(flags.backoff_cap),
        dedup_window_ms: ms(flags.dedup_window),
        max_jobs: flags.max_jobs.unwrap_or(0),
        max_payload_bytes: flags.max_payload_bytes.unwrap_or(0),
        group_policy: group_policy.into(),
        enqueue_rate_max: flags.enqueue_rate.unwrap_or(0),
        enqueue_burst: flags.enqueue_burst.unwrap_or(0),
        group_rate_max: flags.group_rate.unwrap_or(0),
        group_burst: flags.group_burst.unwrap_or(0),
        rate_window_ms: ms(flags.rate_window),
        fairness_weights: flags
            .fairness_weights
            .iter()
            .map(|(key, weight)| pb::FairnessWeight {
                key: key.clone(),
                weight: *weight,
            })
            .collect(),
        fairness_weight_default: flags.fairness_weight_default.unwrap_or(0),
        ..Default::default()
    })
}

/// The one JSON form of a queue, for `get` and `list` alike.
fn queue_json(q: &pb::QueueInfo) -> Value {
    let c = q.config.clone().unwrap_or_default();
    let s = q.stats.unwrap_or_default();
    let weights: serde_json::Map<String, Value> = c
        .fairness_weights
        .iter()
        .map(|w| (w.key.clone(), json!(w.weight)))
        .collect();
    json!({
        "name": q.name,
        "config": {
            "max_attempts": c.max_attempts, "lease_ms_default": c.lease_ms_default,
            "lease_ms_max": c.lease_ms_max, "backoff_base_ms": c.backoff_base_ms,
            "backoff_cap_ms": c.backoff_cap_ms, "dedup_window_ms": c.dedup_window_ms,
            "max_jobs": c.max_jobs, "max_payload_bytes": c.max_payload_bytes,
            "group_policy": pb::GroupPolicy::try_from(c.group_policy).map_or("unknown", |p| p.as_str_name()),
            "enqueue_rate_max": c.enqueue_rate_max, "enqueue_burst": c.enqueue_burst,
            "group_rate_max": c.group_rate_max, "group_burst": c.group_burst,
            "rate_window_ms": c.rate_window_ms,
            "fairness_weights": weights, "fairness_weight_default": c.fairness_weight_default,
        },
        "stats": {
            "ready": s.ready, "delayed": s.delayed, "leased": s.leased, "dead": s.dead,
            "bytes": s.bytes, "groups": s.groups, "next_offset": s.next_offset,
            "oldest_ready_age_ms": s.oldest_ready_age_ms,
        },
    })
}

/// The table of `get` and `list`: a queue a row, with its counts.
fn queues_table(qs: &[pb::QueueInfo]) -> String {
    table::of(
        &[
            ("name", Left),
            ("ready", Right),
            ("delayed", Right),
            ("leased", Right),
            ("dead", Right),
            ("groups", Right),
            ("next_offset", Right),
        ],
        qs.iter().map(|q| {
            let s = q.stats.unwrap_or_default();
            vec![
                q.name.clone(),
                s.ready.to_string(),
                s.delayed.to_string(),
                s.leased.to_string(),
                s.dead.to_string(),
                s.groups.to_string(),
                s.next_offset.to_string(),
            ]
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue table as `queue list` prints it: the same columns as the
    /// hand-aligned table before it, names left and counts right.
    #[test]
    fn the_queue_table_aligns_counts_right() {
        let q = |name: &str, ready, next_offset| pb::QueueInfo {
            name: name.into(),
            stats: Some(pb::QueueStats {
                ready,
                next_offset,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            queues_table(&[q("emails", 9, 9), q("thumbnails", 1200, 1250)]),
            "name       ready delayed leased dead groups next_offset\n\
             emails         9       0      0    0      0           9\n\
             thumbnails  1200       0      0    0      0        1250"
        );
    }
}
