//! A node assembled from parts its caller supplies: its stores, the
//! transport to its peers and its clock. The simulator (`lockstep-nodesim`)
//! builds its nodes here, over in-memory stores
//! ([`lockstep_store::MemoryDisk`]), a simulated network
//! ([`lockstep_raft::Transport`]) and a simulated clock ([`Clock`]).
//!
//! Everything else is the real node, wired by the same function a
//! `lockstep node` process uses (`start::assemble`): the batcher, the
//! forwarding and its retries, the vote guard and its loop, the ticker, the
//! cluster clock, the core and its reply cache. Only the servers around it
//! (gRPC, metrics, the dashboard) and the disk-space watcher are left out:
//! a caller reaches the node through [`Assembled::execute`] (what the
//! client API's handlers call) and [`Assembled::peer_service`] (what the
//! peer gRPC server calls).

use std::sync::Arc;

use lockstep_raft::{PeerNetworkFactory, PeerService};
use lockstep_store::{LogStore, StateHandle, StateMachineStore};
use lockstep_types::forward::{Request, Response};
use lockstep_types::{NodeId, NodeInfo, TypeConfig};
use openraft::Raft;
use tokio::sync::watch;
use tonic::Status;

pub use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::error::RunError;
use crate::node::Node;
use crate::start::{assemble, node_peer_service, spawn_loops, Loops};

/// What a node is made of, besides its settings.
#[derive(Debug)]
pub struct Parts {
    /// Its settings (`data_dir` names its stores; no address is bound).
    pub config: NodeConfig,
    /// openraft's settings: `start::raft_config` of `config`, or the
    /// caller's own (a simulator picks each node's election timeout).
    pub raft: openraft::Config,
    /// Its opened log store.
    pub log_store: LogStore,
    /// Its opened state machine.
    pub state_machine: StateMachineStore,
    /// How it reaches its peers: made with
    /// [`PeerNetworkFactory::with_transport`].
    pub network: PeerNetworkFactory,
    /// Where its cluster clock reads time.
    pub clock: Arc<dyn Clock>,
}

/// A running node made of [`Parts`], until [`Assembled::stop`].
#[derive(Debug)]
pub struct Assembled {
    node: Arc<Node>,
    /// Made once: every simulated message is handed to a clone of it.
    peer: PeerService,
    stop_tx: watch::Sender<bool>,
    loops: Loops,
}

/// openraft's settings from a node's `raft` settings, as a `lockstep node`
/// process uses them.
pub fn raft_config(config: &NodeConfig) -> Result<openraft::Config, RunError> {
    crate::start::raft_config(config)
}

impl Assembled {
    /// Starts the node: Raft on its stores, then its ticker and its vote
    /// guard's loop.
    pub async fn start(parts: Parts) -> Result<Assembled, RunError> {
        let node = assemble(
            &parts.config,
            parts.raft,
            parts.log_store,
            parts.state_machine,
            parts.network,
            parts.clock,
        )
        .await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let loops = spawn_loops(&node, &stop_rx);
        Ok(Assembled {
            peer: node_peer_service(&node),
            node,
            stop_tx,
            loops,
        })
    }

    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.node.id
    }

    /// Runs a client request that arrived at this node, wherever the leader
    /// is: what every client API handler does.
    pub async fn execute(&self, request: Request) -> Result<Response, Status> {
        self.node.execute(request).await
    }

    /// The node's peer service, which a transport hands the messages of
    /// other nodes to.
    pub fn peer_service(&self) -> PeerService {
        self.peer.clone()
    }

    /// Forms the cluster of `members` from this node, as `Cluster.Bootstrap`
    /// does: `Ok(true)` when this call formed it, `Ok(false)` when this node
    /// already had a log or a vote.
    pub async fn bootstrap(&self, members: &[(NodeId, NodeInfo)]) -> Result<bool, Status> {
        crate::bootstrap::form(&self.node, members)
            .await
            .map(|formed| formed == crate::bootstrap::Formed::Now)
    }

    /// The node's Raft.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.node.raft
    }

    /// The node's applied state.
    pub fn state(&self) -> &StateHandle {
        &self.node.state
    }

    /// Whether the node's vote guard is up.
    pub fn guarded(&self) -> bool {
        self.node.guard.is_up()
    }

    /// Stops the node's loops, then its Raft. Calls still running on it end
    /// as they would at a crash: their callers see no answer.
    pub async fn stop(&self) {
        let _ = self.stop_tx.send(true);
        self.loops.abort();
        if let Err(e) = self.node.raft.shutdown().await {
            tracing::debug!(error = %e, "raft shutdown");
        }
    }
}
