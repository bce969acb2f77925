//! `lockstep bench`: load any running cluster through the real client and
//! measure it.
//!
//! Phases (`--mode`):
//! - `enqueue`: P producers, each with `--in-flight` calls outstanding, send
//!   batches of jobs with unique ids, `--jobs` in all or for `--duration-s`,
//!   optionally paced at `--rate` jobs/s in all. Then the redup check
//!   re-sends `--redup-pct` of the ids, which must all come back DUPLICATE.
//! - `consume`: W workers fetch up to `--fetch-batch` jobs and ack them,
//!   checking on the fly that each group's deliveries come in offset order.
//! - `both` (default): enqueue, redup check, then consume what was enqueued.
//! - `mixed`: producers and workers at once for `--duration-s`; the
//!   per-second timeline and the longest pause between successful enqueues
//!   show a failover's dip when a leader is killed during the run.
//!
//! Latency is measured per call (one RPC) and per job: for enqueue, from
//! when the job was due (its slot in the `--rate` schedule, or when its
//! producer took it) to its acknowledgement, so queueing behind a slow call
//! is counted rather than hidden; for consume, from the enqueue (the first
//! 8 bytes of every payload carry the send time) to the ack.

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use lockstep_client::{
    pb, BatchConfig, Client, ClientConfig, EnqueueBatcher, EnqueueOutcome, Enqueued,
};
use serde::Serialize;

/// Most producers or workers one bench runs.
pub const TASKS_MAX: usize = 4_096;
/// Most calls one producer keeps in flight.
pub const IN_FLIGHT_MAX: usize = 1_024;
/// Most jobs in one enqueue call.
pub const BATCH_MAX: usize = 10_000;
/// Largest payload the bench sends (the node's limit may be lower).
pub const PAYLOAD_BYTES_MAX: usize = 1 << 20;
/// Jobs sent when neither `--jobs` nor `--duration-s` is given.
pub const JOBS_DEFAULT: u64 = 20_000;
/// Highest latency the histograms hold, in microseconds (10 minutes).
const LATENCY_US_MAX: u64 = 600_000_000;
/// Error messages kept per phase as examples.
const ERRORS_KEPT: usize = 5;
/// Long-poll wait of each fetch.
const FETCH_WAIT: Duration = Duration::from_millis(500);
/// Lease of each fetched job: the bench acks at once.
const FETCH_LEASE: Duration = Duration::from_secs(30);
/// Consecutive empty fetches after which a worker decides the queue is
/// drained (consume mode without a target count).
const EMPTY_FETCHES_DONE: u32 = 4;
/// Jobs per call of the redup check.
const REDUP_BATCH: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enqueue,
    Consume,
    Both,
    Mixed,
    /// Two tenants at 100:1 backlog (see `fairness`): the share of
    /// deliveries each gets, with fairness keys and without.
    Fairness,
}

/// How the consume phase's workers get their jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumeVia {
    Fetch,
    Stream,
}

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct BenchArgs {
    /// Client addresses of any nodes: the global `--addr`.
    #[arg(skip)]
    pub addrs: Vec<String>,
    /// TLS and token: the global options.
    #[arg(skip)]
    #[serde(skip)]
    pub connect: Option<ClientConfig>,
    /// The queue to load (created if missing).
    #[arg(long, default_value = "bench")]
    pub queue: String,
    #[arg(long, value_enum, default_value = "both")]
    pub mode: Mode,
    #[arg(long, default_value_t = 16)]
    pub producers: usize,
    /// Jobs per enqueue call.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Calls each producer keeps in flight.
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// Producers share one client whose `EnqueueBatcher` gathers their
    /// single-job calls into few RPCs (each caller still gets its own
    /// result), as an application with many concurrent enqueues would.
    /// Needs `--batch 1`.
    #[arg(long)]
    pub coalesce: bool,
    /// Payload bytes per job (at least 8: the send time).
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Distinct group keys; job n goes to group n mod G.
    #[arg(long, default_value_t = 1_000)]
    pub groups: u64,
    /// Jobs to enqueue in all (default 20,000 unless --duration-s).
    #[arg(long)]
    pub jobs: Option<u64>,
    /// Run the enqueue (or mixed) phase this long instead.
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Pace enqueues at this many jobs/s in all (default: as fast as the
    /// cluster answers).
    #[arg(long)]
    pub rate: Option<u64>,
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Jobs asked for per fetch (with `--consume stream`: the credits each
    /// worker's stream holds).
    #[arg(long, default_value_t = 32)]
    pub fetch_batch: u32,
    /// How workers get jobs: `fetch` (long polls, acks as calls) or
    /// `stream` (a Consume stream, acks riding it with one credit back per
    /// job acked).
    #[arg(long, value_enum, default_value = "fetch")]
    pub consume: ConsumeVia,
    /// Share of the enqueued ids sent again, which must come back DUPLICATE.
    #[arg(long, default_value_t = 1.0)]
    pub redup_pct: f64,
    /// Write the results as JSON to this file (`-` for stdout).
    #[arg(long = "json-out")]
    pub json_out: Option<PathBuf>,
    /// A name for this run in the results.
    #[arg(long, default_value = "")]
    pub label: String,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Bound on the whole run; past it the bench stops and reports.
    #[arg(long, default_value_t = 900)]
    pub time_limit_s: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1_000.0;
        Latency {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One measured phase.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub jobs: u64,
    pub seconds: f64,
    pub jobs_per_s: f64,
    pub per_call: Latency,
    pub per_job: Latency,
    /// Calls that failed after the client's retries.
    pub errors: u64,
    pub error_examples: Vec<String>,
    /// Jobs completed in each second of the phase.
    pub timeline: Vec<u64>,
    /// Longest time without a successful call, in ms (a failover's gap).
    pub longest_gap_ms: f64,
    /// Enqueue only: fresh ids answered DUPLICATE: a retry whose first
    /// try had landed (expected around a failover; the client retries
    /// with the same ids, so nothing is stored twice).
    pub duplicates_on_retry: u64,
    /// Enqueue only: fresh ids answered ID_CONFLICT (must be 0).
    pub not_created: u64,
    /// Consume only: deliveries that broke group order (must be 0).
    pub order_violations: u64,
    /// Consume only: deliveries of a job delivered before.
    pub redeliveries: u64,
    /// The latency CDF per job: (latency ms, fraction at or below).
    pub cdf: Vec<(f64, f64)>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Redup {
    pub sent: u64,
    pub duplicate: u64,
    pub other: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub label: String,
    pub args: BenchArgs,
    pub started_unix_s: u64,
    pub phases: Vec<Phase>,
    pub redup: Option<Redup>,
    pub fairness: Option<FairnessResult>,
    pub passed: bool,
    pub problems: Vec<String>,
}

fn histogram() -> Histogram<u64> {
    // Bounds are constants within hdrhistogram's range: cannot fail.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"))
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// What the tasks of one phase share.
#[derive(Debug)]
struct Shared {
    started: Instant,
    /// Jobs completed per second since `started`.
    timeline: Mutex<Vec<u64>>,
    /// Micros since `started` of the last successful call.
    last_ok_us: AtomicU64,
    longest_gap_us: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    error_examples: Mutex<Vec<String>>,
    progress: indicatif::ProgressBar,
}

impl Shared {
    fn new(progress: indicatif::ProgressBar) -> Shared {
        Shared {
            started: Instant::now(),
            timeline: Mutex::new(Vec::new()),
            last_ok_us: AtomicU64::new(0),
            longest_gap_us: AtomicU64::new(0),
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            error_examples: Mutex::new(Vec::new()),
            progress,
        }
    }

    fn ok(&self, jobs: u64) {
        let now = micros(self.started.elapsed());
        let last = self.last_ok_us.swap(now, Ordering::Relaxed);
        self.longest_gap_us
            .fetch_max(now.saturating_sub(last), Ordering::Relaxed);
        let second = (now / 1_000_000) as usize;
        {
            let mut t = self.timeline.lock().unwrap_or_else(PoisonError::into_inner);
            if t.len() <= second {
                t.resize(second + 1, 0);
            }
            t[second] += jobs;
        }
        self.done.fetch_add(jobs, Ordering::Relaxed);
        self.progress.inc(jobs);
    }

    fn error(&self, e: &lockstep_client::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut kept = self
            .error_examples
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if kept.len() < ERRORS_KEPT {
            kept.push(e.to_string());
        }
    }

    fn phase(&self, name: &str, per_call: &Histogram<u64>, per_job: &Histogram<u64>) -> Phase {
        let seconds = self.started.elapsed().as_secs_f64();
        let jobs = self.done.load(Ordering::Relaxed);
        Phase {
            name: name.into(),
            jobs,
            seconds,
            jobs_per_s: if seconds > 0.0 {
                jobs as f64 / seconds
            } else {
                0.0
            },
            per_call: Latency::of(per_call),
            per_job: Latency::of(per_job),
            errors: self.errors.load(Ordering::Relaxed),
            error_examples: self
                .error_examples
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            timeline: self
                .timeline
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            longest_gap_ms: self.longest_gap_us.load(Ordering::Relaxed) as f64 / 1_000.0,
            cdf: cdf(per_job),
            ..Phase::default()
        }
    }
}

/// Points of the per-job latency CDF, for plotting.
fn cdf(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    [
        0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0,
    ]
    .iter()
    .map(|q| (h.value_at_quantile(*q) as f64 / 1_000.0, *q))
    .collect()
}

impl BenchArgs {
    fn validate(&self) -> Result<(), String> {
        let bad = |flag: &str, problem: String| Err(format!("--{flag}: {problem}"));
        if self.addrs.is_empty() {
            return bad("addr", "give at least one node's client address".into());
        }
        for (flag, value, max) in [
            ("producers", self.producers, TASKS_MAX),
            ("workers", self.workers, TASKS_MAX),
            ("in-flight", self.in_flight, IN_FLIGHT_MAX),
            ("batch", self.batch, BATCH_MAX),
        ] {
            if value == 0 || value > max {
                return bad(flag, format!("{value} is outside 1..={max}"));
            }
        }
        if self.coalesce && self.batch != 1 {
            return bad(
                "coalesce",
                "gathers single-job calls; give --batch 1".into(),
            );
        }
        if self.payload < 8 || self.payload > PAYLOAD_BYTES_MAX {
            return bad(
                "payload",
                format!("{} is outside 8..={PAYLOAD_BYTES_MAX}", self.payload),
            );
        }
        if self.groups == 0 {
            return bad("groups", "must be at least 1".into());
        }
        if self.fetch_batch == 0 {
            return bad("fetch-batch", "must be at least 1".into());
        }
        if !(0.0..=100.0).contains(&self.redup_pct) {
            return bad(
                "redup-pct",
                format!("{} is outside 0..=100", self.redup_pct),
            );
        }
        if self.duration_s.is_some_and(|d| !(d > 0.0 && d < 86_400.0)) {
            return bad("duration-s", "must be above 0 and below a day".into());
        }
        if self.mode == Mode::Mixed && self.duration_s.is_none() {
            return bad(
                "duration-s",
                "mixed mode runs for a duration; give one".into(),
            );
        }
        if self.rate == Some(0) {
            return bad("rate", "must be at least 1 job/s".into());
        }
        Ok(())
    }

    fn client(&self) -> Result<Client, String> {
        let mut config = self
            .connect
            .clone()
            .unwrap_or_else(|| ClientConfig::new(self.addrs.clone()));
        config.endpoints = self.addrs.clone();
        Client::connect(config).map_err(|e| e.to_string())
    }

    fn progress(&self, len: Option<u64>, name: &str) -> indicatif::ProgressBar {
        let quiet = self.no_progress
            || self.json_out.as_deref() == Some(std::path::Path::new("-"))
            || !std::io::IsTerminal::is_terminal(&std::io::stderr());
        if quiet {
            return indicatif::ProgressBar::hidden();
        }
        let bar = match len {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        let template = if len.is_some() {
            "{prefix:>8} [{bar:30}] {pos}/{len} jobs, {per_sec}, eta {eta}"
        } else {
            "{prefix:>8} {spinner} {pos} jobs, {per_sec}, {elapsed}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(name.to_string());
        bar
    }
}

/// Runs the bench as `args` says; prints the summary and writes the JSON.
pub fn run(args: BenchArgs) -> Result<(), String> {
    args.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(args.time_limit_s);
    let results = runtime.block_on(async {
        tokio::time::timeout(limit, bench(args.clone()))
            .await
            .map_err(|_| {
                format!(
                    "the bench did not finish within --time-limit-s {}",
                    args.time_limit_s
                )
            })?
    })?;
    let to_stdout = args.json_out.as_deref() == Some(std::path::Path::new("-"));
    if !to_stdout {
        println!("{}", summary(&results));
    }
    if let Some(path) = &args.json_out {
        let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
        if to_stdout {
            println!("{json}");
        } else {
            std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    if results.passed {
        Ok(())
    } else {
        Err(format!(
            "the bench found problems: {}",
            results.problems.join("; ")
        ))
    }
}

async fn bench(args: BenchArgs) -> Result<Results, String> {
    let client = args.client()?;
    client
        .create_queue(&args.queue, pb::QueueConfig::default())
        .await
        .map_err(|e| format!("create queue `{}`: {e}", args.queue))?;
    let started_unix_s = unix_micros() / 1_000_000;
    // Ids unique to this run, so runs against one queue never collide.
    let run_id = format!("b{:x}", unix_micros());
    let mut results = Results {
        label: args.label.clone(),
        args: args.clone(),
        started_unix_s,
        phases: Vec::new(),
        redup: None,
        fairness: None,
        passed: true,
        problems: Vec::new(),
    };
    match args.mode {
        Mode::Enqueue | Mode::Both => {
            let (phase, sample) = enqueue_phase(&args, &run_id, None).await?;
            let created = phase.jobs;
            results.phases.push(phase);
            if args.redup_pct > 0.0 {
                results.redup = Some(redup(&args, &client, &run_id, &sample).await);
            }
            if args.mode == Mode::Both {
                results
                    .phases
                    .push(consume_phase(&args, Some(created), None).await?);
            }
        }
        Mode::Consume => results.phases.push(consume_phase(&args, None, None).await?),
        Mode::Fairness => {
            let f = fairness(&args, &client, &run_id).await?;
            if f.keyed.small_share < FAIR_SHARE_MIN {
                results.problems.push(format!(
                    "fairness: the small tenant got {:.2} of the deliveries while it had work, \
                     below {FAIR_SHARE_MIN}",
                    f.keyed.small_share
                ));
            }
            results.fairness = Some(f);
        }
        Mode::Mixed => {
            let deadline = Instant::now() + duration(&args);
            let consume_args = args.clone();
            let consumer =
                tokio::spawn(
                    async move { consume_phase(&consume_args, None, Some(deadline)).await },
                );
            let (phase, _) = enqueue_phase(&args, &run_id, Some(deadline)).await?;
            results.phases.push(phase);
            results
                .phases
                .push(consumer.await.map_err(|e| e.to_string())??);
        }
    }
    for phase in &results.phases {
        if phase.errors > 0 {
            results.problems.push(format!(
                "{}: {} calls failed (e.g. {:?})",
                phase.name, phase.errors, phase.error_examples
            ));
        }
        if phase.order_violations > 0 {
            results.problems.push(format!(
                "{}: {} deliveries broke group order",
                phase.name, phase.order_violations
            ));
        }
        if phase.not_created > 0 {
            results.problems.push(format!(
                "{}: {} fresh ids were answered ID_CONFLICT",
                phase.name, phase.not_created
            ));
        }
    }
    if let Some(r) = &results.redup {
        if r.other > 0 {
            results.problems.push(format!(
                "redup: {} of {} resent ids did not come back DUPLICATE",
                r.other, r.sent
            ));
        }
    }
    results.passed = results.problems.is_empty();
    Ok(results)
}

fn duration(args: &BenchArgs) -> Duration {
    Duration::from_secs_f64(args.duration_s.unwrap_or(0.0))
}

fn job(run_id: &str, n: u64, groups: u64, payload: usize, sent_us: u64) -> pb::Job {
    let mut bytes = vec![b'x'; payload];
    bytes[..8].copy_from_slice(&sent_us.to_le_bytes());
    pb::Job {
        id: Some(format!("{run_id}-{n}")),
        group: format!("g{}", n % groups),
        payload: bytes,
        ..Default::default()
    }
}

/// How a producer sends: its own calls, or through a batcher shared by
/// every producer (`--coalesce`).
#[derive(Clone)]
enum Sender {
    Client(Client),
    Coalescing(EnqueueBatcher),
}

impl Sender {
    fn coalescing(client: Client, queue: &str) -> Result<Sender, String> {
        EnqueueBatcher::new(client, queue, BatchConfig::default())
            .map(Sender::Coalescing)
            .map_err(|e| e.to_string())
    }

    async fn enqueue(
        &self,
        queue: &str,
        mut jobs: Vec<pb::Job>,
    ) -> Result<Vec<Enqueued>, lockstep_client::Error> {
        match self {
            Sender::Client(client) => client.enqueue(queue, jobs).await,
            // `validate` holds coalescing to one job per call.
            Sender::Coalescing(batcher) => match jobs.pop() {
                Some(job) => batcher.submit(job).await.map(|e| vec![e]),
                None => Ok(Vec::new()),
            },
        }
    }
}

/// Job numbers whose ids the redup check sends again, with their send time
/// (part of the payload, which must be identical for DUPLICATE).
type Sample = Vec<(u64, u64)>;

async fn enqueue_phase(
    args: &BenchArgs,
    run_id: &str,
    deadline: Option<Instant>,
) -> Result<(Phase, Sample), String> {
    let total = match (args.jobs, args.duration_s) {
        (Some(n), _) => n,
        (None, Some(_)) => u64::MAX,
        (None, None) => JOBS_DEFAULT,
    };
    let deadline = deadline.or_else(|| args.duration_s.map(|_| Instant::now() + duration(args)));
    let name = if args.mode == Mode::Mixed {
        "mixed-enqueue"
    } else {
        "enqueue"
    };
    let shared = Arc::new(Shared::new(
        args.progress((total != u64::MAX).then_some(total), name),
    ));
    let next = Arc::new(AtomicU64::new(0));
    let not_created = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let sample_every = if args.redup_pct > 0.0 {
        (100.0 / args.redup_pct).round().max(1.0) as u64
    } else {
        u64::MAX
    };
    let mut tasks = tokio::task::JoinSet::new();
    let shared_client = match args.coalesce {
        true => Some(Sender::coalescing(args.client()?, &args.queue)?),
        false => None,
    };
    for _ in 0..args.producers {
        let client = match &shared_client {
            Some(sender) => sender.clone(),
            None => Sender::Client(args.client()?),
        };
        for _ in 0..args.in_flight {
            let (client, shared, next, not_created) = (
                client.clone(),
                shared.clone(),
                next.clone(),
                not_created.clone(),
            );
            let retried = retried.clone();
            let (args, run_id) = (args.clone(), run_id.to_string());
            tasks.spawn(async move {
                let mut per_call = histogram();
                let mut per_job = histogram();
                let mut sample: Sample = Vec::new();
                loop {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let first = next.fetch_add(args.batch as u64, Ordering::Relaxed);
                    if first >= total {
                        break;
                    }
                    let last = (first + args.batch as u64).min(total);
                    // When the first job of the batch was due.
                    let due = match args.rate {
                        Some(rate) => {
                            let at = shared.started
                                + Duration::from_secs_f64(first as f64 / rate as f64);
                            tokio::time::sleep_until(at.into()).await;
                            at
                        }
                        None => Instant::now(),
                    };
                    let sent_us = unix_micros();
                    let jobs: Vec<pb::Job> = (first..last)
                        .map(|n| job(&run_id, n, args.groups, args.payload, sent_us))
                        .collect();
                    let call = Instant::now();
                    match client.enqueue(&args.queue, jobs).await {
                        Ok(results) => {
                            let now = Instant::now();
                            let _ = per_call.record(micros(now - call));
                            let _ = per_job.record_n(micros(now - due), results.len() as u64);
                            let fresh = results
                                .iter()
                                .filter(|r| r.outcome == EnqueueOutcome::Created)
                                .count() as u64;
                            let conflicts = results
                                .iter()
                                .filter(|r| r.outcome == EnqueueOutcome::IdConflict)
                                .count() as u64;
                            not_created.fetch_add(conflicts, Ordering::Relaxed);
                            retried.fetch_add(
                                results.len() as u64 - fresh - conflicts,
                                Ordering::Relaxed,
                            );
                            // A retried job that had landed is stored once:
                            // it counts as done.
                            shared.ok(results.len() as u64 - conflicts);
                            for n in first..last {
                                if n % sample_every == 0 {
                                    sample.push((n, sent_us));
                                }
                            }
                        }
                        Err(e) => shared.error(&e),
                    }
                }
                (per_call, per_job, sample)
            });
        }
    }
    let mut per_call = histogram();
    let mut per_job = histogram();
    let mut sample = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (c, j, s) = joined.map_err(|e| e.to_string())?;
        let _ = per_call.add(c);
        let _ = per_job.add(j);
        sample.extend(s);
    }
    shared.progress.finish_and_clear();
    let mut phase = shared.phase(name, &per_call, &per_job);
    phase.not_created = not_created.load(Ordering::Relaxed);
    phase.duplicates_on_retry = retried.load(Ordering::Relaxed);
    Ok((phase, sample))
}

async fn redup(args: &BenchArgs, client: &Client, run_id: &str, sample: &Sample) -> Redup {
    let mut r = Redup::default();
    for chunk in sample.chunks(REDUP_BATCH) {
        let jobs: Vec<pb::Job> = chunk
            .iter()
            .map(|(n, sent_us)| job(run_id, *n, args.groups, args.payload, *sent_us))
            .collect();
        r.sent += jobs.len() as u64;
        match client.enqueue(&args.queue, jobs).await {
            Ok(results) => {
                for res in results {
                    if matches!(res.outcome, EnqueueOutcome::Duplicate { .. }) {
                        r.duplicate += 1;
                    } else {
                        r.other += 1;
                    }
                }
            }
            Err(_) => r.other += chunk.len() as u64,
        }
    }
    r
}

/// Per group, the highest offset delivered so far.
type Heads = Mutex<HashMap<String, u64>>;

async fn consume_phase(
    args: &BenchArgs,
    target: Option<u64>,
    deadline: Option<Instant>,
) -> Result<Phase, String> {
    let name = if deadline.is_some() {
        "mixed-consume"
    } else {
        "consume"
    };
    let shared = Arc::new(Shared::new(args.progress(target, name)));
    let heads: Arc<Heads> = Arc::new(Mutex::new(HashMap::new()));
    let violations = Arc::new(AtomicU64::new(0));
    let redeliveries = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..args.workers {
        let client = args.client()?;
        let (shared, heads, violations, redeliveries) = (
            shared.clone(),
            heads.clone(),
            violations.clone(),
            redeliveries.clone(),
        );
        let args = args.clone();
        tasks.spawn(async move {
            let mut per_call = histogram();
            let mut per_job = histogram();
            let consumer = format!("bench-{w}");
            let check = Check {
                heads: &heads,
                violations: &violations,
                redeliveries: &redeliveries,
            };
            if args.consume == ConsumeVia::Stream {
                return consume_stream(
                    &args, &client, &consumer, &shared, &check, target, deadline,
                )
                .await;
            }
            let mut empty = 0;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if target.is_some_and(|t| shared.done.load(Ordering::Relaxed) >= t) {
                    break;
                }
                let call = Instant::now();
                let got = match client
                    .fetch(
                        &args.queue,
                        &consumer,
                        args.fetch_batch,
                        FETCH_LEASE,
                        FETCH_WAIT,
                    )
                    .await
                {
                    Ok(got) => got,
                    Err(e) => {
                        shared.error(&e);
                        continue;
                    }
                };
                if got.is_empty() {
                    empty += 1;
                    if target.is_none() && deadline.is_none() && empty >= EMPTY_FETCHES_DONE {
                        break;
                    }
                    continue;
                }
                empty = 0;
                check.deliveries(&got);
                let items: Vec<pb::AckItem> = got
                    .iter()
                    .map(|d| pb::AckItem {
                        offset: d.offset,
                        fence: d.fence,
                    })
                    .collect();
                match client.ack(&args.queue, items).await {
                    Ok(results) => {
                        let oks: Vec<bool> = results.iter().map(Result::is_ok).collect();
                        let acked = record_acked(&mut per_job, &got, &oks);
                        let _ = per_call.record(micros(call.elapsed()));
                        shared.ok(acked);
                    }
                    Err(e) => shared.error(&e),
                }
            }
            (per_call, per_job)
        });
    }
    let mut per_call = histogram();
    let mut per_job = histogram();
    while let Some(joined) = tasks.join_next().await {
        let (c, j) = joined.map_err(|e| e.to_string())?;
        let _ = per_call.add(c);
        let _ = per_job.add(j);
    }
    shared.progress.finish_and_clear();
    let mut phase = shared.phase(name, &per_call, &per_job);
    phase.order_violations = violations.load(Ordering::Relaxed);
    phase.redeliveries = redeliveries.load(Ordering::Relaxed);
    Ok(phase)
}

/// Groups of the big tenant in the fairness scenario.
const FAIR_BIG_GROUPS: u64 = 1_000;
const FAIR_BIG_PER_GROUP: u64 = 10;
/// Groups of the small tenant, 2 jobs each: a 100:1 backlog. Enough
/// groups that a fetch of 32 can find 16 of its heads ready (a tenant
/// with fewer ready heads than its share of a fetch gets what it has).
const FAIR_SMALL_GROUPS: u64 = 50;
const FAIR_SMALL_PER_GROUP: u64 = 2;
/// Jobs per enqueue call of the scenario's backlog.
const FAIR_BATCH: usize = 500;
/// The small tenant's share below which the scenario fails (equal
/// weights: about a half is expected).
const FAIR_SHARE_MIN: f64 = 0.4;

/// Deliveries each tenant got until the small one's last job.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FairShare {
    pub big: u64,
    pub small: u64,
    pub small_share: f64,
}

/// The fairness scenario (SPEC 2.3a): tenant `big` has 100 times the
/// backlog of tenant `small`, enqueued first; one consumer fetches and
/// acks. With fairness keys at equal weights the small tenant should get
/// about half the deliveries while it has work; on a queue where the jobs
/// carry no key (one tenant) it waits behind the whole big backlog.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FairnessResult {
    pub big_jobs: u64,
    pub small_jobs: u64,
    pub keyed: FairShare,
    pub unkeyed: FairShare,
}

async fn fairness(
    args: &BenchArgs,
    client: &Client,
    run_id: &str,
) -> Result<FairnessResult, String> {
    let backlog = |keyed: bool| -> Vec<pb::Job> {
        let tenant = |name: &str, groups: u64, per_group: u64| {
            let name = name.to_string();
            (0..groups * per_group).map(move |n| pb::Job {
                id: Some(format!("{run_id}-{name}-{n}")),
                group: format!("{name}-{}", n % groups),
                payload: vec![b'x'; args.payload],
                fairness_key: if keyed { name.clone() } else { String::new() },
                ..Default::default()
            })
        };
        tenant("big", FAIR_BIG_GROUPS, FAIR_BIG_PER_GROUP)
            .chain(tenant("small", FAIR_SMALL_GROUPS, FAIR_SMALL_PER_GROUP))
            .collect()
    };
    let mut result = FairnessResult {
        big_jobs: FAIR_BIG_GROUPS * FAIR_BIG_PER_GROUP,
        small_jobs: FAIR_SMALL_GROUPS * FAIR_SMALL_PER_GROUP,
        ..Default::default()
    };
    for keyed in [true, false] {
        let queue = format!(
            "{}-{}-{run_id}",
            args.queue,
            if keyed { "fair" } else { "onekey" }
        );
        client
            .create_queue(&queue, pb::QueueConfig::default())
            .await
            .map_err(|e| format!("create queue `{queue}`: {e}"))?;
        for chunk in backlog(keyed).chunks(FAIR_BATCH) {
            client
                .enqueue(&queue, chunk.to_vec())
                .await
                .map_err(|e| format!("enqueue into `{queue}`: {e}"))?;
        }
        let mut share = FairShare::default();
        while share.small < result.small_jobs {
            let got = client
                .fetch(
                    &queue,
                    "fairness",
                    args.fetch_batch,
                    FETCH_LEASE,
                    FETCH_WAIT,
                )
                .await
                .map_err(|e| format!("fetch from `{queue}`: {e}"))?;
            if got.is_empty() {
                return Err(format!(
                    "`{queue}` ran dry before the small tenant was done"
                ));
            }
            for d in &got {
                if d.group.starts_with("small-") {
                    share.small += 1;
                } else {
                    share.big += 1;
                }
            }
            let items = got
                .iter()
                .map(|d| pb::AckItem {
                    offset: d.offset,
                    fence: d.fence,
                })
                .collect();
            client
                .ack(&queue, items)
                .await
                .map_err(|e| format!("ack on `{queue}`: {e}"))?;
        }
        share.small_share = share.small as f64 / (share.small + share.big) as f64;
        if let Err(e) = client.delete_queue(&queue).await {
            eprintln!("could not delete `{queue}`: {e}");
        }
        if keyed {
            result.keyed = share;
        } else {
            result.unkeyed = share;
        }
    }
    Ok(result)
}

/// The consume phase's order check, shared by its workers.
struct Check<'a> {
    heads: &'a Heads,
    violations: &'a AtomicU64,
    redeliveries: &'a AtomicU64,
}

impl Check<'_> {
    /// Counts deliveries that broke group order, and redeliveries.
    fn deliveries(&self, got: &[pb::Delivery]) {
        let mut heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
        for d in got {
            if d.attempt > 1 {
                self.redeliveries.fetch_add(1, Ordering::Relaxed);
            }
            match heads.get(&d.group) {
                Some(h) if d.offset < *h || (d.offset == *h && d.attempt == 1) => {
                    self.violations.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    heads.insert(d.group.clone(), d.offset);
                }
            }
        }
    }
}

/// Records the enqueued-to-acked latency of each delivery acked (`oks`, in
/// the order of `got`); returns how many were.
fn record_acked(per_job: &mut Histogram<u64>, got: &[pb::Delivery], oks: &[bool]) -> u64 {
    let now_us = unix_micros();
    let mut acked = 0;
    for (d, ok) in got.iter().zip(oks) {
        if *ok {
            acked += 1;
            let sent = d
                .payload
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(now_us, u64::from_le_bytes);
            let _ = per_job.record(now_us.saturating_sub(sent).max(1));
        }
    }
    acked
}

/// One worker of the consume phase on a Consume stream: `fetch_batch`
/// credits, each push acked by a call riding the stream that grants its
/// credits back. Per call is push to ack answer. A broken stream is
/// counted as an error and opened again.
async fn consume_stream(
    args: &BenchArgs,
    client: &Client,
    consumer: &str,
    shared: &Shared,
    check: &Check<'_>,
    target: Option<u64>,
    deadline: Option<Instant>,
) -> (Histogram<u64>, Histogram<u64>) {
    use pb::consume_request::Call;
    use pb::consume_response::Event;
    let mut per_call = histogram();
    let mut per_job = histogram();
    // Acks in flight by tag: when their push arrived, and its deliveries.
    let mut pending: HashMap<u64, (Instant, Vec<pb::Delivery>)> = HashMap::new();
    let mut stream = None;
    let mut idle = 0;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if target.is_some_and(|t| shared.done.load(Ordering::Relaxed) >= t) {
            break;
        }
        let s = match &mut stream {
            Some(s) => s,
            None => match client
                .consume(&args.queue, consumer, FETCH_LEASE, args.fetch_batch)
                .await
            {
                Ok(s) => stream.insert(s),
                Err(e) => {
                    shared.error(&e);
                    tokio::time::sleep(FETCH_WAIT / 10).await;
                    continue;
                }
            },
        };
        let message = match tokio::time::timeout(FETCH_WAIT, s.next()).await {
            Err(_) => {
                idle += 1;
                if target.is_none() && deadline.is_none() && idle >= EMPTY_FETCHES_DONE {
                    break;
                }
                continue;
            }
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let e = lockstep_client::Error::Protocol {
                    call: "consume",
                    problem: "the stream ended".into(),
                };
                shared.error(&e);
                stream = None;
                pending.clear();
                continue;
            }
        };
        idle = 0;
        match message.event {
            Some(Event::Deliveries(f)) => {
                check.deliveries(&f.deliveries);
                let items = f
                    .deliveries
                    .iter()
                    .map(|d| pb::AckItem {
                        offset: d.offset,
                        fence: d.fence,
                    })
                    .collect();
                let credits = u32::try_from(f.deliveries.len()).unwrap_or(u32::MAX);
                let ack = Call::Ack(pb::AckRequest {
                    items,
                    ..Default::default()
                });
                match s.call(credits, ack).await {
                    Ok(tag) => {
                        pending.insert(tag, (Instant::now(), f.deliveries));
                    }
                    Err(e) => {
                        shared.error(&e);
                        stream = None;
                        pending.clear();
                    }
                }
            }
            Some(Event::Ack(answer)) => {
                if let Some((pushed, got)) = pending.remove(&message.tag) {
                    let oks: Vec<bool> = answer
                        .results
                        .iter()
                        .map(|r| r.code == lockstep_client::Code::Ok as i32)
                        .collect();
                    let acked = record_acked(&mut per_job, &got, &oks);
                    let _ = per_call.record(micros(pushed.elapsed()));
                    shared.ok(acked);
                }
            }
            Some(Event::Error(e)) => {
                pending.remove(&message.tag);
                shared.error(&lockstep_client::Error::Protocol {
                    call: "ack on the stream",
                    problem: format!("code {}: {}", e.code, e.message),
                });
            }
            _ => {}
        }
    }
    if let Some(s) = stream {
        let _ = s.close().await;
    }
    (per_call, per_job)
}

/// The phases a row: throughput, then the latency percentiles per call and
/// per job. The columns of bars keep the two sets of percentiles apart, as
/// both name theirs p50 to max.
fn phases_table(phases: &[Phase]) -> String {
    use comfy_table::CellAlignment::{Left, Right};
    let mut columns = vec![
        ("phase", Left),
        ("jobs", Right),
        ("secs", Right),
        ("jobs/s", Right),
    ];
    for first in ["call p50", "job p50"] {
        columns.push(("|", Left));
        columns.extend([first, "p90", "p99", "p99.9", "max"].map(|name| (name, Right)));
    }
    let rows = phases.iter().map(|p| {
        let mut row = vec![
            p.name.clone(),
            p.jobs.to_string(),
            format!("{:.1}", p.seconds),
            format!("{:.0}", p.jobs_per_s),
        ];
        for l in [&p.per_call, &p.per_job] {
            row.push("|".into());
            row.extend([l.p50, l.p90, l.p99, l.p999, l.max].map(|ms| format!("{ms:.2}")));
        }
        row
    });
    crate::table::of(&columns, rows)
}

/// The human summary: one table row per phase, then the checks.
pub fn summary(r: &Results) -> String {
    let a = &r.args;
    let mut out = format!(
        "lockstep bench {}: mode {:?}, consume via {:?}, {} producers x {} in flight, batch {}{}, payload {} B, {} groups, {} workers, fetch batch {}{}\n",
        r.label,
        a.mode,
        a.consume,
        a.producers,
        a.in_flight,
        a.batch,
        if a.coalesce { " (coalesced by one client)" } else { "" },
        a.payload,
        a.groups,
        a.workers,
        a.fetch_batch,
        a.rate.map_or(String::new(), |r| format!(", rate {r} jobs/s")),
    );
    out.push_str(&phases_table(&r.phases));
    out.push('\n');
    out.push_str(
        "latencies in ms; per job: enqueue = due to acknowledged, consume = enqueued to acked\n",
    );
    for p in &r.phases {
        out.push_str(&format!(
            "{}: errors {}, longest gap between successful calls {:.0} ms{}\n",
            p.name,
            p.errors,
            p.longest_gap_ms,
            if p.name.contains("consume") {
                format!(
                    ", order violations {}, redeliveries {}",
                    p.order_violations, p.redeliveries
                )
            } else {
                format!(
                    ", id conflicts {}, duplicates on retry {}",
                    p.not_created, p.duplicates_on_retry
                )
            }
        ));
    }
    if let Some(f) = &r.fairness {
        out.push_str(&format!(
            "fairness: tenant `big` {} jobs in {} groups, tenant `small` {} jobs in {} groups, \
             enqueued big first; deliveries until small was done:\n  \
             with fairness keys (equal weights): big {}, small {}: small's share {:.2}\n  \
             without (one key):                  big {}, small {}: small's share {:.2}\n",
            f.big_jobs,
            FAIR_BIG_GROUPS,
            f.small_jobs,
            FAIR_SMALL_GROUPS,
            f.keyed.big,
            f.keyed.small,
            f.keyed.small_share,
            f.unkeyed.big,
            f.unkeyed.small,
            f.unkeyed.small_share,
        ));
    }
    if let Some(d) = &r.redup {
        out.push_str(&format!(
            "redup: {} resent, {} DUPLICATE, {} other\n",
            d.sent, d.duplicate, d.other
        ));
    }
    out.push_str(if r.passed { "PASSED" } else { "FAILED" });
    for p in &r.problems {
        out.push_str(&format!("\n  {p}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The phase table keeps its columns, the bars between the call and
    /// the job percentiles, and the precision of each number.
    #[test]
    fn the_phase_table_has_throughput_then_both_latencies() {
        let latency = |p50| Latency {
            p50,
            p90: 2.0,
            p99: 3.0,
            p999: 4.0,
            max: 12.5,
            ..Default::default()
        };
        let phase = Phase {
            name: "enqueue".into(),
            jobs: 10_000,
            seconds: 2.04,
            jobs_per_s: 4_901.96,
            per_call: latency(1.234),
            per_job: latency(0.5),
            ..Default::default()
        };
        assert_eq!(
            phases_table(&[phase]),
            "phase    jobs secs jobs/s | call p50  p90  p99 p99.9   max | job p50  p90  p99 p99.9   max\n\
             enqueue 10000  2.0   4902 |     1.23 2.00 3.00  4.00 12.50 |    0.50 2.00 3.00  4.00 12.50"
        );
    }
}
