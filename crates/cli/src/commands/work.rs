//! `work`: a worker that runs a shell command once per job, so that any
//! program can consume a queue. The payload goes to the command's stdin
//! and the job to `LOCKSTEP_*` variables; its exit status acks, nacks or
//! dead-letters the job.

use std::sync::Arc;
use std::time::Duration;

use lockstep_client::{CancellationToken, Client, Outcome, Worker, WorkerConfig};
use serde_json::json;

use super::common::{duration, CliError, Out};

/// Exit status of a `work` command that dead-letters its job at once.
pub const EXIT_POISON: i32 = 100;

// No doc comment: clap would take it as the subcommand's about, which the
// variant of `Command` already gives.
#[derive(clap::Args, Debug)]
pub struct WorkArgs {
    queue: String,
    /// The queue's named subscription to work on (default: the queue's own).
    #[arg(long, default_value = "")]
    subscription: String,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[arg(long, value_parser = duration, default_value = "30s")]
    lease: Duration,
    /// Stop after this many jobs finished (acked, nacked or dead-lettered).
    #[arg(long)]
    max_jobs: Option<u64>,
    #[arg(long, default_value = "")]
    consumer: String,
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub async fn work(client: &Client, out: &Out, args: WorkArgs) -> Result<(), CliError> {
    let WorkArgs {
        queue,
        subscription,
        concurrency,
        lease,
        max_jobs,
        consumer,
        command,
    } = args;
    let client = &client.in_subscription(&subscription);
    let mut config = WorkerConfig::new(&queue);
    if !consumer.is_empty() {
        config.consumer = consumer;
    }
    config.concurrency = concurrency;
    config.lease = lease;
    let stop = CancellationToken::new();
    let finished = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let command = Arc::new(command);
    let handler = {
        let (stop, finished, command) = (stop.clone(), finished.clone(), command.clone());
        move |job: lockstep_client::Job, cancel: CancellationToken| {
            let (stop, finished, command) = (stop.clone(), finished.clone(), command.clone());
            async move {
                let outcome = run_job(&command, &job, cancel).await;
                let n = finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                if max_jobs.is_some_and(|m| n >= m) {
                    stop.cancel();
                }
                outcome
            }
        }
    };
    let worker = Worker::new(client.clone(), config, handler)?;
    let signals = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = lockstep_node::run::shutdown_signal() => stop.cancel(),
                () = stop.cancelled() => {}
            }
        })
    };
    let report = worker.run(stop.clone()).await?;
    signals.abort();
    out.value(
        &json!({"fetched": report.fetched, "acked": report.acked, "nacked": report.retried,
                "dead_lettered": report.poisoned, "lease_lost": report.lease_lost,
                "released": report.released, "failed": report.failed}),
        || {
            format!(
                "worked {} jobs: {} acked, {} nacked, {} dead-lettered, {} lost their lease, {} released",
                report.fetched, report.acked, report.retried, report.poisoned, report.lease_lost, report.released
            )
        },
    );
    Ok(())
}

/// Runs the command for one job; its exit status decides the outcome. A
/// lost lease kills the child.
async fn run_job(
    command: &[String],
    job: &lockstep_client::Job,
    cancel: CancellationToken,
) -> Outcome {
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env("LOCKSTEP_QUEUE", &job.queue)
        .env("LOCKSTEP_GROUP", &job.group)
        .env("LOCKSTEP_OFFSET", job.offset.to_string())
        .env("LOCKSTEP_JOB_ID", &job.id)
        .env("LOCKSTEP_ATTEMPT", job.attempt.to_string())
        .env("LOCKSTEP_FENCE", job.fence.to_string())
        .env("LOCKSTEP_PRIORITY", job.priority.to_string())
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true);
    // The child continues the trace: the worker's `job` span when this
    // process exports spans, else the producer's context unchanged.
    if let Some(traceparent) = lockstep_client::trace::current_traceparent()
        .or_else(|| job.traceparent().map(str::to_string))
    {
        cmd.env("TRACEPARENT", traceparent);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(command = %command[0], error = %e, "cannot start the command");
            eprintln!("lockstep work: cannot start `{}`: {e}", command[0]);
            return Outcome::Retry;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let payload = job.payload.clone();
        // A command that does not read its stdin must not block the job.
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&payload).await;
        });
    }
    tokio::select! {
        status = child.wait() => match status {
            Ok(s) if s.success() => Outcome::Ack,
            Ok(s) if s.code() == Some(EXIT_POISON) => Outcome::Poison(format!("`{}` exited with {EXIT_POISON}", command[0])),
            Ok(_) | Err(_) => Outcome::Retry,
        },
        () = cancel.cancelled() => {
            let _ = child.kill().await;
            Outcome::Retry
        }
    }
}
