//! A rough load against a running cluster: many concurrent clients enqueue
//! single jobs, then consumers fetch and ack them all. Prints jobs/s and
//! latency percentiles. The full bench tool is `lockstep bench`; this is
//! the quick check the node issue asks for.
//!
//!   cargo run --release -p lockstep-cli --example load -- \
//!       --addrs 127.0.0.1:7100,127.0.0.2:7100,127.0.0.3:7100

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use lockstep_client::pb;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug)]
struct Args {
    /// Client addresses; clients spread over them (followers forward).
    #[arg(long, value_delimiter = ',')]
    addrs: Vec<String>,
    #[arg(long, default_value = "load")]
    queue: String,
    /// Concurrent enqueue clients, each with one call in flight.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 20_000)]
    jobs: u64,
    #[arg(long, default_value_t = 256)]
    payload: usize,
    #[arg(long, default_value_t = 1_000)]
    groups: u64,
    /// Concurrent consumers, each fetching up to `fetch_max`.
    #[arg(long, default_value_t = 16)]
    consumers: usize,
    #[arg(long, default_value_t = 32)]
    fetch_max: u32,
    /// Bound on the whole run.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1_000.0
}

async fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let run = tokio::time::timeout(Duration::from_secs(args.timeout_s), load(args));
    run.await.expect("the load finished within --timeout-s");
}

async fn load(args: Args) {
    let mut channels = Vec::new();
    for a in &args.addrs {
        channels.push(channel(a).await);
    }
    let mut admin = pb::admin_client::AdminClient::new(channels[0].clone());
    let _ = admin
        .create_queue(pb::CreateQueueRequest {
            name: args.queue.clone(),
            config: None,
            session: None,
        })
        .await;
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();

    // Enqueue phase.
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut q = pb::queue_client::QueueClient::new(channels[c % channels.len()].clone());
        let next = next.clone();
        let (queue, jobs, groups, payload) =
            (args.queue.clone(), args.jobs, args.groups, args.payload);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= jobs {
                    return lat;
                }
                let job = pb::Job {
                    id: Some(format!("{run_id}-{n}")),
                    group: format!("g{}", n % groups),
                    payload: vec![b'x'; payload],
                    ..Default::default()
                };
                let t = Instant::now();
                q.enqueue(pb::EnqueueRequest {
                    queue: queue.clone(),
                    jobs: vec![job],
                    session: None,
                })
                .await
                .unwrap();
                lat.push(t.elapsed().as_micros() as u64);
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "enqueue: {} jobs, {} clients x 1 in flight, {} B payload, {} groups: {:.0} jobs/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.jobs,
        args.clients,
        args.payload,
        args.groups,
        args.jobs as f64 / secs,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
    );

    // Fetch + ack phase.
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.consumers {
        let mut q = pb::queue_client::QueueClient::new(channels[c % channels.len()].clone());
        let acked = acked.clone();
        let (queue, jobs, max) = (args.queue.clone(), args.jobs, args.fetch_max);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while acked.load(Ordering::Relaxed) < jobs {
                let t = Instant::now();
                let got = q
                    .fetch(pb::FetchRequest {
                        subscription: String::new(),
                        queue: queue.clone(),
                        consumer: format!("c{c}"),
                        max,
                        lease_ms: 30_000,
                        wait_ms: 200,
                        session: None,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .deliveries;
                if got.is_empty() {
                    continue;
                }
                let items = got
                    .iter()
                    .map(|d| pb::AckItem {
                        offset: d.offset,
                        fence: d.fence,
                    })
                    .collect();
                let r = q
                    .ack(pb::AckRequest {
                        subscription: String::new(),
                        queue: queue.clone(),
                        items,
                        then: Vec::new(),
                        session: None,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(r.results.iter().all(|r| r.code == 0));
                acked.fetch_add(got.len() as u64, Ordering::Relaxed);
                lat.push(t.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "fetch+ack: {} jobs, {} consumers, fetch max {}: {:.0} jobs/s, round trip p50 {:.2} ms, p99 {:.2} ms",
        acked.load(Ordering::Relaxed),
        args.consumers,
        args.fetch_max,
        acked.load(Ordering::Relaxed) as f64 / secs,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
    );
}
