//! The exposition and the per-call layer, checked together: what a scrape
//! shows is what the layer and the node recorded.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use lockstep_core::{Counters, QueueConfig, QueueInfo, QueueStats};
use lockstep_types::{NodeId, NodeInfo};
use openraft::RaftMetrics;

use super::layer::{code_name, response_code, rpc_methods, RpcLayer};
use super::registry::Metrics;
use super::scrape::Scrape;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
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
    metrics.observe_clock_skew_exceeded();
    metrics.observe_shed();
    metrics.observe_invariant_violation("payload_missing");
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
        "lockstep_clock_skew_exceeded_total 1",
        "lockstep_requests_shed_total 1",
        "lockstep_invariant_violations_total{what=\"payload_missing\"} 1",
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
    assert_eq!(families.len(), 28, "{families:?}");
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
