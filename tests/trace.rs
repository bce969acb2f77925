//! Black-box: one W3C trace from the producer through the nodes to the
//! worker. Three real `lockstep node` processes export their spans over
//! OTLP/gRPC to a collector this test serves; the test's own producer and
//! worker spans go to OpenTelemetry's in-memory exporter. Every wait is
//! bounded.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lockstep_client::{trace, Client, ClientConfig, Outcome, Worker, WorkerConfig};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const Q: &str = "traced";
/// How long the nodes may take to export a span (they send every 500 ms).
const EXPORT_WAIT_MAX: Duration = Duration::from_secs(20);

/// One span a node exported: ids in hex, as W3C writes them.
#[derive(Clone, Debug)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

/// An OTLP/gRPC collector that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Exported>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                kept.push(Exported {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The names from `span` up its parents among `spans`, until a parent
/// that is not among them, which is returned too.
fn ancestry(span: &Exported, spans: &HashMap<String, Exported>) -> (Vec<String>, String) {
    let mut names = vec![span.name.clone()];
    let mut parent = span.parent.clone();
    while let Some(p) = spans.get(&parent) {
        names.push(p.name.clone());
        parent = p.parent.clone();
        if names.len() > 16 {
            break;
        }
    }
    (names, parent)
}

/// The producer's span, around an enqueue through a follower; the node
/// forwards it to the leader, which batches and commits it; a worker runs
/// the job. The worker's `job` span is a child of the producer's span, its
/// handler sees the job span's `traceparent`, and on the nodes the spans
/// of the enqueue form one chain under the producer's span:
/// `rpc` (follower) → `forward` → `forwarded` (leader) → `batch`/`commit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_producer_through_the_nodes_to_the_worker() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let collector_addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(incoming);
        let server = tokio::spawn(server);

        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .try_init()
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let spec = spec(&dir).set("otlp_endpoint", format!("http://{collector_addr}"));
        let (run, leader) = start(3, 3, spec, dir).await;
        let c = &run.cluster;
        create_queue(c, leader, Q, None).await;
        let follower = (1..=3).find(|i| *i != leader).unwrap();

        // Produce through the follower only, so the write is forwarded.
        let client =
            Client::connect(ClientConfig::new([c.addr(follower).client.to_string()])).unwrap();
        let produce = tracing::info_span!("produce");
        let produced = produce.context().span().span_context().clone();
        assert!(produced.is_valid(), "the test's span has a trace context");
        let trace_id = produced.trace_id().to_string();
        let produce_id = produced.span_id().to_string();
        client
            .enqueue(Q, vec![job("traced-1", "g")])
            .instrument(produce.clone())
            .await
            .unwrap();
        drop(produce);

        // The worker runs it; its handler sees the job span's context.
        let seen: Arc<Mutex<Option<String>>> = Arc::default();
        let stop = lockstep_client::CancellationToken::new();
        let handler = {
            let (seen, stop) = (seen.clone(), stop.clone());
            move |_job: lockstep_client::Job, _cancel| {
                *seen.lock().unwrap() = trace::current_traceparent();
                stop.cancel();
                async { Outcome::Ack }
            }
        };
        let worker_client = Client::connect(ClientConfig::new(
            (1..=3).map(|i| c.addr(i).client.to_string()),
        ))
        .unwrap();
        let worker = Worker::new(worker_client, WorkerConfig::new(Q), handler).unwrap();
        let report = tokio::time::timeout(Duration::from_secs(60), worker.run(stop))
            .await
            .expect("the worker ran the job within 60 s")
            .unwrap();
        assert_eq!(report.acked, 1, "{report:?}");

        let finished = exporter.get_finished_spans().unwrap();
        let job_span = finished
            .iter()
            .find(|s| s.name == "job")
            .expect("the worker's job span was exported");
        assert_eq!(job_span.span_context.trace_id().to_string(), trace_id);
        assert_eq!(
            job_span.parent_span_id.to_string(),
            produce_id,
            "the job span continues the producer's span"
        );
        let seen = seen
            .lock()
            .unwrap()
            .clone()
            .expect("the handler saw a traceparent");
        assert_eq!(
            seen,
            format!("00-{trace_id}-{}-01", job_span.span_context.span_id()),
            "the handler runs in the job span"
        );

        // The nodes' spans of the enqueue, as their exporters sent them.
        let deadline = Instant::now() + EXPORT_WAIT_MAX;
        loop {
            let spans: HashMap<String, Exported> = collector
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .map(|s| (s.span_id.clone(), s.clone()))
                .collect();
            let found = |name: &str| {
                spans.values().filter(|s| s.name == name).any(|s| {
                    let (names, root) = ancestry(s, &spans);
                    names == [name, "forwarded", "forward", "rpc"] && root == produce_id
                })
            };
            if found("commit") && found("batch") {
                let services: std::collections::BTreeSet<&str> =
                    spans.values().map(|s| s.service.as_str()).collect();
                assert!(
                    services.len() >= 2,
                    "follower and leader exported: {services:?}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no commit and batch chain under the producer's span within {EXPORT_WAIT_MAX:?}; \
                 spans of the trace: {:#?}",
                spans.values().collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = provider.shutdown();
        server.abort();
    })
    .await
    .expect("the test finished in time");
}

/// The command line, exporting nothing: `enqueue` gives the job the
/// caller's `TRACEPARENT`, and `work` hands it to the child command in
/// `TRACEPARENT`, so a shell pipeline keeps its trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_carries_traceparent_from_enqueue_to_the_work_command() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (run, leader) = start3().await;
        let c = &run.cluster;
        create_queue(c, leader, Q, None).await;
        let addrs: Vec<String> = (1..=3).map(|i| c.addr(i).client.to_string()).collect();
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cli = |args: &[&str], env: &[(&str, &str)]| {
            let output = std::process::Command::new(lockstep_harness::lockstep_binary())
                .arg("--addr")
                .arg(addrs.join(","))
                .args(args)
                .envs(env.iter().copied())
                .env_remove("LOCKSTEP_OTLP_ENDPOINT")
                .output()
                .unwrap();
            assert!(output.status.success(), "{args:?}: {output:?}");
        };
        cli(
            &["enqueue", Q, "--data", "x"],
            &[("TRACEPARENT", traceparent)],
        );
        let mut q = queue(c, leader).await;
        let peek = fetch(&mut q, Q, "peek", 1).await;
        let header = peek[0].headers.iter().find(|h| h.key == trace::TRACEPARENT);
        assert_eq!(header.map(|h| h.value.as_str()), Some(traceparent));
        q.release(pb::ReleaseRequest {
            subscription: String::new(),
            queue: Q.into(),
            offset: peek[0].offset,
            fence: peek[0].fence,
            session: None,
        })
        .await
        .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("traceparent");
        let script = format!("printf %s \"$TRACEPARENT\" > {}", seen.display());
        cli(
            &["work", Q, "--max-jobs", "1", "--", "sh", "-c", &script],
            &[],
        );
        assert_eq!(std::fs::read_to_string(&seen).unwrap(), traceparent);
    })
    .await
    .expect("the test finished in time");
}
