//! [`Client`]: every call of the `lockstep.v1` Queue, Admin and Cluster
//! services, with leader discovery and bounded retries.
//!
//! Any node accepts any call (a follower forwards writes to the leader), so
//! the client is correct talking to whichever node it reaches. It prefers
//! the leader only to save the forwarding hop: it learns the leader's
//! address from the `x-lockstep-leader` metadata a node sends with
//! UNAVAILABLE and from `Cluster.Status`. When a try fails in a way another
//! try may cure, the client moves to the named leader at once, or else to
//! the next endpoint after a jittered exponential pause (see
//! [`RetryPolicy`](crate::RetryPolicy)).

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lockstep_proto as pb;
use pb::admin_client::AdminClient;
use pb::cluster_client::ClusterClient;
use pb::queue_client::QueueClient;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::config::{normalize_endpoint, ClientConfig, ENDPOINTS_MAX};
use crate::consume::Consumer;
use crate::error::Error;
use crate::ids::fill_missing_ids;
use crate::session::Session;

/// A handle to a Lockstep cluster; cheap to clone, and safe to share
/// between tasks. Clones share connections and what was learned about the
/// leader.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
    /// The named subscription the consumer-side calls work on; empty: the
    /// default one ([`Client::in_subscription`]).
    subscription: String,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    routes: Mutex<Routes>,
    /// The session every state-changing Queue call runs under.
    session: Session,
}

#[derive(Debug)]
struct Node {
    /// `host:port`.
    addr: String,
    channel: Channel,
}

/// Which node the next try goes to. `current` is used while no leader is
/// known; both move on failure.
#[derive(Debug)]
struct Routes {
    nodes: Vec<Node>,
    current: usize,
    leader: Option<usize>,
    /// Leader hints are not followed: the one node behind the channel
    /// forwards writes itself (an embedded node's in-process channel).
    pinned: bool,
}

/// How a read is served (`ReadOptions` in the API).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Served by the leader after a read-index round: reflects every write
    /// acknowledged before the call. The default.
    #[default]
    Linearizable,
    /// Served from the state of the node that answers; may lag behind.
    Stale,
}

impl Consistency {
    fn options(self) -> Option<pb::ReadOptions> {
        Some(pb::ReadOptions {
            stale: self == Consistency::Stale,
        })
    }
}

/// What happened to one enqueued job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id: the caller's, or the one the client filled in.
    pub id: String,
    /// The new offset (`Created`) or the original one (`Duplicate`,
    /// `IdConflict`).
    pub offset: u64,
    /// Whether the job was stored now, was already stored, or clashes with
    /// another job of the same id.
    pub outcome: EnqueueOutcome,
}

/// The answer to [`Client::ack_then`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainedAck {
    /// The ack had happened before (every item already acked under its
    /// fence): nothing was enqueued now, and `then` is empty.
    pub repeat: bool,
    /// Per chained queue, in the order sent, what happened to each job.
    pub then: Vec<Vec<Enqueued>>,
}

/// The per-job result of an enqueue (SPEC 2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// Stored under a new offset.
    Created,
    /// The same id, group and payload were accepted before, inside the
    /// dedup window; nothing new was stored. `state` is the original job's
    /// current state. A retry of an enqueue whose first answer was lost
    /// sees this.
    Duplicate {
        /// The original job's state when the node answered.
        state: pb::JobState,
    },
    /// The id was accepted before with another group or payload; this job
    /// was not stored.
    IdConflict,
}

/// One call: its name for logs, whether sending it twice is harmless, and
/// its bounds.
#[derive(Clone, Copy, Debug)]
struct CallSpec {
    name: &'static str,
    /// Sending it twice has the effect of sending it once, so it may be
    /// retried after DEADLINE_EXCEEDED too.
    idempotent: bool,
    /// Sent under the client's session: applied at most once, so retried
    /// after ABORTED and DEADLINE_EXCEEDED too.
    sequenced: bool,
    timeout: Duration,
    retry_elapsed_max: Duration,
}

fn queue_api(channel: Channel, bytes_max: usize) -> QueueClient<Channel> {
    QueueClient::new(channel)
        .max_decoding_message_size(bytes_max)
        .max_encoding_message_size(bytes_max)
}

fn admin_api(channel: Channel, bytes_max: usize) -> AdminClient<Channel> {
    AdminClient::new(channel)
        .max_decoding_message_size(bytes_max)
        .max_encoding_message_size(bytes_max)
}

fn cluster_api(channel: Channel, bytes_max: usize) -> ClusterClient<Channel> {
    ClusterClient::new(channel)
        .max_decoding_message_size(bytes_max)
        .max_encoding_message_size(bytes_max)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Client {
    /// Validates `config` and prepares a lazy connection to every endpoint;
    /// nothing is dialled until the first call, so this succeeds while
    /// nodes are down. Must be called within a Tokio runtime (the error
    /// says so otherwise).
    pub fn connect(config: ClientConfig) -> Result<Client, Error> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "runtime",
                "Client::connect must be called within a Tokio runtime",
            ));
        }
        let mut nodes = Vec::with_capacity(config.endpoints.len());
        for (i, raw) in config.endpoints.iter().enumerate() {
            let addr = normalize_endpoint(raw)
                .map_err(|problem| Error::config(&format!("endpoints[{i}]"), problem))?;
            if nodes.iter().any(|n: &Node| n.addr == addr) {
                continue;
            }
            let channel = lazy_channel(&config, &addr)
                .map_err(|problem| Error::config(&format!("endpoints[{i}]"), problem))?;
            nodes.push(Node { addr, channel });
        }
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                routes: Mutex::new(Routes {
                    nodes,
                    current: 0,
                    leader: None,
                    pinned: false,
                }),
                session: Session::default(),
            }),
            subscription: String::new(),
        })
    }

    /// A client over one ready-made channel, such as the in-process channel
    /// of an embedded node: no socket, and no hop to the leader from here
    /// (the node behind the channel forwards writes itself, so leader hints
    /// are ignored). `name` labels the channel in errors and logs;
    /// `config.endpoints` is not used. Every other setting of `config`
    /// applies: deadlines, retries and message sizes.
    pub fn over_channel(
        name: &str,
        channel: Channel,
        config: ClientConfig,
    ) -> Result<Client, Error> {
        config.validate_settings()?;
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                routes: Mutex::new(Routes {
                    nodes: vec![Node {
                        addr: name.to_string(),
                        channel,
                    }],
                    current: 0,
                    leader: None,
                    pinned: true,
                }),
                session: Session::default(),
            }),
            subscription: String::new(),
        })
    }

    /// The same client (sharing connections, leader and session) whose
    /// consumer-side calls (fetch, consume, ack, nack, extend, release,
    /// dead-letter) and group and dead-letter calls (list, get, top,
    /// pause, resume, skip, drain; list, requeue, purge) work on the named
    /// subscription of each queue (SPEC 2.3a); `""` is the default
    /// subscription. A [`Worker`](crate::Worker)
    /// or [`AckBatcher`](crate::AckBatcher) made over it consumes that
    /// subscription.
    pub fn in_subscription(&self, name: &str) -> Client {
        Client {
            inner: self.inner.clone(),
            subscription: name.to_string(),
        }
    }

    /// The subscription this client's consumer-side calls work on (`""`:
    /// the default one).
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The leader's address as last learned, if any.
    pub fn leader(&self) -> Option<String> {
        let routes = self.inner.routes();
        routes.leader.map(|i| routes.nodes[i].addr.clone())
    }

    /// Every endpoint the client knows: the configured ones, then leaders
    /// it learned of.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .routes()
            .nodes
            .iter()
            .map(|n| n.addr.clone())
            .collect()
    }

    fn spec(&self, name: &'static str, idempotent: bool) -> CallSpec {
        CallSpec {
            name,
            idempotent,
            sequenced: false,
            timeout: self.inner.config.call_timeout,
            retry_elapsed_max: self.inner.config.retry.retry_elapsed_max,
        }
    }

    /// Runs one call with retries. `send` makes one try on a channel.
    async fn call<Req, Resp, F, Fut>(
        &self,
        spec: CallSpec,
        request: Req,
        send: F,
    ) -> Result<(Resp, String), Error>
    where
        Req: Clone + prost::Message,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.call_tracked(spec, request, |_, _| {}, send, &mut false)
            .await
    }

    /// Runs a state-changing Queue call at most once: under the client's
    /// session, numbered once, every retry with the same number (see
    /// `crate::session`). `place` puts the request's place in the session
    /// into it. A session the cluster no longer holds is replaced once, and
    /// the request resent under the new one, only if no try so far may have
    /// applied it; otherwise the outcome stays unknown and the error says
    /// so (ABORTED).
    async fn sequenced<Req, Resp, F, Fut>(
        &self,
        mut spec: CallSpec,
        mut request: Req,
        place: impl Fn(&mut Req, pb::Session),
        send: F,
    ) -> Result<(Resp, String), Error>
    where
        Req: Clone + prost::Message,
        F: Fn(Channel, tonic::Request<Req>) -> Fut + Clone,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        spec.sequenced = true;
        let mut reopened = false;
        loop {
            let id = self.session_id().await?;
            let ticket = self.inner.session.ticket();
            place(&mut request, ticket.in_session(id));
            // Each retry says it is a later try of the number, so a try
            // that overtakes an earlier one on the way to the log is known.
            let stamp = |r: &mut Req, attempt: u32| {
                let mut place_of = ticket.in_session(id);
                place_of.attempt = attempt;
                place(r, place_of);
            };
            let mut uncertain = false;
            let result = self
                .call_tracked(spec, request.clone(), stamp, send.clone(), &mut uncertain)
                .await;
            match result {
                Err(Error::SessionUnknown { message, endpoint }) => {
                    self.forget_session(id).await;
                    if uncertain || reopened {
                        return Err(Error::Status {
                            code: Code::Aborted,
                            message: format!(
                                "{}: outcome unknown, it may have applied: an earlier try got no \
                                 answer, and the session it ran under is gone ({message})",
                                spec.name
                            ),
                            endpoint,
                            leader: None,
                        });
                    }
                    reopened = true;
                }
                other => return other,
            }
        }
    }

    /// The client's session id, opening the session on first use.
    async fn session_id(&self) -> Result<u64, Error> {
        let mut id = self.inner.session.id.lock().await;
        if let Some(id) = *id {
            return Ok(id);
        }
        let bytes_max = self.inner.config.message_bytes_max;
        let (response, _) = self
            .call(
                self.spec("open_session", true),
                pb::OpenSessionRequest {},
                move |ch, req| async move { queue_api(ch, bytes_max).open_session(req).await },
            )
            .await?;
        *id = Some(response.session);
        Ok(response.session)
    }

    /// Drops session `id` after the cluster said it is gone, unless another
    /// call already replaced it.
    async fn forget_session(&self, id: u64) {
        let mut current = self.inner.session.id.lock().await;
        if *current == Some(id) {
            *current = None;
        }
    }

    /// [`Client::call`] that sets `uncertain` once a try may have applied
    /// the request (an ABORTED answer, or no answer). `stamp` marks each
    /// try with its number, counted from 0.
    async fn call_tracked<Req, Resp, F, Fut>(
        &self,
        spec: CallSpec,
        mut request: Req,
        stamp: impl Fn(&mut Req, u32),
        send: F,
        uncertain: &mut bool,
    ) -> Result<(Resp, String), Error>
    where
        Req: Clone + prost::Message,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let policy = &self.inner.config.retry;
        let authorization = self.inner.authorization()?;
        // The node's spans of this call continue the caller's trace.
        let traceparent = crate::trace::current_traceparent()
            .and_then(|t| tonic::metadata::AsciiMetadataValue::try_from(t).ok());
        // Checked here: tonic would only reset the stream mid-send, which
        // reads as an unexplained INTERNAL.
        let bytes = request.encoded_len();
        let max = self.inner.config.message_bytes_max;
        if bytes > max {
            return Err(Error::TooLarge {
                call: spec.name,
                bytes,
                max,
            });
        }
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            stamp(&mut request, attempt);
            attempt += 1;
            let (index, addr, channel) = self.inner.pick();
            let mut message = tonic::Request::new(request.clone());
            if let Some(value) = &authorization {
                message
                    .metadata_mut()
                    .insert("authorization", value.clone());
            }
            if let Some(value) = &traceparent {
                message
                    .metadata_mut()
                    .insert(crate::trace::TRACEPARENT, value.clone());
            }
            let error = match tokio::time::timeout(spec.timeout, send(channel, message)).await {
                Ok(Ok(response)) => {
                    // A follower that answered names the leader: go
                    // there next time and save the forwarding hop.
                    if let Some(leader) = response
                        .metadata()
                        .get(crate::error::LEADER_METADATA_KEY)
                        .and_then(|v| v.to_str().ok())
                    {
                        self.inner.learn_leader(leader);
                    }
                    return Ok((response.into_inner(), addr));
                }
                Ok(Err(status)) => Error::from_status(status, &addr),
                Err(_) => Error::Transport {
                    code: Code::DeadlineExceeded,
                    message: format!("no answer within {:?} (call_timeout)", spec.timeout),
                    endpoint: addr.clone(),
                },
            };
            *uncertain |= error.may_have_applied();
            if !error.retry_allowed(spec.idempotent, spec.sequenced) {
                return Err(error);
            }
            if attempt >= policy.attempts_max {
                tracing::debug!(call = spec.name, attempt, %error, "retry.attempts_max reached");
                return Err(error);
            }
            let hinted = self.inner.on_failure(index, error.leader_hint());
            let pause = if hinted {
                Duration::ZERO
            } else {
                policy.backoff_random(attempt)
            };
            if started.elapsed() + pause >= spec.retry_elapsed_max {
                tracing::debug!(call = spec.name, attempt, %error, "retry.retry_elapsed_max reached");
                return Err(error);
            }
            tracing::debug!(call = spec.name, attempt, ?pause, %error, "retrying");
            tokio::time::sleep(pause).await;
        }
    }

    fn learn_from_status(&self, status: &pb::StatusResponse) {
        let leader = status.leader_id.and_then(|id| {
            status
                .members
                .iter()
                .find(|m| m.id == id && !m.client_addr.is_empty())
        });
        if let Some(member) = leader {
            self.inner.learn_leader(&member.client_addr);
        }
    }

    // ------------------------------------------------------------ Queue

    /// Enqueues `jobs` into `queue`: accepted whole or rejected whole, and
    /// answered once committed on a majority.
    ///
    /// Every job whose id is left out gets one
    /// ([`new_job_id`](crate::new_job_id)) before the first try, and every retry sends the same ids, so a retry
    /// after an unknown outcome can never store a job twice: the node
    /// answers [`EnqueueOutcome::Duplicate`] with the original offset. The
    /// results are in the order of `jobs`.
    pub async fn enqueue(
        &self,
        queue: &str,
        mut jobs: Vec<pb::Job>,
    ) -> Result<Vec<Enqueued>, Error> {
        let ids = prepare_jobs(&mut jobs, crate::trace::current_traceparent());
        let request = pb::EnqueueRequest {
            queue: queue.to_string(),
            jobs,
            session: None,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        let (response, _) = self
            .sequenced(
                self.spec("enqueue", true),
                request,
                |r, s| r.session = Some(s),
                move |ch, req| async move { queue_api(ch, bytes_max).enqueue(req).await },
            )
            .await?;
        enqueued(response, ids)
    }

    /// Leases up to `max` jobs of `queue` for `consumer`, for `lease` each
    /// (zero: the queue's default; clamped to its `lease_ms_max`). When
    /// nothing is ready the node waits up to `wait` for work (long poll).
    ///
    /// At most once: the call runs under the client's session, so a retry
    /// after a lost answer gets the leases the first try granted (those
    /// still held), never a second set.
    pub async fn fetch(
        &self,
        queue: &str,
        consumer: &str,
        max: u32,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<pb::Delivery>, Error> {
        let request = pb::FetchRequest {
            subscription: self.subscription.clone(),
            queue: queue.to_string(),
            consumer: consumer.to_string(),
            max,
            lease_ms: millis(lease),
            wait_ms: millis(wait),
            session: None,
        };
        let mut spec = self.spec("fetch", false);
        spec.timeout = spec.timeout.saturating_add(wait);
        let bytes_max = self.inner.config.message_bytes_max;
        let (response, _) = self
            .sequenced(
                spec,
                request,
                |r, s| r.session = Some(s),
                move |ch, req| async move { queue_api(ch, bytes_max).fetch(req).await },
            )
            .await?;
        Ok(response.deliveries)
    }

    /// Opens a consume stream on `queue` for `consumer` (SPEC 2.3): the
    /// node pushes up to `credits` deliveries, and more as the consumer
    /// grants them ([`Consumer::grant`]); each lease is for `lease` (zero:
    /// the queue's default). See [`Consumer`].
    ///
    /// The stream opens on the leader when the client knows it (each of the
    /// stream's fetches and calls is then served without a hop), else on
    /// the next endpoint; opening is retried as an idempotent call is
    /// ([`RetryPolicy`](crate::RetryPolicy)). A stream is never moved once
    /// open: when it breaks, open another.
    pub async fn consume(
        &self,
        queue: &str,
        consumer: &str,
        lease: Duration,
        credits: u32,
    ) -> Result<Consumer, Error> {
        let policy = &self.inner.config.retry;
        let authorization = self.inner.authorization()?;
        let bytes_max = self.inner.config.message_bytes_max;
        let timeout = self.inner.config.call_timeout;
        let open = pb::ConsumeRequest {
            credits,
            tag: 0,
            call: Some(pb::consume_request::Call::Open(pb::ConsumeOpen {
                subscription: self.subscription.clone(),
                queue: queue.to_string(),
                consumer: consumer.to_string(),
                lease_ms: millis(lease),
            })),
        };
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let (index, addr, channel) = self.inner.pick();
            let (tx, rx) = tokio::sync::mpsc::channel(crate::consume::CONSUME_SEND_BUFFER);
            tx.try_send(open.clone())
                .expect("a new channel has room for the first message");
            let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            if let Some(value) = &authorization {
                request
                    .metadata_mut()
                    .insert("authorization", value.clone());
            }
            let error =
                match tokio::time::timeout(timeout, queue_api(channel, bytes_max).consume(request))
                    .await
                {
                    Ok(Ok(response)) => {
                        return Ok(Consumer::new(
                            tx,
                            response.into_inner(),
                            addr,
                            queue.to_string(),
                        ))
                    }
                    Ok(Err(status)) => Error::from_status(status, &addr),
                    Err(_) => Error::Transport {
                        code: Code::DeadlineExceeded,
                        message: format!(
                            "the stream did not open within {timeout:?} (call_timeout)"
                        ),
                        endpoint: addr.clone(),
                    },
                };
            if !error.retry_allowed(true, false) || attempt >= policy.attempts_max {
                return Err(error);
            }
            let hinted = self.inner.on_failure(index, error.leader_hint());
            let pause = if hinted {
                Duration::ZERO
            } else {
                policy.backoff_random(attempt)
            };
            if started.elapsed() + pause >= policy.retry_elapsed_max {
                return Err(error);
            }
            tracing::debug!(call = "consume", attempt, ?pause, %error, "retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// After a stream opened on `endpoint` broke: try the next node (or the
    /// leader, if known) for the next one.
    pub(crate) fn stream_failed(&self, endpoint: &str, error: &Error) {
        let index = {
            let routes = self.inner.routes();
            routes.nodes.iter().position(|n| n.addr == endpoint)
        };
        if let Some(index) = index {
            self.inner.on_failure(index, error.leader_hint());
        }
    }

    /// Acknowledges finished jobs, each by its offset and the fence of its
    /// delivery. Items are independent: one result per item, in order
    /// (a lost lease is `Err` with [`Error::is_lease_lost`]). Repeating an
    /// ack with the same fence is answered OK, so the call is retried freely.
    pub async fn ack(
        &self,
        queue: &str,
        items: Vec<pb::AckItem>,
    ) -> Result<Vec<Result<(), Error>>, Error> {
        let (response, endpoint) = self.send_ack(queue, items, Vec::new()).await?;
        Ok(response
            .results
            .into_iter()
            .map(|r| match Code::from_i32(r.code) {
                Code::Ok => Ok(()),
                code => Err(Error::Status {
                    code,
                    message: r.message,
                    endpoint: endpoint.clone(),
                    leader: None,
                }),
            })
            .collect())
    }

    /// Acknowledges `items` and enqueues the `then` jobs in the same Raft
    /// entry (chained jobs, SPEC 2.3a): a workflow step hands off to the
    /// next with neither lost nor doubled. All or nothing: every item must
    /// hold its lease ([`Error::is_lease_lost`] otherwise), and every
    /// target queue must take its jobs; on any refusal nothing is acked
    /// and nothing enqueued.
    ///
    /// Jobs without an id get one before the first try, and the call runs
    /// under the client's session, so a retry after a lost answer gets the
    /// first answer. A chained ack repeated after its session reply is gone
    /// answers [`ChainedAck::repeat`] and enqueues nothing again.
    pub async fn ack_then(
        &self,
        queue: &str,
        items: Vec<pb::AckItem>,
        mut then: Vec<pb::ChainedJobs>,
    ) -> Result<ChainedAck, Error> {
        let traceparent = crate::trace::current_traceparent();
        let ids: Vec<Vec<String>> = then
            .iter_mut()
            .map(|c| prepare_jobs(&mut c.jobs, traceparent.clone()))
            .collect();
        let (response, _) = self.send_ack(queue, items, then).await?;
        if response.then.is_empty() {
            return Ok(ChainedAck {
                repeat: true,
                then: Vec::new(),
            });
        }
        if response.then.len() != ids.len() {
            return Err(Error::Protocol {
                call: "ack",
                problem: format!(
                    "{} answers for {} chained queues",
                    response.then.len(),
                    ids.len()
                ),
            });
        }
        let then = response
            .then
            .into_iter()
            .zip(ids)
            .map(|(r, ids)| enqueued(r, ids))
            .collect::<Result<_, _>>()?;
        Ok(ChainedAck {
            repeat: false,
            then,
        })
    }

    /// One `Ack` call under the client's session, its answer checked to
    /// hold one result per item; also the endpoint that answered.
    async fn send_ack(
        &self,
        queue: &str,
        items: Vec<pb::AckItem>,
        then: Vec<pb::ChainedJobs>,
    ) -> Result<(pb::AckResponse, String), Error> {
        let count = items.len();
        let request = pb::AckRequest {
            subscription: self.subscription.clone(),
            queue: queue.to_string(),
            items,
            then,
            session: None,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        let (response, endpoint) = self
            .sequenced(
                self.spec("ack", true),
                request,
                |r, s| r.session = Some(s),
                move |ch, req| async move { queue_api(ch, bytes_max).ack(req).await },
            )
            .await?;
        if response.results.len() != count {
            return Err(Error::Protocol {
                call: "ack",
                problem: format!("{} results for {count} items", response.results.len()),
            });
        }
        Ok((response, endpoint))
    }

    /// Acknowledges one job.
    pub async fn ack_one(&self, queue: &str, offset: u64, fence: u64) -> Result<(), Error> {
        let mut results = self.ack(queue, vec![pb::AckItem { offset, fence }]).await?;
        results.pop().unwrap_or_else(|| {
            Err(Error::Protocol {
                call: "ack",
                problem: "no result".into(),
            })
        })
    }

    /// Ends the attempt as failed. `delay` `None` (or zero) lets the queue's
    /// backoff decide when the job (and its group) runs again; otherwise it
    /// replaces the backoff. When this was the last attempt the answer says
    /// `dead`.
    pub async fn nack(
        &self,
        queue: &str,
        offset: u64,
        fence: u64,
        delay: Option<Duration>,
    ) -> Result<pb::NackResponse, Error> {
        let request = pb::NackRequest {
            subscription: self.subscription.clone(),
            queue: queue.to_string(),
            offset,
            fence,
            delay_ms: delay.map_or(0, millis),
            session: None,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        Ok(self
            .sequenced(
                self.spec("nack", false),
                request,
                |r, s| r.session = Some(s),
                move |ch, req| async move { queue_api(ch, bytes_max).nack(req).await },
            )
            .await?
            .0)
    }

    /// Pushes the lease deadline out to `lease` from now (zero: the queue's
    /// default). Returns the new deadline in cluster time (ms).
    pub async fn extend(
        &self,
        queue: &str,
        offset: u64,
        fence: u64,
        lease: Duration,
    ) -> Result<u64, Error> {
        let spec = self.spec("extend", true);
        self.extend_with(spec, queue, offset, fence, lease).await
    }

    /// [`Client::extend`] whose retries stop after `budget`: a worker has
    /// no use for an extend that lands after its lease ended.
    pub(crate) async fn extend_within(
        &self,
        queue: &str,
        offset: u64,
        fence: u64,
        lease: Duration,
        budget: Duration,
    ) -> Result<u64, Error> {
        let mut spec = self.spec("extend", true);
        spec.timeout = spec.timeout.min(budget);
        spec.retry_elapsed_max = budget;
        self.extend_with(spec, queue, offset, fence, lease).await
    }

    async fn extend_with(
        &self,
        spec: CallSpec,
        queue: &str,
        offset: u64,
        fence: u64,
        lease: Duration,
    ) -> Result<u64, Error> {
        let request = pb::ExtendRequest {
            subscription: self.subscription.clone(),
            queue: queue.to_string(),
            offset,
            fence,
            lease_ms: millis(lease),
            session: None,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        let (response, _) = self
            .sequenced(
                spec,
                request,
                |r, s| r.session = Some(s),
                move |ch, req| async move { queue_api(ch, bytes_max).extend(req).await },
            )
            .await?;
        Ok(response.lease_deadline_ms)
    }

    /// Gives the job back without counting an attempt.
    pub async fn release(&self, queue: &str, offset: u64, fence: u64) -> Result<(), Error> {
        let request = pb::ReleaseRequest {
            subscription: self.subscription.clone(),
            queue: queue.to_string(),
            offset,
            fence,
            session: None,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        self.sequenced(
            self.spec("release", false),
            request,
            |r, s| r.session = Some(s),
            move |ch, req| async move { queue_api(ch, bytes_max).release(req).await },
        )
        .await?;
        Ok(())
    }

    /// Sends the job to the queue's dead letters at once, with `reason`.
    pub async fn dead_letter(
        &self,
        queue: &str,
        offset: u64,
        fence: u64,
        reason: &str,
    ) -> Result<(), Error> {
        let request = pb::DeadLetterRequest {
            subscription: self.subscription.clone(),
            queue: queue.to_string(),
            offset,
            fence,
            reason: reason.to_string(),
            session: None,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        self.sequenced(
            self.spec("dead_letter", false),
            request,
            |r, s| r.session = Some(s),
            move |ch, req| async move { queue_api(ch, bytes_max).dead_letter(req).await },
        )
        .await?;
        Ok(())
    }

    // ------------------------------------------------------------ Admin

    /// Creates a queue; zero fields of `config` take the node's defaults.
    /// Returns true when it was created, false when it already existed with
    /// the same configuration (so a retried create answers false);
    /// ALREADY_EXISTS when it exists with another.
    pub async fn create_queue(&self, name: &str, config: pb::QueueConfig) -> Result<bool, Error> {
        let request = pb::CreateQueueRequest {
            name: name.to_string(),
            config: Some(config),
            session: None,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        let (response, _) = self
            .sequenced(
                self.spec("create_queue", true),
                request,
                |r, s| r.session = Some(s),
                move |ch, req| async move { admin_api(ch, bytes_max).create_queue(req).await },
            )
            .await?;
        Ok(response.created)
    }

    /// Replaces a queue's configuration (zero fields: defaults).
    pub async fn update_queue(&self, name: &str, config: pb::QueueConfig) -> Result<(), Error> {
        let request = pb::UpdateQueueRequest {
            name: name.to_string(),
            config: Some(config),
            session: None,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        self.sequenced(
            self.spec("update_queue", true),
            request,
            |r, s| r.session = Some(s),
            move |ch, req| async move { admin_api(ch, bytes_max).update_queue(req).await },
        )
        .await?;
        Ok(())
    }

    /// Deletes a queue and its jobs. Not retried after a deadline: a second
    /// try would answer NOT_FOUND.
    pub async fn delete_queue(&self, name: &str) -> Result<(), Error> {
        let request = pb::DeleteQueueRequest {
            name: name.to_string(),
            session: None,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        self.sequenced(
            self.spec("delete_queue", false),
            request,
            |r, s| r.session = Some(s),
            move |ch, req| async move { admin_api(ch, bytes_max).delete_queue(req).await },
        )
        .await?;
        Ok(())
    }

    /// Creates the named subscription of `queue` (see
    /// `Admin.CreateSubscription`): true when created, false when it
    /// already existed.
    pub async fn create_subscription(&self, queue: &str, name: &str) -> Result<bool, Error> {
        let request = pb::CreateSubscriptionRequest {
            queue: queue.to_string(),
            name: name.to_string(),
            session: None,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        let (response, _) = self
            .sequenced(
                self.spec("create_subscription", true),
                request,
                |r, s| r.session = Some(s),
                move |ch, req| async move {
                    admin_api(ch, bytes_max).create_subscription(req).await
                },
            )
            .await?;
        Ok(response.created)
    }

    /// Deletes the named subscription of `queue` and its holds on every job.
    pub async fn delete_subscription(&self, queue: &str, name: &str) -> Result<(), Error> {
        let request = pb::DeleteSubscriptionRequest {
            queue: queue.to_string(),
            name: name.to_string(),
            session: None,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        self.sequenced(
            self.spec("delete_subscription", false),
            request,
            |r, s| r.session = Some(s),
            move |ch, req| async move { admin_api(ch, bytes_max).delete_subscription(req).await },
        )
        .await?;
        Ok(())
    }

    /// The named subscriptions of `queue`, each with its own counts.
    pub async fn list_subscriptions(
        &self,
        queue: &str,
        read: Consistency,
    ) -> Result<Vec<pb::SubscriptionInfo>, Error> {
        let request = pb::ListSubscriptionsRequest {
            queue: queue.to_string(),
            read: read.options(),
        };
        let bytes_max = self.inner.config.message_bytes_max;
        let (response, _) = self
            .call(
                self.spec("list_subscriptions", true),
                request,
                move |ch, req| async move { admin_api(ch, bytes_max).list_subscriptions(req).await },
            )
            .await?;
        Ok(response.subscriptions)
    }

    /// A queue's configuration and stats.
    pub async fn get_queue(&self, name: &str, read: Consistency) -> Result<pb::QueueInfo, Error> {
        let request = pb::GetQueueRequest {
            name: name.to_string(),
            read: read.options(),
        };
        let bytes_max = self.inner.config.message_bytes_max;
        let (response, _) = self
            .call(
                self.spec("get_queue", true),
                request,
                move |ch, req| async move { admin_api(ch, bytes_max).get_queue(req).await },
            )
            .await?;
        response.queue.ok_or_else(|| Error::Protocol {
            call: "get_queue",
            problem: "no queue in the answer".into(),
        })
    }

    /// Every queue, with configuration and stats.
    pub async fn list_queues(&self, read: Consistency) -> Result<Vec<pb::QueueInfo>, Error> {
        let request = pb::ListQueuesRequest {
            read: read.options(),
        };
        let bytes_max = self.inner.config.message_bytes_max;
        let (response, _) = self
            .call(
                self.spec("list_queues", true),
                request,
                move |ch, req| async move { admin_api(ch, bytes_max).list_queues(req).await },
            )
            .await?;
        Ok(response.queues)
    }

    /// One page of a queue's groups. The request carries the filter (key
    /// prefix, status), the page (`after`, `limit` 1..=1000) and the read
    /// consistency; `next_after` of the answer is empty at the end.
    pub async fn list_groups(
        &self,
        mut request: pb::ListGroupsRequest,
    ) -> Result<pb::ListGroupsResponse, Error> {
        if request.subscription.is_empty() {
            request.subscription.clone_from(&self.subscription);
        }
        let bytes_max = self.inner.config.message_bytes_max;
        Ok(self
            .call(
                self.spec("list_groups", true),
                request,
                move |ch, req| async move { admin_api(ch, bytes_max).list_groups(req).await },
            )
            .await?
            .0)
    }

    /// Stops deliveries from a group (its leased job, if any, runs on).
    pub async fn pause_group(&self, queue: &str, group: &str) -> Result<(), Error> {
        let request = pb::PauseGroupRequest {
            subscription: self.subscription.clone(),
            queue: queue.to_string(),
            group: group.to_string(),
            session: None,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        self.sequenced(
            self.spec("pause_group", true),
            request,
            |r, s| r.session = Some(s),
            move |ch, req| async move { admin_api(ch, bytes_max).pause_group(req).await },
        )
        .await?;
        Ok(())
    }

    /// One group: its head, the head's attempts, lease holder and
    /// deadline, backlog and paused flag ([`Error::is_not_found`] for a
    /// group with no job that is not paused).
    pub async fn get_group(
        &self,
        queue: &str,
        group: &str,
        read: Consistency,
    ) -> Result<pb::GroupInfo, Error> {
        let request = pb::GetGroupRequest {
            subscription: self.subscription.clone(),
            queue: queue.to_string(),
            group: group.to_string(),
            read: read.options(),
        };
        let bytes_max = self.inner.config.message_bytes_max;
        let (response, _) = self
            .call(
                self.spec("get_group", true),
                request,
                move |ch, req| async move { admin_api(ch, bytes_max).get_group(req).await },
            )
            .await?;
        response.group.ok_or_else(|| Error::Protocol {
            call: "get_group",
            problem: "no group in the answer".into(),
        })
    }

    /// Moves the group's head to the dead letters ("skipped: `reason`"),
    /// leased or not, so the group goes on; returns its offset. At most
    /// once: it runs under the client's session.
    pub async fn skip_group_head(
        &self,
        queue: &str,
        group: &str,
        reason: &str,
    ) -> Result<u64, Error> {
        let request = pb::SkipGroupHeadRequest {
            subscription: self.subscription.clone(),
            queue: queue.to_string(),
            group: group.to_string(),
            reason: reason.to_string(),
            session: None,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        let (response, _) = self
            .sequenced(
                self.spec("skip_group_head", true),
                request,
                |r, s| r.session = Some(s),
                move |ch, req| async move { admin_api(ch, bytes_max).skip_group_head(req).await },
            )
            .await?;
        Ok(response.offset)
    }

    /// Pauses the group and waits up to `wait` for its lease in flight to
    /// end: `drained` says whether nothing of it runs now. The group stays
    /// paused until [`Client::resume_group`].
    pub async fn drain_group(
        &self,
        queue: &str,
        group: &str,
        wait: Duration,
    ) -> Result<pb::DrainGroupResponse, Error> {
        let request = pb::DrainGroupRequest {
            subscription: self.subscription.clone(),
            queue: queue.to_string(),
            group: group.to_string(),
            wait_ms: millis(wait),
        };
        // A pause applied twice is a pause: safe to retry.
        let mut spec = self.spec("drain_group", true);
        spec.timeout = spec.timeout.saturating_add(wait);
        let bytes_max = self.inner.config.message_bytes_max;
        Ok(self
            .call(spec, request, move |ch, req| async move {
                admin_api(ch, bytes_max).drain_group(req).await
            })
            .await?
            .0)
    }

    /// The `limit` groups with the most jobs ([`pb::GroupRank::Backlog`])
    /// or the oldest heads ([`pb::GroupRank::Age`]), without a scan.
    pub async fn top_groups(
        &self,
        queue: &str,
        by: pb::GroupRank,
        limit: u32,
        read: Consistency,
    ) -> Result<Vec<pb::GroupInfo>, Error> {
        let request = pb::TopGroupsRequest {
            subscription: self.subscription.clone(),
            queue: queue.to_string(),
            by: by.into(),
            limit,
            read: read.options(),
        };
        let bytes_max = self.inner.config.message_bytes_max;
        let (response, _) = self
            .call(
                self.spec("top_groups", true),
                request,
                move |ch, req| async move { admin_api(ch, bytes_max).top_groups(req).await },
            )
            .await?;
        Ok(response.groups)
    }

    /// Lets a paused or parked group deliver again.
    pub async fn resume_group(&self, queue: &str, group: &str) -> Result<(), Error> {
        let request = pb::ResumeGroupRequest {
            subscription: self.subscription.clone(),
            queue: queue.to_string(),
            group: group.to_string(),
            session: None,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        self.sequenced(
            self.spec("resume_group", true),
            request,
            |r, s| r.session = Some(s),
            move |ch, req| async move { admin_api(ch, bytes_max).resume_group(req).await },
        )
        .await?;
        Ok(())
    }

    /// One page of a queue's dead letters, after offset `after` (exclusive),
    /// at most `limit`; `next_after` of the answer is `None` at the end.
    pub async fn list_dead_letters(
        &self,
        queue: &str,
        after: Option<u64>,
        limit: u32,
        read: Consistency,
    ) -> Result<pb::ListDeadLettersResponse, Error> {
        let request = pb::ListDeadLettersRequest {
            subscription: self.subscription.clone(),
            queue: queue.to_string(),
            after,
            limit,
            read: read.options(),
        };
        let bytes_max = self.inner.config.message_bytes_max;
        Ok(self
            .call(
                self.spec("list_dead_letters", true),
                request,
                move |ch, req| async move { admin_api(ch, bytes_max).list_dead_letters(req).await },
            )
            .await?
            .0)
    }

    /// Puts a dead letter back at the tail of its group; returns its new
    /// offset. Not retried after a deadline: a second try would answer
    /// NOT_FOUND.
    pub async fn requeue_dead_letter(&self, queue: &str, offset: u64) -> Result<u64, Error> {
        let request = pb::RequeueDeadLetterRequest {
            subscription: self.subscription.clone(),
            queue: queue.to_string(),
            offset,
            session: None,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        let (response, _) = self
            .sequenced(
                self.spec("requeue_dead_letter", false),
                request,
                |r, s| r.session = Some(s),
                move |ch, req| async move { admin_api(ch, bytes_max).requeue_dead_letter(req).await },
            )
            .await?;
        Ok(response.offset)
    }

    /// Deletes the dead letters at `offsets`, or all of them when `offsets`
    /// is empty; returns how many went.
    pub async fn purge_dead_letters(&self, queue: &str, offsets: Vec<u64>) -> Result<u64, Error> {
        let request = pb::PurgeDeadLettersRequest {
            subscription: self.subscription.clone(),
            queue: queue.to_string(),
            offsets,
            session: None,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        let (response, _) = self
            .sequenced(
                self.spec("purge_dead_letters", false),
                request,
                |r, s| r.session = Some(s),
                move |ch, req| async move { admin_api(ch, bytes_max).purge_dead_letters(req).await },
            )
            .await?;
        Ok(response.count)
    }

    // ---------------------------------------------------------- Cluster

    /// Members, roles, leader, term and indexes as the answering node sees
    /// them. The client also remembers the leader it names.
    pub async fn cluster_status(&self, read: Consistency) -> Result<pb::StatusResponse, Error> {
        let request = pb::StatusRequest {
            read: read.options(),
        };
        let bytes_max = self.inner.config.message_bytes_max;
        let (response, _) = self
            .call(
                self.spec("status", true),
                request,
                move |ch, req| async move { cluster_api(ch, bytes_max).status(req).await },
            )
            .await?;
        self.learn_from_status(&response);
        Ok(response)
    }

    /// Forms the cluster from its initial members; the node that receives
    /// the call passes it on to the others. It must be one of `members`, so
    /// give this client that node's address first. Returns false when the
    /// cluster was already formed; running it again is harmless.
    pub async fn bootstrap(&self, members: Vec<pb::JoinRequest>) -> Result<bool, Error> {
        let request = pb::BootstrapRequest {
            members,
            this_node_only: false,
        };
        let bytes_max = self.inner.config.message_bytes_max;
        let spec = CallSpec {
            timeout: self.inner.config.membership_call_timeout,
            ..self.spec("bootstrap", true)
        };
        let (response, _) = self
            .call(spec, request, move |ch, req| async move {
                cluster_api(ch, bytes_max).bootstrap(req).await
            })
            .await?;
        Ok(response.initialized)
    }

    /// Adds a node: as a learner until it has caught up, then as a voter.
    /// Each try may take up to `membership_call_timeout`. Not retried after
    /// a deadline: the node may still be catching up.
    pub async fn join(&self, id: u64, peer_addr: &str, client_addr: &str) -> Result<(), Error> {
        let request = pb::JoinRequest {
            id,
            peer_addr: peer_addr.to_string(),
            client_addr: client_addr.to_string(),
        };
        let spec = self.membership_spec("join");
        let bytes_max = self.inner.config.message_bytes_max;
        self.call(spec, request, move |ch, req| async move {
            cluster_api(ch, bytes_max).join(req).await
        })
        .await?;
        Ok(())
    }

    /// Takes a voter out of the cluster. Not retried after a deadline: a
    /// second try could answer NOT_FOUND for a removal that succeeded.
    pub async fn remove(&self, id: u64) -> Result<(), Error> {
        let request = pb::RemoveRequest { id };
        let spec = self.membership_spec("remove");
        let bytes_max = self.inner.config.message_bytes_max;
        self.call(spec, request, move |ch, req| async move {
            cluster_api(ch, bytes_max).remove(req).await
        })
        .await?;
        Ok(())
    }

    fn membership_spec(&self, name: &'static str) -> CallSpec {
        CallSpec {
            timeout: self.inner.config.membership_call_timeout,
            ..self.spec(name, false)
        }
    }
}

/// Gives every job without a `traceparent` header the producer's, so the
/// worker's span continues the producer's trace. It counts against the
/// job's header limits like any other header.
fn add_traceparent(jobs: &mut [pb::Job], traceparent: Option<String>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    for job in jobs {
        let has = crate::trace::traceparent_in(
            job.headers
                .iter()
                .map(|h| (h.key.as_str(), h.value.as_str())),
        )
        .is_some();
        if !has {
            job.headers.push(pb::Header {
                key: crate::trace::TRACEPARENT.into(),
                value: traceparent.clone(),
            });
        }
    }
}

/// Gives every job without an id one and the caller's trace context, and
/// returns the ids in order: done once before the first try, so every
/// retry sends the same jobs.
fn prepare_jobs(jobs: &mut [pb::Job], traceparent: Option<String>) -> Vec<String> {
    fill_missing_ids(jobs);
    add_traceparent(jobs, traceparent);
    jobs.iter()
        .map(|j| j.id.clone().unwrap_or_default())
        .collect()
}

/// The per-job results of an enqueue, checked against the ids sent.
fn enqueued(response: pb::EnqueueResponse, ids: Vec<String>) -> Result<Vec<Enqueued>, Error> {
    if response.results.len() != ids.len() {
        return Err(Error::Protocol {
            call: "enqueue",
            problem: format!("{} results for {} jobs", response.results.len(), ids.len()),
        });
    }
    response
        .results
        .into_iter()
        .zip(ids)
        .map(|(r, sent)| {
            let outcome = match pb::EnqueueOutcome::try_from(r.outcome) {
                Ok(pb::EnqueueOutcome::Created) => EnqueueOutcome::Created,
                Ok(pb::EnqueueOutcome::Duplicate) => EnqueueOutcome::Duplicate {
                    state: pb::JobState::try_from(r.state).unwrap_or(pb::JobState::Unspecified),
                },
                Ok(pb::EnqueueOutcome::IdConflict) => EnqueueOutcome::IdConflict,
                Ok(pb::EnqueueOutcome::Unspecified) | Err(_) => {
                    return Err(Error::Protocol {
                        call: "enqueue",
                        problem: format!("unknown outcome {} for job `{sent}`", r.outcome),
                    })
                }
            };
            Ok(Enqueued {
                id: if r.id.is_empty() { sent } else { r.id },
                offset: r.offset,
                outcome,
            })
        })
        .collect()
}

fn lazy_channel(config: &ClientConfig, addr: &str) -> Result<Channel, String> {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("`{addr}`: {e}"))?;
    if let Some(tls) = &config.tls {
        let mut settings = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem));
        if let Some(name) = &tls.domain_name {
            settings = settings.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(settings)
            .map_err(|e| format!("`{addr}`: TLS: {e}"))?;
    }
    let endpoint = endpoint
        .connect_timeout(config.connect_timeout)
        .local_address(config.local_address)
        .tcp_nodelay(true)
        // hyper sends a ping once half the bound passed without a frame
        // from the node, and drops the connection if the pong is not back
        // within the other half. Idle connections are not pinged: no call
        // waits on them.
        .http2_keep_alive_interval(config.silence_timeout / 2)
        .keep_alive_timeout(config.silence_timeout / 2)
        .keep_alive_while_idle(false);
    Ok(endpoint.connect_lazy())
}

impl Inner {
    /// The `authorization` metadata value for the configured token.
    fn authorization(&self) -> Result<Option<tonic::metadata::AsciiMetadataValue>, Error> {
        let Some(token) = &self.config.token else {
            return Ok(None);
        };
        format!("Bearer {}", token.secret())
            .parse()
            .map(Some)
            .map_err(|_| Error::config("token", "is not valid gRPC metadata"))
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        // The lock guards plain bookkeeping that every writer leaves
        // consistent, so a panic elsewhere cannot leave it half-changed.
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The node for the next try: the leader if known, else the current one.
    fn pick(&self) -> (usize, String, Channel) {
        let routes = self.routes();
        let i = routes.leader.unwrap_or(routes.current);
        let node = &routes.nodes[i];
        (i, node.addr.clone(), node.channel.clone())
    }

    /// After a failed try on node `failed`: follows the leader `hint` if it
    /// names another node (true: try there at once), else moves on to the
    /// next endpoint.
    fn on_failure(&self, failed: usize, hint: Option<&str>) -> bool {
        let mut routes = self.routes();
        if let Some(j) = hint.and_then(|h| self.index_of(&mut routes, h)) {
            if j != failed {
                routes.leader = Some(j);
                routes.current = j;
                return true;
            }
        }
        if routes.leader == Some(failed) {
            routes.leader = None;
        }
        if routes.current == failed {
            routes.current = (failed + 1) % routes.nodes.len();
        }
        false
    }

    fn learn_leader(&self, addr: &str) {
        let mut routes = self.routes();
        if let Some(j) = self.index_of(&mut routes, addr) {
            if routes.leader != Some(j) {
                tracing::debug!(leader = %routes.nodes[j].addr, "learned the leader");
            }
            routes.leader = Some(j);
            routes.current = j;
        }
    }

    /// The index of the node at `addr`, added (with a lazy channel) when
    /// new and there is room under `ENDPOINTS_MAX`.
    fn index_of(&self, routes: &mut Routes, addr: &str) -> Option<usize> {
        if routes.pinned {
            return None;
        }
        let addr = normalize_endpoint(addr).ok()?;
        if let Some(i) = routes.nodes.iter().position(|n| n.addr == addr) {
            return Some(i);
        }
        if routes.nodes.len() >= ENDPOINTS_MAX {
            tracing::debug!(%addr, "leader hint ignored: ENDPOINTS_MAX reached");
            return None;
        }
        let channel = lazy_channel(&self.config, &addr).ok()?;
        routes.nodes.push(Node { addr, channel });
        Some(routes.nodes.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcome: pb::EnqueueOutcome, offset: u64, id: &str) -> pb::EnqueueResult {
        pb::EnqueueResult {
            outcome: outcome.into(),
            offset,
            state: pb::JobState::Done.into(),
            id: id.into(),
        }
    }

    #[test]
    fn enqueue_results_map_to_outcomes_in_order() {
        let response = pb::EnqueueResponse {
            results: vec![
                result(pb::EnqueueOutcome::Created, 7, "a"),
                result(pb::EnqueueOutcome::Duplicate, 3, ""),
                result(pb::EnqueueOutcome::IdConflict, 2, "c"),
            ],
        };
        let got = enqueued(response, vec!["a".into(), "b".into(), "c".into()]).expect("valid");
        assert_eq!(got[0].outcome, EnqueueOutcome::Created);
        assert_eq!(
            (got[1].id.as_str(), got[1].offset, got[1].outcome),
            (
                "b",
                3,
                EnqueueOutcome::Duplicate {
                    state: pb::JobState::Done
                }
            )
        );
        assert_eq!(got[2].outcome, EnqueueOutcome::IdConflict);
    }

    #[test]
    fn a_short_or_unknown_enqueue_answer_is_a_protocol_error() {
        let short = pb::EnqueueResponse { results: vec![] };
        assert!(matches!(
            enqueued(short, vec!["a".into()]),
            Err(Error::Protocol { .. })
        ));
        let unknown = pb::EnqueueResponse {
            results: vec![pb::EnqueueResult {
                outcome: 42,
                ..Default::default()
            }],
        };
        assert!(matches!(
            enqueued(unknown, vec!["a".into()]),
            Err(Error::Protocol { .. })
        ));
    }

    #[test]
    fn connect_outside_a_runtime_is_a_config_error_not_a_panic() {
        let err = Client::connect(ClientConfig::new(["127.0.0.1:1"])).expect_err("no runtime");
        assert!(
            matches!(err, Error::Config { ref key, .. } if key == "runtime"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn failures_rotate_endpoints_and_hints_are_followed_and_added() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let client =
                Client::connect(ClientConfig::new(["a:1", "b:1", "http://a:1"])).expect("valid");
            assert_eq!(client.endpoints(), ["a:1", "b:1"], "duplicates are merged");
            let inner = &client.inner;
            assert_eq!(inner.pick().0, 0);
            assert!(!inner.on_failure(0, None));
            assert_eq!(inner.pick().0, 1);
            assert!(!inner.on_failure(1, None));
            assert_eq!(inner.pick().0, 0, "wraps around");
            // A hint naming an unknown node adds it and goes there at once.
            assert!(inner.on_failure(0, Some("c:1")));
            assert_eq!(client.leader().as_deref(), Some("c:1"));
            assert_eq!(inner.pick().1, "c:1");
            // The leader failing without a hint is forgotten.
            assert!(!inner.on_failure(2, None));
            assert_eq!(client.leader(), None);
            // A hint naming the node that just failed is not followed.
            let (i, addr, _) = inner.pick();
            assert!(!inner.on_failure(i, Some(&addr)));
            assert_ne!(inner.pick().0, i);
        })
        .await
        .expect("test timed out");
    }
}
