//! Starting and stopping a node inside a Tokio runtime: stores, Raft, the
//! peer and client gRPC servers, the metrics server and the ticker, and a
//! bounded graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lockstep_raft::{peer_service, ForwardHandler, PeerNetworkFactory};
use openraft::{Config, Raft, SnapshotPolicy};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::service::Routes;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::transport::Server;
use tonic::Status;
use tower::layer::util::{Identity, Stack};
use tracing::Instrument;

use crate::bootstrap::is_fresh;
use crate::clock::{Clock, SystemClock};
use crate::config::NodeConfig;
use crate::error::RunError;
use crate::guard::Guard;
use crate::hint::LeaderHintLayer;
use crate::metrics::layer::RpcLayer;
use crate::node::Node;
use crate::pb;
use crate::service::Services;

/// openraft's configuration from the node's `raft` settings.
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
        // The elector campaigns, after a pre-vote (`crate::elector`).
        enable_elect: false,
        ..Default::default()
    }
    .validate()
    .map_err(|e| RunError::Raft(e.to_string()))
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
    /// The node itself.
    pub(crate) node: Arc<Node>,
    /// Flushes the memtables at a graceful shutdown, so the next start
    /// replays no write-ahead log.
    flusher: lockstep_store::LogStore,
    /// A channel to this node's client API that stays inside the process
    /// (an in-memory duplex per connection), when asked for at start.
    pub in_process: Option<tonic::transport::Channel>,
    stop_tx: watch::Sender<bool>,
    /// The ticker, the vote guard's loop (which lifts it once this node
    /// holds the committed log) and the elector.
    loops: Loops,
    /// Reads the data directory's free space.
    disk: tokio::task::JoinHandle<()>,
    /// Snapshots and purges by payload bytes.
    compact: tokio::task::JoinHandle<()>,
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
    warn_if_exposed(&config, tls.is_some(), auth.is_on());
    // Bound first, so a taken port stops start-up before anything runs.
    let metrics_listener = bind(&config.metrics_addr, "metrics_addr").await?;
    let ui_listener = bind(&config.ui_addr, "ui_addr").await?;
    let client_listener = bind(&config.client_addr, "client_addr").await?;
    let peer_listener =
        bind(&config.peer_addr, "peer_addr")
            .await?
            .ok_or_else(|| RunError::Listen {
                key: "peer_addr",
                addr: String::new(),
                message: "a node needs a peer address".into(),
            })?;
    let (node, flusher) = open_node(&config, tls.as_ref()).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let loops = spawn_loops(&node, &stop_rx);
    let disk = tokio::spawn(crate::disk::run(
        node.disk.clone(),
        node.metrics.clone(),
        stop_rx.clone(),
    ));
    let compact = tokio::spawn(crate::compact::run(node.clone(), stop_rx.clone()));
    let mut servers = Servers {
        stop: stop_rx,
        tasks: Vec::new(),
    };

    // The in-process services trust their caller (the embedding process
    // itself); the client port checks every call.
    let local_services = Services::new(node.clone());
    let auth_on = auth.is_on();
    let services = local_services.clone().with_auth(auth);
    let services_for_ui = services.clone();
    let message_max = config.limits.message_bytes_max as usize;
    let standard = standard_routes().await?;
    if let Some(listener) = client_listener {
        let mut builder = Server::builder();
        if let Some(tls) = &tls {
            builder = builder
                .tls_config(tls.client_server.clone())
                .map_err(|e| RunError::Server(format!("client TLS: {e}")))?;
        }
        let router = client_router(
            builder,
            &node,
            client_routes(standard.clone(), services, message_max),
        );
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        servers.spawn("client server", |stop| async move {
            router.serve_with_incoming_shutdown(incoming, stop).await
        });
    }
    let in_process = if in_process {
        let (connections, accepted) =
            tokio::sync::mpsc::channel::<tokio::io::DuplexStream>(IN_PROCESS_BACKLOG);
        let incoming =
            tokio_stream::wrappers::ReceiverStream::new(accepted).map(Ok::<_, std::io::Error>);
        let router = client_router(
            Server::builder(),
            &node,
            client_routes(standard, local_services, message_max),
        );
        servers.spawn("in-process server", |stop| async move {
            router.serve_with_incoming_shutdown(incoming, stop).await
        });
        Some(in_process_channel(connections, message_max))
    } else {
        None
    };
    let mut peer_builder = Server::builder();
    if let Some(tls) = &tls {
        // Mutual: a caller without a certificate chaining to the cluster CA
        // is refused in the handshake, before any RPC.
        peer_builder = peer_builder
            .tls_config(tls.peer_server.clone())
            .map_err(|e| RunError::Server(format!("peer TLS: {e}")))?;
    }
    let peer_router = peer_builder.add_service(peer_service(node_peer_service(&node)));
    let peer_incoming = TcpIncoming::from(peer_listener).with_nodelay(Some(true));
    servers.spawn("peer server", |stop| async move {
        peer_router
            .serve_with_incoming_shutdown(peer_incoming, stop)
            .await
    });
    if let Some(listener) = metrics_listener {
        let task = crate::metrics::http::serve(listener, node.clone(), servers.stop.clone());
        servers.tasks.push((
            "metrics server",
            tokio::spawn(async move { task.await.map_err(|e| e.to_string()) }),
        ));
    }
    if let Some(listener) = ui_listener {
        // The dashboard's JSON API calls the client port's own handlers,
        // with the same auth.
        let task = crate::ui::serve(
            listener,
            services_for_ui,
            auth_on,
            tls.as_ref().map(|t| t.ui_server.clone()),
            servers.stop.clone(),
        );
        servers.tasks.push((
            "ui server",
            tokio::spawn(async move { task.await.map_err(|e| e.to_string()) }),
        ));
    }
    tracing::info!(id = config.id, client = %config.client_addr, peer = %config.peer_addr, metrics = %config.metrics_addr, ui = %config.ui_addr, in_process = in_process.is_some(), tls = tls.is_some(), auth = %config.auth.mode, "node started");
    Ok(Running {
        node,
        flusher,
        in_process,
        stop_tx,
        loops,
        disk,
        compact,
        servers: servers.tasks,
    })
}

/// Spawns the node's own loops, each ending when `stop` turns true: the
/// ticker, the vote guard's (which ends once the guard is lifted) and the
/// elector.
pub(crate) fn spawn_loops(node: &Arc<Node>, stop: &watch::Receiver<bool>) -> Loops {
    Loops {
        ticker: tokio::spawn(crate::ticker::run(node.clone(), stop.clone())),
        guard: tokio::spawn(crate::guard::run(
            node.guard.clone(),
            node.raft.clone(),
            node.forwarding.clone(),
            stop.clone(),
        )),
        elector: tokio::spawn(crate::elector::run(node.clone(), stop.clone())),
    }
}

/// The node's own loops ([`spawn_loops`]).
#[derive(Debug)]
pub(crate) struct Loops {
    pub(crate) ticker: tokio::task::JoinHandle<()>,
    pub(crate) guard: tokio::task::JoinHandle<()>,
    pub(crate) elector: tokio::task::JoinHandle<()>,
}

impl Loops {
    /// Aborts every loop at once, as a crash would.
    pub(crate) fn abort(&self) {
        self.ticker.abort();
        self.guard.abort();
        self.elector.abort();
    }
}

/// Warns when a port faces the network without TLS, or the client port
/// without auth: allowed (a private network may be trusted), never silent.
fn warn_if_exposed(config: &NodeConfig, tls: bool, auth: bool) {
    if !tls {
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
    if !auth && crate::tls::exposed(&config.client_addr) {
        tracing::warn!(
            "client_addr {} is not a loopback address and auth.mode is \"off\": anyone who \
             reaches it may enqueue, consume and administer",
            config.client_addr
        );
    }
}

/// Opens the store, starts Raft on it and wraps both in a [`Node`]; also
/// returns a handle that flushes the store at shutdown.
async fn open_node(
    config: &NodeConfig,
    tls: Option<&crate::tls::NodeTls>,
) -> Result<(Arc<Node>, lockstep_store::LogStore), RunError> {
    let (log_store, state_machine) = lockstep_store::open(&config.data_dir).await.map_err(|e| {
        RunError::damaged_or(&config.data_dir, e.to_string(), |_| RunError::Store(e))
    })?;
    let flusher = log_store.clone();
    let mut network = PeerNetworkFactory::new(config.id, Some(config.peer_socket().ip()));
    if let Some(tls) = tls {
        network = network.with_tls(tls.peer_client.clone());
    }
    let node = assemble(
        config,
        raft_config(config)?,
        log_store,
        state_machine,
        network,
        Arc::new(SystemClock::new()),
    )
    .await?;
    Ok((node, flusher))
}

/// A node from its opened stores, how it reaches its peers and its clock:
/// the vote guard raised (synced) when the store is fresh, then Raft, then
/// the node around it. The one wiring of a node, shared by [`start`] and
/// the simulator's [`crate::parts`].
pub(crate) async fn assemble(
    config: &NodeConfig,
    raft_config: Config,
    mut log_store: lockstep_store::LogStore,
    state_machine: lockstep_store::StateMachineStore,
    network: PeerNetworkFactory,
    clock: Arc<dyn Clock>,
) -> Result<Arc<Node>, RunError> {
    let state = state_machine.handle();
    let fresh = is_fresh(&mut log_store).await?;
    if fresh {
        tracing::info!(
            "no vote and no log on disk: this node votes once it has a leader's committed log"
        );
    }
    // Raised, and recorded synced, before Raft starts (see `guard`).
    let guard = Guard::open(log_store.clone(), fresh).await?;
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        network.clone(),
        log_store,
        state_machine,
    )
    .await
    // openraft re-applies the log after the snapshot here: a damaged table
    // block of the log is met now, before the node serves anything.
    .map_err(|e| RunError::damaged_or(&config.data_dir, e.to_string(), RunError::Raft))?;
    // openraft's own election timer is off (`raft_config`): the elector
    // campaigns, after a pre-vote, and never while the guard is up (a
    // candidate's own vote for itself is a vote too).
    let entries_wanted = network.entries_wanted();
    Ok(Arc::new(Node::new(
        config.clone(),
        raft,
        state,
        Arc::new(TracedForwarder(network)),
        guard,
        clock,
        entries_wanted,
    )))
}

/// Health and reflection, which every client server answers alike.
async fn standard_routes() -> Result<Routes, RunError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::queue_server::QueueServer<Services>>()
        .await;
    // Both reflection protocols: grpcurl and recent tools speak v1, while
    // Python's grpcio-reflection client and older tools speak v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RunError::Server(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| RunError::Server(e.to_string()))?;
    Ok(Routes::new(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha))
}

/// The server tasks of a node, each ending when `stop` turns true.
struct Servers {
    stop: watch::Receiver<bool>,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<Result<(), String>>)>,
}

impl Servers {
    /// Spawns the server `serve` makes from a future that resolves at stop.
    fn spawn<F, Fut>(&mut self, name: &'static str, serve: F)
    where
        F: FnOnce(BoxFuture<'static, ()>) -> Fut,
        Fut: Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
    {
        let mut stop = self.stop.clone();
        let stopped: BoxFuture<'static, ()> = Box::pin(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        let task = serve(stopped);
        self.tasks.push((
            name,
            tokio::spawn(async move { task.await.map_err(|e| e.to_string()) }),
        ));
    }
}

/// A boxed future that can cross threads.
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The layers every client server puts around the client API: per-call
/// metrics and spans, then the leader hint on every answer.
type ClientLayers = Stack<LeaderHintLayer, Stack<RpcLayer, Identity>>;

/// The client API's services answering with `services`, beside the
/// `standard` ones (health, reflection), each bounded to `message_max` bytes
/// per message either way.
fn client_routes(standard: Routes, services: Services, message_max: usize) -> Routes {
    standard
        .add_service(
            pb::queue_server::QueueServer::new(services.clone())
                .max_decoding_message_size(message_max)
                .max_encoding_message_size(message_max),
        )
        .add_service(
            pb::admin_server::AdminServer::new(services.clone())
                .max_decoding_message_size(message_max)
                .max_encoding_message_size(message_max),
        )
        .add_service(
            pb::cluster_server::ClusterServer::new(services)
                .max_decoding_message_size(message_max)
                .max_encoding_message_size(message_max),
        )
}

/// A client server from `builder` (plain or TLS) serving `routes` under the
/// [`ClientLayers`].
fn client_router(builder: Server, node: &Arc<Node>, routes: Routes) -> Router<ClientLayers> {
    builder
        .layer(RpcLayer::new(node.metrics.clone(), node.id))
        .layer(LeaderHintLayer::new(node.clone()))
        .add_routes(routes)
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
        let Loops {
            mut ticker,
            mut guard,
            mut elector,
        } = self.loops;
        if tokio::time::timeout(bound, &mut ticker).await.is_err() {
            tracing::warn!("ticker did not stop within {SERVER_STOP_MS_MAX} ms; aborted");
            ticker.abort();
        }
        // The guard task ends at stop within one question to the leader,
        // the elector within one pre-vote round; their work is idempotent,
        // so cutting them off loses nothing.
        for task in [&mut guard, &mut elector] {
            if tokio::time::timeout(bound, &mut *task).await.is_err() {
                task.abort();
            }
        }
        // Both only read and ask; cutting them off loses nothing.
        for mut task in [self.disk, self.compact] {
            if tokio::time::timeout(bound, &mut task).await.is_err() {
                task.abort();
            }
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

    /// A watch that turns true when the node is asked to stop.
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stop_tx.subscribe()
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

/// The peer service of `node`: its Raft, its vote guard and its handler of
/// forwarded requests. The peer gRPC server serves it; the simulator's
/// transport hands messages to it directly (`crate::parts`).
pub(crate) fn node_peer_service(node: &Arc<Node>) -> lockstep_raft::PeerService {
    lockstep_raft::PeerService::new(
        node.raft.clone(),
        Arc::new(NodeForward(node.clone())),
        node.guard.vote.clone(),
    )
}

/// Hands requests forwarded by other nodes to this node.
#[derive(Debug)]
struct NodeForward(Arc<Node>);

#[tonic::async_trait]
impl ForwardHandler for NodeForward {
    async fn forward(
        &self,
        request: Vec<u8>,
        traceparent: Option<String>,
    ) -> Result<Vec<u8>, Status> {
        crate::node::handle_forwarded(&self.0, &request, traceparent.as_deref()).await
    }
}

/// Forwards over the peer network in a `forward` span, whose trace context
/// goes with the request so the leader's spans continue it.
#[derive(Debug)]
struct TracedForwarder(PeerNetworkFactory);

#[tonic::async_trait]
impl lockstep_raft::Forwarder for TracedForwarder {
    async fn forward(
        &self,
        target: lockstep_types::NodeId,
        node: &lockstep_types::NodeInfo,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, Status> {
        let span = tracing::info_span!("forward", leader = target);
        let traceparent = lockstep_client::trace::traceparent_of(&span);
        self.0
            .forward(target, &node.peer_addr, request, timeout, traceparent)
            .instrument(span)
            .await
    }
}
