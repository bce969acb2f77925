//! Real node processes for tests: each node is a `lockstep node` child
//! process on its own loopback address (127.0.<net>.<id>) with its own data
//! directory, so a partition by address and a kill -9 behave as on separate
//! machines.
//!
//! Every wait here has a bound; every child is killed when the [`Cluster`]
//! is dropped, so a failing test never leaves nodes behind.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockstep_proto as pb;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint};

mod tmpfs;
pub use tmpfs::{fill, free_bytes, remove_orphaned_mounts, unfill, Tmpfs, TmpfsError};

/// The environment variable that names the `lockstep` binary under test,
/// for a run outside Cargo's target directory.
pub const BINARY_ENV: &str = "LOCKSTEP_BIN";

/// The `lockstep` binary the black-box tests run: `$LOCKSTEP_BIN`, or the
/// one Cargo built beside the running test executable
/// (`<target>/<profile>/lockstep`, the test being `<target>/<profile>/deps/…`).
///
/// `cargo test --workspace` and `cargo nextest run --workspace` build it in
/// the same run, because `lockstep-cli` has integration tests of its own;
/// a run of the `lockstep-tests` package alone must build it first
/// (`cargo build -p lockstep-cli`). Panics, saying so, when it is missing.
pub fn lockstep_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os(BINARY_ENV) {
        return PathBuf::from(bin);
    }
    let beside = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        let profile = if deps.ends_with("deps") {
            deps.parent()?
        } else {
            deps
        };
        Some(profile.join("lockstep"))
    });
    match beside {
        Some(bin) if bin.exists() => bin,
        other => panic!(
            "the `lockstep` binary is not built (looked for {other:?}): run the tests with \
             `--workspace`, or `cargo build -p lockstep-cli` first, or set {BINARY_ENV}"
        ),
    }
}

/// How long a node may take to accept connections after it is spawned.
pub const NODE_START_MS_MAX: u64 = 30_000;
/// Deadline of one RPC made by the harness itself.
pub const CALL_MS_MAX: u64 = 10_000;
/// How long a SIGTERM'd node may take to exit before it is killed.
pub const STOP_MS_MAX: u64 = 15_000;
/// Lowest and highest base port tried. Below Linux's ephemeral range
/// (32768+), so an outgoing connection never takes a node's port.
const BASE_PORT_MIN: u16 = 10_000;
const BASE_PORT_MAX: u16 = 32_000;
/// The last octet of [`Cluster::client_ip`]; node ids stay far below it.
const CLIENT_HOST: u8 = 200;
/// Ports per node: client, peer, metrics.
const PORTS_PER_NODE: u16 = 3;
/// How many port ranges [`Cluster::start`] tries before it gives up.
const START_ATTEMPTS_MAX: u32 = 5;

/// Why nodes did not come up.
enum Started {
    /// A node could not bind one of its addresses.
    AddressTaken(String),
    Failed(String),
}

/// How to run a cluster.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The `lockstep` binary.
    pub bin: PathBuf,
    /// Parent of the nodes' data directories and log files.
    pub dir: PathBuf,
    /// Extra `--set KEY=VALUE` pairs given to every node; `{id}` in a
    /// value becomes the node's id (for per-node files such as
    /// certificates).
    pub settings: Vec<(String, String)>,
    /// Extra environment variables of every node process; `{id}` in a
    /// value becomes the node's id (for per-node files such as the clock
    /// offset file of `tests/clock.rs`).
    pub env: Vec<(String, String)>,
    /// The `LOCKSTEP_LOG` filter of the nodes (their stderr goes to
    /// `<dir>/n<id>.log`).
    pub log: String,
    /// The third octet of the nodes' addresses (127.0.`net`.`id`). Two
    /// clusters on one machine with different nets share no address, so
    /// a partition by address in one cuts nothing in the other.
    pub net: u8,
    /// Node `{id}`'s data directory, `{id}` replaced by the id; `None` is
    /// `<dir>/n<id>`. The chaos harness's `disk-full` profile puts each
    /// one inside its own small [`Tmpfs`] (a subdirectory, so a wipe can
    /// delete it while the mount point stays).
    pub data_dir: Option<String>,
}

impl Spec {
    pub fn new(bin: impl Into<PathBuf>, dir: impl Into<PathBuf>) -> Spec {
        Spec {
            bin: bin.into(),
            dir: dir.into(),
            settings: Vec::new(),
            env: Vec::new(),
            log: "info,openraft=warn".into(),
            net: 0,
            data_dir: None,
        }
    }

    pub fn set(mut self, key: &str, value: impl ToString) -> Spec {
        self.settings.push((key.into(), value.to_string()));
        self
    }

    /// Runs every node under libfaketime, each reading its wall clock's
    /// offset from its own file `clock-<id>` in `dir` (see
    /// [`set_clock`]; no file, or `+0`, is the real time). Only the wall
    /// clock moves (`FAKETIME_DONT_FAKE_MONOTONIC=1`), as with an NTP step:
    /// CLOCK_MONOTONIC is what a leader measures cluster time with.
    pub fn with_faketime(mut self) -> Spec {
        let clock = self.dir.join("clock-{id}").display().to_string();
        self.env.extend([
            ("LD_PRELOAD".into(), LIBFAKETIME.into()),
            ("FAKETIME_TIMESTAMP_FILE".into(), clock),
            ("FAKETIME_NO_CACHE".into(), "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ]);
        self
    }

    /// Gives every node a failpoints file `failpoints-<id>` in `dir`, which
    /// a test build reads while it runs (see [`set_failpoints`]).
    pub fn with_failpoints(mut self) -> Spec {
        let file = self.dir.join("failpoints-{id}").display().to_string();
        self.env.push(("LOCKSTEP_FAILPOINTS_FILE".into(), file));
        self
    }
}

/// Where Debian's `faketime` package puts the preload library
/// (`scripts/install-deps` installs it).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Writes `text` to `path` aside and renames it in, so a reader that
/// rereads the file on every call (libfaketime, the failpoints watcher)
/// never sees it half written.
fn replace_file(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| err(format!("{}: {e}", path.display())))
}

/// Sets node `id`'s wall-clock offset under [`Spec::with_faketime`], in
/// libfaketime's syntax: `+600` (seconds ahead), `-30`, `+0 x1.01` (1 %
/// fast from the process start), `@2026-01-01 00:00:00` (frozen at).
pub fn set_clock(dir: &Path, id: u64, offset: &str) -> Result<()> {
    replace_file(&dir.join(format!("clock-{id}")), &format!("{offset}\n"))
}

/// Sets node `id`'s failpoints under [`Spec::with_failpoints`], one
/// `name=actions` per line in the `fail` crate's syntax
/// (`log-append=sleep(200)`); empty turns every one off.
pub fn set_failpoints(dir: &Path, id: u64, text: &str) -> Result<()> {
    replace_file(&dir.join(format!("failpoints-{id}")), text)
}

/// One node's fixed addresses; they survive restarts, as membership keeps
/// them.
#[derive(Clone, Debug)]
pub struct NodeAddr {
    pub id: u64,
    pub ip: Ipv4Addr,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub metrics: SocketAddr,
}

impl NodeAddr {
    pub fn member(&self) -> pb::JoinRequest {
        pb::JoinRequest {
            id: self.id,
            peer_addr: self.peer.to_string(),
            client_addr: self.client.to_string(),
        }
    }
}

#[derive(Debug)]
struct Proc {
    child: Option<Child>,
    paused: bool,
}

/// A set of node processes. Node `i` listens on 127.0.`net`.`i`.
#[derive(Debug)]
pub struct Cluster {
    spec: Spec,
    base_port: u16,
    procs: BTreeMap<u64, Proc>,
}

#[derive(Debug)]
pub struct HarnessError(pub String);

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

pub type Result<T> = std::result::Result<T, HarnessError>;

fn err(text: impl Into<String>) -> HarnessError {
    HarnessError(text.into())
}

impl Cluster {
    /// Picks ports free on 127.0.`net`.1..=`ids_max` and starts nodes `1..=n`
    /// (not yet bootstrapped). `ids_max` leaves room for nodes that join
    /// later.
    pub fn start(spec: Spec, n: u64, ids_max: u64) -> Result<Cluster> {
        let base_port = free_base_port(spec.net, ids_max)?;
        Cluster::start_on(spec, n, ids_max, base_port)
    }

    /// [`Cluster::start`] from the port range at `base_port`; the cluster
    /// moves to another free range if a node cannot bind there.
    pub fn start_on(spec: Spec, n: u64, ids_max: u64, base_port: u16) -> Result<Cluster> {
        std::fs::create_dir_all(&spec.dir)
            .map_err(|e| err(format!("{}: {e}", spec.dir.display())))?;
        let mut cluster = Cluster {
            spec,
            base_port,
            procs: BTreeMap::new(),
        };
        // A range free when checked can be taken before the nodes bind it
        // (another test process checks at the same moment): then a node
        // exits naming the address, and the whole cluster moves to another
        // range. Nothing was bootstrapped yet, so nothing is lost.
        for attempt in 1..=START_ATTEMPTS_MAX {
            for id in 1..=n {
                cluster.spawn(id)?;
            }
            match cluster.wait_listening(n) {
                Ok(()) => return Ok(cluster),
                Err(Started::AddressTaken(text)) if attempt < START_ATTEMPTS_MAX => {
                    eprintln!("harness: {text}; moving the cluster to other ports");
                    for id in 1..=n {
                        cluster.wipe(id)?;
                    }
                    cluster.base_port = free_base_port(cluster.spec.net, ids_max)?;
                }
                Err(Started::AddressTaken(text) | Started::Failed(text)) => return Err(err(text)),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Waits up to [`NODE_START_MS_MAX`] until nodes `1..=n` accept TCP
    /// connections on all three of their ports. A node that exits instead is an
    /// error that quotes its log.
    fn wait_listening(&mut self, n: u64) -> std::result::Result<(), Started> {
        let deadline = Instant::now() + Duration::from_millis(NODE_START_MS_MAX);
        let mut waiting: Vec<u64> = (1..=n).collect();
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for id in waiting {
                if let Some(status) = self.exit_status(id) {
                    let tail = self.log_tail(id, 20);
                    let text = format!("node {id} exited at start-up ({status}):\n{tail}");
                    return Err(if tail.contains("in use") {
                        Started::AddressTaken(text)
                    } else {
                        Started::Failed(text)
                    });
                }
                let a = self.addr(id);
                let listening = [a.client, a.peer, a.metrics].iter().all(|addr| {
                    std::net::TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok()
                });
                if !listening {
                    still.push(id);
                }
            }
            waiting = still;
            if waiting.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let id = waiting[0];
                return Err(Started::Failed(format!(
                    "node {id} did not listen on {:?} within {NODE_START_MS_MAX} ms:\n{}",
                    self.addr(id),
                    self.log_tail(id, 20)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The spec of nodes spawned from now on.
    pub fn spec_mut(&mut self) -> &mut Spec {
        &mut self.spec
    }

    pub fn addr(&self, id: u64) -> NodeAddr {
        let ip = Ipv4Addr::new(127, 0, self.spec.net, id as u8);
        let port = |k: u16| SocketAddr::from((ip, self.base_port + k));
        NodeAddr {
            id,
            ip,
            client: port(0),
            peer: port(1),
            metrics: port(2),
        }
    }

    /// The address a workload should connect from: on the cluster's net
    /// but no node's, so a partition between nodes never cuts a client.
    /// (Unbound, a loopback connection leaves from 127.0.0.1, which on
    /// net 0 is node 1's address: isolating node 1 would cut the client
    /// off from every other node too.)
    pub fn client_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, self.spec.net, CLIENT_HOST)
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        match &self.spec.data_dir {
            Some(pattern) => PathBuf::from(pattern.replace("{id}", &id.to_string())),
            None => self.spec.dir.join(format!("n{id}")),
        }
    }

    pub fn log_file(&self, id: u64) -> PathBuf {
        self.spec.dir.join(format!("n{id}.log"))
    }

    /// Ids of nodes whose process is running (paused ones included).
    pub fn running(&self) -> Vec<u64> {
        self.procs
            .iter()
            .filter(|(_, p)| p.child.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// How node `id`'s process ended, if it ended on its own (a node that
    /// refuses to start, for one).
    pub fn exit_status(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        self.procs
            .get_mut(&id)?
            .child
            .as_mut()?
            .try_wait()
            .ok()
            .flatten()
    }

    /// Ids of nodes stopped with SIGSTOP.
    pub fn paused(&self) -> Vec<u64> {
        self.procs
            .iter()
            .filter(|(_, p)| p.paused && p.child.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Ids of every node ever started, running or not.
    pub fn known(&self) -> Vec<u64> {
        self.procs.keys().copied().collect()
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.procs.get(&id)?.child.as_ref().map(Child::id)
    }

    /// Starts node `id` on its fixed addresses and data directory; a
    /// no-op if it runs.
    pub fn spawn(&mut self, id: u64) -> Result<()> {
        if self.procs.get(&id).is_some_and(|p| p.child.is_some()) {
            return Ok(());
        }
        let a = self.addr(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(id))
            .map_err(|e| err(format!("log file of node {id}: {e}")))?;
        let mut command = Command::new(&self.spec.bin);
        command
            .arg("node")
            .args(["--id", &id.to_string()])
            .args(["--peer-addr", &a.peer.to_string()])
            .args(["--client-addr", &a.client.to_string()])
            .args(["--metrics-addr", &a.metrics.to_string()])
            .args(["--data-dir", &self.data_dir(id).display().to_string()]);
        for (k, v) in &self.spec.settings {
            let v = v.replace("{id}", &id.to_string());
            command.args(["--set", &format!("{k}={v}")]);
        }
        for (k, v) in &self.spec.env {
            command.env(k, v.replace("{id}", &id.to_string()));
        }
        let child = command
            .env("LOCKSTEP_LOG", &self.spec.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| err(format!("spawn {}: {e}", self.spec.bin.display())))?;
        self.procs.insert(
            id,
            Proc {
                child: Some(child),
                paused: false,
            },
        );
        Ok(())
    }

    /// kill -9: no shutdown, no flush beyond what was fsynced.
    pub fn kill(&mut self, id: u64) {
        if let Some(p) = self.procs.get_mut(&id) {
            if let Some(mut child) = p.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            p.paused = false;
        }
    }

    /// SIGTERM, then wait up to [`STOP_MS_MAX`] (then kill -9).
    pub fn stop(&mut self, id: u64) -> Result<()> {
        let Some(p) = self.procs.get_mut(&id) else {
            return Ok(());
        };
        let Some(mut child) = p.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(child.id() as i32);
        if p.paused {
            let _ = kill(pid, Signal::SIGCONT);
            p.paused = false;
        }
        kill(pid, Signal::SIGTERM).map_err(|e| err(format!("SIGTERM node {id}: {e}")))?;
        let deadline = Instant::now() + Duration::from_millis(STOP_MS_MAX);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(err(format!(
                        "node {id} did not exit within {STOP_MS_MAX} ms of SIGTERM"
                    )));
                }
            }
        }
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn pause(&mut self, id: u64) -> Result<()> {
        self.signal(id, Signal::SIGSTOP)?;
        if let Some(p) = self.procs.get_mut(&id) {
            p.paused = true;
        }
        Ok(())
    }

    pub fn resume(&mut self, id: u64) -> Result<()> {
        self.signal(id, Signal::SIGCONT)?;
        if let Some(p) = self.procs.get_mut(&id) {
            p.paused = false;
        }
        Ok(())
    }

    fn signal(&self, id: u64, signal: Signal) -> Result<()> {
        let pid = self
            .pid(id)
            .ok_or_else(|| err(format!("node {id} is not running")))?;
        kill(Pid::from_raw(pid as i32), signal).map_err(|e| err(format!("{signal} node {id}: {e}")))
    }

    /// Kills node `id` and deletes its data directory.
    pub fn wipe(&mut self, id: u64) -> Result<()> {
        self.kill(id);
        let dir = self.data_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(format!("wipe {}: {e}", dir.display()))),
        }
    }

    /// A channel to node `id`'s client port, waiting up to
    /// [`NODE_START_MS_MAX`] for it to listen.
    pub async fn channel(&self, id: u64) -> Result<Channel> {
        channel(self.addr(id).client).await
    }

    /// Forms the cluster from nodes `1..=n` through node 1, once every one
    /// of them accepts connections: node 1 passes the bootstrap on to the
    /// others, and a node still starting would refuse it (a loaded machine
    /// made this race fail a test now and then).
    pub async fn bootstrap(&self, n: u64) -> Result<()> {
        for id in 1..=n {
            self.channel(id).await?;
        }
        let members = (1..=n).map(|id| self.addr(id).member()).collect();
        let mut client = pb::cluster_client::ClusterClient::new(self.channel(1).await?);
        client
            .bootstrap(pb::BootstrapRequest {
                members,
                this_node_only: false,
            })
            .await
            .map_err(|s| err(format!("bootstrap: {s}")))?;
        Ok(())
    }

    /// `Cluster.Status` of node `id`.
    pub async fn status(&self, id: u64) -> Result<pb::StatusResponse> {
        let mut client = pb::cluster_client::ClusterClient::new(self.channel(id).await?);
        client
            .status(pb::StatusRequest { read: None })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| err(format!("status of node {id}: {s}")))
    }

    /// Waits until the running, unpaused nodes among `among` agree on one
    /// leader that is itself among them, and returns it.
    pub async fn wait_leader(&self, among: &[u64], within: Duration) -> Result<u64> {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = Vec::new();
            for id in among {
                if self
                    .procs
                    .get(id)
                    .is_some_and(|p| p.paused || p.child.is_none())
                {
                    continue;
                }
                let s = tokio::time::timeout(Duration::from_millis(1_000), self.status(*id)).await;
                seen.push(match s {
                    Ok(Ok(s)) => s.leader_id,
                    _ => None,
                });
            }
            if let Some(Some(leader)) = seen.first() {
                if among.contains(leader) && seen.iter().all(|l| *l == Some(*leader)) {
                    return Ok(*leader);
                }
            }
            if Instant::now() > deadline {
                return Err(err(format!(
                    "no agreed leader among {among:?} within {within:?} (saw {seen:?})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every node in `ids` has applied at least `index`.
    pub async fn wait_applied(&self, ids: &[u64], index: u64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        for id in ids {
            loop {
                let applied = tokio::time::timeout(Duration::from_millis(1_000), self.status(*id))
                    .await
                    .ok()
                    .and_then(|s| s.ok())
                    .map_or(0, |s| s.applied_index);
                if applied >= index {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(err(format!(
                        "node {id} applied {applied} < {index} after {within:?}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The last `lines` lines of node `id`'s log, for a failure message.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_file(id)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

/// A channel to `addr`, retrying the connection for up to
/// [`NODE_START_MS_MAX`].
pub async fn channel(addr: SocketAddr) -> Result<Channel> {
    let deadline = Instant::now() + Duration::from_millis(NODE_START_MS_MAX);
    loop {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| err(format!("{addr}: {e}")))?
            .connect_timeout(Duration::from_millis(1_000))
            .timeout(Duration::from_millis(CALL_MS_MAX));
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) if Instant::now() > deadline => {
                return Err(err(format!("node at {addr} never listened: {e}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A base port whose `PORTS_PER_NODE` ports are free on every address
/// 127.0.`net`.1..=`ids_max`. Tests in parallel processes pick different
/// ones: the start point comes from the process id and the clock.
pub fn free_base_port(net: u8, ids_max: u64) -> Result<u16> {
    let span = (BASE_PORT_MAX - BASE_PORT_MIN) / PORTS_PER_NODE;
    let seed = std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
    for attempt in 0..200u64 {
        let slot = ((seed + attempt * 131) % span as u64) as u16;
        let base = BASE_PORT_MIN + slot * PORTS_PER_NODE;
        let free = (1..=ids_max).all(|id| {
            (0..PORTS_PER_NODE).all(|k| {
                TcpListener::bind((Ipv4Addr::new(127, 0, net, id as u8), base + k)).is_ok()
            })
        });
        if free {
            return Ok(base);
        }
    }
    Err(err(format!("no free port range on 127.0.{net}.x")))
}
