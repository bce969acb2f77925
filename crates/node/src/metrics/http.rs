//! The metrics HTTP server: `GET /metrics` in the OpenMetrics text format.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::scrape::Scrape;
use crate::node::Node;

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
    let scrape = read(&node).await;
    match node.metrics.encode(scrape) {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        )
            .into_response(),
    }
}

/// Takes everything a scrape shows from the running node.
async fn read(node: &Node) -> Scrape {
    let commit_index = node.committed().await.map(Some);
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
