//! The event metrics of one node: what it observes as it happens (commit
//! latency and size of each Raft batch, the latency and outcome of each RPC,
//! forwards to the leader), and the whole exposition's encoding.

use std::time::Duration;

use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::scrape::Scrape;

/// Latency buckets: 0.5 ms doubling to 8.192 s (15 bounds, then +Inf).
const LATENCY_SECONDS_MIN: f64 = 0.000_5;
const LATENCY_BUCKETS: u16 = 15;
/// Batch-size buckets: 1 doubling to 2048 commands.
const BATCH_BUCKETS: u16 = 12;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvariantLabels {
    /// Which invariant, from a fixed set named in the code (for example
    /// `payload_missing`), so the label set cannot grow.
    what: &'static str,
}

/// The event metrics of one node. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rpc_seconds: RpcFamily,
    commit_seconds: Histogram,
    batch_commands: Histogram,
    forwards: Counter,
    forward_failures: Counter,
    clock_skew_exceeded: Counter,
    requests_shed: Counter,
    invariant_violations: Family<InvariantLabels, Counter>,
    disk_free_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics, every family registered.
    pub fn new() -> Metrics {
        let rpc_seconds: RpcFamily = Family::new_with_constructor(latency_histogram);
        let commit_seconds = latency_histogram();
        let batch_commands = Histogram::new(exponential_buckets(1.0, 2.0, BATCH_BUCKETS));
        let forwards = Counter::default();
        let forward_failures = Counter::default();
        let clock_skew_exceeded = Counter::default();
        let requests_shed = Counter::default();
        let disk_free_bytes = Gauge::default();
        let invariant_violations = Family::<InvariantLabels, Counter>::default();
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
        registry.register(
            "lockstep_clock_skew_exceeded",
            "Times this node, as leader, found its wall clock further than clock.skew_ms_max from cluster time (once per excursion); cluster time keeps to the leader's monotonic clock, so check the node's time sync",
            clock_skew_exceeded.clone(),
        );
        registry.register(
            "lockstep_requests_shed",
            "Requests refused with RESOURCE_EXHAUSTED because limits.requests_in_flight_max client (or forwarded) requests were in flight on this node",
            requests_shed.clone(),
        );
        registry.register(
            "lockstep_invariant_violations",
            "Times this node found a rule of its own state broken at run time, by invariant (payload_missing: a delivery's payload is not in the payload store); the call that found it answers INTERNAL and the node logs an error. Any non-zero value is a bug or damaged storage",
            invariant_violations.clone(),
        );
        registry.register(
            "lockstep_disk_free_bytes",
            "Free bytes in the data directory's filesystem, read every 500 ms; below limits.disk_free_bytes_min this node, as leader, refuses enqueues, fetches, new queues and new sessions",
            disk_free_bytes.clone(),
        );
        Metrics {
            registry,
            disk_free_bytes,
            rpc_seconds,
            commit_seconds,
            batch_commands,
            forwards,
            forward_failures,
            clock_skew_exceeded,
            requests_shed,
            invariant_violations,
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

    /// A forward to the leader was tried; `ok` when it reached it.
    pub fn observe_forward(&self, ok: bool) {
        self.forwards.inc();
        if !ok {
            self.forward_failures.inc();
        }
    }

    /// The leader's wall clock went further from cluster time than
    /// `clock.skew_ms_max`.
    pub fn observe_clock_skew_exceeded(&self) {
        self.clock_skew_exceeded.inc();
    }

    /// The data directory's free bytes, as last read.
    pub fn observe_disk_free(&self, bytes: u64) {
        self.disk_free_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// A request was shed at `limits.requests_in_flight_max`.
    pub fn observe_shed(&self) {
        self.requests_shed.inc();
    }

    /// An invariant named `what` was found broken at run time.
    pub fn observe_invariant_violation(&self, what: &'static str) {
        self.invariant_violations
            .get_or_create(&InvariantLabels { what })
            .inc();
    }

    pub(crate) fn observe_rpc(&self, method: &str, code: &'static str, elapsed: Duration) {
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
