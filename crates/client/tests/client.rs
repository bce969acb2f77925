//! The client against `FakeNode` test doubles on 127.0.0.1: retries reuse
//! ids, leader hints are followed, and only what another try can cure is
//! retried, within the bounds of the retry policy.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use lockstep_client::{pb, Client, ClientConfig, Code, EnqueueOutcome, Error, RetryPolicy};
use support::fake_node::{dead_addr, Call, FakeNode, Scripted};
use support::{bounded, eventually};

/// A client with short pauses, so retries are quick in tests.
fn client(endpoints: &[&str]) -> Client {
    let mut config = ClientConfig::new(endpoints.iter().copied());
    config.call_timeout = Duration::from_secs(5);
    config.retry = RetryPolicy {
        attempts_max: 5,
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        retry_elapsed_max: Duration::from_secs(5),
    };
    Client::connect(config).unwrap()
}

fn job(id: Option<&str>, payload: &str) -> pb::Job {
    pb::Job {
        id: id.map(str::to_string),
        group: "g".into(),
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn enqueued_ids(call: &Call) -> Vec<Option<String>> {
    match call {
        Call::Enqueue(r) => r.jobs.iter().map(|j| j.id.clone()).collect(),
        other => panic!("expected an enqueue, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unavailable_enqueue_is_retried_with_the_same_client_made_ids() {
    bounded(async {
        let node = FakeNode::start().await;
        node.fake
            .script("enqueue", Scripted::fail(Code::Unavailable));
        let client = client(&[&node.addr]);

        let jobs = vec![job(Some("mine"), "a"), job(None, "b"), job(None, "c")];
        let results = client.enqueue("q", jobs).await.unwrap();

        let calls = node.fake.calls();
        assert_eq!(calls.len(), 2, "one failed try, one retry: {calls:?}");
        let first = enqueued_ids(&calls[0]);
        assert_eq!(first, enqueued_ids(&calls[1]), "the retry reused the ids");
        assert_eq!(first[0].as_deref(), Some("mine"));
        for id in &first[1..] {
            let id = id.as_deref().expect("filled before the first try");
            assert_eq!(id.len(), 32, "{id}");
        }
        let returned: Vec<Option<String>> = results.iter().map(|r| Some(r.id.clone())).collect();
        assert_eq!(returned, first, "the caller learns the ids");
        assert!(results.iter().all(|r| r.outcome == EnqueueOutcome::Created));
    })
    .await;
}

#[tokio::test]
async fn a_retry_after_an_unknown_outcome_is_a_duplicate_never_a_second_job() {
    bounded(async {
        let node = FakeNode::start().await;
        // The enqueue is stored, but the answer says UNAVAILABLE (a leader
        // that failed after committing).
        node.fake.script(
            "enqueue",
            Scripted::ApplyThenFail {
                code: Code::Unavailable,
                message: "outcome unknown; retry with the same ids".into(),
            },
        );
        let client = client(&[&node.addr]);
        let results = client
            .enqueue("q", vec![job(None, "a"), job(None, "b")])
            .await
            .unwrap();

        assert_eq!(node.fake.count("enqueue"), 2);
        assert_eq!(node.fake.stored_ids().len(), 2, "each job stored once");
        let offsets: Vec<u64> = results.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [0, 1], "the original offsets");
        for r in &results {
            assert_eq!(
                r.outcome,
                EnqueueOutcome::Duplicate {
                    state: pb::JobState::Ready
                }
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_leader_hint_is_followed_at_once_and_remembered() {
    bounded(async {
        let follower = FakeNode::start().await;
        let leader = FakeNode::start().await;
        follower
            .fake
            .script("enqueue", Scripted::unavailable_leader_at(&leader.addr));
        // Only the follower is configured: the leader is learned.
        let client = client(&[&follower.addr]);

        client.enqueue("q", vec![job(None, "a")]).await.unwrap();
        assert_eq!(follower.fake.count("enqueue"), 1);
        assert_eq!(leader.fake.count("enqueue"), 1);
        assert_eq!(client.leader().as_deref(), Some(leader.addr.as_str()));
        assert!(client.endpoints().contains(&leader.addr));
        // The same ids went to the leader.
        assert_eq!(
            enqueued_ids(&follower.fake.calls()[0]),
            enqueued_ids(&leader.fake.calls()[0])
        );

        // Later calls go straight to the leader.
        client.enqueue("q", vec![job(None, "b")]).await.unwrap();
        client.ack_one("q", 0, 1).await.unwrap();
        assert_eq!(follower.fake.calls().len(), 1);
        assert_eq!(leader.fake.count("enqueue"), 2);
        assert_eq!(leader.fake.count("ack"), 1);
    })
    .await;
}

#[tokio::test]
async fn cluster_status_teaches_the_client_the_leader() {
    bounded(async {
        let follower = FakeNode::start().await;
        let leader = FakeNode::start().await;
        let member = |id: u64, addr: &str, role: &str| pb::Member {
            id,
            peer_addr: String::new(),
            client_addr: addr.to_string(),
            role: role.into(),
            matched_index: 0,
            lag: 0,
        };
        follower.fake.set_status(pb::StatusResponse {
            node_id: 1,
            leader_id: Some(2),
            members: vec![
                member(1, &follower.addr, "follower"),
                member(2, &leader.addr, "leader"),
            ],
            ..Default::default()
        });
        let client = client(&[&follower.addr]);
        assert_eq!(client.leader(), None);

        let status = client
            .cluster_status(lockstep_client::Consistency::Stale)
            .await
            .unwrap();
        assert_eq!(status.leader_id, Some(2));
        assert_eq!(client.leader().as_deref(), Some(leader.addr.as_str()));

        client.enqueue("q", vec![job(None, "a")]).await.unwrap();
        assert_eq!(leader.fake.count("enqueue"), 1);
        assert_eq!(follower.fake.count("enqueue"), 0);
    })
    .await;
}

#[tokio::test]
async fn answers_another_try_cannot_change_are_never_retried() {
    bounded(async {
        let node = FakeNode::start().await;
        let client = client(&[&node.addr]);
        let codes = [
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
            Code::Unauthenticated,
        ];
        for (i, code) in codes.into_iter().enumerate() {
            node.fake.script("extend", Scripted::fail(code));
            let err = client
                .extend("q", 1, 1, Duration::from_secs(1))
                .await
                .unwrap_err();
            assert_eq!(err.code(), code);
            assert!(matches!(err, Error::Status { .. }), "{err:?}");
            assert!(err.message().contains("scripted"), "{err}");
            assert_eq!(err.is_lease_lost(), code == Code::FailedPrecondition);
            assert_eq!(node.fake.count("extend"), i + 1, "{code:?} was retried");
        }
    })
    .await;
}

#[tokio::test]
async fn a_late_answer_is_retried_under_the_same_session_number() {
    bounded(async {
        let node = FakeNode::start().await;
        let mut config = ClientConfig::new([node.addr.as_str()]);
        config.call_timeout = Duration::from_millis(200);
        config.retry.backoff_min = Duration::from_millis(5);
        config.retry.backoff_max = Duration::from_millis(20);
        let client = Client::connect(config).unwrap();

        // An ack is idempotent (the same fence acks once): retried.
        node.fake
            .script("ack", Scripted::Delay(Duration::from_secs(2)));
        client.ack_one("q", 3, 7).await.unwrap();
        assert_eq!(node.fake.count("ack"), 2);

        // A nack is not idempotent, but it runs under the client's
        // session: the retry carries the same session and number, so the
        // cluster answers it with the first result instead of applying it
        // again (the fake only records what was sent).
        node.fake
            .script("nack", Scripted::Delay(Duration::from_secs(2)));
        client.nack("q", 3, 7, None).await.unwrap();
        let places: Vec<Option<pb::Session>> = node
            .fake
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Nack(r) => Some(r.session),
                _ => None,
            })
            .collect();
        assert_eq!(places.len(), 2, "{places:?}");
        assert!(places[0].is_some(), "a nack must be sent under a session");
        let (first, retry) = (places[0].unwrap(), places[1].unwrap());
        assert_eq!(
            (first.id, first.seq, first.floor),
            (retry.id, retry.seq, retry.floor),
            "the retry must reuse the number"
        );
        assert_eq!(
            (first.attempt, retry.attempt),
            (0, 1),
            "each try says which it is"
        );
        let ack_seq = node.fake.calls().into_iter().find_map(|c| match c {
            Call::Ack(r) => r.session.map(|s| s.seq),
            _ => None,
        });
        assert_ne!(
            ack_seq,
            places[0].map(|s| s.seq),
            "each call gets its own number"
        );
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_endpoint_is_skipped_and_the_live_one_kept() {
    bounded(async {
        let node = FakeNode::start().await;
        let dead = dead_addr();
        let client = client(&[&dead, &node.addr]);

        client.enqueue("q", vec![job(None, "a")]).await.unwrap();
        client.enqueue("q", vec![job(None, "b")]).await.unwrap();
        assert_eq!(node.fake.count("enqueue"), 2);

        // With no node reachable at all, the error says no answer came.
        let only_dead = client_with_attempts(&[&dead], 2);
        let err = only_dead
            .enqueue("q", vec![job(None, "a")])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Transport { .. }), "{err:?}");
        assert_eq!(err.code(), Code::Unavailable);
    })
    .await;
}

fn client_with_attempts(endpoints: &[&str], attempts_max: u32) -> Client {
    let mut config = ClientConfig::new(endpoints.iter().copied());
    config.retry = RetryPolicy {
        attempts_max,
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        retry_elapsed_max: Duration::from_secs(5),
    };
    Client::connect(config).unwrap()
}

#[tokio::test]
async fn retries_stop_at_attempts_max_with_the_last_error() {
    bounded(async {
        let node = FakeNode::start().await;
        for _ in 0..10 {
            node.fake
                .script("release", Scripted::fail(Code::Unavailable));
        }
        let client = client_with_attempts(&[&node.addr], 3);
        let err = client.release("q", 1, 1).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(node.fake.count("release"), 3);
    })
    .await;
}

#[tokio::test]
async fn retries_stop_at_retry_elapsed_max() {
    bounded(async {
        let node = FakeNode::start().await;
        for _ in 0..100 {
            node.fake
                .script("extend", Scripted::fail(Code::Unavailable));
        }
        let mut config = ClientConfig::new([node.addr.as_str()]);
        config.retry = RetryPolicy {
            attempts_max: 100,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(100),
            retry_elapsed_max: Duration::from_millis(350),
        };
        let client = Client::connect(config).unwrap();
        let started = tokio::time::Instant::now();
        let err = client
            .extend("q", 1, 1, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(started.elapsed() < Duration::from_secs(2));
        let tries = node.fake.count("extend");
        assert!((2..=8).contains(&tries), "{tries} tries");
    })
    .await;
}

#[tokio::test]
async fn membership_and_bootstrap_calls_reach_the_cluster_service() {
    bounded(async {
        let node = FakeNode::start().await;
        let client = client(&[&node.addr]);
        assert!(client
            .bootstrap(vec![pb::JoinRequest {
                id: 1,
                peer_addr: "127.0.0.1:7101".into(),
                client_addr: node.addr.clone(),
            }])
            .await
            .unwrap());
        client
            .join(4, "127.0.0.4:7101", "127.0.0.4:7100")
            .await
            .unwrap();
        node.fake.script("remove", Scripted::fail(Code::NotFound));
        assert!(client.remove(9).await.unwrap_err().is_not_found());
        let methods: Vec<&str> = node.fake.calls().iter().map(Call::method).collect();
        assert_eq!(methods, ["bootstrap", "join", "remove"]);
    })
    .await;
}

#[tokio::test]
async fn a_service_the_node_lacks_is_an_error_not_a_retry_loop() {
    bounded(async {
        // The fake serves no Admin service: UNIMPLEMENTED, once.
        let node = FakeNode::start().await;
        let client = client(&[&node.addr]);
        let err = client
            .get_queue("q", lockstep_client::Consistency::Linearizable)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        eventually("no stray calls", Duration::from_millis(100), || {
            node.fake.calls().is_empty()
        })
        .await;
    })
    .await;
}
