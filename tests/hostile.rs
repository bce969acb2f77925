//! Issue test 7: bad input gets its gRPC code and changes nothing, a bad
//! config file stops start-up naming the key, and garbage on the client
//! port does not take the node down. Three real node processes.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use tonic::Code;

const Q: &str = "small";

fn code_of<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let status = r.unwrap_err();
    (status.code(), status.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_code_and_store_nothing() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (run, leader) = start3().await;
        let c = &run.cluster;
        let follower = (1..=3).find(|i| *i != leader).unwrap();
        let config = pb::QueueConfig {
            max_payload_bytes: 1_024,
            lease_ms_max: 60_000,
            ..Default::default()
        };
        create_queue(c, leader, Q, Some(config)).await;
        let mut q = queue(c, follower).await;
        let made = enqueue(&mut q, Q, vec![job("ok-1", "g")]).await;
        let d = fetch(&mut q, Q, "w", 1).await;
        assert_eq!(d.len(), 1);
        let before = stats(c, leader, Q).await;
        let applied_before = c.status(leader).await.unwrap().applied_index;

        let sender = q.clone();
        let send = |jobs: Vec<pb::Job>| {
            let mut q = sender.clone();
            async move {
                q.enqueue(pb::EnqueueRequest {
                    queue: Q.into(),
                    jobs,
                    session: None,
                })
                .await
            }
        };
        // An oversized payload, in a batch with a good job: all refused.
        let mut big = job("big", "g");
        big.payload = vec![7; 2_048];
        let (code, message) = code_of(send(vec![job("fine", "h"), big]).await);
        assert_eq!(code, Code::InvalidArgument, "{message}");
        assert!(
            message.contains("jobs[1].payload") && message.contains("max_payload_bytes"),
            "{message}"
        );
        // An empty id (a present but empty field).
        let mut empty = job("x", "g");
        empty.id = Some(String::new());
        let (code, message) = code_of(send(vec![empty]).await);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains("jobs[0].id"), "{message}");
        // An id over the length limit, and a control character in a group.
        let (code, message) = code_of(send(vec![job(&"i".repeat(300), "g")]).await);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains("jobs[0].id"), "{message}");
        let (code, message) = code_of(send(vec![job("ctl", "g\u{7}")]).await);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains("jobs[0].group"), "{message}");
        // An empty batch.
        let (code, _) = code_of(send(vec![]).await);
        assert_eq!(code, Code::InvalidArgument);
        // An unknown queue, and a queue name with bad characters.
        let (code, message) = code_of(
            q.enqueue(pb::EnqueueRequest {
                queue: "nope".into(),
                jobs: vec![job("n", "g")],
                session: None,
            })
            .await,
        );
        assert_eq!(code, Code::NotFound, "{message}");
        let (code, message) = code_of(
            admin(c, follower)
                .await
                .create_queue(pb::CreateQueueRequest {
                    name: "bad name/../x".into(),
                    config: None,
                    session: None,
                })
                .await,
        );
        assert_eq!(code, Code::InvalidArgument, "{message}");
        // An empty queue name is the caller's mistake on every call, as on
        // CreateQueue, not an unknown queue (it was NOT_FOUND on Enqueue
        // and Fetch).
        let (code, message) = code_of(
            q.enqueue(pb::EnqueueRequest {
                queue: String::new(),
                jobs: vec![job("e", "g")],
                session: None,
            })
            .await,
        );
        assert_eq!(code, Code::InvalidArgument, "enqueue: {message}");
        assert!(message.contains("queue"), "{message}");
        let (code, message) = code_of(
            q.fetch(pb::FetchRequest {
                subscription: String::new(),
                queue: String::new(),
                consumer: "w".into(),
                max: 1,
                lease_ms: 0,
                wait_ms: 0,
                session: None,
            })
            .await,
        );
        assert_eq!(code, Code::InvalidArgument, "fetch: {message}");
        // A lease over the 12 h ceiling.
        let (code, message) = code_of(
            q.fetch(pb::FetchRequest {
                subscription: String::new(),
                queue: Q.into(),
                consumer: "w".into(),
                max: 1,
                lease_ms: 13 * 3_600_000,
                wait_ms: 0,
                session: None,
            })
            .await,
        );
        assert_eq!(code, Code::InvalidArgument, "{message}");
        assert!(message.contains("lease_ms"), "{message}");
        let (code, _) = code_of(
            q.extend(pb::ExtendRequest {
                subscription: String::new(),
                queue: Q.into(),
                offset: d[0].offset,
                fence: d[0].fence,
                lease_ms: 13 * 3_600_000,
                session: None,
            })
            .await,
        );
        assert_eq!(code, Code::InvalidArgument);
        // A fetch of zero.
        let (code, _) = code_of(
            q.fetch(pb::FetchRequest {
                subscription: String::new(),
                queue: Q.into(),
                consumer: "w".into(),
                max: 0,
                lease_ms: 0,
                wait_ms: 0,
                session: None,
            })
            .await,
        );
        assert_eq!(code, Code::InvalidArgument);
        // None of the above reached the log.
        assert_eq!(
            c.status(leader).await.unwrap().applied_index,
            applied_before,
            "refused before Raft"
        );

        // A wrong fence goes through Raft (it depends on the lease) and
        // fails with FAILED_PRECONDITION.
        let (code, message) = code_of(
            q.nack(pb::NackRequest {
                subscription: String::new(),
                queue: Q.into(),
                offset: d[0].offset,
                fence: d[0].fence + 1,
                delay_ms: 0,
                session: None,
            })
            .await,
        );
        assert_eq!(code, Code::FailedPrecondition, "{message}");
        let acked = ack(&mut q, Q, &[(d[0].offset, d[0].fence + 1)]).await;
        assert_eq!(acked[0].code, Code::FailedPrecondition as i32);

        // A message over the transport limit (16 MiB) is refused by gRPC.
        let mut huge = job("huge", "g");
        huge.payload = vec![0; 17 * 1024 * 1024];
        let (code, message) = code_of(send(vec![huge]).await);
        assert_eq!(code, Code::OutOfRange, "{message}");

        // The client library holds the same bound by default, and refuses
        // an oversized call itself, before it leaves the process, without
        // retrying it.
        assert_eq!(
            lockstep_client::MESSAGE_BYTES_MAX_DEFAULT as u64,
            lockstep_node::config::NodeConfig::default()
                .limits
                .message_bytes_max
        );
        let mut small = lockstep_client::ClientConfig::new([c.addr(follower).client.to_string()]);
        small.message_bytes_max = 64 * 1024;
        let client = lockstep_client::Client::connect(small).unwrap();
        let mut big_call = job("big-call", "g");
        big_call.payload = vec![1; 100 * 1024];
        let err = client.enqueue(Q, vec![big_call]).await.unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange, "{err}");
        assert!(!err.is_retryable(), "{err}");

        // Nothing changed: same counts, same next offset, same lease.
        let after = stats(c, leader, Q).await;
        assert_eq!(after, before);
        assert_eq!(made[0].offset, 0);
    })
    .await
    .expect("test finished within its timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_client_port_does_not_take_the_node_down() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (run, leader) = start3().await;
        let c = &run.cluster;
        let addr = c.addr(leader).client;
        let peer = c.addr(leader).peer;
        let garbage: Vec<u8> = (0..1_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let inputs: Vec<Vec<u8>> = vec![
            garbage.clone(),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            [preface.as_slice(), &garbage[..4_096]].concat(),
            // A frame header that claims a 16 MiB frame, then nothing.
            [
                preface.as_slice(),
                &[0xff, 0xff, 0xff, 0x00, 0x00, 0, 0, 0, 1],
            ]
            .concat(),
        ];
        for target in [addr, peer] {
            for input in &inputs {
                let input = input.clone();
                tokio::task::spawn_blocking(move || {
                    if let Ok(mut s) = std::net::TcpStream::connect(target) {
                        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                        let _ = s.write_all(&input);
                    }
                })
                .await
                .unwrap();
            }
            // Many connections opened and dropped at once.
            let mut held = Vec::new();
            for _ in 0..200 {
                if let Ok(s) = std::net::TcpStream::connect(target) {
                    held.push(s);
                }
            }
            drop(held);
        }
        // The node still serves, and still leads or follows.
        let s = c.status(leader).await.unwrap();
        assert!(s.leader_id.is_some());
        create_queue(c, leader, "after", None).await;
        let mut q = queue(c, leader).await;
        let r = enqueue(&mut q, "after", vec![job("a", "g")]).await;
        assert_eq!(r[0].outcome, pb::EnqueueOutcome::Created as i32);
    })
    .await
    .expect("test finished within its timeout");
}

#[test]
fn a_bad_config_file_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[raft]\nheartbeat_ms = \"fast\"\n", "raft.heartbeat_ms"),
        ("[raft]\nheartbeat_msec = 100\n", "raft.heartbeat_msec"),
        ("id = 0\n", "id"),
        ("client_addr = \"not an address\"\n", "client_addr"),
        (
            "[limits]\nmessage_bytes_max = 10\n",
            "limits.message_bytes_max",
        ),
        ("this is not toml", "not valid TOML"),
    ];
    for (text, named) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(lockstep_harness::lockstep_binary())
            .args(["node", "--config"])
            .arg(&path)
            .args(["--data-dir", &dir.path().join("data").display().to_string()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} started");
        assert!(stderr.contains(named), "{text:?}: {stderr}");
    }
}
