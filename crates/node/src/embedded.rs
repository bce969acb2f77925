//! Embedded mode: a Lockstep node inside the application's own process, so
//! a cluster needs no broker to operate.
//!
//! [`Embedded::builder`] takes what a node needs (id, data dir, peer
//! address, optionally a client address, the cluster's first members) and
//! [`EmbeddedBuilder::start`] runs the very node a `lockstep node` process
//! runs, on the caller's Tokio runtime. The returned [`Embedded`] hands out a
//! [`lockstep_client::Client`] whose one channel is in-process: calls to
//! this node cross no socket. A follower still forwards writes to the
//! leader over the peer network, as any node does.
//!
//! Forming the cluster: the instances given [`EmbeddedBuilder::bootstrap`]
//! initialize themselves with the same first membership (a node already
//! formed ignores it). Give it only when forming a new cluster, never to a
//! node that lost its data dir: such a node must start without it and catch
//! up from the leader, or it could vote before it holds what it acknowledged
//! (see ARCHITECTURE.md, "vote guard").

use std::path::PathBuf;
use std::time::Duration;

use lockstep_client::{Client, ClientConfig};
use lockstep_types::NodeInfo;

use crate::config::{ConfigError, NodeConfig};
use crate::run::{RunError, Running};

/// Longest [`Embedded::shutdown`] waits for the node's servers and Raft.
pub const SHUTDOWN_MS_MAX: u64 = 30_000;

/// Why an embedded node could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// A setting is invalid; the error names the key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node could not start or stop.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The in-process client could not be made.
    #[error("client: {0}")]
    Client(#[from] lockstep_client::Error),
    /// A member given to `bootstrap` is invalid.
    #[error("bootstrap member {index}: {problem}")]
    Member {
        /// Its place in the list, from 0.
        index: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// Shutdown took longer than [`SHUTDOWN_MS_MAX`].
    #[error("shutdown took longer than {SHUTDOWN_MS_MAX} ms")]
    ShutdownTimeout,
}

/// One initial member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its Raft id: unique, not 0.
    pub id: u64,
    /// Where its peers reach it, `ip:port`.
    pub peer_addr: String,
    /// Empty when that member serves no client port.
    pub client_addr: String,
}

/// Builds an embedded node; see the module docs.
#[derive(Clone, Debug)]
pub struct EmbeddedBuilder {
    settings: Vec<(String, String)>,
    members: Vec<Member>,
    client: Option<ClientConfig>,
}

/// A running embedded node. Dropping it without [`Embedded::shutdown`]
/// leaves the node running until the runtime ends.
#[derive(Debug)]
pub struct Embedded {
    running: Running,
    client: Client,
}

impl Embedded {
    /// An embedded node with Raft id `id` (unique, not 0), keeping its data
    /// in `data_dir` and reached by its peers at `peer_addr` (`ip:port`).
    pub fn builder(id: u64, data_dir: impl Into<PathBuf>, peer_addr: &str) -> EmbeddedBuilder {
        let data_dir: PathBuf = data_dir.into();
        EmbeddedBuilder {
            settings: vec![
                ("id".into(), id.to_string()),
                ("data_dir".into(), data_dir.display().to_string()),
                ("peer_addr".into(), peer_addr.into()),
                // No client port unless asked for; no metrics port and no
                // dashboard either.
                ("client_addr".into(), String::new()),
                ("metrics_addr".into(), String::new()),
                ("ui_addr".into(), String::new()),
            ],
            members: Vec::new(),
            client: None,
        }
    }

    /// A client of this node over the in-process channel; cheap to clone.
    /// It has every operation of [`lockstep_client::Client`], and a
    /// [`lockstep_client::Worker`] runs on it.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// This node's Raft id.
    pub fn id(&self) -> u64 {
        self.running.node.id
    }

    /// Stops the node: its servers (in-flight calls finish), then Raft.
    pub async fn shutdown(self) -> Result<(), EmbeddedError> {
        tokio::time::timeout(
            Duration::from_millis(SHUTDOWN_MS_MAX),
            self.running.shutdown(),
        )
        .await
        .map_err(|_| EmbeddedError::ShutdownTimeout)??;
        Ok(())
    }
}

impl EmbeddedBuilder {
    /// Also serve the client API on `addr` (`ip:port`), for other
    /// processes and for the `lockstep` command line.
    pub fn client_addr(mut self, addr: &str) -> Self {
        self.settings.push(("client_addr".into(), addr.into()));
        self
    }

    /// Any other configuration key, as `lockstep node --set KEY=VALUE`
    /// takes it (for example `raft.heartbeat_ms`, `limits.fetch_wait_ms_max`).
    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.settings.push((key.into(), value.to_string()));
        self
    }

    /// Form a new cluster of `members` (this node among them); see the
    /// module docs for when to give it.
    pub fn bootstrap(mut self, members: impl IntoIterator<Item = Member>) -> Self {
        self.members = members.into_iter().collect();
        self
    }

    /// Deadlines, retries and message sizes of the in-process client
    /// (`endpoints` is not used). Default: `ClientConfig` defaults.
    pub fn client_config(mut self, config: ClientConfig) -> Self {
        self.client = Some(config);
        self
    }

    /// Checks the configuration (errors name the key), starts the node on
    /// the current Tokio runtime, and forms the cluster if asked.
    pub async fn start(self) -> Result<Embedded, EmbeddedError> {
        let config = NodeConfig::load(None, Vec::new(), &self.settings)?;
        let members = self.checked_members(config.id)?;
        let running = crate::run::start(config.clone(), true).await?;
        let channel = running
            .in_process
            .clone()
            .ok_or_else(|| RunError::Server("no in-process channel".into()))?;
        let mut client_config = self
            .client
            .unwrap_or_else(|| ClientConfig::new(["in-process:1"]));
        client_config.message_bytes_max = config.limits.message_bytes_max as usize;
        let client = match Client::over_channel(
            &format!("in-process node {}", config.id),
            channel,
            client_config,
        ) {
            Ok(client) => client,
            Err(e) => {
                let _ = running.shutdown().await;
                return Err(e.into());
            }
        };
        if !members.is_empty() {
            // In the background: the other members may not be up yet, and
            // forming waits for enough of them to know the cluster is new.
            tokio::spawn(form_until_done(
                running.node.clone(),
                members,
                running.stopping(),
            ));
        }
        Ok(Embedded { running, client })
    }

    fn checked_members(&self, own_id: u64) -> Result<Vec<(u64, NodeInfo)>, EmbeddedError> {
        let mut out: Vec<(u64, NodeInfo)> = Vec::with_capacity(self.members.len());
        for (index, m) in self.members.iter().enumerate() {
            let problem = if m.id == 0 {
                Some("id must be at least 1".to_string())
            } else if out.iter().any(|(id, _)| *id == m.id) {
                Some(format!("id {} is given twice", m.id))
            } else if m.peer_addr.parse::<std::net::SocketAddr>().is_err() {
                Some(format!("peer_addr `{}` is not ip:port", m.peer_addr))
            } else if !m.client_addr.is_empty()
                && m.client_addr.parse::<std::net::SocketAddr>().is_err()
            {
                Some(format!("client_addr `{}` is not ip:port", m.client_addr))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(EmbeddedError::Member { index, problem });
            }
            out.push((
                m.id,
                NodeInfo {
                    peer_addr: m.peer_addr.clone(),
                    client_addr: m.client_addr.clone(),
                },
            ));
        }
        if !out.is_empty() && !out.iter().any(|(id, _)| *id == own_id) {
            return Err(EmbeddedError::Member {
                index: out.len(),
                problem: format!("the members do not include this node (id {own_id})"),
            });
        }
        Ok(out)
    }
}

/// How long an embedded node waits between tries to form its cluster while
/// too few members answer.
const FORM_RETRY_MS: u64 = 1_000;

/// Tries to form the cluster from `members` until it is formed (here or
/// before), a member shows it formed without this node (which then
/// rejoins by itself, under the vote guard), or the node stops. Each try
/// is bounded by the bootstrap's own call deadlines.
async fn form_until_done(
    node: std::sync::Arc<crate::node::Node>,
    members: Vec<(u64, NodeInfo)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match crate::bootstrap::form(&node, &members).await {
            Ok(formed) => {
                tracing::info!(?formed, "embedded bootstrap done");
                return;
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tracing::info!(reason = status.message(), "embedded bootstrap: retrying");
            }
            Err(status) => {
                tracing::warn!(
                    reason = status.message(),
                    "embedded bootstrap: not forming a cluster"
                );
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(FORM_RETRY_MS)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
