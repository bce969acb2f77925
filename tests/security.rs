//! Transport security and client auth (issue 7) on a real 3-node cluster:
//! certificates from `lockstep dev-certs`, mutual TLS between the nodes,
//! TLS and bearer tokens for clients. Every refusal is checked for its
//! gRPC code and for leaving the queues as they were.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use lockstep_client::{Client, ClientConfig, ClientTls, Code, Consistency, Token};

const ADMIN: &str = "admin-secret-aaaaaaaaaaaaaaaa";
const PRODUCER: &str = "producer-secret-bbbbbbbbbbbbbbbb";
const CONSUMER: &str = "consumer-secret-cccccccccccccccc";

fn tokens_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[token]]
name = "ops"
secret = "{ADMIN}"
produce = ["*"]
consume = ["*"]
admin = ["*"]

[[token]]
name = "orders-producer"
secret = "{PRODUCER}"
produce = ["orders*"]

[[token]]
name = "orders-consumer"
secret = "{CONSUMER}"
consume = ["orders"]
"#
        ),
    )
    .unwrap();
    path
}

/// `lockstep dev-certs` into `out`, as a person would run it.
fn dev_certs(out: &Path, ca_name: &str) {
    let status = Command::new(lockstep_harness::lockstep_binary())
        .args(["dev-certs", "--out"])
        .arg(out)
        .args(["--ca-name", ca_name])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "dev-certs failed");
}

fn client(c: &Cluster, ids: &[u64], ca: Option<&Path>, token: Option<&str>) -> Client {
    let addrs: Vec<String> = ids
        .iter()
        .map(|id| c.addr(*id).client.to_string())
        .collect();
    let mut config = ClientConfig::new(addrs);
    config.tls = ca.map(|p| ClientTls {
        ca_pem: std::fs::read(p).unwrap(),
        domain_name: None,
    });
    config.token = token.map(Token::new);
    // A refusal is final; a transport failure should not be retried for
    // long in a test that expects it.
    config.retry.attempts_max = 2;
    config.connect_timeout = Duration::from_secs(2);
    Client::connect(config).unwrap()
}

async fn wait_leader(admin: &Client, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(s) = admin.cluster_status(Consistency::Stale).await {
            if let Some(l) = s.leader_id {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "no leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn next_offset(admin: &Client, queue: &str) -> u64 {
    admin
        .get_queue(queue, Consistency::Linearizable)
        .await
        .unwrap()
        .stats
        .unwrap()
        .next_offset
}

async fn queue_names(client: &Client) -> Vec<String> {
    client
        .list_queues(Consistency::Linearizable)
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.name)
        .collect()
}

fn assert_code<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, lockstep_client::Error>,
    code: Code,
) {
    match result {
        Err(e) => assert_eq!(e.code(), code, "{what}: {e}"),
        Ok(v) => panic!("{what}: expected {code:?}, got {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_peers_and_tokens_on_a_real_cluster() {
    tokio::time::timeout(TEST_TIMEOUT, scenario())
        .await
        .unwrap();
}

async fn scenario() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let rogue = dir.path().join("rogue");
    dev_certs(&certs, "Lockstep test CA");
    dev_certs(&rogue, "Rogue CA");
    let tokens = tokens_file(dir.path());
    let cert = |d: &Path, f: &str| d.join(f).display().to_string();
    let spec = spec(&dir)
        .set("tls.cert_file", cert(&certs, "node-{id}.pem"))
        .set("tls.key_file", cert(&certs, "node-{id}.key"))
        .set("tls.ca_file", cert(&certs, "ca.pem"))
        .set("auth.mode", "token")
        .set("auth.tokens_file", tokens.display())
        // A join that cannot catch up gives up after this.
        .set("limits.membership_ms_max", 8_000);
    let mut cluster = Cluster::start(spec, 3, 4).unwrap();
    let ca = certs.join("ca.pem");
    let admin = client(&cluster, &[1, 2, 3], Some(&ca), Some(ADMIN));

    // Bootstrap over TLS with the admin token: node 1 passes it on to the
    // others' client ports, and they form the cluster over mutual TLS.
    let members: Vec<pb::JoinRequest> = (1..=3).map(|id| cluster.addr(id).member()).collect();
    let deadline = Instant::now() + ELECTION_MAX;
    loop {
        match admin.bootstrap(members.clone()).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("bootstrap: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("bootstrap: {e}"),
        }
    }
    let leader = wait_leader(&admin, ELECTION_MAX).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    for name in ["orders", "billing"] {
        admin
            .create_queue(name, pb::QueueConfig::default())
            .await
            .unwrap();
    }
    admin
        .enqueue("orders", vec![job("seed-1", "g")])
        .await
        .unwrap();

    // --- TLS: plaintext and a client trusting another CA get nowhere.
    let plain = client(&cluster, &[leader], None, Some(ADMIN));
    let err = plain
        .list_queues(Consistency::Stale)
        .await
        .expect_err("plaintext to a TLS port");
    eprintln!("plaintext client: {err}");
    let untrusting = client(
        &cluster,
        &[leader],
        Some(&rogue.join("ca.pem")),
        Some(ADMIN),
    );
    let err = untrusting
        .list_queues(Consistency::Stale)
        .await
        .expect_err("a client that trusts another CA");
    eprintln!("client trusting another CA: {err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate") || err.is_retryable(),
        "{err}"
    );

    // --- Auth: every case on the leader and through a follower, which
    // checks before it forwards.
    for at in [leader, follower] {
        let before = (
            next_offset(&admin, "orders").await,
            next_offset(&admin, "billing").await,
        );
        let none = client(&cluster, &[at], Some(&ca), None);
        let wrong = client(
            &cluster,
            &[at],
            Some(&ca),
            Some("not-a-real-token-xxxxxxxx"),
        );
        let producer = client(&cluster, &[at], Some(&ca), Some(PRODUCER));
        let consumer = client(&cluster, &[at], Some(&ca), Some(CONSUMER));
        let j = |id: &str| vec![job(&format!("{id}-{at}"), "g")];
        assert_code(
            "no token",
            none.enqueue("orders", j("none")).await,
            Code::Unauthenticated,
        );
        assert_code(
            "wrong token",
            wrong.enqueue("orders", j("wrong")).await,
            Code::Unauthenticated,
        );
        assert_code(
            "no token, status",
            none.cluster_status(Consistency::Stale).await,
            Code::Unauthenticated,
        );
        assert_code(
            "producer on another queue",
            producer.enqueue("billing", j("p-billing")).await,
            Code::PermissionDenied,
        );
        assert_code(
            "producer fetching",
            producer
                .fetch("orders", "p", 1, Duration::from_secs(5), Duration::ZERO)
                .await,
            Code::PermissionDenied,
        );
        assert_code(
            "consumer enqueuing",
            consumer.enqueue("orders", j("c-orders")).await,
            Code::PermissionDenied,
        );
        assert_code(
            "producer creating a queue",
            producer
                .create_queue("orders-new", pb::QueueConfig::default())
                .await,
            Code::PermissionDenied,
        );
        assert_code(
            "producer removing a node",
            producer.remove(3).await,
            Code::PermissionDenied,
        );
        assert_code(
            "consumer purging dead letters",
            consumer.purge_dead_letters("orders", vec![]).await,
            Code::PermissionDenied,
        );
        assert_code(
            "consumer reading another queue",
            consumer.get_queue("billing", Consistency::Stale).await,
            Code::PermissionDenied,
        );
        // Nothing of the above was stored.
        let after = (
            next_offset(&admin, "orders").await,
            next_offset(&admin, "billing").await,
        );
        assert_eq!(
            before, after,
            "a refused call changed a queue (via node {at})"
        );
        assert_eq!(
            queue_names(&admin).await,
            ["billing", "orders"],
            "no queue was created"
        );
        // A token lists only what it may touch.
        assert_eq!(queue_names(&producer).await, ["orders"]);

        // The allowed paths work: produce, consume, ack.
        let stored = producer.enqueue("orders", j("ok")).await.unwrap();
        assert_eq!(stored.len(), 1);
        let mut acked = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked < 1 + usize::from(at == leader) {
            let got = consumer
                .fetch(
                    "orders",
                    "c",
                    8,
                    Duration::from_secs(10),
                    Duration::from_secs(1),
                )
                .await
                .unwrap();
            for d in got {
                let item = pb::AckItem {
                    offset: d.offset,
                    fence: d.fence,
                };
                // Acking without a token is refused and leaves the lease.
                assert_code(
                    "ack without a token",
                    none.ack("orders", vec![item]).await,
                    Code::Unauthenticated,
                );
                let results = consumer.ack("orders", vec![item]).await.unwrap();
                assert!(results.iter().all(Result::is_ok), "{results:?}");
                acked += 1;
            }
            assert!(Instant::now() < deadline, "consumer got {acked} jobs");
        }
    }
    let stats = admin
        .get_queue("orders", Consistency::Linearizable)
        .await
        .unwrap()
        .stats
        .unwrap();
    assert_eq!((stats.ready, stats.leased), (0, 0), "{stats:?}");

    // --- Mutual TLS between peers.
    // A caller of the peer port that shows no certificate, or one from
    // another CA, is refused in the handshake; the cluster's own
    // certificate gets through to the RPC itself.
    let peer = cluster.addr(leader).peer;
    let identity = |d: &Path, n: u64| {
        tonic::transport::Identity::from_pem(
            std::fs::read(d.join(format!("node-{n}.pem"))).unwrap(),
            std::fs::read(d.join(format!("node-{n}.key"))).unwrap(),
        )
    };
    let ca_cert = tonic::transport::Certificate::from_pem(std::fs::read(&ca).unwrap());
    let try_peer = |identity: Option<tonic::transport::Identity>| {
        let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(ca_cert.clone());
        if let Some(i) = identity {
            tls = tls.identity(i);
        }
        async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("https://{peer}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .local_address(Some("127.0.0.4".parse().unwrap()))
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5))
                .connect()
                .await;
            match channel {
                Err(e) => Err(format!("connect: {e:?}")),
                Ok(ch) => lockstep_raft::pb::peer_client::PeerClient::new(ch)
                    .vote(lockstep_raft::pb::PeerMessage {
                        data: b"not a vote".to_vec(),
                    })
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
            }
        }
    };
    let own = try_peer(Some(identity(&certs, 4))).await;
    eprintln!("peer call with a cluster certificate: {own:?}");
    let own = own.expect_err("garbage is not a vote");
    assert!(
        own.starts_with("InvalidArgument"),
        "past TLS to the RPC: {own}"
    );
    for (what, id) in [
        ("no certificate", None),
        ("another CA's certificate", Some(identity(&rogue, 4))),
    ] {
        let refused = try_peer(id).await.expect_err(what);
        eprintln!("peer call with {what}: {refused}");
        assert!(
            !refused.starts_with("InvalidArgument"),
            "{what} reached the RPC: {refused}"
        );
    }

    // A node with another CA's certificate cannot join: the leader does
    // not trust it, nor it the leader; the join gives up, no voter is
    // added, and the node never receives a log entry.
    let rogue_dir = rogue.display().to_string();
    let mut settings = cluster.spec().settings.clone();
    for (k, v) in settings.iter_mut() {
        if k.starts_with("tls.") {
            *v = v.replace(&certs.display().to_string(), &rogue_dir);
        }
    }
    cluster.spec_mut().settings = settings;
    cluster.spawn(4).unwrap();
    let a4 = cluster.addr(4);
    let joined = admin
        .join(4, &a4.peer.to_string(), &a4.client.to_string())
        .await;
    eprintln!("join of a node with another CA's certificate: {joined:?}");
    assert_code("join of a rogue node", joined, Code::DeadlineExceeded);
    let status = admin
        .cluster_status(Consistency::Linearizable)
        .await
        .unwrap();
    let members: Vec<u64> = status.members.iter().map(|m| m.id).collect();
    assert_eq!(
        members,
        [1, 2, 3],
        "not a voter, nor left as a learner: {status:?}"
    );
    // Node 4 itself, asked with its own (rogue) CA, has nothing.
    let rogue_admin = client(&cluster, &[4], Some(&rogue.join("ca.pem")), Some(ADMIN));
    let s4 = rogue_admin
        .cluster_status(Consistency::Stale)
        .await
        .unwrap();
    assert_eq!(
        s4.applied_index, 0,
        "the rogue node received entries: {s4:?}"
    );
    assert_eq!(s4.leader_id, None, "{s4:?}");
    // The cluster still serves.
    admin
        .enqueue("orders", vec![job("after-join", "g")])
        .await
        .unwrap();
}
