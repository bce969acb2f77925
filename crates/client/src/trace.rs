//! Trace context from producer to worker, in the W3C Trace Context format.
//!
//! A job carries its producer's `traceparent` in its headers (set by
//! [`Client::enqueue`](crate::Client::enqueue) from the current `tracing`
//! span, unless the job already has one), and every call carries the
//! caller's in its gRPC metadata, so the node's spans of that call are
//! children of the caller's. A [`Worker`](crate::Worker) runs each handler
//! in a `job` span that continues the producer's trace.
//!
//! The spans become OpenTelemetry spans only where the application installs
//! a `tracing-opentelemetry` layer; without one there is no trace context,
//! nothing is added, and a job's own `traceparent` header passes through
//! untouched. Parsing and formatting are OpenTelemetry's own propagator,
//! not ours.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header and metadata key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` of `span`, when it belongs to an OpenTelemetry trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The `traceparent` of the current span, when it belongs to an
/// OpenTelemetry trace.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The remote context a `traceparent` value names; `None` when the value
/// is not a valid W3C trace context (it is then ignored, never an error:
/// a producer's bad header must not fail its job).
pub fn context_of(traceparent: &str) -> Option<Context> {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `span` a child of the remote span `traceparent` names, if valid.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(context_of) {
        // Fails only when no OpenTelemetry layer is installed: then there
        // is no trace to continue.
        let _ = span.set_parent(cx);
    }
}

/// The `traceparent` among job headers.
pub fn traceparent_in<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<&'a str> {
    headers
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(TRACEPARENT))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_valid_traceparent_parses_and_a_bad_one_is_ignored() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = context_of(good).unwrap();
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for bad in [
            "",
            "00-xyz",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(context_of(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn without_an_opentelemetry_layer_there_is_no_context_to_send() {
        let span = tracing::info_span!("outside");
        assert_eq!(traceparent_of(&span), None);
    }

    #[test]
    fn the_header_is_found_whatever_its_case() {
        let headers = [("a", "1"), ("TraceParent", "x")];
        assert_eq!(traceparent_in(headers), Some("x"));
    }
}
