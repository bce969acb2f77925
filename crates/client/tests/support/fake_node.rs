//! `FakeNode`: a TEST DOUBLE of a Lockstep node, not a node.
//!
//! It serves the `lockstep.v1` Queue and Cluster services on 127.0.0.1 (an
//! ephemeral port) from a few maps in memory, so the client's retry,
//! leader-hint, batching and worker logic can be tested without Raft or
//! RocksDB. A test scripts its answers per method ("fail the next enqueue
//! with UNAVAILABLE naming this leader", "answer the next ack late") and
//! reads back every request the fake received. Whatever is not scripted
//! gets a plain, plausible answer:
//!
//! - enqueue: CREATED with the next offset, or DUPLICATE with the original
//!   offset for an id seen before (a one-line model of the dedup index);
//! - fetch: the deliveries the test queued, else an empty answer after the
//!   long-poll wait (capped at `FETCH_WAIT_CAP`);
//! - ack: OK, or the code the test set for that offset;
//! - open-session: the next session number (no reply cache is kept);
//! - nack, extend, release, dead-letter, join, remove, bootstrap: OK;
//! - status: what the test set, else an empty status.
//!
//! Real-cluster tests live in the server crate.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockstep_client::{pb, Code, LEADER_METADATA_KEY};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

/// The longest a fake fetch long-polls, whatever the request asks.
pub const FETCH_WAIT_CAP: Duration = Duration::from_secs(2);

/// What the fake does with the next call of a method, before (or instead
/// of) its plain answer.
#[derive(Clone, Debug)]
pub enum Scripted {
    /// Answer with this status; nothing happens.
    Fail {
        code: Code,
        message: String,
        leader: Option<String>,
    },
    /// Do what the call asks, then answer with this status anyway: the
    /// client sees an unknown outcome of a write that did happen.
    ApplyThenFail { code: Code, message: String },
    /// Wait this long, then answer plainly.
    Delay(Duration),
}

impl Scripted {
    pub fn fail(code: Code) -> Scripted {
        Scripted::Fail {
            code,
            message: format!("scripted {code:?}"),
            leader: None,
        }
    }

    pub fn unavailable_leader_at(addr: &str) -> Scripted {
        Scripted::Fail {
            code: Code::Unavailable,
            message: "no leader answered within limits.forward_retry_ms_max (scripted)".into(),
            leader: Some(addr.to_string()),
        }
    }
}

/// A request the fake received.
#[derive(Clone, Debug)]
pub enum Call {
    Enqueue(pb::EnqueueRequest),
    Fetch(pb::FetchRequest),
    Ack(pb::AckRequest),
    Nack(pb::NackRequest),
    Extend(pb::ExtendRequest),
    Release(pb::ReleaseRequest),
    DeadLetter(pb::DeadLetterRequest),
    Status(pb::StatusRequest),
    Bootstrap(pb::BootstrapRequest),
    Join(pb::JoinRequest),
    Remove(pb::RemoveRequest),
}

impl Call {
    pub fn method(&self) -> &'static str {
        match self {
            Call::Enqueue(_) => "enqueue",
            Call::Fetch(_) => "fetch",
            Call::Ack(_) => "ack",
            Call::Nack(_) => "nack",
            Call::Extend(_) => "extend",
            Call::Release(_) => "release",
            Call::DeadLetter(_) => "dead_letter",
            Call::Status(_) => "status",
            Call::Bootstrap(_) => "bootstrap",
            Call::Join(_) => "join",
            Call::Remove(_) => "remove",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    script: BTreeMap<&'static str, VecDeque<Scripted>>,
    deliveries: VecDeque<pb::Delivery>,
    ack_codes: BTreeMap<u64, Code>,
    status: pb::StatusResponse,
    /// id -> offset, for DUPLICATE answers.
    ids: BTreeMap<String, u64>,
    next_offset: u64,
    server_ids_made: u64,
    /// Sessions opened so far; each open answers the next number. The fake
    /// keeps no reply cache: it answers every try afresh.
    sessions_opened: u64,
}

/// The fake's shared state; the gRPC services and the test both hold it.
#[derive(Clone, Debug, Default)]
pub struct Fake {
    state: Arc<Mutex<State>>,
}

/// A running fake node. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeNode {
    pub addr: String,
    pub fake: Fake,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl FakeNode {
    /// Starts a fake on 127.0.0.1 and an ephemeral port.
    pub async fn start() -> FakeNode {
        let incoming =
            tonic::transport::server::TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .unwrap();
        let addr = incoming.local_addr().unwrap().to_string();
        let fake = Fake::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(pb::queue_server::QueueServer::new(fake.clone()))
            .add_service(pb::cluster_server::ClusterServer::new(fake.clone()))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        tokio::spawn(server);
        FakeNode {
            addr,
            fake,
            stop: Some(stop),
        }
    }
}

/// An address where nothing listens: bound, then closed at once.
pub fn dead_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A delivery as a node would send it, with a lease deadline a minute out.
pub fn delivery(offset: u64, fence: u64, payload: &str) -> pb::Delivery {
    pb::Delivery {
        offset,
        id: format!("job-{offset}"),
        group: format!("g{offset}"),
        payload: payload.as_bytes().to_vec(),
        headers: vec![],
        priority: 0,
        attempt: 1,
        fence,
        lease_deadline_ms: now_ms() + 60_000,
    }
}

impl Fake {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Queues `scripted` for the next call of `method` ("enqueue", ...).
    pub fn script(&self, method: &'static str, scripted: Scripted) {
        self.lock()
            .script
            .entry(method)
            .or_default()
            .push_back(scripted);
    }

    /// Queues a job for the next fetch.
    pub fn push_delivery(&self, d: pb::Delivery) {
        self.lock().deliveries.push_back(d);
    }

    /// Makes the ack of `offset` answer `code`.
    pub fn ack_answers(&self, offset: u64, code: Code) {
        self.lock().ack_codes.insert(offset, code);
    }

    pub fn set_status(&self, status: pb::StatusResponse) {
        self.lock().status = status;
    }

    /// Every request received, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Requests received for `method`.
    pub fn count(&self, method: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.method() == method)
            .count()
    }

    /// How many jobs the fake stored (each id once).
    pub fn stored_ids(&self) -> Vec<String> {
        self.lock().ids.keys().cloned().collect()
    }

    /// Records `call`, then applies the script for its method: `Ok(None)`
    /// to answer plainly, `Ok(Some(status))` to apply and then fail.
    async fn begin(&self, call: Call) -> Result<Option<Status>, Status> {
        let method = call.method();
        let next = {
            let mut state = self.lock();
            state.calls.push(call);
            state.script.get_mut(method).and_then(VecDeque::pop_front)
        };
        match next {
            None => Ok(None),
            Some(Scripted::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(None)
            }
            Some(Scripted::Fail {
                code,
                message,
                leader,
            }) => {
                let mut status = Status::new(code, message);
                if let Some(leader) = leader {
                    status
                        .metadata_mut()
                        .insert(LEADER_METADATA_KEY, leader.parse().unwrap());
                }
                Err(status)
            }
            Some(Scripted::ApplyThenFail { code, message }) => Ok(Some(Status::new(code, message))),
        }
    }
}

fn answer<T>(after: Option<Status>, value: T) -> Result<Response<T>, Status> {
    match after {
        Some(status) => Err(status),
        None => Ok(Response::new(value)),
    }
}

#[tonic::async_trait]
impl pb::queue_server::Queue for Fake {
    type ConsumeStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::ConsumeResponse, Status>> + Send>,
    >;

    /// The fake serves no consume stream: the worker tests run in
    /// `ConsumeMode::Fetch`, and the stream is tested on real nodes.
    async fn consume(
        &self,
        _request: Request<tonic::Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        Err(Status::unimplemented(
            "the fake node serves no consume stream",
        ))
    }

    async fn open_session(
        &self,
        _request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let mut state = self.lock();
        state.sessions_opened += 1;
        Ok(Response::new(pb::OpenSessionResponse {
            session: state.sessions_opened,
        }))
    }

    async fn enqueue(
        &self,
        request: Request<pb::EnqueueRequest>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        let req = request.into_inner();
        let after = self.begin(Call::Enqueue(req.clone())).await?;
        let mut state = self.lock();
        let results = req
            .jobs
            .into_iter()
            .map(|job| {
                let id = job.id.unwrap_or_else(|| {
                    state.server_ids_made += 1;
                    format!("server-made-{}", state.server_ids_made)
                });
                if let Some(&offset) = state.ids.get(&id) {
                    return pb::EnqueueResult {
                        outcome: pb::EnqueueOutcome::Duplicate.into(),
                        offset,
                        state: pb::JobState::Ready.into(),
                        id,
                    };
                }
                let offset = state.next_offset;
                state.next_offset += 1;
                state.ids.insert(id.clone(), offset);
                pb::EnqueueResult {
                    outcome: pb::EnqueueOutcome::Created.into(),
                    offset,
                    state: pb::JobState::Unspecified.into(),
                    id,
                }
            })
            .collect();
        drop(state);
        answer(after, pb::EnqueueResponse { results })
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let req = request.into_inner();
        let after = self.begin(Call::Fetch(req.clone())).await?;
        let wait = Duration::from_millis(req.wait_ms).min(FETCH_WAIT_CAP);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let deliveries: Vec<pb::Delivery> = {
                let mut state = self.lock();
                let n = state.deliveries.len().min(req.max as usize);
                state.deliveries.drain(..n).collect()
            };
            if !deliveries.is_empty() || tokio::time::Instant::now() >= deadline {
                return answer(after, pb::FetchResponse { deliveries });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let req = request.into_inner();
        let after = self.begin(Call::Ack(req.clone())).await?;
        let state = self.lock();
        let results = req
            .items
            .iter()
            .map(|i| {
                let code = state.ack_codes.get(&i.offset).copied().unwrap_or(Code::Ok);
                pb::AckResult {
                    offset: i.offset,
                    code: code as i32,
                    message: if code == Code::Ok {
                        String::new()
                    } else {
                        format!(
                            "lease lost: offset {} is not leased under fence {}",
                            i.offset, i.fence
                        )
                    },
                }
            })
            .collect();
        drop(state);
        answer(
            after,
            pb::AckResponse {
                results,
                then: Vec::new(),
            },
        )
    }

    async fn nack(
        &self,
        request: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        let after = self.begin(Call::Nack(request.into_inner())).await?;
        answer(
            after,
            pb::NackResponse {
                dead: false,
                not_before_ms: now_ms() + 1_000,
            },
        )
    }

    async fn extend(
        &self,
        request: Request<pb::ExtendRequest>,
    ) -> Result<Response<pb::ExtendResponse>, Status> {
        let req = request.into_inner();
        let after = self.begin(Call::Extend(req.clone())).await?;
        answer(
            after,
            pb::ExtendResponse {
                lease_deadline_ms: now_ms() + req.lease_ms,
            },
        )
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let after = self.begin(Call::Release(request.into_inner())).await?;
        answer(after, pb::ReleaseResponse {})
    }

    async fn dead_letter(
        &self,
        request: Request<pb::DeadLetterRequest>,
    ) -> Result<Response<pb::DeadLetterResponse>, Status> {
        let after = self.begin(Call::DeadLetter(request.into_inner())).await?;
        answer(after, pb::DeadLetterResponse {})
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Fake {
    async fn bootstrap(
        &self,
        request: Request<pb::BootstrapRequest>,
    ) -> Result<Response<pb::BootstrapResponse>, Status> {
        let after = self.begin(Call::Bootstrap(request.into_inner())).await?;
        answer(after, pb::BootstrapResponse { initialized: true })
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let after = self.begin(Call::Status(request.into_inner())).await?;
        let status = self.lock().status.clone();
        answer(after, status)
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let after = self.begin(Call::Join(request.into_inner())).await?;
        answer(after, pb::JoinResponse {})
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        let after = self.begin(Call::Remove(request.into_inner())).await?;
        answer(after, pb::RemoveResponse {})
    }
}
