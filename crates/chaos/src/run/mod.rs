//! Runs a workload against a real cluster while faults are injected, then
//! heals, drains and records every node's state digest. Produces the
//! history the checker reads.
//!
//! Everything random comes from one seed: the fault schedule, and each
//! producer's and worker's choices (node, sizes, sleeps, outcomes). Timing
//! still varies from run to run, so a replay repeats the schedule, not the
//! interleaving.
//!
//! This file only orchestrates a run. Each of its steps lives in its own
//! file: `workload` (producers, workers, drain, digests), `faults` (the
//! schedule), `partitions` (iptables rules), `membership` (repair) and
//! `report` (the JSON report and summaries); `options` holds the types a
//! run is given and gives back, `common` the clock and bounds they share.
//! The files below this one never import it, nor each other in a circle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lockstep_harness::{set_clock, Cluster, Spec};
use lockstep_proto as pb;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tonic::transport::Channel;

mod common;
mod disks;
mod faults;
mod library;
mod membership;
mod options;
mod partitions;
mod report;
mod workload;

use common::LEADER_MS_MAX;
use faults::inject;
use library::{client_worker, library_client, library_producer, library_queue_of, library_worker};
use membership::ensure_members;
pub use options::{Options, Outcomes, Profile, MAX_ATTEMPTS_HIGH, MAX_ATTEMPTS_LOW};
pub use partitions::Partitions;
pub use report::{report, summary, summary_page, ChaosReport};
use workload::{channel_to, drain, producer, record_digests, side_queues, worker, Recorder};

/// The nodes' `clock.skew_ms_max` (the run does not change it): how far a
/// stepped wall clock can take cluster time from the harness's clock.
const CLOCK_SKEW_MS_MAX_DEFAULT: u64 = 5_000;

/// How long the run waits for its workload tasks to stop after the faults:
/// longer than a raw call's deadline, and than a library call with its
/// retries (`library::LIBRARY_RETRY_MS_MAX` plus a try). The client's
/// `Worker` may take longer (a fetch in flight, then its handlers, then
/// their acks, each with retries): it is aborted then, with no release.
const TASKS_STOP_MS_MAX: u64 = 12_000;
pub use workload::{LIB_QUEUE, QUEUE, QUEUES, WORKER_QUEUE};

/// Runs one chaos run. The cluster is always torn down and partitions are
/// always removed, whatever happens.
pub async fn run(options: &Options) -> Result<Outcomes, String> {
    let mut spec = Spec::new(&options.bin, &options.dir);
    spec.net = options.net;
    if let Some(bug) = &options.planted {
        spec.env.push(("LOCKSTEP_PLANTED_BUG".into(), bug.clone()));
    }
    let recorder = Recorder::default();
    if options.profile.may_step_clocks() {
        // Cluster time follows a leader's wall clock within skew_ms_max,
        // so deadlines in cluster time are that far from the harness's.
        recorder.push(crate::history::Op {
            invoke_ms: common::now_ms(),
            complete_ms: common::now_ms(),
            node: 0,
            process: 0,
            outcome: crate::history::Outcome::Ok,
            call: crate::history::Call::ClockBound {
                ms: CLOCK_SKEW_MS_MAX_DEFAULT,
            },
        });
        std::fs::create_dir_all(&options.dir).map_err(|e| e.to_string())?;
        for id in 1..=options.nodes {
            set_clock(&options.dir, id, "+0").map_err(|e| e.0)?;
        }
        spec = spec.with_faketime();
    }
    if options.profile.uses_failpoints() {
        spec = spec.with_failpoints();
    }
    // Declared before the cluster, so dropped after its nodes are killed,
    // on every path out of here.
    let _disks = if options.profile.fills_disks() {
        let ids: Vec<u64> = (1..=options.nodes).collect();
        let mounted = disks::mount(&options.dir, &ids).map_err(|e| {
            format!(
                "profile {} may fill a node's disk, so each node's data directory goes on \
                 its own tmpfs: {e}",
                options.profile.name()
            )
        })?;
        spec.data_dir = Some(disks::data_dir_pattern(&options.dir));
        spec = spec.set("limits.disk_free_bytes_min", disks::DISK_RESERVE_BYTES);
        Some(mounted)
    } else {
        None
    };
    let cluster = Cluster::start(spec, options.nodes, options.nodes).map_err(|e| e.0)?;
    let ids: Vec<u64> = (1..=options.nodes).collect();
    cluster.bootstrap(options.nodes).await.map_err(|e| e.0)?;
    cluster
        .wait_leader(&ids, Duration::from_millis(LEADER_MS_MAX * 2))
        .await
        .map_err(|e| e.0)?;
    let channels: Vec<Channel> = ids
        .iter()
        .map(|id| channel_to(cluster.addr(*id).client, cluster.client_ip()))
        .collect::<Result<_, _>>()?;
    let mut admin = pb::admin_client::AdminClient::new(channels[0].clone());
    for queue in QUEUES {
        admin
            .create_queue(pb::CreateQueueRequest {
                name: queue.into(),
                config: Some(pb::QueueConfig {
                    // Low in some runs, so the server dead-letters on its own
                    // and the checker must account for every such job.
                    max_attempts: options.max_attempts(),
                    backoff_base_ms: 50,
                    backoff_cap_ms: 500,
                    lease_ms_default: 2_000,
                    ..Default::default()
                }),
                session: None,
            })
            .await
            .map_err(|s| format!("create queue: {s}"))?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let addrs: Vec<std::net::SocketAddr> = ids.iter().map(|id| cluster.addr(*id).client).collect();
    // Producer 0 and worker 0 go through the client library; one producer
    // more, numbered after the others, feeds the client's own `Worker`.
    for p in 0..=options.producers {
        let rng = StdRng::seed_from_u64(options.seed ^ (0x5EED_0000 + p as u64));
        if let Some(queue) = library_queue_of(p, options.producers) {
            let client = library_client(&addrs, cluster.client_ip())?;
            tasks.push(tokio::spawn(library_producer(
                p,
                queue,
                rng,
                client,
                options.groups,
                recorder.clone(),
                stop.clone(),
            )));
            continue;
        }
        tasks.push(tokio::spawn(producer(
            p,
            rng,
            channels.clone(),
            options.groups,
            recorder.clone(),
            stop.clone(),
        )));
    }
    for w in 0..options.workers {
        let rng = StdRng::seed_from_u64(options.seed ^ (0xC0DE_0000 + w as u64));
        if w == 0 {
            let client = library_client(&addrs, cluster.client_ip())?;
            tasks.push(tokio::spawn(library_worker(
                w,
                rng,
                client,
                recorder.clone(),
                stop.clone(),
            )));
            continue;
        }
        tasks.push(tokio::spawn(worker(
            w,
            rng,
            channels.clone(),
            recorder.clone(),
            stop.clone(),
        )));
    }
    // Beyond those, the client's own `Worker` on its own queue, numbered
    // after the other workers; stopped by its token.
    let worker_stop = lockstep_client::CancellationToken::new();
    let rng = StdRng::seed_from_u64(options.seed ^ (0xC0DE_0000 + options.workers as u64));
    tasks.push(tokio::spawn(client_worker(
        rng,
        library::worker_consume_mode(options.seed),
        library_client(&addrs, cluster.client_ip())?,
        recorder.clone(),
        worker_stop.clone(),
    )?));

    tasks.push(tokio::spawn(side_queues(
        channels.clone(),
        recorder.clone(),
        stop.clone(),
    )));
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let mut partitions = Partitions::new();
    let (faults, troubles) = inject(options, &cluster, &channels, &mut partitions).await;
    stop.store(true, Ordering::Relaxed);
    worker_stop.cancel();
    // Raw calls end within their deadline and are recorded when they end;
    // a library call may retry for longer, and is recorded (indeterminate)
    // before it starts, so a task still running after the wait is stopped:
    // none may land after the drain has looked.
    let wait_until = tokio::time::Instant::now() + Duration::from_millis(TASKS_STOP_MS_MAX);
    for mut t in tasks {
        if tokio::time::timeout_at(wait_until, &mut t).await.is_err() {
            t.abort();
        }
    }
    // Faults the schedule left in place at the very end: clocks and
    // failpoints back to normal before the drain.
    {
        let c = cluster.lock().await;
        let dir = c.spec().dir.clone();
        for id in &ids {
            if options.profile.may_step_clocks() {
                let _ = set_clock(&dir, *id, "+0");
            }
            if options.profile.uses_failpoints() {
                let _ = lockstep_harness::set_failpoints(&dir, *id, "");
            }
            if options.profile.fills_disks() {
                let _ = disks::unfill(&dir, *id);
            }
        }
    }

    // Heal: remove partitions, resume and restart everything.
    partitions.heal();
    let mut c = cluster.lock().await;
    for id in c.paused() {
        let _ = c.resume(id);
    }
    for id in ids.clone() {
        c.spawn(id).map_err(|e| e.0)?;
    }
    let mut liveness = None;
    match c
        .wait_leader(&ids, Duration::from_millis(LEADER_MS_MAX))
        .await
    {
        Err(e) => {
            liveness = Some(format!(
                "no leader within {LEADER_MS_MAX} ms of healing: {e}"
            ));
        }
        Ok(leader) => {
            // A membership fault that could not be undone in the run leaves
            // a node out; the digest comparison needs every node in.
            if let Err(e) = ensure_members(&c, leader, &ids, &channels).await {
                liveness = Some(e);
            }
        }
    }
    if liveness.is_none() {
        let mut rng = StdRng::seed_from_u64(options.seed ^ 0xD7A1);
        for queue in QUEUES {
            if let Err(e) = drain(&mut rng, &channels, &recorder, queue).await {
                liveness = Some(e);
                break;
            }
        }
    }
    record_digests(&c, &ids, &recorder).await;
    drop(c);
    // A fault's own check that failed (a leader below its disk reserve
    // taking enqueues, or refusing them after space returned) fails the
    // run as a liveness failure does; the drain still ran, so the checker
    // judges the whole history.
    if !troubles.is_empty() {
        let mut all = troubles;
        all.extend(liveness);
        liveness = Some(all.join("; "));
    }

    let history = recorder.history();
    Ok(Outcomes {
        history,
        faults,
        liveness,
    })
}
