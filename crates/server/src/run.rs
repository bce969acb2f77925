//! Starting and stopping a node process: stores, Raft, the peer and client
//! gRPC servers, the ticker, and graceful shutdown on SIGTERM or Ctrl-C.

use std::sync::Arc;

use lockstep_store::NodeInfo;
use openraft::{Config, Raft, SnapshotPolicy};
use tokio::sync::watch;

use crate::config::NodeConfig;
use lockstep_raft::{peer_service, ForwardHandler, PeerNetworkFactory, VoteGuard};
use tonic::Status;

use crate::node::{Forwarder, Node};
use crate::pb;
use crate::service::Services;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("storage: {0}")]
    Store(#[from] lockstep_store::StoreError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("server: {0}")]
    Server(String),
    #[error("config key `{key}`: cannot listen on `{addr}`: {message}")]
    Listen {
        key: &'static str,
        addr: String,
        message: String,
    },
}

pub fn raft_config(config: &NodeConfig) -> Result<Config, RunError> {
    let r = &config.raft;
    Config {
        cluster_name: "lockstep".into(),
        heartbeat_interval: r.heartbeat_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        max_payload_entries: r.append_entries_max,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_every_entries),
        max_in_snapshot_log_to_keep: r.logs_kept_after_snapshot,
        install_snapshot_timeout: r.rpc_timeout_ms.max(10_000),
        ..Default::default()
    }
    .validate()
    .map_err(|e| RunError::Raft(e.to_string()))
}

/// Runs a node until SIGTERM or Ctrl-C.
pub fn run_node(config: NodeConfig) -> Result<(), RunError> {
    tracing_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Server(e.to_string()))?;
    runtime.block_on(serve(config))
}

fn tracing_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn serve(config: NodeConfig) -> Result<(), RunError> {
    // Bound first, so a taken port stops start-up before anything runs.
    let metrics_listener = if config.metrics_addr.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&config.metrics_addr)
            .await
            .map_err(|e| RunError::Listen {
                key: "metrics_addr",
                addr: config.metrics_addr.clone(),
                message: e.to_string(),
            })?;
        Some(listener)
    };
    let (mut log_store, state_machine) = lockstep_store::open(&config.data_dir).await?;
    let state = state_machine.handle();
    let fresh = is_fresh(&mut log_store).await?;
    if fresh {
        tracing::info!(
            "no vote and no log on disk: this node votes once it has a leader's committed log"
        );
    }
    let vote_guard = Arc::new(VoteGuard::new(fresh));
    let network = PeerNetworkFactory::new(config.id, Some(config.peer_socket().ip()));
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config(&config)?),
        network.clone(),
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| RunError::Raft(e.to_string()))?;
    let node = Arc::new(Node::new(
        config.clone(),
        raft.clone(),
        state,
        Arc::new(network),
        vote_guard.clone(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);

    let ticker = tokio::spawn(node.clone().run_ticker(stop_rx.clone()));
    let services = Services::new(node.clone());
    let message_max = config.limits.message_bytes_max as usize;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::queue_server::QueueServer<Services>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RunError::Server(e.to_string()))?;

    let mut stop = stop_rx.clone();
    let client_server = tonic::transport::Server::builder()
        .layer(crate::metrics::RpcLayer::new(
            node.metrics.clone(),
            config.id,
        ))
        .add_service(
            pb::queue_server::QueueServer::new(services.clone())
                .max_decoding_message_size(message_max)
                .max_encoding_message_size(message_max),
        )
        .add_service(pb::admin_server::AdminServer::new(services.clone()))
        .add_service(pb::cluster_server::ClusterServer::new(services))
        .add_service(health)
        .add_service(reflection)
        .serve_with_shutdown(config.client_socket(), async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    let mut stop = stop_rx.clone();
    let peer_server = tonic::transport::Server::builder()
        .add_service(peer_service(
            raft.clone(),
            Arc::new(NodeForward(node.clone())),
            vote_guard,
        ))
        .serve_with_shutdown(config.peer_socket(), async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    let client_task = tokio::spawn(client_server);
    let peer_task = tokio::spawn(peer_server);
    let metrics_task = metrics_listener.map(|listener| {
        tokio::spawn(crate::metrics::serve(
            listener,
            node.clone(),
            stop_rx.clone(),
        ))
    });
    tracing::info!(id = config.id, client = %config.client_addr, peer = %config.peer_addr, metrics = %config.metrics_addr, "node started");

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = ticker.await;
    for task in [client_task, peer_task] {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "server task failed"),
        }
    }
    if let Some(task) = metrics_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "metrics server task failed"),
        }
    }
    raft.shutdown()
        .await
        .map_err(|e| RunError::Raft(e.to_string()))?;
    Ok(())
}

/// A store with no vote and no log belongs to a node that never took part
/// in a cluster, or lost its data.
async fn is_fresh(log_store: &mut lockstep_store::LogStore) -> Result<bool, RunError> {
    use openraft::storage::RaftLogStorage;
    let vote = log_store
        .read_vote()
        .await
        .map_err(|e| RunError::Raft(e.to_string()))?;
    let state = log_store
        .get_log_state()
        .await
        .map_err(|e| RunError::Raft(e.to_string()))?;
    Ok(vote.is_none() && state.last_log_id.is_none())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Forms the cluster from `members` if this Raft has never been
/// initialized; harmless otherwise.
pub async fn bootstrap(
    raft: &Raft<lockstep_store::TypeConfig>,
    members: Vec<(u64, NodeInfo)>,
) -> Result<bool, RunError> {
    let members: std::collections::BTreeMap<u64, NodeInfo> = members.into_iter().collect();
    match raft.initialize(members).await {
        Ok(()) => Ok(true),
        Err(e) => match e.api_error() {
            Some(openraft::error::InitializeError::NotAllowed(_)) => Ok(false),
            _ => Err(RunError::Raft(e.to_string())),
        },
    }
}

/// Hands requests forwarded by other nodes to this node.
#[derive(Debug)]
struct NodeForward(Arc<Node>);

#[tonic::async_trait]
impl ForwardHandler for NodeForward {
    async fn forward(&self, request: Vec<u8>) -> Result<Vec<u8>, Status> {
        crate::node::handle_forwarded(&self.0, &request).await
    }
}

#[tonic::async_trait]
impl Forwarder for PeerNetworkFactory {
    async fn forward(
        &self,
        target: u64,
        node: &NodeInfo,
        request: Vec<u8>,
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>, Status> {
        PeerNetworkFactory::forward(self, target, &node.peer_addr, request, timeout).await
    }
}
