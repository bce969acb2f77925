//! [`Worker`]: fetch jobs, run a handler on each, keep the lease alive, and
//! finish each job exactly as the handler says.
//!
//! Up to `concurrency` jobs run at once. The worker fetches with a long poll
//! only when it has a free slot, asking for as many jobs as it has free
//! slots. While a handler runs, the worker extends the job's lease every
//! `lease / extend_divisor`. When an extend answers "lease lost" (or no
//! extend succeeds for a whole lease), the job may already be with another
//! worker: the worker cancels the handler's token, drops the handler's
//! future and moves on. It never acks, nacks or dead-letters that job, so a
//! stale fence is never presented as if the work counted.
//!
//! Shutdown (the `stop` token of [`Worker::run`]) is graceful: the worker
//! stops fetching, lets running handlers finish for up to `shutdown_grace`,
//! then cancels the rest and releases their jobs (Release: no attempt is
//! counted), each release bounded by `release_timeout`. A fetch already in
//! flight when `stop` fires is awaited (it is bounded by `wait` plus the
//! call timeout) and what it returns is released at once, so no lease is
//! left to expire and cost its job an attempt.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockstep_proto as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::Instrument;

use crate::batch::{AckBatcher, BatchConfig};
use crate::breaker::{Breaker, BreakerConfig, BreakerState, Change};
use crate::client::Client;
use crate::config::RetryPolicy;
use crate::consume::Consumer;
use crate::error::Error;
use crate::ids::new_job_id;

/// Default for [`WorkerConfig::concurrency`].
pub const CONCURRENCY_DEFAULT: usize = 8;
/// Largest [`WorkerConfig::concurrency`] accepted.
pub const CONCURRENCY_MAX: usize = 4_096;
/// Default for [`WorkerConfig::lease`].
pub const LEASE_DEFAULT: Duration = Duration::from_secs(30);
/// Default for [`WorkerConfig::extend_divisor`]: extend at a third of the
/// lease, so two extends can fail before the lease ends.
pub const EXTEND_DIVISOR_DEFAULT: u32 = 3;
/// Shortest pause between two extends of one lease, whatever the lease.
pub const EXTEND_INTERVAL_MIN: Duration = Duration::from_millis(10);
/// Default for [`WorkerConfig::wait`]. At most the node's
/// `limits.fetch_wait_ms_max` (20 s by default), which clamps it anyway.
pub const WAIT_DEFAULT: Duration = Duration::from_secs(5);
/// An empty fetch answered faster than this did not long-poll; the worker
/// pauses `fetch_backoff_min` before the next one instead of spinning.
pub const EMPTY_FETCH_FAST: Duration = Duration::from_millis(5);
/// Default for [`WorkerConfig::shutdown_grace`].
pub const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(30);
/// Default for [`WorkerConfig::release_timeout`].
pub const RELEASE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Default for [`WorkerConfig::fetch_backoff_min`].
pub const FETCH_BACKOFF_MIN_DEFAULT: Duration = Duration::from_millis(100);
/// Default for [`WorkerConfig::fetch_backoff_max`].
pub const FETCH_BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(5);
/// Default linger of the worker's ack batcher: acks of jobs that finish
/// together share a call, at the cost of at most this much latency.
pub const ACK_LINGER_DEFAULT: Duration = Duration::from_millis(1);
/// Default batch size of the worker's ack batcher.
pub const ACK_ITEMS_MAX_DEFAULT: usize = 128;

/// What the handler decided about a job. (`PartialEq` only: prost's
/// messages, carried by `AckThen`, are not `Eq`.)
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Done: ack it.
    Ack,
    /// Failed this time: nack it with no delay of its own, so the queue's
    /// backoff decides when it (and its group) runs again. After the
    /// queue's `max_attempts` the node dead-letters it.
    Retry,
    /// Can never succeed: dead-letter it now, with this reason.
    Poison(String),
    /// Done, and these jobs come next: ack it and enqueue them in one Raft
    /// entry ([`Client::ack_then`](crate::Client::ack_then)), so the next
    /// step is enqueued exactly when this one is finished. If the lease
    /// was lost, neither happens and the job runs again.
    AckThen(Vec<pb::ChainedJobs>),
}

/// A delivered job, as a handler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// The queue the job was fetched from.
    pub queue: String,
    /// The job's position in the queue, which identifies it in every call
    /// on its lease.
    pub offset: u64,
    /// The job's id: the one given at enqueue, or the one the client or the
    /// node made for it.
    pub id: String,
    /// The job's group; jobs of one group run one at a time, in offset order.
    /// Empty: a group of one.
    pub group: String,
    /// The payload, as enqueued.
    pub payload: Vec<u8>,
    /// The headers, as `(key, value)` pairs in the order enqueued.
    pub headers: Vec<(String, String)>,
    /// The priority given at enqueue, 0 to 9; higher runs first among the
    /// ready heads of groups.
    pub priority: u32,
    /// 1 for the first delivery.
    pub attempt: u32,
    /// The fence of this delivery; the worker presents it.
    pub fence: u64,
    /// Cluster time (ms) at which the lease ends unless extended.
    pub lease_deadline_ms: u64,
}

impl Job {
    /// The producer's W3C trace context, from the `traceparent` header.
    pub fn traceparent(&self) -> Option<&str> {
        crate::trace::traceparent_in(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    fn new(queue: &str, d: pb::Delivery) -> Job {
        Job {
            queue: queue.to_string(),
            offset: d.offset,
            id: d.id,
            group: d.group,
            payload: d.payload,
            headers: d.headers.into_iter().map(|h| (h.key, h.value)).collect(),
            priority: d.priority,
            attempt: d.attempt,
            fence: d.fence,
            lease_deadline_ms: d.lease_deadline_ms,
        }
    }
}

/// How a worker runs. Every bound is named, with a documented default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    /// The queue to fetch from. No default: [`WorkerConfig::new`] takes it,
    /// and it must not be empty.
    pub queue: String,
    /// The name leases are granted to (shown as the group's lease holder).
    /// Default `worker-` and 12 random hex digits.
    pub consumer: String,
    /// Jobs run at once at most. Default 8, at most `CONCURRENCY_MAX`.
    pub concurrency: usize,
    /// Lease asked for at fetch and at each extend. Default 30 s; the node
    /// clamps it to the queue's `lease_ms_max`, and the worker then extends
    /// at the pace of the shorter lease.
    pub lease: Duration,
    /// Extend every `lease / extend_divisor` (not below
    /// `EXTEND_INTERVAL_MIN`). Default 3, at least 2.
    pub extend_divisor: u32,
    /// Long-poll wait of each fetch. Default 5 s.
    pub wait: Duration,
    /// After `stop`, how long running handlers may take before they are
    /// cancelled and their jobs released. Default 30 s.
    pub shutdown_grace: Duration,
    /// Bound on each release at shutdown. Default 5 s.
    pub release_timeout: Duration,
    /// First pause after a fetch failed (after the client's own retries):
    /// the `backoff_min` of the [`RetryPolicy`] the worker paces failed
    /// fetches by. After the `n`-th failed fetch in a row the worker pauses
    /// for a time uniform in `[d/2, d]`, `d = min(fetch_backoff_max,
    /// fetch_backoff_min · 2^(n-1))`, and tries again for as long as it runs;
    /// a fetch that succeeds resets `n`. Also the pause after an empty fetch
    /// that did not long-poll ([`EMPTY_FETCH_FAST`]). Above zero. Default
    /// 100 ms.
    pub fetch_backoff_min: Duration,
    /// Longest such pause: the `backoff_max` of that policy. At least
    /// `fetch_backoff_min`. Default 5 s.
    pub fetch_backoff_max: Duration,
    /// Bounds of the ack batcher. Default: 128 items, 1 ms linger.
    pub acks: BatchConfig,
    /// The circuit breaker: when handlers keep answering `Retry`, stop
    /// taking jobs for a cool-down and release what is held (see
    /// [`BreakerConfig`]). Default: 10 failures in 10 s open it for 30 s.
    pub breaker: BreakerConfig,
    /// How jobs reach the worker: pushed on a consume stream (the
    /// default), or fetched with long polls.
    pub consume: ConsumeMode,
}

/// How a [`Worker`] gets its jobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConsumeMode {
    /// A `Queue.Consume` stream ([`Client::consume`]): the worker grants
    /// one credit per free slot and the node pushes jobs as groups become
    /// ready, with no poll. A stream that breaks is opened again (on the
    /// next node) with the fetch backoff.
    #[default]
    Stream,
    /// Long-poll `Fetch` calls, each asking for as many jobs as there are
    /// free slots and waiting up to `wait`.
    Fetch,
}

impl WorkerConfig {
    /// A configuration for `queue` with every other value at its default.
    pub fn new(queue: &str) -> WorkerConfig {
        WorkerConfig {
            queue: queue.to_string(),
            consumer: format!("worker-{}", &new_job_id()[..12]),
            concurrency: CONCURRENCY_DEFAULT,
            lease: LEASE_DEFAULT,
            extend_divisor: EXTEND_DIVISOR_DEFAULT,
            wait: WAIT_DEFAULT,
            shutdown_grace: SHUTDOWN_GRACE_DEFAULT,
            release_timeout: RELEASE_TIMEOUT_DEFAULT,
            fetch_backoff_min: FETCH_BACKOFF_MIN_DEFAULT,
            fetch_backoff_max: FETCH_BACKOFF_MAX_DEFAULT,
            acks: BatchConfig {
                items_max: ACK_ITEMS_MAX_DEFAULT,
                linger: ACK_LINGER_DEFAULT,
                ..BatchConfig::default()
            },
            breaker: BreakerConfig::default(),
            consume: ConsumeMode::default(),
        }
    }

    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), Error> {
        if self.queue.is_empty() {
            return Err(Error::config("worker.queue", "must not be empty"));
        }
        if self.concurrency == 0 || self.concurrency > CONCURRENCY_MAX {
            return Err(Error::config(
                "worker.concurrency",
                format!("must be in 1..={CONCURRENCY_MAX}"),
            ));
        }
        if self.lease.is_zero() {
            return Err(Error::config(
                "worker.lease",
                "must be above zero: the worker extends at a fraction of it",
            ));
        }
        if self.extend_divisor < 2 {
            return Err(Error::config(
                "worker.extend_divisor",
                "must be at least 2, so an extend lands before the lease ends",
            ));
        }
        if self.release_timeout.is_zero() {
            return Err(Error::config(
                "worker.release_timeout",
                "must be above zero",
            ));
        }
        self.fetch_retry()
            .validate_backoff("worker.fetch_backoff_min", "worker.fetch_backoff_max")?;
        self.breaker.validate()?;
        self.acks.validate("worker.acks.")
    }

    /// The policy failed fetches are retried by: the client's backoff with
    /// this configuration's bounds, and no limit on tries or time, since
    /// the worker keeps fetching for as long as it runs.
    pub(crate) fn fetch_retry(&self) -> RetryPolicy {
        RetryPolicy {
            attempts_max: u32::MAX,
            backoff_min: self.fetch_backoff_min,
            backoff_max: self.fetch_backoff_max,
            retry_elapsed_max: Duration::MAX,
        }
    }
}

/// What a worker did, counted over its run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Jobs delivered to this worker.
    pub fetched: u64,
    /// Handlers that answered `Ack`, and whose ack succeeded.
    pub acked: u64,
    /// Handlers that answered `Retry`, and whose nack succeeded.
    pub retried: u64,
    /// Handlers that answered `Poison`, and whose dead-letter succeeded.
    pub poisoned: u64,
    /// Jobs dropped because their lease was lost (never acked).
    pub lease_lost: u64,
    /// Jobs given back at shutdown, or when the breaker opened.
    pub released: u64,
    /// Times the circuit breaker opened.
    pub breaker_opened: u64,
    /// Finishing calls (ack, nack, dead-letter, release) that failed for
    /// another reason; the lease will expire and the job run again.
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    fetched: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    poisoned: AtomicU64,
    lease_lost: AtomicU64,
    released: AtomicU64,
    breaker_opened: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn report(&self) -> WorkerReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerReport {
            fetched: get(&self.fetched),
            acked: get(&self.acked),
            retried: get(&self.retried),
            poisoned: get(&self.poisoned),
            lease_lost: get(&self.lease_lost),
            released: get(&self.released),
            breaker_opened: get(&self.breaker_opened),
            failed: get(&self.failed),
        }
    }
}

/// Runs a handler over the jobs of one queue. See the module docs.
///
/// ```no_run
/// # async fn example(client: lockstep_client::Client) -> Result<(), lockstep_client::Error> {
/// use lockstep_client::{Outcome, Worker, WorkerConfig};
/// use tokio_util::sync::CancellationToken;
///
/// let worker = Worker::new(client, WorkerConfig::new("emails"), |job, cancel: CancellationToken| async move {
///     tokio::select! {
///         _ = cancel.cancelled() => Outcome::Retry, // lease lost or shutdown: ignored anyway
///         _ = send_email(&job.payload) => Outcome::Ack,
///     }
/// })?;
/// let stop = CancellationToken::new();
/// let report = worker.run(stop.clone()).await?;
/// # Ok(()) }
/// # async fn send_email(_: &[u8]) {}
/// ```
pub struct Worker<H> {
    client: Client,
    config: WorkerConfig,
    handler: H,
}

impl<H> std::fmt::Debug for Worker<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one job's task shares with the others.
struct Shared<H> {
    client: Client,
    config: WorkerConfig,
    handler: H,
    acks: AckBatcher,
    counters: Counters,
    breaker: Mutex<Breaker>,
    /// Cancelled when the breaker opens: the jobs running then are
    /// released. A child of the shutdown token, replaced at each opening.
    generation: Mutex<CancellationToken>,
}

impl<H> Shared<H> {
    /// The breaker's state now.
    fn breaker_state(&self) -> BreakerState {
        self.breaker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state(Instant::now())
    }

    /// The token of the jobs started now.
    fn generation(&self) -> CancellationToken {
        self.generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records a handler's outcome with the breaker; when it opens, the
    /// jobs running are cancelled and released.
    fn judge(&self, outcome: &Outcome, abandon: &CancellationToken) {
        let now = Instant::now();
        let change = {
            let mut breaker = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
            match outcome {
                Outcome::Retry => breaker.failure(now),
                Outcome::Ack | Outcome::AckThen(_) => breaker.success(now),
                Outcome::Poison(_) => Change::None,
            }
        };
        let queue = &self.config.queue;
        match change {
            Change::Opened => {
                Counters::add(&self.counters.breaker_opened);
                let b = &self.config.breaker;
                tracing::warn!(
                    %queue,
                    failures = b.failures_max,
                    window = ?b.window,
                    cool_down = ?b.cool_down,
                    "circuit breaker open: the handler keeps failing; releasing held jobs and taking none for the cool-down"
                );
                let mut generation = self
                    .generation
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                generation.cancel();
                *generation = abandon.child_token();
            }
            Change::Closed => {
                tracing::info!(%queue, "circuit breaker closed: the handler succeeded again");
            }
            Change::None => {}
        }
    }
}

impl<H, Fut> Worker<H>
where
    H: Fn(Job, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    /// A worker for `config.queue`; checks the configuration.
    pub fn new(client: Client, config: WorkerConfig, handler: H) -> Result<Self, Error> {
        config.validate()?;
        Ok(Worker {
            client,
            config,
            handler,
        })
    }

    /// Fetches and runs jobs until `stop` is cancelled, then shuts down
    /// gracefully (see the module docs) and reports what it did.
    ///
    /// Fetch failures that another try may cure are logged and retried
    /// with backoff for as long as the worker runs. A fetch that can never
    /// succeed (INVALID_ARGUMENT, NOT_FOUND for the queue, UNAUTHENTICATED,
    /// PERMISSION_DENIED, UNIMPLEMENTED) stops the worker: it shuts down as
    /// for `stop` and returns that error.
    pub async fn run(self, stop: CancellationToken) -> Result<WorkerReport, Error> {
        let acks = AckBatcher::new(
            self.client.clone(),
            &self.config.queue,
            self.config.acks.clone(),
        )?;
        let abandon = CancellationToken::new();
        let shared = Arc::new(Shared {
            client: self.client,
            breaker: Mutex::new(Breaker::new(self.config.breaker.clone())),
            config: self.config,
            handler: self.handler,
            acks,
            counters: Counters::default(),
            generation: Mutex::new(abandon.child_token()),
        });
        let mut jobs = JoinSet::new();
        let mut stream = None;
        let outcome = match shared.config.consume {
            ConsumeMode::Stream => {
                stream_loop(&shared, &stop, &abandon, &mut jobs, &mut stream).await
            }
            ConsumeMode::Fetch => fetch_loop(&shared, &stop, &abandon, &mut jobs).await,
        };
        shut_down(&shared, &abandon, &mut jobs).await;
        // Closed only now, so the node's clean-close release never takes a
        // job a handler was still finishing; what it pushed meanwhile is
        // released by the node.
        if let Some(stream) = stream {
            close_stream(&shared.config.queue, stream).await;
        }
        let report = shared.counters.report();
        tracing::info!(queue = %shared.config.queue, ?report, "worker stopped");
        outcome.map(|()| report)
    }
}

/// The worker's loop over a consume stream: one credit per free slot
/// (one in all while the breaker probes), each delivery started with the
/// slot its credit came from. The stream is closed cleanly while the
/// breaker is open (the node releases what it pushed and nobody started),
/// and left in `stream` at stop, for `run` to close after shutdown.
async fn stream_loop<H, Fut>(
    shared: &Arc<Shared<H>>,
    stop: &CancellationToken,
    abandon: &CancellationToken,
    jobs: &mut JoinSet<()>,
    stream: &mut Option<Consumer>,
) -> Result<(), Error>
where
    H: Fn(Job, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let config = &shared.config;
    let slots = Arc::new(Semaphore::new(config.concurrency));
    // Slots whose credit the node holds: one per job it may still push.
    let mut granted: Vec<OwnedSemaphorePermit> = Vec::new();
    // Of those, the ones not yet granted to the node.
    let mut ungranted: u32 = 0;
    let mut failures: u32 = 0;
    loop {
        while jobs.try_join_next().is_some() {}
        let state = shared.breaker_state();
        // While the breaker is not closed the stream may hold at most the
        // one probe's credit, and none while the worker waits without
        // reading it (the cool-down, or the released jobs ending): a push
        // nobody reads would hold its leases until they expire. Closing
        // cleanly has the node release what it pushed.
        //
        // Never while a probe runs: a clean close releases every job of
        // the stream still leased, the probe's too.
        let quiet = match state {
            BreakerState::Open { .. } => true,
            BreakerState::HalfOpen => jobs.is_empty() && granted.len() > 1,
            BreakerState::Closed => false,
        };
        if quiet {
            if let Some(s) = stream.take() {
                granted.clear();
                ungranted = 0;
                close_stream(&config.queue, s).await;
            }
        }
        let room = match state {
            BreakerState::Open { until } => {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => continue,
                    () = stop.cancelled() => return Ok(()),
                }
            }
            // One job at a time, once the released ones (or the probe)
            // have ended. Whatever the stream still pushes meanwhile, on
            // credits granted before the breaker opened, is released at
            // once rather than left unread.
            BreakerState::HalfOpen if !jobs.is_empty() => {
                let Some(s) = stream.as_mut() else {
                    tokio::select! {
                        _ = jobs.join_next() => continue,
                        () = stop.cancelled() => return Ok(()),
                    }
                };
                tokio::select! {
                    _ = jobs.join_next() => {}
                    () = stop.cancelled() => return Ok(()),
                    message = s.next() => match message {
                        Ok(Some(response)) => {
                            if let Some(pb::consume_response::Event::Deliveries(f)) = response.event {
                                for delivery in f.deliveries {
                                    granted.pop();
                                    start(shared, stop, abandon, jobs, delivery, None).await;
                                }
                            }
                        }
                        _ => {
                            *stream = None;
                            granted.clear();
                            ungranted = 0;
                        }
                    },
                }
                continue;
            }
            BreakerState::HalfOpen => 1,
            BreakerState::Closed => config.concurrency,
        };
        if stream.is_none() {
            let opened = tokio::select! {
                opened = shared.client.consume(&config.queue, &config.consumer, config.lease, 0) => opened,
                () = stop.cancelled() => return Ok(()),
            };
            match opened {
                Ok(s) => {
                    tracing::debug!(queue = %config.queue, endpoint = s.endpoint(), "consume stream open");
                    *stream = Some(s);
                }
                Err(e) if fetch_error_is_final(&e) => {
                    tracing::error!(queue = %config.queue, error = %e, "consume stream cannot open; stopping");
                    return Err(e);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let pause = fetch_backoff(config, failures);
                    tracing::warn!(queue = %config.queue, error = %e, ?pause, "consume stream did not open");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        () = stop.cancelled() => return Ok(()),
                    }
                }
            }
        }
        let consumer = stream.as_mut().expect("opened above");
        // Every free slot becomes a credit.
        let mut more: u32 = std::mem::take(&mut ungranted);
        while granted.len() < room {
            match slots.clone().try_acquire_owned() {
                Ok(p) => {
                    granted.push(p);
                    more += 1;
                }
                Err(_) => break,
            }
        }
        let sent = if more > 0 {
            consumer.grant(more).await
        } else {
            Ok(())
        };
        let message = match sent {
            Err(e) => Err(e),
            Ok(()) => tokio::select! {
                () = stop.cancelled() => return Ok(()),
                permit = slots.clone().acquire_owned(), if granted.len() < room => {
                    // A slot came free: granted at the top of the loop.
                    if let Ok(p) = permit {
                        granted.push(p);
                        ungranted += 1;
                    }
                    continue;
                }
                message = consumer.next() => message,
            },
        };
        match message {
            Ok(Some(response)) => {
                let Some(pb::consume_response::Event::Deliveries(fetched)) = response.event else {
                    // The worker sends no calls on the stream; nothing
                    // else is answered to it.
                    continue;
                };
                failures = 0;
                for delivery in fetched.deliveries {
                    start(shared, stop, abandon, jobs, delivery, granted.pop()).await;
                }
            }
            end => {
                let endpoint = consumer.endpoint().to_string();
                *stream = None;
                granted.clear();
                ungranted = 0;
                let e = match end {
                    Err(e) => e,
                    // The node ended the stream without an error: it is
                    // shutting down. Open another, elsewhere.
                    _ => Error::Transport {
                        code: Code::Unavailable,
                        message: "the node ended the consume stream".into(),
                        endpoint: endpoint.clone(),
                    },
                };
                if fetch_error_is_final(&e) {
                    tracing::error!(queue = %config.queue, error = %e, "consume stream cannot go on; stopping");
                    return Err(e);
                }
                shared.client.stream_failed(&endpoint, &e);
                failures = failures.saturating_add(1);
                let pause = fetch_backoff(config, failures);
                tracing::warn!(queue = %config.queue, error = %e, ?pause, "consume stream broke; opening another");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = stop.cancelled() => return Ok(()),
                }
            }
        }
    }
}

/// Closes a consume stream cleanly (the node releases what it pushed that
/// is still leased under the pushed fence).
async fn close_stream(queue: &str, stream: Consumer) {
    if let Err(e) = stream.close().await {
        tracing::debug!(%queue, error = %e, "consume stream did not close cleanly; its leases will expire");
    }
}

async fn fetch_loop<H, Fut>(
    shared: &Arc<Shared<H>>,
    stop: &CancellationToken,
    abandon: &CancellationToken,
    jobs: &mut JoinSet<()>,
) -> Result<(), Error>
where
    H: Fn(Job, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let config = &shared.config;
    let slots = Arc::new(Semaphore::new(config.concurrency));
    let mut failures: u32 = 0;
    loop {
        while jobs.try_join_next().is_some() {}
        let state = shared.breaker_state();
        let probing = match state {
            BreakerState::Open { until } => {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => continue,
                    () = stop.cancelled() => return Ok(()),
                }
            }
            // One job at a time, once the released ones have ended.
            BreakerState::HalfOpen if !jobs.is_empty() => {
                tokio::select! {
                    _ = jobs.join_next() => continue,
                    () = stop.cancelled() => return Ok(()),
                }
            }
            BreakerState::HalfOpen => true,
            BreakerState::Closed => false,
        };
        // Wait for one free slot, then take every other free one.
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return Ok(()),
            },
            () = stop.cancelled() => return Ok(()),
        };
        let mut permits = vec![first];
        while permits.len() < config.concurrency && !probing {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let max = u32::try_from(permits.len()).unwrap_or(u32::MAX);
        let asked = Instant::now();
        let fetched = shared
            .client
            .fetch(
                &config.queue,
                &config.consumer,
                max,
                config.lease,
                config.wait,
            )
            .await;
        let deliveries = match fetched {
            Ok(d) if d.is_empty() && asked.elapsed() < EMPTY_FETCH_FAST => {
                // Nothing, at once: the node did not wait (`wait` zero or
                // clamped). Pause rather than spin.
                drop(permits);
                tokio::select! {
                    () = tokio::time::sleep(config.fetch_backoff_min) => continue,
                    () = stop.cancelled() => return Ok(()),
                }
            }
            Ok(d) => {
                failures = 0;
                d
            }
            Err(e) if fetch_error_is_final(&e) => {
                tracing::error!(queue = %config.queue, error = %e, "fetch cannot succeed; stopping");
                return Err(e);
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let pause = fetch_backoff(config, failures);
                tracing::warn!(queue = %config.queue, error = %e, ?pause, "fetch failed");
                drop(permits);
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = stop.cancelled() => return Ok(()),
                }
            }
        };
        for delivery in deliveries {
            start(shared, stop, abandon, jobs, delivery, permits.pop()).await;
        }
    }
}

/// Starts a delivered job's task holding `permit`, its slot; or, with no
/// permit (more jobs than asked for), while stopping, or while the breaker
/// is open, releases the job at once.
async fn start<H, Fut>(
    shared: &Arc<Shared<H>>,
    stop: &CancellationToken,
    abandon: &CancellationToken,
    jobs: &mut JoinSet<()>,
    delivery: pb::Delivery,
    permit: Option<OwnedSemaphorePermit>,
) where
    H: Fn(Job, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    Counters::add(&shared.counters.fetched);
    let job = Job::new(&shared.config.queue, delivery);
    // A fetch that long-polled while the breaker opened: give its jobs
    // back at once.
    let open = matches!(shared.breaker_state(), BreakerState::Open { .. });
    match permit {
        Some(permit) if !open && !stop.is_cancelled() => {
            let shared = shared.clone();
            let generation = shared.generation();
            let abandon = abandon.clone();
            // The handler runs in a `job` span that continues the
            // producer's trace (its `traceparent` header).
            let span = tracing::info_span!(
                "job",
                queue = %job.queue,
                offset = job.offset,
                id = %job.id,
                group = %job.group,
                attempt = job.attempt,
            );
            crate::trace::continue_trace(&span, job.traceparent());
            jobs.spawn(
                async move {
                    run_job(&shared, job, generation, &abandon).await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
        _ => release(shared, &job).await,
    }
}

fn fetch_error_is_final(error: &Error) -> bool {
    matches!(
        error,
        Error::Status {
            code: Code::InvalidArgument
                | Code::NotFound
                | Code::Unauthenticated
                | Code::PermissionDenied
                | Code::Unimplemented,
            ..
        } | Error::Config { .. }
    )
}

/// The pause after the `failures`-th failed fetch in a row.
fn fetch_backoff(config: &WorkerConfig, failures: u32) -> Duration {
    config.fetch_retry().backoff_random(failures)
}

/// Waits for running jobs up to the grace, then makes the rest release
/// their jobs, and waits for that too (bounded).
async fn shut_down<H>(
    shared: &Arc<Shared<H>>,
    abandon: &CancellationToken,
    jobs: &mut JoinSet<()>,
) {
    let grace = shared.config.shutdown_grace;
    let all_done = async { while jobs.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all_done).await.is_ok() {
        return;
    }
    tracing::info!(
        running = jobs.len(),
        ?grace,
        "shutdown grace over; releasing the rest"
    );
    abandon.cancel();
    // Each release is bounded by release_timeout; allow one more for the
    // tasks to end.
    let bound = shared.config.release_timeout.saturating_mul(2);
    let all_released = async { while jobs.join_next().await.is_some() {} };
    if tokio::time::timeout(bound, all_released).await.is_err() {
        tracing::warn!(
            left = jobs.len(),
            "jobs did not end after release; aborting them"
        );
        jobs.abort_all();
        while jobs.join_next().await.is_some() {}
    }
}

/// Why a lease ended while its handler ran.
#[derive(Debug)]
enum LeaseEnd {
    /// A node said the fence is stale (or the job is gone).
    Lost(Error),
    /// No extend succeeded for a whole lease; the lease has ended.
    Unconfirmed,
}

/// Runs one job until its handler answers, its lease is lost, or
/// `release_now` (the breaker opened, or shutdown's grace ran out) asks for
/// it back.
async fn run_job<H, Fut>(
    shared: &Shared<H>,
    job: Job,
    release_now: CancellationToken,
    abandon: &CancellationToken,
) where
    H: Fn(Job, CancellationToken) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let (offset, fence, deadline_ms) = (job.offset, job.fence, job.lease_deadline_ms);
    let token = CancellationToken::new();
    let span_job = job.clone();
    let handler = (shared.handler)(job, token.clone());
    tokio::pin!(handler);
    let keep = keep_lease(shared, offset, fence, deadline_ms);
    tokio::pin!(keep);
    // Order matters: a lease known to be lost wins over a finished
    // handler, so a stale fence is never acked; a finished handler wins
    // over shutdown, so finished work is acked rather than released.
    let outcome = tokio::select! {
        biased;
        end = &mut keep => {
            token.cancel();
            Counters::add(&shared.counters.lease_lost);
            let reason = match end {
                LeaseEnd::Lost(e) => e.to_string(),
                LeaseEnd::Unconfirmed => "no extend succeeded within a lease".to_string(),
            };
            tracing::warn!(queue = %shared.config.queue, offset, fence, %reason, "lease lost; job dropped without ack");
            return;
        }
        outcome = &mut handler => outcome,
        () = release_now.cancelled() => {
            token.cancel();
            release(shared, &span_job).await;
            return;
        }
    };
    shared.judge(&outcome, abandon);
    finish(shared, offset, fence, outcome).await;
}

/// Extends the lease every `lease / extend_divisor` for as long as it is
/// polled; returns only when the lease is gone.
async fn keep_lease<H>(shared: &Shared<H>, offset: u64, fence: u64, deadline_ms: u64) -> LeaseEnd {
    let config = &shared.config;
    let mut lease = effective_lease(config.lease, deadline_ms);
    // Measured from before the fetch answered, hence conservative.
    let mut held_until = Instant::now() + lease;
    loop {
        let interval = (lease / config.extend_divisor).max(EXTEND_INTERVAL_MIN);
        tokio::time::sleep(interval).await;
        let sent = Instant::now();
        let budget = held_until.saturating_duration_since(sent);
        if budget.is_zero() {
            return LeaseEnd::Unconfirmed;
        }
        match shared
            .client
            .extend_within(&config.queue, offset, fence, config.lease, budget)
            .await
        {
            Ok(deadline_ms) => {
                lease = effective_lease(config.lease, deadline_ms);
                held_until = sent + lease;
            }
            Err(e) if e.is_lease_lost() || e.is_not_found() => return LeaseEnd::Lost(e),
            Err(e) => {
                tracing::warn!(queue = %config.queue, offset, fence, error = %e, "extend failed; will try again");
            }
        }
    }
}

/// The lease to pace extends by: the one asked for, or less when the node
/// granted less (clamped to the queue's `lease_ms_max`). The node's deadline
/// is in cluster time, the leader's wall clock in ms; a local clock that
/// runs ahead only makes the worker extend sooner.
fn effective_lease(asked: Duration, deadline_ms: u64) -> Duration {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    match deadline_ms.checked_sub(now_ms) {
        Some(left) if left > 0 => asked.min(Duration::from_millis(left)),
        _ => asked,
    }
}

async fn finish<H>(shared: &Shared<H>, offset: u64, fence: u64, outcome: Outcome) {
    let queue = &shared.config.queue;
    let counters = &shared.counters;
    let (result, counter) = match &outcome {
        Outcome::Ack => (shared.acks.submit(offset, fence).await, &counters.acked),
        Outcome::Retry => (
            shared
                .client
                .nack(queue, offset, fence, None)
                .await
                .map(|_| ()),
            &counters.retried,
        ),
        Outcome::Poison(reason) => (
            shared
                .client
                .dead_letter(queue, offset, fence, reason)
                .await,
            &counters.poisoned,
        ),
        Outcome::AckThen(then) => (
            shared
                .client
                .ack_then(queue, vec![pb::AckItem { offset, fence }], then.clone())
                .await
                .map(|_| ()),
            &counters.acked,
        ),
    };
    match result {
        Ok(()) => Counters::add(counter),
        Err(e) if e.is_lease_lost() => {
            Counters::add(&counters.lease_lost);
            tracing::warn!(%queue, offset, fence, ?outcome, error = %e, "lease lost before the job was finished");
        }
        Err(e) => {
            Counters::add(&counters.failed);
            tracing::error!(%queue, offset, fence, ?outcome, error = %e, "could not finish the job; it will run again");
        }
    }
}

async fn release<H>(shared: &Shared<H>, job: &Job) {
    let config = &shared.config;
    let call = shared.client.release(&config.queue, job.offset, job.fence);
    match tokio::time::timeout(config.release_timeout, call).await {
        Ok(Ok(())) => Counters::add(&shared.counters.released),
        Ok(Err(e)) => {
            Counters::add(&shared.counters.failed);
            tracing::warn!(queue = %config.queue, offset = job.offset, error = %e, "release failed; the lease will expire");
        }
        Err(_) => {
            Counters::add(&shared.counters.failed);
            tracing::warn!(queue = %config.queue, offset = job.offset, "release timed out; the lease will expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Change = Box<dyn Fn(&mut WorkerConfig)>;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        let good = WorkerConfig::new("q");
        good.validate().expect("defaults are valid");
        assert!(good.consumer.starts_with("worker-"));
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.queue.clear()), "worker.queue"),
            (Box::new(|c| c.concurrency = 0), "worker.concurrency"),
            (
                Box::new(|c| c.concurrency = CONCURRENCY_MAX + 1),
                "worker.concurrency",
            ),
            (Box::new(|c| c.lease = Duration::ZERO), "worker.lease"),
            (Box::new(|c| c.extend_divisor = 1), "worker.extend_divisor"),
            (
                Box::new(|c| c.fetch_backoff_max = Duration::ZERO),
                "worker.fetch_backoff_max",
            ),
            (Box::new(|c| c.acks.items_max = 0), "worker.acks.items_max"),
        ];
        for (change, key) in cases {
            let mut c = good.clone();
            change(&mut c);
            match c.validate() {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_lease_to_pace_by_is_the_shorter_of_asked_and_granted() {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let asked = Duration::from_secs(30);
        let granted = effective_lease(asked, now_ms + 10_000);
        assert!(granted <= Duration::from_secs(10) && granted > Duration::from_secs(9));
        assert_eq!(effective_lease(asked, now_ms + 3_600_000), asked);
        // A deadline in the past (a skewed clock) is not trusted.
        assert_eq!(effective_lease(asked, 1), asked);
    }

    #[test]
    fn fetch_backoff_grows_and_stays_bounded() {
        let c = WorkerConfig::new("q");
        for failures in 1..40 {
            let d = fetch_backoff(&c, failures);
            assert!(d <= c.fetch_backoff_max, "{failures}: {d:?}");
            assert!(d >= c.fetch_backoff_min / 2, "{failures}: {d:?}");
        }
    }

    #[test]
    fn fetch_pauses_follow_the_shared_policy_with_the_worker_bounds() {
        let p = WorkerConfig::new("q").fetch_retry();
        assert_eq!(p.backoff_min, FETCH_BACKOFF_MIN_DEFAULT);
        assert_eq!(p.backoff_max, FETCH_BACKOFF_MAX_DEFAULT);
        let ceilings: Vec<u64> = (1..=8)
            .map(|n| p.backoff_ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        // The worker retries fetches for as long as it runs.
        assert_eq!(p.attempts_max, u32::MAX);
        assert_eq!(p.retry_elapsed_max, Duration::MAX);
    }

    #[test]
    fn only_errors_no_retry_can_cure_stop_the_worker() {
        let status = |code| Error::Status {
            code,
            message: String::new(),
            endpoint: String::new(),
            leader: None,
        };
        assert!(fetch_error_is_final(&status(Code::NotFound)));
        assert!(fetch_error_is_final(&status(Code::InvalidArgument)));
        assert!(!fetch_error_is_final(&status(Code::Unavailable)));
        assert!(!fetch_error_is_final(&status(Code::ResourceExhausted)));
        assert!(!fetch_error_is_final(&Error::Transport {
            code: Code::Unavailable,
            message: String::new(),
            endpoint: String::new(),
        }));
    }
}
