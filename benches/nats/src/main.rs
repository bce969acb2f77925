//! The shape of `lockstep bench --mode both` against NATS JetStream: a
//! replicated stream, `jobs` single-message publishes of `payload` bytes
//! over `groups` subjects with a unique `Nats-Msg-Id` each (JetStream's
//! dedup), `in_flight` publishes awaiting their acknowledgement at once,
//! then `consumers` pull consumers fetching `fetch` messages at a time and
//! acking each explicitly. Prints one JSON line of results.
//!
//! Every wait is bounded: each publish and fetch by `call_timeout_ms`, the
//! whole run by `time_limit_s`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, stream};
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::{Mutex, Semaphore};

#[derive(Parser, Debug)]
struct Args {
    /// Server URLs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// Stream (and subject prefix) to create afresh.
    #[arg(long, default_value = "bench")]
    stream: String,
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    #[arg(long, default_value_t = 20_000)]
    jobs: u64,
    #[arg(long, default_value_t = 256)]
    payload: usize,
    #[arg(long, default_value_t = 1_000)]
    groups: u64,
    /// Publishes awaiting their acknowledgement at once.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Messages per pull request.
    #[arg(long, default_value_t = 64)]
    fetch: usize,
    #[arg(long, default_value_t = 10_000)]
    call_timeout_ms: u64,
    #[arg(long, default_value_t = 300)]
    time_limit_s: u64,
    /// Recorded in the output.
    #[arg(long, default_value = "nats")]
    label: String,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let limit = Duration::from_secs(args.time_limit_s);
    match tokio::time::timeout(limit, run(&args)).await {
        Ok(result) => result,
        Err(_) => Err(format!("not finished within --time-limit-s {}", args.time_limit_s).into()),
    }
}

async fn run(args: &Args) -> Result<(), Error> {
    let servers: Vec<async_nats::ServerAddr> = args
        .servers
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_millis(args.call_timeout_ms)))
        .connect(servers)
        .await?;
    let js = jetstream::new(client);
    // A fresh cluster elects its JetStream meta leader first: retry the
    // creation for up to STREAM_READY_S.
    const STREAM_READY_S: u64 = 60;
    let ready_by = Instant::now() + Duration::from_secs(STREAM_READY_S);
    loop {
        let _ = js.delete_stream(&args.stream).await;
        let created = js
            .create_stream(stream::Config {
                name: args.stream.clone(),
                subjects: vec![format!("{}.>", args.stream)],
                num_replicas: args.replicas,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => break,
            Err(e) if Instant::now() < ready_by => {
                eprintln!("nats-bench: stream not created yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }

    // Enqueue: one message per publish, `in_flight` awaiting acks.
    let payload = bytes::Bytes::from(vec![b'x'; args.payload]);
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let slots = Arc::new(Semaphore::new(args.in_flight));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.jobs {
        let permit = slots.clone().acquire_owned().await?;
        let (js, payload, latency, failed) =
            (js.clone(), payload.clone(), latency.clone(), failed.clone());
        let subject = format!("{}.g{}", args.stream, i % args.groups);
        let timeout = Duration::from_millis(args.call_timeout_ms);
        tasks.spawn(async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("job-{i}").as_str());
            let sent = Instant::now();
            let acked = tokio::time::timeout(timeout, async {
                js.publish_with_headers(subject, headers, payload)
                    .await?
                    .await
                    .map(|_| ())
                    .map_err(Error::from)
            })
            .await;
            match acked {
                Ok(Ok(())) => {
                    let us = sent.elapsed().as_micros() as u64;
                    let _ = latency.lock().await.record(us.max(1));
                }
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let enqueue_s = started.elapsed().as_secs_f64();
    let latency = latency.lock().await;
    let enqueued = args.jobs - failed.load(Ordering::Relaxed);

    // Consume: `consumers` pull consumers on one durable consumer, acking
    // each message.
    let stream = js.get_stream(&args.stream).await?;
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .create_consumer(pull::Config {
            durable_name: Some("workers".into()),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: (args.consumers * args.fetch * 2) as i64,
            ..Default::default()
        })
        .await?;
    let consumed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.consumers {
        let (consumer, consumed) = (consumer.clone(), consumed.clone());
        let (fetch, target) = (args.fetch, enqueued);
        workers.spawn(async move {
            while consumed.load(Ordering::Relaxed) < target {
                let Ok(mut batch) = consumer
                    .fetch()
                    .max_messages(fetch)
                    .expires(Duration::from_millis(100))
                    .messages()
                    .await
                else {
                    continue;
                };
                while let Some(Ok(message)) = batch.next().await {
                    if message.ack().await.is_ok() {
                        consumed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let consume_s = started.elapsed().as_secs_f64();

    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1_000.0;
    let out = serde_json::json!({
        "system": "nats",
        "label": args.label,
        "jobs": args.jobs,
        "payload": args.payload,
        "groups": args.groups,
        "in_flight": args.in_flight,
        "consumers": args.consumers,
        "fetch": args.fetch,
        "replicas": args.replicas,
        "enqueue": {
            "jobs": enqueued,
            "failed": args.jobs - enqueued,
            "secs": enqueue_s,
            "jobs_per_s": enqueued as f64 / enqueue_s,
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
        },
        "consume": {
            "jobs": consumed.load(Ordering::Relaxed),
            "secs": consume_s,
            "jobs_per_s": consumed.load(Ordering::Relaxed) as f64 / consume_s,
        },
    });
    println!("{out}");
    Ok(())
}
