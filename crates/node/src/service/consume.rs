//! `lockstep.v1.Queue/Consume`: the server-push consume stream with credits
//! (SPEC 2.3). The contract is written in `queue.proto`; this is how one
//! node keeps it.
//!
//! One task per stream owns everything about it: the credits granted, the
//! deliveries it pushed and has not seen finished, the fetch in flight and
//! the calls in flight. Deliveries come from ordinary `Fetch` commands, so
//! leases and fences are exactly those of Fetch. Each fetch runs in a task
//! of its own and is never dropped half-way: a fetch the stream abandoned
//! could have granted leases nobody would hear of, and those would only
//! expire. For the same reason every fetch of a stream runs under a
//! session the node opens for the stream: a fetch whose answer was lost to
//! a leader change is retried under the same seq and answers the same
//! leases, never a second set.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use lockstep_core::{Command, Reply};
use lockstep_types::forward::{Read, ReadReply};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{wrong_reply, Services};
use crate::auth::Permission;
use crate::pb;
use pb::consume_request::Call;
use pb::consume_response::Event;
use pb::queue_server::Queue as _;

/// Credits one stream may hold granted and unused. A grant past it ends
/// the stream with RESOURCE_EXHAUSTED naming it: a consumer asking for
/// more jobs in flight than this is a bug or an attack, and the bound keeps
/// one stream's fetches within a few queue batches.
pub const CONSUME_CREDITS_MAX: u32 = 4_096;
/// Messages queued toward one consumer before the stream's task waits for
/// it to read them.
const CONSUME_BUFFER: usize = 16;
/// Longest the node waits for a consumer to take a message from a full
/// buffer; past it the stream ends as broken (its leases expire).
const CONSUME_SEND_WAIT: Duration = Duration::from_secs(60);
/// Longest the node waits for the message that opens a stream.
const CONSUME_OPEN_WAIT: Duration = Duration::from_secs(10);
/// Calls riding one stream served at once; past it the stream reads no
/// further message until one finishes.
const CONSUME_CALLS_IN_FLIGHT_MAX: usize = 64;
/// Delivered jobs one stream remembers, to release them on a clean close.
/// Past it the oldest is forgotten: if its lease is still held then, it
/// expires instead of being released. Nothing is lost either way.
const CONSUME_TRACKED_MAX: usize = 65_536;
/// Longest a clean close spends releasing; what is left then expires.
const CONSUME_RELEASE_WAIT: Duration = Duration::from_secs(10);
/// First pause after a stream's fetch failed in a way a retry may cure
/// (no leader yet, or an answer lost to a leader change); it doubles up
/// to `FETCH_RETRY_PAUSE_MAX`. A fetch that keeps failing for
/// `limits.fetch_wait_ms_max` ends the stream with its error.
const FETCH_RETRY_PAUSE_MIN: Duration = Duration::from_millis(50);
const FETCH_RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// The stream a `Consume` call answers with.
pub type ConsumeStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ConsumeResponse, Status>> + Send>>;

/// What every fetch of one stream asks for.
#[derive(Clone, Debug)]
struct Opened {
    queue: String,
    /// Empty: the default subscription.
    subscription: String,
    consumer: String,
    lease_ms: u64,
    session: u64,
    /// The queue's `max_batch` when the stream opened; each fetch reads
    /// the current one from the local state and falls back to this.
    max_batch: u32,
}

/// Opens a stream: reads and checks the first message, opens the stream's
/// session, and starts the task that serves it. A bad first message is
/// the call's status, so the consumer learns it before any push.
pub(super) async fn open(
    services: &Services,
    request: Request<Streaming<pb::ConsumeRequest>>,
) -> Result<Response<ConsumeStream>, Status> {
    let (metadata, _, mut inbound) = request.into_parts();
    let first = match tokio::time::timeout(CONSUME_OPEN_WAIT, inbound.message()).await {
        Ok(Ok(Some(first))) => first,
        Ok(Ok(None)) => {
            return Err(Status::invalid_argument(
                "the consume stream ended before its first message (`open`)",
            ))
        }
        Ok(Err(status)) => return Err(status),
        Err(_) => {
            return Err(Status::deadline_exceeded(format!(
                "no first message (`open`) within {CONSUME_OPEN_WAIT:?}"
            )))
        }
    };
    let Some(Call::Open(open)) = first.call else {
        return Err(Status::invalid_argument(
            "the first message of a consume stream must carry `open`",
        ));
    };
    services
        .auth
        .authorize(&metadata, Permission::Consume, &open.queue)?;
    if first.credits > CONSUME_CREDITS_MAX {
        return Err(credits_exceeded(first.credits));
    }
    // A linearizable read: the queue exists (NOT_FOUND names it), and its
    // batch bound is known, whichever node this is.
    let max_batch = match services
        .read(
            Read::Queue {
                name: open.queue.clone(),
            },
            None,
        )
        .await?
    {
        ReadReply::Queue(q) => q.config.max_batch,
        _ => return Err(Status::internal("unexpected read reply")),
    };
    let session = match services.write(Command::OpenSession).await?.0 {
        Reply::SessionOpened { session } => session,
        other => return Err(wrong_reply(other)),
    };
    let (tx, rx) = mpsc::channel(CONSUME_BUFFER);
    let stream = Stream {
        services: services.clone(),
        metadata,
        opened: Opened {
            queue: open.queue,
            subscription: open.subscription,
            consumer: open.consumer,
            lease_ms: open.lease_ms,
            session,
            max_batch,
        },
        credits: first.credits,
        seq: 1,
        tracked: BTreeMap::new(),
        tx,
    };
    tracing::debug!(queue = %stream.opened.queue, consumer = %stream.opened.consumer, session, "consume stream opened");
    tokio::spawn(stream.run(inbound));
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

fn credits_exceeded(credits: u32) -> Status {
    Status::resource_exhausted(format!(
        "credits granted and unused would be {credits}, over CONSUME_CREDITS_MAX \
         ({CONSUME_CREDITS_MAX}): grant one credit per job finished"
    ))
}

/// How a stream ended.
#[derive(Debug)]
enum End {
    /// The consumer half-closed its side: release what it holds.
    Clean,
    /// The consumer is gone or broke the protocol; leases expire.
    Broken(String),
    /// The node ends it with this status (sent to the consumer).
    Failed(Status),
}

/// One open stream, owned by its task.
struct Stream {
    services: Services,
    metadata: MetadataMap,
    opened: Opened,
    /// Granted and not yet used.
    credits: u32,
    /// The seq of the stream's next fetch in its session.
    seq: u64,
    /// Pushed deliveries not seen finished on the stream: offset to fence.
    tracked: BTreeMap<u64, u64>,
    tx: mpsc::Sender<Result<pb::ConsumeResponse, Status>>,
}

/// What a fetch task hands back: its deliveries (with payloads), or why
/// the stream must end.
type Fetched = Result<Vec<pb::Delivery>, Status>;

impl Stream {
    async fn run(mut self, mut inbound: Streaming<pb::ConsumeRequest>) {
        let mut calls: JoinSet<(pb::ConsumeResponse, Vec<u64>)> = JoinSet::new();
        let mut fetching: Option<JoinHandle<Fetched>> = None;
        // Tells a fetch task waiting for work to give up (never one that
        // is writing).
        let (stop_tx, stop_rx) = watch::channel(false);
        let end = loop {
            if fetching.is_none() && self.credits > 0 {
                fetching = Some(tokio::spawn(fetch(
                    self.services.clone(),
                    self.opened.clone(),
                    self.seq,
                    self.credits,
                    stop_rx.clone(),
                )));
            }
            tokio::select! {
                () = self.tx.closed() => break End::Broken("the consumer went away".into()),
                message = inbound.message(), if calls.len() < CONSUME_CALLS_IN_FLIGHT_MAX => {
                    match message {
                        Ok(Some(m)) => {
                            let credits = self.credits.saturating_add(m.credits);
                            if credits > CONSUME_CREDITS_MAX {
                                break End::Failed(credits_exceeded(credits));
                            }
                            self.credits = credits;
                            if let Some(call) = m.call {
                                calls.spawn(serve(
                                    self.services.clone(),
                                    self.metadata.clone(),
                                    (self.opened.queue.clone(), self.opened.subscription.clone()),
                                    m.tag,
                                    call,
                                ));
                            }
                        }
                        Ok(None) => break End::Clean,
                        Err(status) => break End::Broken(status.to_string()),
                    }
                }
                Some(done) = calls.join_next(), if !calls.is_empty() => {
                    let Ok((response, finished)) = done else { continue };
                    for offset in finished {
                        self.tracked.remove(&offset);
                    }
                    if let Err(why) = self.send(Ok(response)).await {
                        break End::Broken(why);
                    }
                }
                done = async { fetching.as_mut().expect("guarded").await }, if fetching.is_some() => {
                    fetching = None;
                    match done {
                        Ok(Ok(deliveries)) => {
                            if let Err(end) = self.push(deliveries).await {
                                break end;
                            }
                        }
                        Ok(Err(status)) => break End::Failed(status),
                        Err(e) => break End::Failed(Status::internal(format!("the stream's fetch failed: {e}"))),
                    }
                }
            }
        };
        // Whatever a fetch still in flight grants was never pushed: give
        // it back, however the stream ended.
        let _ = stop_tx.send(true);
        let mut unsent = Vec::new();
        if let Some(handle) = fetching {
            if let Ok(Ok(deliveries)) = handle.await {
                unsent = deliveries;
            }
        }
        let queue = self.opened.queue.clone();
        match &end {
            End::Clean => {
                // Let the calls already sent finish, so an ack sent just
                // before the close is not undone by a release.
                while let Some(done) = calls.join_next().await {
                    if let Ok((response, finished)) = done {
                        for offset in finished {
                            self.tracked.remove(&offset);
                        }
                        let _ = self.send(Ok(response)).await;
                    }
                }
                let held: Vec<(u64, u64)> = self.tracked.iter().map(|(o, f)| (*o, *f)).collect();
                let released = self
                    .release(
                        held.into_iter()
                            .chain(unsent.iter().map(|d| (d.offset, d.fence))),
                    )
                    .await;
                tracing::debug!(%queue, released, "consume stream closed cleanly");
            }
            End::Broken(why) => {
                let released = self
                    .release(unsent.iter().map(|d| (d.offset, d.fence)))
                    .await;
                tracing::debug!(%queue, why, held = self.tracked.len(), released, "consume stream broke; its leases will expire");
            }
            End::Failed(status) => {
                let released = self
                    .release(unsent.iter().map(|d| (d.offset, d.fence)))
                    .await;
                tracing::info!(%queue, %status, held = self.tracked.len(), released, "consume stream ended by the node; its leases will expire");
                let _ = self.send(Err(status.clone())).await;
            }
        }
    }

    /// Pushes deliveries, each taking a credit, and remembers them.
    async fn push(&mut self, deliveries: Vec<pb::Delivery>) -> Result<(), End> {
        if deliveries.is_empty() {
            return Ok(());
        }
        // The fetch that returned them ran under `seq`; the next one is a
        // new request of the session.
        self.seq += 1;
        let n = u32::try_from(deliveries.len()).unwrap_or(u32::MAX);
        self.credits = self.credits.saturating_sub(n);
        for d in &deliveries {
            if self.tracked.len() >= CONSUME_TRACKED_MAX {
                self.tracked.pop_first();
            }
            self.tracked.insert(d.offset, d.fence);
        }
        self.send(Ok(pb::ConsumeResponse {
            tag: 0,
            event: Some(Event::Deliveries(pb::FetchResponse { deliveries })),
        }))
        .await
        .map_err(End::Broken)
    }

    async fn send(&self, message: Result<pb::ConsumeResponse, Status>) -> Result<(), String> {
        match self.tx.send_timeout(message, CONSUME_SEND_WAIT).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(format!(
                "the consumer read nothing for {CONSUME_SEND_WAIT:?} (CONSUME_SEND_WAIT)"
            )),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err("the consumer went away".into()),
        }
    }

    /// Releases each job still leased under the fence it was delivered
    /// with, by this node's applied state (one finished some other way,
    /// such as a unary ack, costs no write). Returns how many it released.
    async fn release(&self, jobs: impl Iterator<Item = (u64, u64)>) -> usize {
        let deadline = Instant::now() + CONSUME_RELEASE_WAIT;
        let queue = &self.opened.queue;
        let jobs: Vec<(u64, u64)> = jobs.collect();
        // A fence is the log index of the entry that granted the lease. On
        // a follower, the answer of a forwarded fetch can arrive before the
        // follower applied that entry, and its state would not show the
        // lease yet: wait until it has (bounded), so "not held" means
        // finished, never "not seen yet".
        if let Some(fence_max) = jobs.iter().map(|(_, f)| *f).max() {
            let mut applied = self.services.node.applied_watch();
            loop {
                let index = applied
                    .borrow()
                    .last_applied
                    .map_or(0, |log_id| log_id.index);
                if index >= fence_max {
                    break;
                }
                match tokio::time::timeout_at(deadline, applied.changed()).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
        }
        let mut released = 0;
        for (offset, fence) in jobs {
            let held = self
                .services
                .node
                .state
                .read(|s| {
                    let sub = &self.opened.subscription;
                    s.holds_lease_in(
                        queue,
                        (!sub.is_empty()).then_some(sub.as_str()),
                        offset,
                        fence,
                    )
                })
                .unwrap_or(true);
            if !held {
                continue;
            }
            let command = super::in_subscription(
                &self.opened.subscription,
                Command::Release {
                    queue: queue.clone(),
                    offset,
                    fence,
                },
            );
            match tokio::time::timeout_at(deadline, self.services.write(command)).await {
                Ok(Ok(_)) => released += 1,
                Ok(Err(status)) => {
                    tracing::debug!(%queue, offset, %status, "could not release a job of a closed consume stream; its lease will expire");
                }
                Err(_) => {
                    tracing::info!(%queue, "CONSUME_RELEASE_WAIT passed; the leases left of a closed consume stream will expire");
                    break;
                }
            }
        }
        released
    }
}

/// One fetch of a stream: under the stream's session at `seq`, for up to
/// `credits` jobs (and the queue's `max_batch`). When nothing is ready it
/// waits for this node to apply something that could make a head ready,
/// and tries again under the same seq (an empty fetch is not kept by the
/// reply cache). It is never cancelled while it writes; `stop` only ends
/// its wait, and it then answers no deliveries.
async fn fetch(
    services: Services,
    opened: Opened,
    seq: u64,
    credits: u32,
    mut stop: watch::Receiver<bool>,
) -> Fetched {
    let queue = &opened.queue;
    let wait_max = Duration::from_millis(services.node.config.limits.fetch_wait_ms_max);
    let mut applied = services.node.applied_watch();
    let mut failing_since: Option<Instant> = None;
    let mut pause = FETCH_RETRY_PAUSE_MIN;
    // Each try is a new round of the one seq, so an earlier try whose
    // forward broke after sending, reaching the log late, is refused
    // rather than leasing jobs.
    let mut round: u32 = 0;
    loop {
        let max_batch = services
            .node
            .state
            .read(|s| s.max_batch(queue).ok())
            .ok()
            .flatten()
            .unwrap_or(opened.max_batch);
        let command = super::in_subscription(
            &opened.subscription,
            Command::Fetch {
                queue: queue.clone(),
                consumer: opened.consumer.clone(),
                max: credits.min(max_batch).max(1),
                lease_ms: opened.lease_ms,
            },
        );
        let session = pb::Session {
            id: opened.session,
            seq,
            floor: seq,
            attempt: 0,
        };
        let written = services.write_round(Some(session), round, command).await;
        round = round.saturating_add(1);
        match written {
            Ok((Reply::Fetched(deliveries), blobs)) => {
                failing_since = None;
                pause = FETCH_RETRY_PAUSE_MIN;
                if !deliveries.is_empty() {
                    return services.with_payloads(queue, deliveries, blobs).await;
                }
            }
            Ok((other, _)) => return Err(wrong_reply(other)),
            Err(status) if matches!(status.code(), Code::Unavailable | Code::Aborted) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= wait_max {
                    return Err(status);
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(Vec::new()),
                }
                pause = (pause * 2).min(FETCH_RETRY_PAUSE_MAX);
                continue;
            }
            Err(status) => return Err(status),
        }
        // Nothing ready: wait for this node to apply something (an
        // enqueue, an ack that frees a group, a tick), and for its state to
        // show a ready head; at the latest after `fetch_wait_ms_max`, try
        // anyway (a stale follower may show nothing).
        let deadline = Instant::now() + wait_max;
        loop {
            tokio::select! {
                changed = tokio::time::timeout_at(deadline, applied.changed()) => match changed {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(Status::unavailable("the node is shutting down")),
                    Err(_) => break,
                },
                _ = stop.wait_for(|s| *s) => return Ok(Vec::new()),
            }
            let ready = services
                .node
                .state
                .read(|s| super::ready_in(s, queue, &opened.subscription))
                .ok();
            if !matches!(ready, Some(Ok(0))) {
                break;
            }
        }
    }
}

/// A unary request carrying the stream's metadata (its token).
fn with_metadata<T>(metadata: &MetadataMap, message: T) -> Request<T> {
    let mut request = Request::new(message);
    *request.metadata_mut() = metadata.clone();
    request
}

/// Serves one call riding the stream exactly as its unary twin, and says
/// which offsets it finished (no longer to release on a clean close).
async fn serve(
    services: Services,
    metadata: MetadataMap,
    (queue, subscription): (String, String),
    tag: u64,
    call: Call,
) -> (pb::ConsumeResponse, Vec<u64>) {
    let answer = |event| pb::ConsumeResponse {
        tag,
        event: Some(event),
    };
    let failed = |status: Status| {
        answer(Event::Error(pb::CallError {
            code: status.code() as i32,
            message: status.message().to_string(),
        }))
    };
    // A call works on the stream's queue and subscription: left empty it
    // takes them, naming others is refused.
    let fix = |q: &mut String, sub: &mut String| -> Result<(), Status> {
        if q.is_empty() {
            q.clone_from(&queue);
        }
        if *q != queue {
            return Err(Status::invalid_argument(format!(
                "a call on the consume stream of queue `{queue}` names queue `{q}`: leave it \
                 empty or name the stream's queue"
            )));
        }
        if sub.is_empty() {
            sub.clone_from(&subscription);
        }
        if *sub != subscription {
            return Err(Status::invalid_argument(format!(
                "a call on the consume stream of subscription `{subscription}` names \
                 subscription `{sub}`: leave it empty or name the stream's subscription"
            )));
        }
        Ok(())
    };
    let m = &metadata;
    let result = match call {
        Call::Open(_) => Err(Status::invalid_argument(
            "`open` may only be the first message of a consume stream",
        )),
        Call::Ack(mut r) => match fix(&mut r.queue, &mut r.subscription) {
            Err(s) => Err(s),
            Ok(()) => services.ack(with_metadata(m, r)).await.map(|resp| {
                let resp = resp.into_inner();
                let finished = resp
                    .results
                    .iter()
                    .filter(|r| r.code == Code::Ok as i32)
                    .map(|r| r.offset)
                    .collect();
                (answer(Event::Ack(resp)), finished)
            }),
        },
        Call::Nack(mut r) => match fix(&mut r.queue, &mut r.subscription) {
            Err(s) => Err(s),
            Ok(()) => {
                let offset = r.offset;
                services
                    .nack(with_metadata(m, r))
                    .await
                    .map(|resp| (answer(Event::Nack(resp.into_inner())), vec![offset]))
            }
        },
        Call::Extend(mut r) => match fix(&mut r.queue, &mut r.subscription) {
            Err(s) => Err(s),
            Ok(()) => services
                .extend(with_metadata(m, r))
                .await
                .map(|resp| (answer(Event::Extend(resp.into_inner())), Vec::new())),
        },
        Call::Release(mut r) => match fix(&mut r.queue, &mut r.subscription) {
            Err(s) => Err(s),
            Ok(()) => {
                let offset = r.offset;
                services
                    .release(with_metadata(m, r))
                    .await
                    .map(|resp| (answer(Event::Release(resp.into_inner())), vec![offset]))
            }
        },
        Call::DeadLetter(mut r) => match fix(&mut r.queue, &mut r.subscription) {
            Err(s) => Err(s),
            Ok(()) => {
                let offset = r.offset;
                services
                    .dead_letter(with_metadata(m, r))
                    .await
                    .map(|resp| (answer(Event::DeadLetter(resp.into_inner())), vec![offset]))
            }
        },
    };
    result.unwrap_or_else(|status| (failed(status), Vec::new()))
}
