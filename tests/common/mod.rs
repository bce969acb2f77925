//! Shared by the cluster test binaries: real `lockstep node` processes via
//! `lockstep-harness`, plus small gRPC helpers. Every wait is bounded.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

pub use lockstep_harness::{Cluster, Spec};
pub use lockstep_node::pb;
use tonic::transport::Channel;

/// The default bound on one cluster test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(180);
/// How long an election may take in a test on a loaded 2-core machine.
pub const ELECTION_MAX: Duration = Duration::from_secs(20);

pub type Queue = pb::queue_client::QueueClient<Channel>;
pub type Admin = pb::admin_client::AdminClient<Channel>;

pub struct Running {
    pub cluster: Cluster,
    pub dir: tempfile::TempDir,
}

impl Drop for Running {
    /// With `LOCKSTEP_TEST_KEEP=1` a test's node data and logs outlive it,
    /// for a post-mortem.
    fn drop(&mut self) {
        if std::env::var_os("LOCKSTEP_TEST_KEEP").is_some() {
            let keep = self.dir.path().with_extension("kept");
            let _ = std::fs::rename(self.dir.path(), &keep);
            eprintln!("kept node data and logs in {}", keep.display());
        }
    }
}

/// Spec for nodes in a fresh temporary directory.
pub fn spec(dir: &tempfile::TempDir) -> Spec {
    {
        let mut s = Spec::new(lockstep_harness::lockstep_binary(), dir.path())
            .set("raft.rpc_timeout_ms", 1_000);
        s.log = "info,openraft=warn,lockstep_raft=debug".into();
        s
    }
}

/// Starts `n` nodes from `spec`, bootstraps them, and waits for a leader.
pub async fn start(n: u64, ids_max: u64, spec: Spec, dir: tempfile::TempDir) -> (Running, u64) {
    let cluster = Cluster::start(spec, n, ids_max).unwrap();
    cluster.bootstrap(n).await.unwrap();
    let ids: Vec<u64> = (1..=n).collect();
    let leader = cluster.wait_leader(&ids, ELECTION_MAX).await.unwrap();
    (Running { cluster, dir }, leader)
}

pub async fn start3() -> (Running, u64) {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(&dir);
    start(3, 4, spec, dir).await
}

pub async fn queue(c: &Cluster, id: u64) -> Queue {
    pb::queue_client::QueueClient::new(c.channel(id).await.unwrap())
}

pub async fn admin(c: &Cluster, id: u64) -> Admin {
    pb::admin_client::AdminClient::new(c.channel(id).await.unwrap())
}

pub fn job(id: &str, group: &str) -> pb::Job {
    pb::Job {
        id: Some(id.into()),
        group: group.into(),
        payload: format!("payload-{id}").into_bytes(),
        ..Default::default()
    }
}

pub async fn create_queue(c: &Cluster, id: u64, name: &str, config: Option<pb::QueueConfig>) {
    admin(c, id)
        .await
        .create_queue(pb::CreateQueueRequest {
            name: name.into(),
            config,
            session: None,
        })
        .await
        .unwrap();
}

pub async fn enqueue(q: &mut Queue, queue: &str, jobs: Vec<pb::Job>) -> Vec<pb::EnqueueResult> {
    q.enqueue(pb::EnqueueRequest {
        queue: queue.into(),
        jobs,
        session: None,
    })
    .await
    .unwrap()
    .into_inner()
    .results
}

pub async fn fetch(q: &mut Queue, queue: &str, consumer: &str, max: u32) -> Vec<pb::Delivery> {
    q.fetch(pb::FetchRequest {
        subscription: String::new(),
        queue: queue.into(),
        consumer: consumer.into(),
        max,
        lease_ms: 60_000,
        wait_ms: 0,
        session: None,
    })
    .await
    .unwrap()
    .into_inner()
    .deliveries
}

pub async fn ack(q: &mut Queue, queue: &str, items: &[(u64, u64)]) -> Vec<pb::AckResult> {
    q.ack(pb::AckRequest {
        subscription: String::new(),
        queue: queue.into(),
        items: items
            .iter()
            .map(|(offset, fence)| pb::AckItem {
                offset: *offset,
                fence: *fence,
            })
            .collect(),
        then: Vec::new(),
        session: None,
    })
    .await
    .unwrap()
    .into_inner()
    .results
}

pub async fn stats(c: &Cluster, id: u64, queue: &str) -> pb::QueueStats {
    admin(c, id)
        .await
        .get_queue(pb::GetQueueRequest {
            name: queue.into(),
            read: None,
        })
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap()
        .stats
        .unwrap()
}

pub async fn groups(c: &Cluster, id: u64, queue: &str) -> Vec<pb::GroupInfo> {
    admin(c, id)
        .await
        .list_groups(pb::ListGroupsRequest {
            queue: queue.into(),
            limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .groups
}

/// What the test knows must be pending: per group, the offsets enqueued
/// and not yet acked, in order.
#[derive(Debug, Default)]
pub struct Expected {
    pub pending: BTreeMap<String, BTreeSet<u64>>,
}

impl Expected {
    pub fn created(&mut self, group: &str, offset: u64) {
        self.pending.entry(group.into()).or_default().insert(offset);
    }

    pub fn acked(&mut self, group: &str, offset: u64) {
        if let Some(set) = self.pending.get_mut(group) {
            set.remove(&offset);
        }
    }

    pub fn count(&self) -> u64 {
        self.pending.values().map(|s| s.len() as u64).sum()
    }

    /// The delivery must be the lowest pending offset of its group.
    pub fn check_head(&self, d: &pb::Delivery) {
        let head = self.pending.get(&d.group).and_then(|s| s.first().copied());
        assert_eq!(
            head,
            Some(d.offset),
            "group {} delivered offset {} out of order",
            d.group,
            d.offset
        );
    }
}

/// Fetches and acks through node `id` until `expected` is empty, checking
/// that each delivery heads its group. Bounded by `rounds`.
pub async fn drain(c: &Cluster, id: u64, queue: &str, expected: &mut Expected, rounds: usize) {
    let mut q = self::queue(c, id).await;
    for _ in 0..rounds {
        if expected.count() == 0 {
            break;
        }
        let got = fetch(&mut q, queue, "drain", 100).await;
        for d in &got {
            expected.check_head(d);
        }
        let items: Vec<(u64, u64)> = got.iter().map(|d| (d.offset, d.fence)).collect();
        if !items.is_empty() {
            for r in ack(&mut q, queue, &items).await {
                assert_eq!(r.code, 0, "drain ack: {r:?}");
            }
        }
        for d in &got {
            expected.acked(&d.group, d.offset);
        }
    }
    assert_eq!(
        expected.count(),
        0,
        "jobs left after draining: {expected:?}"
    );
    let s = stats(c, id, queue).await;
    assert_eq!(s.ready + s.delayed + s.leased, 0, "queue empty: {s:?}");
}

/// Waits until every node in `ids` reports the same applied index, then
/// asserts their state digests are equal.
pub async fn assert_same_state(c: &Cluster, ids: &[u64], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut seen = Vec::new();
        for id in ids {
            let s = c.status(*id).await.unwrap();
            seen.push((s.applied_index, s.state_digest));
        }
        if seen.iter().all(|s| s.0 == seen[0].0) {
            assert!(
                seen.iter().all(|s| s.1 == seen[0].1),
                "equal applied index, different state: {seen:?}"
            );
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = ids
                .iter()
                .map(|id| format!("--- node {id}\n{}", c.log_tail(*id, 40)))
                .collect();
            panic!("nodes never converged: {seen:?}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GET /metrics` at `addr` over plain HTTP/1.0: the status line and
/// headers, then the body.
pub async fn scrape_metrics(addr: impl tokio::net::ToSocketAddrs) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: lockstep\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// The value of one series (`name{labels}` exactly as exposed), if the
/// exposition has it; a value that is not a number fails the test.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|e| panic!("`{series}` has `{v}`, not a number: {e}"))
        })
}

/// A port nothing listens on right now on 127.0.0.1 (the listener is
/// dropped at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
