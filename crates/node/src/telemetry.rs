//! Logs to stderr, and with `otlp_endpoint` set, spans exported over OTLP.
//!
//! The node's spans of one request (`rpc`, `forward` on a follower,
//! `forwarded` on the leader, `batch` and `commit`) continue the caller's
//! W3C trace context (`lockstep_client::trace`). They become OpenTelemetry
//! spans only when an exporter is configured: without one, no context is
//! made and nothing is sent. The exporter is OpenTelemetry's own OTLP/gRPC
//! exporter over the node's tonic, batched so that a slow or absent
//! collector never holds up a request: a full buffer drops spans, never
//! waits.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::error::RunError;

/// How often batched spans are sent to the collector.
pub const OTLP_EXPORT_INTERVAL_MS: u64 = 500;
/// Spans held for export at most; past it new spans are dropped.
pub const OTLP_QUEUE_SPANS_MAX: usize = 8_192;
/// How long one export to the collector may take.
pub const OTLP_EXPORT_TIMEOUT_MS: u64 = 5_000;
/// How long a stopping process waits to send the spans it still holds.
pub const OTLP_SHUTDOWN_MS_MAX: u64 = 5_000;

/// The default log filter when `LOCKSTEP_LOG` is not set.
const LOG_FILTER_DEFAULT: &str = "info,openraft=warn";

/// Keeps the span exporter running; dropping it sends what is left (up to
/// [`OTLP_SHUTDOWN_MS_MAX`]) and stops it.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) =
                provider.shutdown_with_timeout(Duration::from_millis(OTLP_SHUTDOWN_MS_MAX))
            {
                tracing::warn!(error = %e, "spans not all exported at shutdown");
            }
        }
    }
}

/// Installs the process's `tracing` subscriber: logs to stderr filtered by
/// `LOCKSTEP_LOG`, and, unless `otlp_endpoint` is empty, every span at the
/// same filter exported over OTLP/gRPC as service `service`. Must run
/// inside a Tokio runtime when exporting (tonic's). A second call in one
/// process (tests, embedded nodes) leaves the first subscriber in place.
pub fn init(service: &str, otlp_endpoint: &str) -> Result<Telemetry, RunError> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(LOG_FILTER_DEFAULT))
    };
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if otlp_endpoint.is_empty() {
        let _ = tracing_subscriber::registry()
            .with(logs)
            .with(filter())
            .try_init();
        return Ok(Telemetry::default());
    }
    let provider = provider(service, otlp_endpoint)?;
    let tracer = provider.tracer("lockstep");
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .with(filter())
        .try_init();
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The tracer provider exporting to `endpoint` (`http://host:port`).
fn provider(service: &str, endpoint: &str) -> Result<SdkTracerProvider, RunError> {
    let bad = |message: String| RunError::Server(format!("config key `otlp_endpoint`: {message}"));
    if !crate::config::valid_otlp_endpoint(endpoint) {
        return Err(bad(format!(
            "`{endpoint}` is not an http:// or https:// URL of an OTLP/gRPC collector"
        )));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_millis(OTLP_EXPORT_TIMEOUT_MS))
        .build()
        .map_err(|e| bad(format!("`{endpoint}`: {e}")))?;
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(Duration::from_millis(OTLP_EXPORT_INTERVAL_MS))
        .with_max_queue_size(OTLP_QUEUE_SPANS_MAX)
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build())
}
