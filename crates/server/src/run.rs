//! Starting and stopping a node process: stores, Raft, the peer and client
//! gRPC servers, the ticker, and graceful shutdown on SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use lockstep_store::NodeInfo;
use openraft::{Config, Raft, SnapshotPolicy};
use tokio::sync::watch;
use tokio_stream::StreamExt;

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
    /// RocksDB found damage it cannot repair without losing entries this
    /// node may have acknowledged; see `lockstep_store::open_db`.
    #[error(
        "the data directory {dir} is damaged ({problem}); this node refuses to start rather than \
         lose entries it acknowledged. Move the directory aside and start the node with an empty \
         one: it rejoins and catches up from the leader while a majority of the cluster is up"
    )]
    Damaged { dir: String, problem: String },
    #[error("server: {0}")]
    Server(String),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
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
    plant_bug()?;
    if config.client_addr.is_empty() {
        // Only an embedded node may go without a client port: it serves its
        // own process in-process instead.
        return Err(RunError::Listen {
            key: "client_addr",
            addr: String::new(),
            message: "a node process needs a client address".into(),
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Server(e.to_string()))?;
    runtime.block_on(async {
        let running = start(config, false).await?;
        tokio::select! {
            _ = shutdown_signal() => {
                tracing::info!("shutting down");
                running.shutdown().await
            }
            // A node whose Raft stopped (a damaged table block read while
            // running) must not linger answering errors: it exits, saying
            // why, and its supervisor or operator sees it.
            fatal = running.fatal() => {
                tracing::error!(error = %fatal, "Raft stopped; the node exits");
                let _ = running.shutdown().await;
                Err(fatal)
            }
        }
    })
}

/// The environment variable that switches a planted bug on in a test build.
pub const PLANTED_BUG_ENV: &str = "LOCKSTEP_PLANTED_BUG";

/// Turns on the planted bug named by `LOCKSTEP_PLANTED_BUG`, if any. A
/// build without the `planted-bugs` feature refuses to start with it set,
/// so a test can never believe a bug is planted when it is not.
fn plant_bug() -> Result<(), RunError> {
    let Ok(name) = std::env::var(PLANTED_BUG_ENV) else {
        return Ok(());
    };
    if name.is_empty() {
        return Ok(());
    }
    #[cfg(feature = "planted-bugs")]
    {
        use lockstep_core::planted::{plant, Bug};
        let bug = Bug::parse(&name).ok_or_else(|| {
            let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
            RunError::Server(format!(
                "{PLANTED_BUG_ENV}=`{name}` names no planted bug; one of {}",
                names.join(", ")
            ))
        })?;
        plant(bug);
        tracing::warn!(
            bug = name,
            "PLANTED BUG ON: this node breaks a safety rule on purpose"
        );
        Ok(())
    }
    #[cfg(not(feature = "planted-bugs"))]
    Err(RunError::Server(format!(
        "{PLANTED_BUG_ENV}=`{name}`, but this build has no planted bugs (the \
         `planted-bugs` feature, debug builds only)"
    )))
}

fn tracing_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Bytes buffered each way in one in-process connection.
const IN_PROCESS_BUFFER_BYTES: usize = 256 * 1024;
/// Longest a server (or the ticker) may take to finish its in-flight calls
/// at shutdown.
pub const SERVER_STOP_MS_MAX: u64 = 5_000;
/// In-process connections waiting to be accepted.
const IN_PROCESS_BACKLOG: usize = 64;

/// A started node: Raft, its servers and its ticker, until
/// [`Running::shutdown`].
#[derive(Debug)]
pub struct Running {
    pub node: Arc<Node>,
    /// Flushes the memtables at a graceful shutdown, so the next start
    /// replays no write-ahead log.
    flusher: lockstep_store::LogStore,
    /// A channel to this node's client API that stays inside the process
    /// (an in-memory duplex per connection), when asked for at start.
    pub in_process: Option<tonic::transport::Channel>,
    stop_tx: watch::Sender<bool>,
    ticker: tokio::task::JoinHandle<()>,
    servers: Vec<(&'static str, tokio::task::JoinHandle<Result<(), String>>)>,
}

/// Starts a node inside the current Tokio runtime: opens its store, starts
/// Raft, binds its peer port, its client port (unless `client_addr` is
/// empty) and its metrics port (unless `metrics_addr` is empty), and, with
/// `in_process`, serves the client API over in-memory connections too.
pub async fn start(config: NodeConfig, in_process: bool) -> Result<Running, RunError> {
    // Read before anything binds or opens, so a bad file stops start-up
    // with its key named and nothing half-started.
    let tls = crate::tls::load(&config.tls)?;
    let auth = Arc::new(crate::auth::Auth::load(&config.auth)?);
    if tls.is_none() {
        for (key, addr) in [
            ("client_addr", &config.client_addr),
            ("peer_addr", &config.peer_addr),
        ] {
            if crate::tls::exposed(addr) {
                tracing::warn!(
                    "{key} {addr} is not a loopback address and TLS is off: clients and \
                     peers on the network can read and forge this node's traffic. Set \
                     tls.cert_file, tls.key_file and tls.ca_file (see `lockstep dev-certs`)"
                );
            }
        }
    }
    if !auth.is_on() && crate::tls::exposed(&config.client_addr) {
        tracing::warn!(
            "client_addr {} is not a loopback address and auth.mode is \"off\": anyone who \
             reaches it may enqueue, consume and administer",
            config.client_addr
        );
    }
    // Bound first, so a taken port stops start-up before anything runs.
    let metrics_listener = bind(&config.metrics_addr, "metrics_addr").await?;
    let client_listener = bind(&config.client_addr, "client_addr").await?;
    let peer_listener =
        bind(&config.peer_addr, "peer_addr")
            .await?
            .ok_or_else(|| RunError::Listen {
                key: "peer_addr",
                addr: String::new(),
                message: "a node needs a peer address".into(),
            })?;
    let (mut log_store, state_machine) =
        lockstep_store::open(&config.data_dir).await.map_err(|e| {
            RunError::damaged_or(&config.data_dir, e.to_string(), |_| RunError::Store(e))
        })?;
    let flusher = log_store.clone();
    let state = state_machine.handle();
    let fresh = is_fresh(&mut log_store).await?;
    if fresh {
        tracing::info!(
            "no vote and no log on disk: this node votes once it has a leader's committed log"
        );
    }
    let vote_guard = Arc::new(VoteGuard::new(fresh));
    let mut network = PeerNetworkFactory::new(config.id, Some(config.peer_socket().ip()));
    if let Some(tls) = &tls {
        network = network.with_tls(tls.peer_client.clone());
    }
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config(&config)?),
        network.clone(),
        log_store,
        state_machine,
    )
    .await
    // openraft re-applies the log after the snapshot here: a damaged table
    // block of the log is met now, before the node serves anything.
    .map_err(|e| RunError::damaged_or(&config.data_dir, e.to_string(), RunError::Raft))?;
    let node = Arc::new(Node::new(
        config.clone(),
        raft.clone(),
        state,
        Arc::new(network),
        vote_guard.clone(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let ticker = tokio::spawn(node.clone().run_ticker(stop_rx.clone()));
    // The in-process services trust their caller (the embedding process
    // itself); the client port checks every call.
    let local_services = Services::new(node.clone());
    let services = local_services
        .clone()
        .with_auth(auth)
        .with_client_tls(tls.as_ref().map(|t| t.peer_client.clone()));
    let message_max = config.limits.message_bytes_max as usize;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::queue_server::QueueServer<Services>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RunError::Server(e.to_string()))?;
    // The client API on a server builder `$builder`, answering with
    // `$services` (a macro: the layered router's type is unnameable).
    macro_rules! client_router {
        ($builder:expr, $services:expr) => {
            $builder
                .layer(crate::metrics::RpcLayer::new(
                    node.metrics.clone(),
                    config.id,
                ))
                .layer(crate::hint::LeaderHintLayer::new(node.clone()))
                .add_service(
                    pb::queue_server::QueueServer::new($services.clone())
                        .max_decoding_message_size(message_max)
                        .max_encoding_message_size(message_max),
                )
                .add_service(
                    pb::admin_server::AdminServer::new($services.clone())
                        .max_decoding_message_size(message_max)
                        .max_encoding_message_size(message_max),
                )
                .add_service(
                    pb::cluster_server::ClusterServer::new($services.clone())
                        .max_decoding_message_size(message_max)
                        .max_encoding_message_size(message_max),
                )
                .add_service(health.clone())
                .add_service(reflection.clone())
        };
    }
    let mut client_builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        client_builder = client_builder
            .tls_config(tls.client_server.clone())
            .map_err(|e| RunError::Server(format!("client TLS: {e}")))?;
    }
    let client_router = client_router!(client_builder, services);

    let mut servers: Vec<(&'static str, tokio::task::JoinHandle<Result<(), String>>)> = Vec::new();
    if let Some(listener) = client_listener {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let router = client_router.clone();
        let stop = stopped(stop_rx.clone());
        servers.push((
            "client server",
            tokio::spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming, stop)
                    .await
                    .map_err(|e| e.to_string())
            }),
        ));
    }
    let in_process = if in_process {
        let (connections, accepted) =
            tokio::sync::mpsc::channel::<tokio::io::DuplexStream>(IN_PROCESS_BACKLOG);
        let incoming =
            tokio_stream::wrappers::ReceiverStream::new(accepted).map(Ok::<_, std::io::Error>);
        let router = client_router!(tonic::transport::Server::builder(), local_services);
        let stop = stopped(stop_rx.clone());
        servers.push((
            "in-process server",
            tokio::spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming, stop)
                    .await
                    .map_err(|e| e.to_string())
            }),
        ));
        Some(in_process_channel(connections, message_max))
    } else {
        None
    };
    let peer_incoming =
        tonic::transport::server::TcpIncoming::from(peer_listener).with_nodelay(Some(true));
    let mut peer_builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        // Mutual: a caller without a certificate chaining to the cluster CA
        // is refused in the handshake, before any RPC.
        peer_builder = peer_builder
            .tls_config(tls.peer_server.clone())
            .map_err(|e| RunError::Server(format!("peer TLS: {e}")))?;
    }
    let peer_router = peer_builder.add_service(peer_service(
        raft.clone(),
        Arc::new(NodeForward(node.clone())),
        vote_guard,
    ));
    let stop = stopped(stop_rx.clone());
    servers.push((
        "peer server",
        tokio::spawn(async move {
            peer_router
                .serve_with_incoming_shutdown(peer_incoming, stop)
                .await
                .map_err(|e| e.to_string())
        }),
    ));
    if let Some(listener) = metrics_listener {
        let task = crate::metrics::serve(listener, node.clone(), stop_rx.clone());
        servers.push((
            "metrics server",
            tokio::spawn(async move { task.await.map_err(|e| e.to_string()) }),
        ));
    }
    tracing::info!(id = config.id, client = %config.client_addr, peer = %config.peer_addr, metrics = %config.metrics_addr, in_process = in_process.is_some(), tls = tls.is_some(), auth = %config.auth.mode, "node started");
    Ok(Running {
        node,
        flusher,
        in_process,
        stop_tx,
        ticker,
        servers,
    })
}

/// Binds `addr` (the value of config key `key`); empty binds nothing.
async fn bind(addr: &str, key: &'static str) -> Result<Option<tokio::net::TcpListener>, RunError> {
    if addr.is_empty() {
        return Ok(None);
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|e| RunError::Listen {
            key,
            addr: addr.to_string(),
            message: e.to_string(),
        })
}

/// A lazy channel whose every connection is a fresh in-memory duplex handed
/// to the in-process server: HTTP/2 framing, but no socket and no kernel.
fn in_process_channel(
    connections: tokio::sync::mpsc::Sender<tokio::io::DuplexStream>,
    message_max: usize,
) -> tonic::transport::Channel {
    let buffer = IN_PROCESS_BUFFER_BYTES.max(message_max.min(16 * 1024 * 1024) / 16);
    let connector = tower::service_fn(move |_: http::Uri| {
        let connections = connections.clone();
        async move {
            let (client, server) = tokio::io::duplex(buffer);
            connections
                .send(server)
                .await
                .map_err(|_| std::io::Error::other("the embedded node has shut down"))?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(client))
        }
    });
    tonic::transport::Endpoint::from_static("http://in-process.lockstep")
        .connect_with_connector_lazy(connector)
}

impl Running {
    /// Stops the servers and the ticker, then Raft. In-flight calls end
    /// with the servers' graceful shutdown.
    pub async fn shutdown(self) -> Result<(), RunError> {
        let _ = self.stop_tx.send(true);
        // Without a quorum, a tick or a call waits for a commit that never
        // comes; past the bound it is cut off (its caller sees the
        // connection end, an unknown outcome, as after a crash).
        let bound = Duration::from_millis(SERVER_STOP_MS_MAX);
        let mut ticker = self.ticker;
        if tokio::time::timeout(bound, &mut ticker).await.is_err() {
            tracing::warn!("ticker did not stop within {SERVER_STOP_MS_MAX} ms; aborted");
            ticker.abort();
        }
        for (name, mut task) in self.servers {
            match tokio::time::timeout(bound, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "{name} ended with an error"),
                Ok(Err(e)) => tracing::warn!(error = %e, "{name} task failed"),
                Err(_) => {
                    tracing::warn!(
                        "{name}: calls still running after {SERVER_STOP_MS_MAX} ms; aborted"
                    );
                    task.abort();
                }
            }
        }
        self.node
            .raft
            .shutdown()
            .await
            .map_err(|e| RunError::Raft(e.to_string()))?;
        match tokio::time::timeout(bound, self.flusher.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flush at shutdown failed"),
            Err(_) => tracing::warn!("flush at shutdown took over {SERVER_STOP_MS_MAX} ms"),
        }
        Ok(())
    }

    /// Waits until Raft stops by itself: a storage error (a damaged table
    /// block met while running) or another fatal error. Returns what
    /// stopped it. Pending forever while Raft runs.
    pub async fn fatal(&self) -> RunError {
        let mut metrics = self.node.raft.metrics();
        loop {
            let state = metrics.borrow().running_state.clone();
            if let Err(fatal) = state {
                return RunError::damaged_or(&self.node.config.data_dir, fatal.to_string(), |t| {
                    RunError::Raft(format!("Raft stopped: {t}"))
                });
            }
            if metrics.changed().await.is_err() {
                return RunError::Raft("Raft stopped without saying why".into());
            }
        }
    }
}

impl RunError {
    /// `Damaged` when `text`, a storage error, says RocksDB found damaged
    /// data in `dir`; otherwise what `otherwise` makes of it.
    fn damaged_or(
        dir: &std::path::Path,
        text: String,
        otherwise: impl FnOnce(String) -> RunError,
    ) -> RunError {
        if text.contains("Corruption") {
            RunError::Damaged {
                dir: dir.display().to_string(),
                problem: text,
            }
        } else {
            otherwise(text)
        }
    }
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

/// Resolves on SIGTERM or Ctrl-C (SIGINT): how a person or a supervisor
/// such as `timeout` asks a node, a worker or a chaos run to stop.
pub async fn shutdown_signal() {
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

/// Initializes this node alone with the cluster's first membership
/// `members`; every initial member must be initialized with the same one.
/// Harmless (false) if this node was initialized before.
pub async fn initialize_local(
    node: &Node,
    members: Vec<(u64, NodeInfo)>,
) -> Result<bool, RunError> {
    let initialized = bootstrap(&node.raft, members).await?;
    if initialized {
        // Initialized with the first membership: nothing was ever committed
        // without this node, so it may vote (see VoteGuard).
        node.vote_guard.allow();
    }
    Ok(initialized)
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
