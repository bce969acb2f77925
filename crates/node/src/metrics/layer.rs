//! The per-call layer of the client gRPC servers: every `lockstep.v1` call
//! runs in an `rpc` span and its latency is recorded by method and code.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use lockstep_types::NodeId;
use prost::Message;
use tracing::Instrument;

use super::registry::Metrics;
use crate::pb;

/// The protobuf package, and so the gRPC path prefix, of the services the
/// RPC metrics cover.
const RPC_PACKAGE: &str = "lockstep.v1";
/// The `method` label of a path that names no method of [`RPC_PACKAGE`].
const METHOD_UNKNOWN: &str = "unknown";

/// The canonical name of a gRPC status code, as gRPC's own docs spell it.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
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
pub(super) fn response_code<B>(response: &http::Response<B>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .map_or(tonic::Code::Ok, |v| tonic::Code::from_bytes(v.as_bytes()))
}

/// Every `Service/Method` of [`RPC_PACKAGE`], from the compiled-in
/// descriptors, so a new RPC is covered without a list to keep up.
pub(super) fn rpc_methods() -> BTreeSet<String> {
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
    /// The layer for node `node_id`, recording into `metrics`.
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
        // A child of the caller's span, when the call carries one.
        let traceparent = request
            .headers()
            .get(lockstep_client::trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok());
        lockstep_client::trace::continue_trace(&span, traceparent);
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
