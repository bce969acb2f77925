//! Node configuration: a TOML file, overridden by `LOCKSTEP_*` environment
//! variables, overridden by flags. Every error names the key at fault, so a
//! bad configuration stops start-up with a message a person can act on.
//!
//! The key set is the shape of [`NodeConfig::default`]: a file or override
//! may only name keys that exist there, with values of the same type. The
//! environment name of a key is `LOCKSTEP_` plus the key in upper case with
//! dots as underscores: `raft.heartbeat_ms` is `LOCKSTEP_RAFT_HEARTBEAT_MS`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// Raft timing. The defaults suit three nodes and a bench sharing two cores:
/// openraft 0.9 blocks its core on every log fsync, and the openraft FAQ asks
/// for an election timeout of at least ten times the append latency and a
/// heartbeat below half the minimum election timeout. A loaded 2-core
/// machine sees fsyncs and scheduling stalls of tens of milliseconds, so the
/// election timeout is 400–600 ms (ten times a slow fsync) and the heartbeat
/// 150 ms. The elector's pre-vote keeps a follower that merely fell behind
/// from deposing a healthy leader, so the timeouts can be this short; a
/// failover waits the lease (`election_timeout_max_ms`) plus up to the
/// spread between the two bounds, under 1 s in all (README, failover
/// trials).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftConfig {
    /// How often the leader sends heartbeats, in ms.
    pub heartbeat_ms: u64,
    /// Election timing (ms). A follower that hears no leader for the lease
    /// (`election_timeout_max_ms`) plus a random part of the spread between
    /// the two bounds asks the others in a pre-vote, then starts an
    /// election if a majority would vote for it (`crate::elector`).
    pub election_timeout_min_ms: u64,
    /// See [`RaftConfig::election_timeout_min_ms`].
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind a snapshot, so a follower installing a large
    /// snapshot is not cut off by a purge (openraft #1706).
    pub logs_kept_after_snapshot: u64,
    /// Also build a snapshot once the log has carried this many payload
    /// bytes since the last one: entries of many large payloads otherwise
    /// keep gigabytes of log that the payload store holds again
    /// (`crate::compact`).
    pub snapshot_every_bytes: u64,
    /// Payload bytes of log kept behind the snapshots: the log is also
    /// purged up to the newest snapshot with at least this much payload
    /// after it, even when that keeps fewer entries than
    /// `logs_kept_after_snapshot`, but a leader never past the entries its
    /// slowest follower has (`crate::compact`).
    pub log_bytes_kept: u64,
    /// Entries in one AppendEntries RPC.
    pub append_entries_max: u64,
    /// Deadline of one peer RPC other than a snapshot.
    pub rpc_timeout_ms: u64,
}

/// How the leader gathers client commands into one Raft entry (openraft 0.9
/// fsyncs once per entry, so batching is what makes throughput).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// How long the first command of a batch waits for company.
    pub linger_us: u64,
    /// Most client commands in one entry.
    pub commands_max: u64,
    /// Most bytes of commands in one entry.
    pub bytes_max: u64,
    /// Proposed entries awaiting commit before new requests wait.
    pub in_flight_max: u64,
}

/// The bounds a node enforces on what clients ask of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest gRPC message a node accepts or sends.
    pub message_bytes_max: u64,
    /// Longest a follower keeps retrying to forward a write during an
    /// election before it answers UNAVAILABLE.
    pub forward_retry_ms_max: u64,
    /// Longest a join or remove may take, the new node's catch-up as a
    /// learner included, before it answers DEADLINE_EXCEEDED.
    pub membership_ms_max: u64,
    /// Longest long-poll a fetch may ask for.
    pub fetch_wait_ms_max: u64,
    /// Client requests served at once per node, and forwarded requests
    /// served at once for other nodes (a separate count); one more is shed
    /// with RESOURCE_EXHAUSTED naming this key, so memory stays bounded by
    /// it times `message_bytes_max` however long a partition lasts.
    pub requests_in_flight_max: u64,
    /// Longest the leader waits for a proposed write to commit and apply.
    /// Past it the caller learns the write may have applied (ABORTED), as a
    /// leader cut off from its quorum cannot say.
    pub write_ms_max: u64,
    /// Free bytes the data directory keeps in reserve: below it the leader
    /// refuses enqueues, fetches, new queues and new sessions with
    /// RESOURCE_EXHAUSTED naming this key, and lets acks and the rest
    /// through, until space returns. 0 turns the rule off.
    pub disk_free_bytes_min: u64,
}

/// Time. Cluster time runs on the leader's monotonic clock (see the
/// node's `clock` module); the wall clock is only a hint within this bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockConfig {
    /// How far (ms) the leader's wall clock may be from cluster time and
    /// still be followed, slowly (at most 1 % of elapsed time). Beyond it,
    /// cluster time ignores the wall clock and the leader logs a warning
    /// and counts `lockstep_clock_skew_exceeded`. So a step of any node's
    /// wall clock moves no lease deadline, delay or dedup window by more
    /// than this.
    pub skew_ms_max: u64,
}

/// Transport security. All three files, or none: with them, the client API
/// speaks TLS only, and the peer API mutual TLS only (a peer must present a
/// certificate that chains to `ca_file`; this node checks each peer's the
/// same way). Empty: plaintext, for loopback development.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// This node's certificate chain (PEM), served on both ports and shown
    /// to peers as a client certificate.
    pub cert_file: String,
    /// Its private key (PEM).
    pub key_file: String,
    /// The cluster CA (PEM) that peer certificates must chain to.
    pub ca_file: String,
}

impl TlsConfig {
    /// Whether TLS is configured (the three files are checked together).
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty()
    }
}

/// Client authentication: `mode = "off"` lets every client do everything
/// (loopback development); `mode = "token"` requires a bearer token from
/// `tokens_file` on every call (see `crate::auth`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// [`AUTH_MODE_OFF`] or [`AUTH_MODE_TOKEN`].
    pub mode: String,
    /// The tokens file, read at start when `mode` is [`AUTH_MODE_TOKEN`].
    pub tokens_file: String,
}

/// The largest `limits.message_bytes_max` a node accepts: the peer
/// transport's limit (`lockstep_raft::PEER_MESSAGE_BYTES_MAX`, 64 MiB) less
/// 64 KiB for what wraps a client message on its way to the leader and in
/// a Raft entry (the forward envelope, the batch, the entry's log id). A
/// larger client message would be accepted on the client port and then
/// refused, or never replicated, between the nodes.
pub const MESSAGE_BYTES_MAX_LIMIT: u64 = lockstep_raft::PEER_MESSAGE_BYTES_MAX as u64 - 64 * 1024;

/// `auth.mode`: every client may do everything.
pub const AUTH_MODE_OFF: &str = "off";
/// `auth.mode`: every call presents a bearer token from `auth.tokens_file`.
pub const AUTH_MODE_TOKEN: &str = "token";

/// Everything one node is configured with; see `lockstep.example.toml`
/// for every key, its default and its bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Raft node id, unique in the cluster, never 0.
    pub id: u64,
    /// Where peers reach this node (Raft RPCs and forwarded writes).
    pub peer_addr: String,
    /// Where clients reach this node. Empty only for an embedded node
    /// that serves nothing but its own process.
    pub client_addr: String,
    /// Where the node keeps its RocksDB and snapshots.
    pub data_dir: PathBuf,
    /// Prometheus metrics over HTTP; empty turns them off.
    pub metrics_addr: String,
    /// The web dashboard and its JSON API over HTTP (`ui`); empty, the
    /// default, turns them off. Over TLS with the node's certificate when
    /// `[tls]` is set, as the client port.
    pub ui_addr: String,
    /// An OTLP/gRPC collector (`http://host:4317`) that the node's spans
    /// are exported to, continuing each caller's trace; empty, the
    /// default, exports nothing.
    pub otlp_endpoint: String,
    /// Raft timing and log sizes.
    pub raft: RaftConfig,
    /// How writes are gathered into Raft entries.
    pub batch: BatchConfig,
    /// Bounds on what clients ask.
    pub limits: LimitsConfig,
    /// How far the wall clock is trusted.
    pub clock: ClockConfig,
    /// Transport security.
    pub tls: TlsConfig,
    /// Client authentication.
    pub auth: AuthConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            peer_addr: "127.0.0.1:7101".into(),
            client_addr: "127.0.0.1:7100".into(),
            data_dir: PathBuf::from("data"),
            metrics_addr: String::new(),
            ui_addr: String::new(),
            otlp_endpoint: String::new(),
            raft: RaftConfig {
                heartbeat_ms: 150,
                election_timeout_min_ms: 400,
                election_timeout_max_ms: 600,
                snapshot_every_entries: 20_000,
                logs_kept_after_snapshot: 5_000,
                snapshot_every_bytes: 128 * 1024 * 1024,
                log_bytes_kept: 64 * 1024 * 1024,
                append_entries_max: 300,
                rpc_timeout_ms: 2_000,
            },
            batch: BatchConfig {
                linger_us: 500,
                commands_max: 1_024,
                // At most lockstep_raft::APPEND_ENTRIES_BYTES_BUDGET, so a
                // batch replicates within openraft's heartbeat-long timeout.
                bytes_max: 1024 * 1024,
                in_flight_max: 8,
            },
            limits: LimitsConfig {
                message_bytes_max: 16 * 1024 * 1024,
                forward_retry_ms_max: 5_000,
                membership_ms_max: 60_000,
                fetch_wait_ms_max: 20_000,
                requests_in_flight_max: 4_096,
                write_ms_max: 10_000,
                // Room for RocksDB to flush a full memtable (64 MiB) and
                // for the entries of acks in flight.
                disk_free_bytes_min: 256 * 1024 * 1024,
            },
            // Well above what NTP keeps a healthy machine to (ms), well
            // below any lease: a wall clock off by more is a fault.
            clock: ClockConfig { skew_ms_max: 5_000 },
            tls: TlsConfig {
                cert_file: String::new(),
                key_file: String::new(),
                ca_file: String::new(),
            },
            auth: AuthConfig {
                mode: AUTH_MODE_OFF.into(),
                tokens_file: String::new(),
            },
        }
    }
}

/// A configuration that cannot be used; every variant names the file or
/// key at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The config file is not TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A key that no setting has.
    #[error("unknown config key `{key}` (from {source_name})")]
    UnknownKey {
        /// The key, dotted (`raft.heartbeat_ms`).
        key: String,
        /// The file, the environment variable or the flag it came from.
        source_name: String,
    },
    /// A value of the wrong type.
    #[error("config key `{key}` (from {source_name}): expected {expected}, found {found}")]
    WrongType {
        /// The key, dotted.
        key: String,
        /// Where it came from.
        source_name: String,
        /// The type the key takes.
        expected: &'static str,
        /// The value found.
        found: String,
    },
    /// A value out of its bounds, or inconsistent with another.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The key, dotted.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The environment variable that overrides `key`.
pub fn env_name(key: &str) -> String {
    format!("LOCKSTEP_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Every leaf key of a table, dotted, with its value.
fn leaves(table: &Table, prefix: &str, out: &mut Vec<(String, Value)>) {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            Value::Table(inner) => leaves(inner, &key, out),
            other => out.push((key, other.clone())),
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// The layered configuration before it is typed: defaults, then each source.
struct Layers {
    merged: Table,
    defaults: Vec<(String, Value)>,
}

impl Layers {
    fn new() -> Layers {
        let merged = Table::try_from(NodeConfig::default()).expect("defaults serialize to a table");
        let mut defaults = Vec::new();
        leaves(&merged, "", &mut defaults);
        Layers { merged, defaults }
    }

    fn default_of(&self, key: &str) -> Option<&Value> {
        self.defaults.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key` to `value`, checking the key exists and the type matches.
    fn set(&mut self, key: &str, value: Value, source_name: &str) -> Result<(), ConfigError> {
        let Some(default) = self.default_of(key) else {
            return Err(ConfigError::UnknownKey {
                key: key.into(),
                source_name: source_name.into(),
            });
        };
        if std::mem::discriminant(default) != std::mem::discriminant(&value) {
            return Err(ConfigError::WrongType {
                key: key.into(),
                source_name: source_name.into(),
                expected: type_name(default),
                found: format!("{} ({value})", type_name(&value)),
            });
        }
        let mut table = &mut self.merged;
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("a key has at least one part");
        for part in parts {
            table = table
                .get_mut(part)
                .and_then(Value::as_table_mut)
                .expect("a key of the defaults has its parent tables");
        }
        table.insert(last.to_string(), value);
        Ok(())
    }

    /// An override given as text (environment or flag): an integer if the
    /// key is an integer key, otherwise the text as a string.
    fn set_text(&mut self, key: &str, text: &str, source_name: &str) -> Result<(), ConfigError> {
        let value = match self.default_of(key) {
            Some(Value::Integer(_)) => match text.trim().replace('_', "").parse::<i64>() {
                Ok(n) => Value::Integer(n),
                Err(_) => {
                    return Err(ConfigError::WrongType {
                        key: key.into(),
                        source_name: source_name.into(),
                        expected: "an integer",
                        found: format!("`{text}`"),
                    })
                }
            },
            _ => Value::String(text.to_string()),
        };
        self.set(key, value, source_name)
    }
}

impl NodeConfig {
    /// Loads the configuration: defaults, then the file (if any), then the
    /// `LOCKSTEP_*` variables of `env`, then `flags` as (key, value) pairs.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[(String, String)],
    ) -> Result<NodeConfig, ConfigError> {
        let mut layers = Layers::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.into(),
                message: e.to_string(),
            })?;
            let table: Table = text
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.into(),
                    message: e.to_string(),
                })?;
            let mut given = Vec::new();
            leaves(&table, "", &mut given);
            let source_name = path.display().to_string();
            for (key, value) in given {
                layers.set(&key, value, &source_name)?;
            }
        }
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("LOCKSTEP_"))
            .collect();
        let keys: Vec<String> = layers.defaults.iter().map(|(k, _)| k.clone()).collect();
        for key in &keys {
            let name = env_name(key);
            if let Some((_, text)) = env.iter().find(|(k, _)| *k == name) {
                layers.set_text(key, text, &format!("environment variable {name}"))?;
            }
        }
        for (key, text) in flags {
            layers.set_text(
                key,
                text,
                &format!("flag --{}", key.replace(['.', '_'], "-")),
            )?;
        }
        let config: NodeConfig = Value::Table(layers.merged)
            .try_into()
            .map_err(|e: toml::de::Error| invalid("(config)", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that typing alone does not, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(invalid(
                "id",
                "must be at least 1 (0 is not a valid Raft node id)",
            ));
        }
        parse_addr("peer_addr", &self.peer_addr)?;
        // Empty only for an embedded node, which serves its own process
        // in-process (`run_node` refuses it for a node process).
        if !self.client_addr.is_empty() {
            parse_addr("client_addr", &self.client_addr)?;
        }
        if !self.otlp_endpoint.is_empty() && !valid_otlp_endpoint(&self.otlp_endpoint) {
            return Err(invalid(
                "otlp_endpoint",
                format!(
                    "`{}` is not an http:// or https:// URL of an OTLP/gRPC collector",
                    self.otlp_endpoint
                ),
            ));
        }
        if !self.metrics_addr.is_empty() {
            parse_addr("metrics_addr", &self.metrics_addr)?;
        }
        if !self.ui_addr.is_empty() {
            parse_addr("ui_addr", &self.ui_addr)?;
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 {
            return Err(invalid("raft.heartbeat_ms", "must be at least 1"));
        }
        if r.election_timeout_min_ms < 2 * r.heartbeat_ms + 1 {
            return Err(invalid(
                "raft.election_timeout_min_ms",
                format!(
                    "{} must be more than twice raft.heartbeat_ms ({}), or followers start elections between heartbeats",
                    r.election_timeout_min_ms, r.heartbeat_ms
                ),
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(invalid(
                "raft.election_timeout_max_ms",
                format!(
                    "{} must be above raft.election_timeout_min_ms ({})",
                    r.election_timeout_max_ms, r.election_timeout_min_ms
                ),
            ));
        }
        positive("raft.snapshot_every_entries", r.snapshot_every_entries)?;
        positive("raft.snapshot_every_bytes", r.snapshot_every_bytes)?;
        positive("raft.append_entries_max", r.append_entries_max)?;
        positive("raft.rpc_timeout_ms", r.rpc_timeout_ms)?;
        positive("batch.commands_max", self.batch.commands_max)?;
        positive("batch.bytes_max", self.batch.bytes_max)?;
        positive("batch.in_flight_max", self.batch.in_flight_max)?;
        if self.batch.linger_us > 100_000 {
            return Err(invalid(
                "batch.linger_us",
                "must be at most 100000 (100 ms)",
            ));
        }
        let min_message = u64::from(lockstep_core::limits::PAYLOAD_BYTES_MAX_LIMIT) + 64 * 1024;
        if self.limits.message_bytes_max < min_message {
            return Err(invalid(
                "limits.message_bytes_max",
                format!("must be at least {min_message} so the largest allowed payload fits"),
            ));
        }
        if self.limits.message_bytes_max > MESSAGE_BYTES_MAX_LIMIT {
            return Err(invalid(
                "limits.message_bytes_max",
                format!(
                    "must be at most {MESSAGE_BYTES_MAX_LIMIT}: a follower forwards a client \
                     message to the leader, and an entry carrying it goes to every peer, over \
                     the peer transport, whose limit is {} bytes",
                    lockstep_raft::PEER_MESSAGE_BYTES_MAX
                ),
            ));
        }
        positive(
            "limits.requests_in_flight_max",
            self.limits.requests_in_flight_max,
        )?;
        positive("limits.write_ms_max", self.limits.write_ms_max)?;
        positive("clock.skew_ms_max", self.clock.skew_ms_max)?;
        let tls = &self.tls;
        let files = [
            ("tls.cert_file", &tls.cert_file),
            ("tls.key_file", &tls.key_file),
            ("tls.ca_file", &tls.ca_file),
        ];
        if files.iter().any(|(_, f)| !f.is_empty()) {
            if let Some((key, _)) = files.iter().find(|(_, f)| f.is_empty()) {
                return Err(invalid(
                    key,
                    "is empty, but other tls keys are set: give tls.cert_file, tls.key_file \
                     and tls.ca_file together, or none of them",
                ));
            }
        }
        match self.auth.mode.as_str() {
            AUTH_MODE_OFF => {}
            AUTH_MODE_TOKEN => {
                if self.auth.tokens_file.is_empty() {
                    return Err(invalid(
                        "auth.tokens_file",
                        "is empty, but auth.mode is \"token\": name the file of tokens",
                    ));
                }
            }
            other => {
                return Err(invalid(
                    "auth.mode",
                    format!("`{other}` is not a mode: use \"off\" or \"token\""),
                ))
            }
        }
        Ok(())
    }

    /// `peer_addr`, which validation has parsed.
    pub fn peer_socket(&self) -> SocketAddr {
        self.peer_addr.parse().expect("validated")
    }

    /// `client_addr`, which validation has parsed.
    pub fn client_socket(&self) -> SocketAddr {
        self.client_addr.parse().expect("validated")
    }
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(())
}

/// Whether `endpoint` can name an OTLP/gRPC collector (`otlp_endpoint`).
pub(crate) fn valid_otlp_endpoint(endpoint: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        endpoint
            .strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty())
    })
}

fn parse_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| invalid(key, format!("`{text}` is not an IP:port address")))
}

#[cfg(test)]
mod tests {
    #[test]
    #[allow(clippy::unwrap_used)]
    fn the_example_file_lists_every_key_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../lockstep.example.toml");
        let loaded = NodeConfig::load(Some(&path), Vec::new(), &[]).unwrap();
        assert_eq!(loaded, NodeConfig::default());
        let text = std::fs::read_to_string(&path).unwrap();
        let table: Table = text.parse().unwrap();
        let mut given = Vec::new();
        leaves(&table, "", &mut given);
        let defaults: Table = toml::Value::try_from(NodeConfig::default())
            .unwrap()
            .as_table()
            .unwrap()
            .clone();
        let mut every = Vec::new();
        leaves(&defaults, "", &mut every);
        let keys = |v: &[(String, Value)]| {
            let mut k: Vec<String> = v.iter().map(|(k, _)| k.clone()).collect();
            k.sort();
            k
        };
        assert_eq!(keys(&given), keys(&every), "every key is in the example");
    }

    use super::*;

    fn flags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write config");
        f
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(
            NodeConfig::load(None, vec![], &[]),
            Ok(NodeConfig::default())
        );
    }

    #[test]
    fn flags_override_env_which_overrides_the_file() {
        let f = file("id = 3\npeer_addr = \"127.0.0.3:7101\"\n[raft]\nheartbeat_ms = 100\n");
        let env = vec![
            ("LOCKSTEP_ID".to_string(), "4".to_string()),
            ("LOCKSTEP_RAFT_HEARTBEAT_MS".to_string(), "120".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = NodeConfig::load(Some(f.path()), env, &flags(&[("id", "5")])).expect("valid");
        assert_eq!(c.id, 5, "flag wins");
        assert_eq!(c.raft.heartbeat_ms, 120, "env beats file");
        assert_eq!(c.peer_addr, "127.0.0.3:7101", "file beats default");
    }

    #[test]
    fn every_error_names_the_key() {
        type Pairs = Vec<(String, String)>;
        let cases: Vec<(Option<&str>, Pairs, Pairs, &str)> = vec![
            (Some("idd = 3\n"), vec![], vec![], "`idd`"),
            (
                Some("[raft]\nheartbeat_ms = \"fast\"\n"),
                vec![],
                vec![],
                "`raft.heartbeat_ms`",
            ),
            (Some("[raft]\nbogus = 1\n"), vec![], vec![], "`raft.bogus`"),
            (
                None,
                vec![("LOCKSTEP_RAFT_HEARTBEAT_MS".into(), "soon".into())],
                vec![],
                "LOCKSTEP_RAFT_HEARTBEAT_MS",
            ),
            (None, vec![], flags(&[("id", "0")]), "`id`"),
            (
                None,
                vec![],
                flags(&[("peer_addr", "nowhere")]),
                "`peer_addr`",
            ),
            (
                None,
                vec![],
                flags(&[("otlp_endpoint", "127.0.0.1:4317")]),
                "`otlp_endpoint`",
            ),
            (
                None,
                vec![],
                flags(&[("raft.election_timeout_min_ms", "200")]),
                "`raft.election_timeout_min_ms`",
            ),
            (
                None,
                vec![],
                flags(&[("raft.election_timeout_max_ms", "300")]),
                "`raft.election_timeout_max_ms`",
            ),
            (
                None,
                vec![],
                flags(&[("limits.message_bytes_max", "1024")]),
                "`limits.message_bytes_max`",
            ),
            (
                None,
                vec![],
                flags(&[("limits.message_bytes_max", "67108864")]),
                "`limits.message_bytes_max`",
            ),
            (None, vec![], flags(&[("no.such", "1")]), "`no.such`"),
            (
                None,
                vec![],
                flags(&[("tls.cert_file", "node.pem")]),
                "`tls.key_file`",
            ),
            (None, vec![], flags(&[("auth.mode", "open")]), "`auth.mode`"),
            (
                None,
                vec![],
                flags(&[("clock.skew_ms_max", "0")]),
                "`clock.skew_ms_max`",
            ),
            (
                None,
                vec![],
                flags(&[("auth.mode", "token")]),
                "`auth.tokens_file`",
            ),
        ];
        for (text, env, flags, names) in cases {
            let f = text.map(file);
            let err = NodeConfig::load(f.as_ref().map(|f| f.path()), env, &flags).expect_err(names);
            assert!(
                err.to_string().contains(names),
                "`{err}` should name {names}"
            );
        }
    }

    #[test]
    fn message_bytes_max_may_reach_its_upper_bound() {
        let at = MESSAGE_BYTES_MAX_LIMIT.to_string();
        let c = NodeConfig::load(None, vec![], &flags(&[("limits.message_bytes_max", &at)]))
            .expect("the bound itself is accepted");
        assert_eq!(c.limits.message_bytes_max, MESSAGE_BYTES_MAX_LIMIT);
        assert!(MESSAGE_BYTES_MAX_LIMIT < lockstep_raft::PEER_MESSAGE_BYTES_MAX as u64);
    }

    #[test]
    fn a_missing_or_malformed_file_is_reported_with_its_path() {
        let err = NodeConfig::load(Some(Path::new("/nonexistent/lockstep.toml")), vec![], &[])
            .expect_err("missing");
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        let f = file("id = = 3");
        let err = NodeConfig::load(Some(f.path()), vec![], &[]).expect_err("syntax");
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }

    #[test]
    fn env_names_follow_the_key() {
        assert_eq!(env_name("raft.heartbeat_ms"), "LOCKSTEP_RAFT_HEARTBEAT_MS");
        assert_eq!(env_name("data_dir"), "LOCKSTEP_DATA_DIR");
    }
}
