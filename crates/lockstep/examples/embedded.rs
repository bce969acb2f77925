//! A small application with Lockstep embedded: no broker to run. Start
//! three instances (each is a Raft node in its own process); each enqueues
//! its share of jobs and works on jobs from every instance, one at a time
//! per group, until stopped with Ctrl-C or SIGTERM.
//!
//! ```text
//! cargo run --example embedded -- --id 1 --dir /tmp/emb1 --bootstrap --expect 600 --out /tmp/emb1.log
//! cargo run --example embedded -- --id 2 --dir /tmp/emb2 --bootstrap --expect 600 --out /tmp/emb2.log
//! cargo run --example embedded -- --id 3 --dir /tmp/emb3 --bootstrap --expect 600 --out /tmp/emb3.log
//! ```
//!
//! Instance `i` listens for peers on `127.0.0.i:PEER_PORT` and, for the
//! `lockstep` command line, on `127.0.0.i:CLIENT_PORT`. It prints
//! `ENQUEUED n` once its jobs are stored and `ALL-DONE` once the queue holds
//! `--expect` jobs and none is left to run; each job it finished is a line
//! of `--out`: `micros group offset id attempt instance`.

#![allow(clippy::print_stdout)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use lockstep::{
    pb, CancellationToken, Consistency, Embedded, Member, Outcome, Worker, WorkerConfig,
};

/// Jobs in one enqueue call.
const ENQUEUE_BATCH: usize = 100;
/// How often the instance looks whether all work is done.
const DONE_POLL: Duration = Duration::from_millis(500);
/// Longest the worker may take to finish or release its jobs at exit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const QUEUE: &str = "jobs";

#[derive(Parser, Debug)]
pub struct Args {
    /// This instance's node id, 1 to --nodes; it listens on 127.0.0.<id>.
    #[arg(long)]
    id: u64,
    /// The cluster's size; instance i is at 127.0.0.i.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    #[arg(long, default_value_t = 7401)]
    peer_port: u16,
    /// 0 serves no client port.
    #[arg(long, default_value_t = 7400)]
    client_port: u16,
    /// Data directory of this instance's node.
    #[arg(long)]
    dir: PathBuf,
    /// Form a new cluster (give it on the first start only).
    #[arg(long)]
    bootstrap: bool,
    /// Jobs this instance enqueues.
    #[arg(long, default_value_t = 200)]
    jobs: u64,
    #[arg(long, default_value_t = 20)]
    groups: u64,
    /// Jobs all instances enqueue together; ALL-DONE is printed once the
    /// queue holds that many and none is left to run (0: never).
    #[arg(long, default_value_t = 0)]
    expect: u64,
    /// Each job "works" this long.
    #[arg(long, default_value_t = 10)]
    work_ms: u64,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Where finished jobs are written, one line each.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(Args::parse()))
}

/// The whole application; `tests/embedded.rs` runs it in child processes.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let at = |id: u64, port: u16| format!("127.0.0.{id}:{port}");
    let client_addr = |id| {
        if args.client_port == 0 {
            String::new()
        } else {
            at(id, args.client_port)
        }
    };
    let mut builder = Embedded::builder(args.id, &args.dir, &at(args.id, args.peer_port));
    if args.client_port != 0 {
        builder = builder.client_addr(&client_addr(args.id));
    }
    if args.bootstrap {
        builder = builder.bootstrap((1..=args.nodes).map(|id| Member {
            id,
            peer_addr: at(id, args.peer_port),
            client_addr: client_addr(id),
        }));
    }
    let node = builder.start().await?;
    let client = node.client().clone();

    // Any instance may create the queue; the others see it exists.
    client
        .create_queue(QUEUE, pb::QueueConfig::default())
        .await?;
    let ids: Vec<u64> = (0..args.jobs).collect();
    for chunk in ids.chunks(ENQUEUE_BATCH) {
        let jobs = chunk
            .iter()
            .map(|k| pb::Job {
                // Fixed ids: a restarted instance enqueues the same jobs
                // again and the cluster answers DUPLICATE.
                id: Some(format!("i{}-{k}", args.id)),
                group: format!("g{}", (k * 7 + args.id) % args.groups.max(1)),
                payload: format!("{}:{k}", args.id).into_bytes(),
                ..Default::default()
            })
            .collect();
        client.enqueue(QUEUE, jobs).await?;
    }
    println!("ENQUEUED {}", args.jobs);
    std::io::stdout().flush()?;

    let out = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args.out)?,
    ));
    let work = Duration::from_millis(args.work_ms);
    let instance = args.id;
    let mut config = WorkerConfig::new(QUEUE);
    config.consumer = format!("embedded-{instance}");
    config.concurrency = args.concurrency;
    config.lease = Duration::from_secs(10);
    config.wait = Duration::from_secs(2);
    config.shutdown_grace = SHUTDOWN_GRACE;
    let worker = Worker::new(
        client.clone(),
        config,
        move |job, cancel: CancellationToken| {
            let out = out.clone();
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(work) => {}
                    _ = cancel.cancelled() => return Outcome::Retry,
                }
                let micros = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros());
                let line = format!(
                    "{micros} {} {} {} {} {instance}\n",
                    job.group, job.offset, job.id, job.attempt
                );
                // Written before the ack: a job whose line is missing was not
                // acknowledged by this instance.
                let written = out
                    .lock()
                    .map_err(|_| ())
                    .and_then(|mut f| f.write_all(line.as_bytes()).map_err(|_| ()));
                match written {
                    Ok(()) => Outcome::Ack,
                    Err(()) => Outcome::Retry,
                }
            }
        },
    )?;
    let stop = CancellationToken::new();
    let worker = tokio::spawn(worker.run(stop.clone()));

    let mut announced = false;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(DONE_POLL) => {}
        }
        if announced || args.expect == 0 {
            continue;
        }
        if let Ok(info) = client.get_queue(QUEUE, Consistency::Linearizable).await {
            let s = info.stats.unwrap_or_default();
            if s.next_offset >= args.expect && s.ready + s.delayed + s.leased == 0 {
                println!("ALL-DONE next_offset={} dead={}", s.next_offset, s.dead);
                std::io::stdout().flush()?;
                announced = true;
            }
        }
    }
    stop.cancel();
    let report = worker.await??;
    println!(
        "STOPPED acked={} lease_lost={} released={}",
        report.acked, report.lease_lost, report.released
    );
    node.shutdown().await?;
    Ok(())
}
