//! Prometheus metrics over HTTP (`GET /metrics`, OpenMetrics text) and the
//! per-request span of the public gRPC services.
//!
//! Two kinds of numbers are exposed:
//!
//! - Events this node observes as they happen: commit latency and size of
//!   each Raft batch, the latency and outcome of each RPC, and forwards to
//!   the leader. They live in [`Metrics`], which the node owns.
//! - State read at scrape time: Raft's term, leader and indexes from
//!   `raft.metrics()`, and each queue's depth, bytes, groups and running
//!   totals from the applied state. Nothing is kept for them between
//!   scrapes, so a deleted queue disappears from the next scrape.
//!
//! Every family is named `lockstep_*` and has HELP text; README.md lists
//! them.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use lockstep_core::QueueInfo;
use lockstep_store::{NodeId, NodeInfo};
use openraft::RaftMetrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    text, DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::node::Node;
use crate::pb;

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Latency buckets: 0.5 ms doubling to 8.192 s (15 bounds, then +Inf).
const LATENCY_SECONDS_MIN: f64 = 0.000_5;
const LATENCY_BUCKETS: u16 = 15;
/// Batch-size buckets: 1 doubling to 2048 commands.
const BATCH_BUCKETS: u16 = 12;
/// Longest a scrape waits for Raft to report its commit index; a node whose
/// Raft core is stuck still answers the rest.
const SCRAPE_RAFT_WAIT_MS_MAX: u64 = 1_000;
/// The protobuf package, and so the gRPC path prefix, of the services the
/// RPC metrics cover.
const RPC_PACKAGE: &str = "lockstep.v1";
/// The `method` label of a path that names no method of [`RPC_PACKAGE`].
const METHOD_UNKNOWN: &str = "unknown";

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        LATENCY_SECONDS_MIN,
        2.0,
        LATENCY_BUCKETS,
    ))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    /// `Service/Method`, for example `Queue/Enqueue`.
    method: String,
    /// The canonical gRPC code name, for example `OK` or `NOT_FOUND`.
    code: &'static str,
}

type RpcFamily = Family<RpcLabels, Histogram, fn() -> Histogram>;

/// The event metrics of one node. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rpc_seconds: RpcFamily,
    commit_seconds: Histogram,
    batch_commands: Histogram,
    forwards: Counter,
    forward_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let rpc_seconds: RpcFamily = Family::new_with_constructor(latency_histogram);
        let commit_seconds = latency_histogram();
        let batch_commands = Histogram::new(exponential_buckets(1.0, 2.0, BATCH_BUCKETS));
        let forwards = Counter::default();
        let forward_failures = Counter::default();
        let mut registry = Registry::default();
        registry.register(
            "lockstep_rpc_duration_seconds",
            "Time to answer a lockstep.v1 RPC on this node, by method and gRPC code (a Fetch includes its long-poll wait)",
            rpc_seconds.clone(),
        );
        registry.register(
            "lockstep_raft_commit_duration_seconds",
            "Time from proposing a batch to Raft on the leader until it is committed and applied",
            commit_seconds.clone(),
        );
        registry.register(
            "lockstep_raft_batch_commands",
            "Client commands carried by one proposed Raft entry",
            batch_commands.clone(),
        );
        registry.register(
            "lockstep_forwards",
            "Requests this node sent to the leader over the peer channel (each try counts)",
            forwards.clone(),
        );
        registry.register(
            "lockstep_forward_failures",
            "Forward tries that failed (leader unreachable or gone); the request is retried until limits.forward_retry_ms_max",
            forward_failures.clone(),
        );
        Metrics {
            registry,
            rpc_seconds,
            commit_seconds,
            batch_commands,
            forwards,
            forward_failures,
        }
    }

    /// A batch of `commands` was proposed; `committed` is how long it took
    /// to commit, if it did.
    pub fn observe_batch(&self, commands: usize, committed: Option<Duration>) {
        self.batch_commands.observe(commands as f64);
        if let Some(elapsed) = committed {
            self.commit_seconds.observe(elapsed.as_secs_f64());
        }
    }

    pub fn observe_forward(&self, ok: bool) {
        self.forwards.inc();
        if !ok {
            self.forward_failures.inc();
        }
    }

    fn observe_rpc(&self, method: &str, code: &'static str, elapsed: Duration) {
        let labels = RpcLabels {
            method: method.to_string(),
            code,
        };
        self.rpc_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The whole exposition: these event metrics, then `scrape`, then the
    /// OpenMetrics EOF marker.
    pub fn encode(&self, scrape: Scrape) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        text::encode_registry(&mut out, &self.registry)?;
        let mut once = Registry::default();
        once.register_collector(Box::new(scrape));
        text::encode_registry(&mut out, &once)?;
        text::encode_eof(&mut out)?;
        Ok(out)
    }
}

/// What a scrape reads from Raft and the applied state.
#[derive(Debug, Default)]
pub struct Scrape {
    pub term: u64,
    pub leading: bool,
    /// 0 when no leader is known (node ids start at 1).
    pub leader_id: u64,
    pub last_log_index: u64,
    /// `None` when Raft did not answer in time.
    pub commit_index: Option<u64>,
    pub applied_index: u64,
    /// On the leader: each other member's lag behind its last log index.
    pub replication_lag: BTreeMap<NodeId, u64>,
    pub queues: Vec<QueueInfo>,
}

impl Scrape {
    /// Reads Raft's view of this node from its metrics watch, plus the
    /// commit index, which openraft 0.9 keeps out of `RaftMetrics`.
    pub fn raft(
        &mut self,
        metrics: &RaftMetrics<NodeId, NodeInfo>,
        commit_index: Option<Option<u64>>,
    ) {
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        self.term = metrics.current_term;
        self.leading = metrics.current_leader == Some(metrics.id);
        self.leader_id = metrics.current_leader.unwrap_or(0);
        self.last_log_index = last_log_index;
        self.commit_index = commit_index.map(|c| c.unwrap_or(0));
        self.applied_index = metrics.last_applied.map_or(0, |l| l.index);
        // openraft reports the leader's own progress too; its lag is not
        // replication lag.
        self.replication_lag = metrics
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != metrics.id)
            .map(|(id, matched)| {
                let matched = matched.map_or(0, |l| l.index);
                (*id, last_log_index.saturating_sub(matched))
            })
            .collect();
    }

    /// Takes everything a scrape shows from the running node.
    pub async fn of(node: &Node) -> Scrape {
        let commit_index = tokio::time::timeout(
            Duration::from_millis(SCRAPE_RAFT_WAIT_MS_MAX),
            node.raft
                .with_raft_state(|st| st.committed.map(|l| l.index)),
        )
        .await
        .ok()
        .and_then(Result::ok);
        let mut scrape = Scrape::default();
        scrape.raft(&node.raft.metrics().borrow(), commit_index);
        // These come from the replicated state machine, so every node that
        // has applied the same index reports the same numbers: sum or
        // compare them per node, never add them across nodes. A follower
        // that lags reports older numbers.
        match node.state.read(|s| s.list_queues()) {
            Ok(queues) => scrape.queues = queues,
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the queues"),
        }
        scrape
    }
}

fn gauge(out: MetricEncoder, value: u64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value as i64).encode(out)
}

fn counter(out: MetricEncoder, value: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(out)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let raft: [(&str, &str, u64); 5] = [
            (
                "lockstep_raft_term",
                "The current Raft term as this node sees it.",
                self.term,
            ),
            (
                "lockstep_raft_is_leader",
                "1 if this node is the Raft leader, else 0.",
                u64::from(self.leading),
            ),
            (
                "lockstep_raft_leader_id",
                "The id of the leader this node knows, 0 if none.",
                self.leader_id,
            ),
            (
                "lockstep_raft_last_log_index",
                "Index of the last entry in this node's Raft log.",
                self.last_log_index,
            ),
            (
                "lockstep_raft_applied_index",
                "Index of the last entry this node applied to its state machine.",
                self.applied_index,
            ),
        ];
        for (name, help, value) in raft {
            gauge(
                enc.encode_descriptor(name, help, None, MetricType::Gauge)?,
                value,
            )?;
        }
        if let Some(commit) = self.commit_index {
            let out = enc.encode_descriptor(
                "lockstep_raft_commit_index",
                "Index of the last entry this node knows to be committed.",
                None,
                MetricType::Gauge,
            )?;
            gauge(out, commit)?;
        }
        if !self.replication_lag.is_empty() {
            let mut out = enc.encode_descriptor(
                "lockstep_raft_replication_lag",
                "On the leader: entries of its log each follower or learner has not yet matched.",
                None,
                MetricType::Gauge,
            )?;
            for (id, lag) in &self.replication_lag {
                let id = id.to_string();
                gauge(out.encode_family(&[("follower", id.as_str())])?, *lag)?;
            }
        }
        if self.queues.is_empty() {
            return Ok(());
        }

        let mut out = enc.encode_descriptor(
            "lockstep_queue_depth",
            "Jobs in a queue by state: ready, delayed, leased or dead (dead-lettered).",
            None,
            MetricType::Gauge,
        )?;
        for q in &self.queues {
            let s = &q.stats;
            for (state, value) in [
                ("ready", s.ready),
                ("delayed", s.delayed),
                ("leased", s.leased),
                ("dead", s.dead),
            ] {
                let labels = [("queue", q.name.as_str()), ("state", state)];
                gauge(out.encode_family(&labels)?, value)?;
            }
        }
        type Field = fn(&QueueInfo) -> u64;
        let gauges: [(&str, &str, Field); 2] = [
            (
                "lockstep_queue_bytes",
                "Payload bytes of a queue's pending and dead-lettered jobs.",
                |q| q.stats.bytes,
            ),
            (
                "lockstep_queue_groups",
                "Groups of a queue that have jobs or are paused.",
                |q| q.stats.groups,
            ),
        ];
        for (name, help, field) in gauges {
            let mut out = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for q in &self.queues {
                gauge(out.encode_family(&[("queue", q.name.as_str())])?, field(q))?;
            }
        }
        let mut out = enc.encode_descriptor(
            "lockstep_queue_oldest_ready_age_seconds",
            "Age of the oldest job a fetch could take now, by the queue's cluster clock (0 when none).",
            None,
            MetricType::Gauge,
        )?;
        for q in &self.queues {
            let age = q.stats.oldest_ready_age_ms as f64 / 1_000.0;
            ConstGauge::new(age).encode(out.encode_family(&[("queue", q.name.as_str())])?)?;
        }
        let counters: [(&str, &str, Field); 8] = [
            (
                "lockstep_queue_enqueued",
                "Jobs accepted into a queue (duplicates excluded).",
                |q| q.stats.counters.enqueued,
            ),
            (
                "lockstep_queue_duplicates",
                "Enqueues answered as duplicates of a job id inside the dedup window.",
                |q| q.stats.counters.duplicates,
            ),
            (
                "lockstep_queue_delivered",
                "Deliveries (leases granted) of a queue's jobs, first or later.",
                |q| q.stats.counters.delivered,
            ),
            (
                "lockstep_queue_redelivered",
                "Deliveries of a job that had been delivered before.",
                |q| q.stats.counters.redelivered,
            ),
            ("lockstep_queue_acked", "Jobs acknowledged as done.", |q| {
                q.stats.counters.acked
            }),
            (
                "lockstep_queue_nacked",
                "Negative acknowledgements by workers.",
                |q| q.stats.counters.nacked,
            ),
            (
                "lockstep_queue_lease_expired",
                "Leases that expired before an ack, nack or release.",
                |q| q.stats.counters.expired,
            ),
            (
                "lockstep_queue_dead_lettered",
                "Jobs moved to the dead letters.",
                |q| q.stats.counters.dead_lettered,
            ),
        ];
        for (name, help, field) in counters {
            let mut out = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for q in &self.queues {
                counter(out.encode_family(&[("queue", q.name.as_str())])?, field(q))?;
            }
        }
        Ok(())
    }
}

/// Serves `GET /metrics` on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(node);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

async fn scrape(State(node): State<Arc<Node>>) -> Response {
    let scrape = Scrape::of(&node).await;
    match node.metrics.encode(scrape) {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        )
            .into_response(),
    }
}

/// The canonical name of a gRPC status code, as gRPC's own docs spell it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The outcome of a unary call: tonic sends an error as a trailers-only
/// response with `grpc-status` in the headers, and a success with the
/// status in the trailers, so a missing header means OK.
fn response_code<B>(response: &http::Response<B>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .map_or(tonic::Code::Ok, |v| tonic::Code::from_bytes(v.as_bytes()))
}

/// Every `Service/Method` of [`RPC_PACKAGE`], from the compiled-in
/// descriptors, so a new RPC is covered without a list to keep up.
fn rpc_methods() -> BTreeSet<String> {
    let set = match prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET) {
        Ok(set) => set,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot read the API descriptors; every method is `unknown`");
            return BTreeSet::new();
        }
    };
    set.file
        .iter()
        .filter(|f| f.package() == RPC_PACKAGE)
        .flat_map(|f| &f.service)
        .flat_map(|s| {
            s.method
                .iter()
                .map(move |m| format!("{}/{}", s.name(), m.name()))
        })
        .collect()
}

/// A tower layer for the client gRPC server: every `lockstep.v1` call runs
/// in an `rpc` span (method, node id, and the queue once the service knows
/// it) and its latency is recorded by method and gRPC code. Other paths
/// (health, reflection) pass through untouched.
#[derive(Clone, Debug)]
pub struct RpcLayer {
    metrics: Arc<Metrics>,
    node_id: NodeId,
    /// The `method` label values; any other path is [`METHOD_UNKNOWN`], so
    /// clients cannot grow the label set.
    methods: Arc<BTreeSet<String>>,
}

impl RpcLayer {
    pub fn new(metrics: Arc<Metrics>, node_id: NodeId) -> RpcLayer {
        RpcLayer {
            metrics,
            node_id,
            methods: Arc::new(rpc_methods()),
        }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RpcService<S> {
    inner: S,
    layer: RpcLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for RpcService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>, Error = Infallible>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<R>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let Some(method) = path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(RPC_PACKAGE))
            .and_then(|p| p.strip_prefix('.'))
        else {
            return Box::pin(self.inner.call(request));
        };
        let method = match self.layer.methods.get(method) {
            Some(known) => known.clone(),
            None => METHOD_UNKNOWN.to_string(),
        };
        let call = RpcCall {
            metrics: self.layer.metrics.clone(),
            method,
            started: Instant::now(),
            code: tonic::Code::Cancelled,
        };
        // Payloads and metadata are never recorded; `Node::execute` fills
        // in `queue`.
        let span = tracing::info_span!(
            "rpc",
            method = %call.method,
            node = self.layer.node_id,
            queue = tracing::field::Empty,
        );
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                // Moved in whole: the block would otherwise capture only the
                // Copy fields it names and drop (record) `call` right away.
                let mut call = call;
                let result = future.await;
                if let Ok(response) = &result {
                    call.code = response_code(response);
                }
                tracing::debug!(
                    code = code_name(call.code),
                    elapsed_us = call.started.elapsed().as_micros() as u64,
                    "rpc answered"
                );
                result
            }
            .instrument(span),
        )
    }
}

/// One call in progress. Recorded when dropped, so a call the client
/// abandons is still counted, as CANCELLED.
struct RpcCall {
    metrics: Arc<Metrics>,
    method: String,
    started: Instant,
    code: tonic::Code,
}

impl Drop for RpcCall {
    fn drop(&mut self) {
        self.metrics
            .observe_rpc(&self.method, code_name(self.code), self.started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use lockstep_core::{Counters, QueueConfig, QueueStats};

    fn queue(name: &str, ready: u64, enqueued: u64) -> QueueInfo {
        QueueInfo {
            name: name.into(),
            config: QueueConfig::default(),
            stats: QueueStats {
                queue_id: 1,
                ready,
                delayed: 2,
                leased: 3,
                dead: 4,
                bytes: 500,
                ack_floor: 0,
                next_offset: 10,
                oldest_ready_age_ms: 7_500,
                groups: 6,
                counters: Counters {
                    enqueued,
                    duplicates: 1,
                    delivered: 8,
                    redelivered: 2,
                    acked: 5,
                    nacked: 1,
                    expired: 1,
                    dead_lettered: 4,
                },
            },
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn the_exposition_has_every_family_with_help_and_the_recorded_values() {
        let metrics = Metrics::new();
        metrics.observe_batch(3, Some(Duration::from_millis(4)));
        metrics.observe_batch(1, None);
        metrics.observe_forward(true);
        metrics.observe_forward(false);
        metrics.observe_rpc("Queue/Enqueue", "OK", Duration::from_millis(2));
        metrics.observe_rpc("Queue/Enqueue", "OK", Duration::from_millis(20));
        metrics.observe_rpc("Admin/GetQueue", "NOT_FOUND", Duration::from_micros(100));

        let mut raft = RaftMetrics::<NodeId, NodeInfo>::new_initial(1);
        raft.current_term = 3;
        raft.current_leader = Some(1);
        raft.last_log_index = Some(42);
        raft.last_applied = Some(openraft::LogId::new(
            openraft::CommittedLeaderId::new(3, 1),
            41,
        ));
        raft.replication = Some(
            [
                (
                    1,
                    Some(openraft::LogId::new(
                        openraft::CommittedLeaderId::new(3, 1),
                        42,
                    )),
                ),
                (
                    2,
                    Some(openraft::LogId::new(
                        openraft::CommittedLeaderId::new(3, 1),
                        40,
                    )),
                ),
                (3, None),
            ]
            .into_iter()
            .collect(),
        );
        let mut scrape = Scrape {
            queues: vec![queue("jobs", 1, 9), queue("mail", 0, 2)],
            ..Scrape::default()
        };
        scrape.raft(&raft, Some(Some(41)));
        let text = metrics.encode(scrape).unwrap();
        let got = lines(&text);

        for expected in [
            "lockstep_raft_term 3",
            "lockstep_raft_is_leader 1",
            "lockstep_raft_leader_id 1",
            "lockstep_raft_last_log_index 42",
            "lockstep_raft_commit_index 41",
            "lockstep_raft_applied_index 41",
            "lockstep_raft_replication_lag{follower=\"2\"} 2",
            "lockstep_raft_replication_lag{follower=\"3\"} 42",
            "lockstep_queue_depth{queue=\"jobs\",state=\"ready\"} 1",
            "lockstep_queue_depth{queue=\"jobs\",state=\"dead\"} 4",
            "lockstep_queue_depth{queue=\"mail\",state=\"ready\"} 0",
            "lockstep_queue_bytes{queue=\"jobs\"} 500",
            "lockstep_queue_groups{queue=\"jobs\"} 6",
            "lockstep_queue_oldest_ready_age_seconds{queue=\"jobs\"} 7.5",
            "lockstep_queue_enqueued_total{queue=\"jobs\"} 9",
            "lockstep_queue_enqueued_total{queue=\"mail\"} 2",
            "lockstep_queue_lease_expired_total{queue=\"jobs\"} 1",
            "lockstep_queue_dead_lettered_total{queue=\"jobs\"} 4",
            "lockstep_forwards_total 2",
            "lockstep_forward_failures_total 1",
            "lockstep_raft_batch_commands_count 2",
            "lockstep_raft_batch_commands_sum 4.0",
            "lockstep_raft_commit_duration_seconds_count 1",
            "lockstep_rpc_duration_seconds_count{method=\"Queue/Enqueue\",code=\"OK\"} 2",
            "lockstep_rpc_duration_seconds_count{method=\"Admin/GetQueue\",code=\"NOT_FOUND\"} 1",
            "lockstep_rpc_duration_seconds_bucket{le=\"0.004\",method=\"Queue/Enqueue\",code=\"OK\"} 1",
            "# EOF",
        ] {
            assert!(got.contains(&expected), "missing `{expected}` in\n{text}");
        }
        assert!(
            !text.contains("follower=\"1\""),
            "the leader is not its own follower"
        );
        assert_eq!(got.last(), Some(&"# EOF"), "EOF ends the exposition");

        // Every family has HELP and TYPE, once.
        let families: Vec<&str> = got
            .iter()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        for family in &families {
            let help = format!("# HELP {family} ");
            assert_eq!(
                got.iter().filter(|l| l.starts_with(&help)).count(),
                1,
                "{family} has one HELP"
            );
            assert!(family.starts_with("lockstep_"), "{family} is prefixed");
        }
        assert_eq!(families.len(), 24, "{families:?}");
    }

    #[test]
    fn a_follower_without_queues_shows_only_raft_gauges() {
        let metrics = Metrics::new();
        let mut raft = RaftMetrics::<NodeId, NodeInfo>::new_initial(2);
        raft.current_leader = Some(1);
        let mut scrape = Scrape::default();
        scrape.raft(&raft, None);
        let text = metrics.encode(scrape).unwrap();
        assert!(text.contains("\nlockstep_raft_is_leader 0\n"), "{text}");
        assert!(text.contains("\nlockstep_raft_leader_id 1\n"), "{text}");
        assert!(!text.contains("lockstep_raft_commit_index"), "{text}");
        assert!(!text.contains("lockstep_raft_replication_lag"), "{text}");
        assert!(!text.contains("lockstep_queue_"), "{text}");
    }

    #[test]
    fn the_method_labels_are_the_methods_of_the_api() {
        let methods = rpc_methods();
        for method in ["Queue/Enqueue", "Admin/CreateQueue", "Cluster/Bootstrap"] {
            assert!(methods.contains(method), "{method} in {methods:?}");
        }
        assert!(
            methods.iter().all(|m| ["Queue/", "Admin/", "Cluster/"]
                .iter()
                .any(|s| m.starts_with(s))),
            "{methods:?}"
        );
    }

    #[test]
    fn grpc_codes_come_from_the_headers_and_default_to_ok() {
        let ok = http::Response::new(());
        assert_eq!(response_code(&ok), tonic::Code::Ok);
        let mut err = http::Response::new(());
        err.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(response_code(&err), tonic::Code::NotFound);
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
    }

    /// A stand-in for the tonic routes: answers after a pause, with
    /// `grpc-status` in the headers if given (an error).
    #[derive(Clone)]
    struct Answer(Option<&'static str>);

    impl tower::Service<http::Request<()>> for Answer {
        type Response = http::Response<()>;
        type Error = Infallible;
        type Future = BoxFuture<Result<http::Response<()>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let status = self.0;
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut response = http::Response::new(());
                if let Some(code) = status {
                    response
                        .headers_mut()
                        .insert("grpc-status", http::HeaderValue::from_static(code));
                }
                Ok(response)
            })
        }
    }

    async fn call(metrics: &Arc<Metrics>, status: Option<&'static str>, path: &str) {
        use tower::{Layer, Service};
        let mut service = RpcLayer::new(metrics.clone(), 1).layer(Answer(status));
        let request = http::Request::builder().uri(path).body(()).unwrap();
        service.call(request).await.unwrap();
    }

    #[tokio::test]
    async fn the_layer_records_each_lockstep_call_once_with_its_code() {
        let metrics = Arc::new(Metrics::new());
        call(&metrics, None, "/lockstep.v1.Queue/Enqueue").await;
        call(&metrics, Some("5"), "/lockstep.v1.Admin/GetQueue").await;
        call(&metrics, Some("12"), "/lockstep.v1.Queue/Nope").await;
        call(&metrics, Some("12"), "/lockstep.v1.Other/Thing").await;
        call(&metrics, None, "/grpc.health.v1.Health/Check").await;
        // A call the client abandons counts as CANCELLED.
        let abandoned = call(&metrics, None, "/lockstep.v1.Queue/Fetch");
        let _ = tokio::time::timeout(Duration::from_millis(1), abandoned).await;

        let text = metrics.encode(Scrape::default()).unwrap();
        let count = |labels: &str| {
            value_of(
                &text,
                &format!("lockstep_rpc_duration_seconds_count{{{labels}}}"),
            )
        };
        assert_eq!(count("method=\"Queue/Enqueue\",code=\"OK\""), Some(1.0));
        assert_eq!(
            count("method=\"Admin/GetQueue\",code=\"NOT_FOUND\""),
            Some(1.0)
        );
        // Unknown methods share one label, so clients cannot grow the set.
        assert_eq!(
            count("method=\"unknown\",code=\"UNIMPLEMENTED\""),
            Some(2.0)
        );
        assert_eq!(
            count("method=\"Queue/Fetch\",code=\"CANCELLED\""),
            Some(1.0)
        );
        assert!(!text.contains("Health"), "other services are not recorded");
        let sum = value_of(
            &text,
            "lockstep_rpc_duration_seconds_sum{method=\"Queue/Enqueue\",code=\"OK\"}",
        );
        assert!(sum.unwrap() >= 0.020, "the time covers the answer: {text}");
    }

    fn value_of(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }
}
