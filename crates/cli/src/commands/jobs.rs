//! The commands on single jobs: `enqueue` (one job from `--data`, or one
//! per line of a file or stdin), `fetch`, `ack` and `nack`.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use comfy_table::CellAlignment::{Left, Right};
use lockstep_client::{pb, Client, EnqueueOutcome, Enqueued};
use serde_json::{json, Value};

use super::common::{duration, payload_text, CliError, Out};
use crate::table;

/// Jobs per enqueue call of a bulk enqueue from a file or stdin.
pub const BULK_BATCH: usize = 500;
/// Longest line (job) a bulk enqueue reads.
pub const LINE_BYTES_MAX: usize = 4 * 1024 * 1024;

// No doc comments on these argument structs: clap would take them as the
// subcommand's about, which the variant of `Command` already gives.

#[derive(clap::Args, Debug)]
pub struct EnqueueArgs {
    queue: String,
    #[arg(long, default_value = "")]
    group: String,
    /// The job's id (one job); default: the client makes one.
    #[arg(long)]
    id: Option<String>,
    /// Ids PREFIX-<line number> for jobs read from a file or stdin, so a
    /// rerun is answered DUPLICATE instead of enqueuing twice.
    #[arg(long)]
    id_prefix: Option<String>,
    #[arg(long, default_value_t = 0)]
    priority: u32,
    /// The tenant (or any key) deliveries are shared across by the
    /// queue's fairness weights.
    #[arg(long, default_value = "")]
    fairness_key: String,
    /// Not before this long from now (e.g. 30s).
    #[arg(long, value_parser = duration)]
    delay: Option<Duration>,
    #[arg(long, conflicts_with = "file")]
    data: Option<String>,
    #[arg(long)]
    file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    queue: String,
    /// The queue's named subscription to work on (default: the queue's own).
    #[arg(long, default_value = "")]
    subscription: String,
    #[arg(long, default_value_t = 1)]
    max: u32,
    #[arg(long, value_parser = duration, default_value = "30s")]
    lease: Duration,
    /// Long-poll this long for a job.
    #[arg(long, value_parser = duration, default_value = "0s")]
    wait: Duration,
    #[arg(long, default_value = "cli")]
    consumer: String,
}

#[derive(clap::Args, Debug)]
pub struct AckArgs {
    queue: String,
    /// The queue's named subscription to work on (default: the queue's own).
    #[arg(long, default_value = "")]
    subscription: String,
    offset: u64,
    fence: u64,
    /// Chained job: enqueue one job into this queue in the same Raft entry
    /// as the ack (both happen or neither does). Needs --then-data.
    #[arg(long, requires = "then_data")]
    then_queue: Option<String>,
    /// The chained job's payload.
    #[arg(long, requires = "then_queue")]
    then_data: Option<String>,
    /// The chained job's group.
    #[arg(long, default_value = "", requires = "then_queue")]
    then_group: String,
    /// The chained job's id (default: the client makes one). Give one to
    /// make a rerun of this command answer DUPLICATE.
    #[arg(long, requires = "then_queue")]
    then_id: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct NackArgs {
    queue: String,
    /// The queue's named subscription to work on (default: the queue's own).
    #[arg(long, default_value = "")]
    subscription: String,
    offset: u64,
    fence: u64,
    #[arg(long, value_parser = duration)]
    delay: Option<Duration>,
}

/// The caller's `TRACEPARENT`, as the jobs' header, when this process
/// exports no spans of its own (with `--otlp-endpoint` the client adds the
/// command span's context instead, a child of it). An invalid value is
/// ignored.
fn caller_trace() -> Vec<pb::Header> {
    if lockstep_client::trace::current_traceparent().is_some() {
        return Vec::new();
    }
    std::env::var("TRACEPARENT")
        .ok()
        .filter(|t| lockstep_client::trace::context_of(t).is_some())
        .map(|value| pb::Header {
            key: lockstep_client::trace::TRACEPARENT.into(),
            value,
        })
        .into_iter()
        .collect()
}

pub async fn enqueue(client: &Client, out: &Out, args: EnqueueArgs) -> Result<(), CliError> {
    let EnqueueArgs {
        queue,
        group,
        id,
        id_prefix,
        priority,
        fairness_key,
        delay,
        data,
        file,
    } = args;
    let base = pb::Job {
        group,
        priority,
        fairness_key,
        delay_ms: delay.map_or(0, |d| d.as_millis() as u64),
        headers: caller_trace(),
        ..Default::default()
    };
    if let Some(data) = data {
        let job = pb::Job {
            id,
            payload: data.into_bytes(),
            ..base
        };
        let r = client.enqueue(&queue, vec![job]).await?;
        let r = &r[0];
        let outcome = outcome_name(r.outcome);
        out.value(
            &json!({"id": r.id, "offset": r.offset, "outcome": outcome}),
            || format!("{outcome} offset {} id {}", r.offset, r.id),
        );
        return Ok(());
    }
    if id.is_some() {
        return Err(CliError::Usage(
            "--id names one job: give it with --data, or use --id-prefix for many".into(),
        ));
    }
    bulk_enqueue(client, out, &queue, base, id_prefix, file).await
}

fn outcome_name(outcome: EnqueueOutcome) -> &'static str {
    match outcome {
        EnqueueOutcome::Created => "created",
        EnqueueOutcome::Duplicate { .. } => "duplicate",
        EnqueueOutcome::IdConflict => "id-conflict",
    }
}

/// What a bulk enqueue's batches were answered, job by job.
#[derive(Debug, Default)]
struct Tally {
    created: u64,
    duplicate: u64,
    conflict: u64,
}

impl Tally {
    fn add(&mut self, results: &[Enqueued]) {
        for r in results {
            match r.outcome {
                EnqueueOutcome::Created => self.created += 1,
                EnqueueOutcome::Duplicate { .. } => self.duplicate += 1,
                EnqueueOutcome::IdConflict => self.conflict += 1,
            }
        }
    }
}

async fn bulk_enqueue(
    client: &Client,
    out: &Out,
    queue: &str,
    base: pb::Job,
    id_prefix: Option<String>,
    file: Option<PathBuf>,
) -> Result<(), CliError> {
    let reader: Box<dyn BufRead> = match &file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path)
                .map_err(|e| CliError::Usage(format!("--file {}: {e}", path.display())))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let size = file
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len());
    let bar = if out.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(size.unwrap_or(0));
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} read, {msg}, eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    };
    let mut tally = Tally::default();
    let mut batch = Vec::with_capacity(BULK_BATCH);
    let mut line_no = 0u64;
    for line in reader.lines() {
        let line = line.map_err(|e| CliError::Usage(format!("reading the jobs: {e}")))?;
        line_no += 1;
        if line.len() > LINE_BYTES_MAX {
            return Err(CliError::Usage(format!(
                "line {line_no} has {} bytes, more than LINE_BYTES_MAX ({LINE_BYTES_MAX})",
                line.len()
            )));
        }
        bar.inc(line.len() as u64 + 1);
        batch.push(pb::Job {
            id: id_prefix.as_ref().map(|p| format!("{p}-{line_no}")),
            payload: line.into_bytes(),
            ..base.clone()
        });
        if batch.len() == BULK_BATCH {
            tally.add(&client.enqueue(queue, std::mem::take(&mut batch)).await?);
            bar.set_message(format!("{} created", tally.created));
        }
    }
    if !batch.is_empty() {
        tally.add(&client.enqueue(queue, batch).await?);
    }
    bar.finish_and_clear();
    let Tally {
        created,
        duplicate,
        conflict,
    } = tally;
    out.value(
        &json!({"created": created, "duplicate": duplicate, "id_conflict": conflict}),
        || format!("{created} created, {duplicate} duplicate, {conflict} id conflicts"),
    );
    Ok(())
}

pub async fn fetch(client: &Client, out: &Out, args: FetchArgs) -> Result<(), CliError> {
    let client = &client.in_subscription(&args.subscription);
    let got = client
        .fetch(&args.queue, &args.consumer, args.max, args.lease, args.wait)
        .await?;
    let list: Vec<Value> = got
        .iter()
        .map(|d| {
            json!({"offset": d.offset, "fence": d.fence, "id": d.id, "group": d.group,
                   "attempt": d.attempt, "payload": payload_text(&d.payload)})
        })
        .collect();
    out.value(&Value::Array(list), || {
        if got.is_empty() {
            return "no job ready".into();
        }
        table::of(
            &[
                ("offset", Right),
                ("fence", Right),
                ("id", Left),
                ("group", Left),
                ("attempt", Right),
                ("payload", Left),
            ],
            got.iter().map(|d| {
                vec![
                    d.offset.to_string(),
                    d.fence.to_string(),
                    d.id.clone(),
                    d.group.clone(),
                    d.attempt.to_string(),
                    payload_text(&d.payload),
                ]
            }),
        )
    });
    Ok(())
}

pub async fn ack(client: &Client, out: &Out, args: AckArgs) -> Result<(), CliError> {
    let client = &client.in_subscription(&args.subscription);
    let AckArgs {
        queue,
        offset,
        fence,
        then_queue,
        then_data,
        then_group,
        then_id,
        ..
    } = args;
    let (Some(then_queue), Some(data)) = (then_queue, then_data) else {
        client.ack_one(&queue, offset, fence).await?;
        out.value(&json!({"acked": offset}), || format!("acked {offset}"));
        return Ok(());
    };
    let job = pb::Job {
        id: then_id,
        group: then_group,
        payload: data.into_bytes(),
        headers: caller_trace(),
        ..Default::default()
    };
    let chained = vec![pb::ChainedJobs {
        queue: then_queue.clone(),
        jobs: vec![job],
    }];
    let item = pb::AckItem { offset, fence };
    let r = client.ack_then(&queue, vec![item], chained).await?;
    match r.then.first().and_then(|jobs| jobs.first()) {
        Some(job) => {
            let outcome = outcome_name(job.outcome);
            out.value(
                &json!({"acked": offset, "then": {"queue": then_queue, "id": job.id,
                    "offset": job.offset, "outcome": outcome}}),
                || {
                    format!(
                        "acked {offset}; {outcome} offset {} id {} in `{then_queue}`",
                        job.offset, job.id
                    )
                },
            );
        }
        None => out.value(&json!({"acked": offset, "repeat": true}), || {
            format!("acked {offset} before, with its chained job; nothing new enqueued")
        }),
    }
    Ok(())
}

pub async fn nack(client: &Client, out: &Out, args: NackArgs) -> Result<(), CliError> {
    let client = &client.in_subscription(&args.subscription);
    let NackArgs {
        queue,
        offset,
        fence,
        delay,
        ..
    } = args;
    let r = client.nack(&queue, offset, fence, delay).await?;
    out.value(
        &json!({"nacked": offset, "dead": r.dead, "not_before_ms": r.not_before_ms}),
        || {
            if r.dead {
                format!("nacked {offset}: that was its last attempt; it is a dead letter now")
            } else {
                format!(
                    "nacked {offset}; it runs again after {} (cluster ms)",
                    r.not_before_ms
                )
            }
        },
    );
    Ok(())
}
