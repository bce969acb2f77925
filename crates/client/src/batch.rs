//! Batching helpers: many callers, one RPC per batch, each caller gets its
//! own result.
//!
//! A node puts one client request into one Raft entry (or shares one with
//! other requests), so many small enqueues or acks cost far more than a few
//! large ones. [`EnqueueBatcher`] and [`AckBatcher`] gather items from any
//! number of tasks for up to `linger` or `items_max` items, send them in one
//! call, and hand each caller its own result. Everything is bounded: the
//! buffer of waiting items (`buffer_max`; a full buffer makes `submit` wait,
//! which is the backpressure) and the batches in flight (`in_flight_max`).
//!
//! An enqueue batch is accepted whole or rejected whole (SPEC 2.1): if one
//! job is refused (say, a priority above 9), every caller of that batch gets
//! the same error. Acks are independent; each caller gets its own item's
//! result.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lockstep_proto as pb;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;

use crate::client::{Client, Enqueued};
use crate::error::Error;
use crate::ids::new_job_id;

/// Default for [`BatchConfig::items_max`].
pub const BATCH_ITEMS_MAX_DEFAULT: usize = 256;
/// Default for [`BatchConfig::linger`].
pub const BATCH_LINGER_DEFAULT: Duration = Duration::from_millis(2);
/// Default for [`BatchConfig::buffer_max`].
pub const BATCH_BUFFER_MAX_DEFAULT: usize = 4_096;
/// Default for [`BatchConfig::in_flight_max`].
pub const BATCH_IN_FLIGHT_MAX_DEFAULT: usize = 4;
/// Largest `items_max` accepted: far above any queue's `max_batch`.
pub const BATCH_ITEMS_LIMIT: usize = 100_000;

/// Bounds of a batcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Items per call at most. Keep it at or below the queue's `max_batch`
    /// for enqueues. Default 256.
    pub items_max: usize,
    /// Longest the first item of a batch waits for company. Default 2 ms.
    pub linger: Duration,
    /// Items waiting to join a batch at most; `submit` waits while the
    /// buffer is full. Default 4,096.
    pub buffer_max: usize,
    /// Calls in flight at once at most. Default 4.
    pub in_flight_max: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            items_max: BATCH_ITEMS_MAX_DEFAULT,
            linger: BATCH_LINGER_DEFAULT,
            buffer_max: BATCH_BUFFER_MAX_DEFAULT,
            in_flight_max: BATCH_IN_FLIGHT_MAX_DEFAULT,
        }
    }
}

impl BatchConfig {
    /// Checks every bound; the error names the key, under `prefix`.
    pub(crate) fn validate(&self, prefix: &str) -> Result<(), Error> {
        if self.items_max == 0 || self.items_max > BATCH_ITEMS_LIMIT {
            return Err(Error::config(
                &format!("{prefix}items_max"),
                format!("must be in 1..={BATCH_ITEMS_LIMIT}"),
            ));
        }
        if self.buffer_max == 0 {
            return Err(Error::config(
                &format!("{prefix}buffer_max"),
                "must be at least 1",
            ));
        }
        if self.in_flight_max == 0 {
            return Err(Error::config(
                &format!("{prefix}in_flight_max"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// One item waiting for its batch, and where its result goes.
#[derive(Debug)]
struct Pending<T, R> {
    item: T,
    reply: oneshot::Sender<Result<R, Error>>,
}

/// Starts the task that gathers items and calls `flush` once per batch.
/// The task ends when every sender is dropped, after the last batch.
fn start<T, R, F, Fut>(config: &BatchConfig, flush: F) -> Result<mpsc::Sender<Pending<T, R>>, Error>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<R>, Error>> + Send + 'static,
{
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        Error::config(
            "runtime",
            "a batcher must be started within a Tokio runtime",
        )
    })?;
    let (tx, rx) = mpsc::channel(config.buffer_max);
    runtime.spawn(run(rx, config.clone(), flush));
    Ok(tx)
}

async fn run<T, R, F, Fut>(mut rx: mpsc::Receiver<Pending<T, R>>, config: BatchConfig, flush: F)
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Result<Vec<R>, Error>> + Send + 'static,
{
    let in_flight = Arc::new(Semaphore::new(config.in_flight_max));
    let mut calls = JoinSet::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger_end = tokio::time::Instant::now() + config.linger;
        while batch.len() < config.items_max {
            match tokio::time::timeout_at(linger_end, rx.recv()).await {
                Ok(Some(pending)) => batch.push(pending),
                Ok(None) | Err(_) => break,
            }
        }
        // Wait for a free slot before sending; meanwhile new items wait in
        // the bounded buffer.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (items, replies): (Vec<T>, Vec<_>) =
            batch.into_iter().map(|p| (p.item, p.reply)).unzip();
        let call = flush(items);
        calls.spawn(async move {
            let result = call.await;
            deliver(result, replies);
            drop(permit);
        });
        // Reap finished calls so the set stays at most `in_flight_max`.
        while calls.try_join_next().is_some() {}
    }
    // Every handle is gone: let the last calls answer their callers. Each
    // is bounded by the client's retry policy.
    while calls.join_next().await.is_some() {}
}

/// Hands each caller its own result, or the batch's error.
fn deliver<R>(result: Result<Vec<R>, Error>, replies: Vec<oneshot::Sender<Result<R, Error>>>) {
    match result {
        Ok(results) if results.len() == replies.len() => {
            for (reply, r) in replies.into_iter().zip(results) {
                // A caller that stopped waiting is no error.
                let _ = reply.send(Ok(r));
            }
        }
        Ok(results) => {
            let error = Error::Protocol {
                call: "batch",
                problem: format!("{} results for {} items", results.len(), replies.len()),
            };
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

async fn submit<T, R>(tx: &mpsc::Sender<Pending<T, R>>, item: T, what: &str) -> Result<R, Error> {
    let (reply, answer) = oneshot::channel();
    tx.send(Pending { item, reply })
        .await
        .map_err(|_| Error::Closed(format!("the {what} batcher has stopped")))?;
    answer
        .await
        .map_err(|_| Error::Closed(format!("the {what} batcher dropped the item")))?
}

/// Gathers enqueues of one queue from many tasks into few calls.
///
/// Cheap to clone; the gathering task stops when the last clone is dropped,
/// after sending what it holds.
#[derive(Clone, Debug)]
pub struct EnqueueBatcher {
    tx: mpsc::Sender<Pending<pb::Job, Enqueued>>,
}

impl EnqueueBatcher {
    /// Starts a batcher for `queue` over `client`. Must be called within a
    /// Tokio runtime.
    pub fn new(client: Client, queue: &str, config: BatchConfig) -> Result<Self, Error> {
        config.validate("")?;
        let queue = Arc::<str>::from(queue);
        let tx = start(&config, move |jobs: Vec<pb::Job>| {
            let client = client.clone();
            let queue = queue.clone();
            async move { client.enqueue(&queue, jobs).await }
        })?;
        Ok(EnqueueBatcher { tx })
    }

    /// Enqueues one job within the next batch and returns its own result.
    /// A job whose id is left out gets one here, before it joins a batch, so the
    /// batch's retries cannot duplicate it (see [`Client::enqueue`]).
    pub async fn submit(&self, mut job: pb::Job) -> Result<Enqueued, Error> {
        if job.id.is_none() {
            job.id = Some(new_job_id());
        }
        submit(&self.tx, job, "enqueue").await
    }
}

/// Gathers acks of one queue from many tasks into few calls.
///
/// Cheap to clone; the gathering task stops when the last clone is dropped,
/// after sending what it holds.
#[derive(Clone, Debug)]
pub struct AckBatcher {
    tx: mpsc::Sender<Pending<pb::AckItem, Result<(), Error>>>,
}

impl AckBatcher {
    /// Starts a batcher for `queue` over `client`. Must be called within a
    /// Tokio runtime.
    pub fn new(client: Client, queue: &str, config: BatchConfig) -> Result<Self, Error> {
        config.validate("")?;
        let queue = Arc::<str>::from(queue);
        let tx = start(&config, move |items: Vec<pb::AckItem>| {
            let client = client.clone();
            let queue = queue.clone();
            async move { client.ack(&queue, items).await }
        })?;
        Ok(AckBatcher { tx })
    }

    /// Acks one job within the next batch; the result is this job's own
    /// (`Err` with [`Error::is_lease_lost`] when the fence is stale).
    pub async fn submit(&self, offset: u64, fence: u64) -> Result<(), Error> {
        submit(&self.tx, pb::AckItem { offset, fence }, "ack").await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bound_is_checked_by_name() {
        BatchConfig::default()
            .validate("")
            .expect("defaults are valid");
        let cases: [(BatchConfig, &str); 4] = [
            (
                BatchConfig {
                    items_max: 0,
                    ..Default::default()
                },
                "ack.items_max",
            ),
            (
                BatchConfig {
                    items_max: BATCH_ITEMS_LIMIT + 1,
                    ..Default::default()
                },
                "ack.items_max",
            ),
            (
                BatchConfig {
                    buffer_max: 0,
                    ..Default::default()
                },
                "ack.buffer_max",
            ),
            (
                BatchConfig {
                    in_flight_max: 0,
                    ..Default::default()
                },
                "ack.in_flight_max",
            ),
        ];
        for (config, key) in cases {
            match config.validate("ack.") {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn each_caller_gets_its_own_result_and_batches_are_bounded() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let calls = Arc::new(std::sync::Mutex::new(Vec::<Vec<u32>>::new()));
            let seen = calls.clone();
            let config = BatchConfig {
                items_max: 4,
                linger: Duration::from_millis(50),
                buffer_max: 16,
                in_flight_max: 1,
            };
            let tx = start(&config, move |items: Vec<u32>| {
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(items.clone());
                async move { Ok(items.into_iter().map(|i| i * 10).collect()) }
            })
            .expect("runtime");
            let mut tasks = JoinSet::new();
            for i in 0..10u32 {
                let tx = tx.clone();
                tasks.spawn(async move { (i, submit(&tx, i, "test").await) });
            }
            while let Some(joined) = tasks.join_next().await {
                let (i, result) = joined.expect("task");
                assert_eq!(result, Ok(i * 10));
            }
            let calls = calls.lock().unwrap_or_else(|e| e.into_inner()).clone();
            assert!(calls.iter().all(|c| c.len() <= 4), "{calls:?}");
            assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 10);
            assert!(calls.len() <= 5, "items were gathered: {calls:?}");
        })
        .await
        .expect("test timed out");
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_caller_of_that_batch() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let config = BatchConfig {
                linger: Duration::from_millis(50),
                ..Default::default()
            };
            let tx = start(&config, |_items: Vec<u32>| async {
                Err::<Vec<u32>, _>(Error::config("x", "refused"))
            })
            .expect("runtime");
            let (a, b) = tokio::join!(submit(&tx, 1, "t"), submit(&tx, 2, "t"));
            assert_eq!(a, Err(Error::config("x", "refused")));
            assert_eq!(b, Err(Error::config("x", "refused")));
        })
        .await
        .expect("test timed out");
    }
}
