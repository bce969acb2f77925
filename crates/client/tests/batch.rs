//! The batchers against a `FakeNode` test double: many callers, one call,
//! each caller its own result.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use lockstep_client::{
    pb, AckBatcher, BatchConfig, Client, ClientConfig, Code, EnqueueBatcher, EnqueueOutcome,
};
use support::bounded;
use support::fake_node::{Call, FakeNode, Scripted};
use tokio::task::JoinSet;

fn batch_config() -> BatchConfig {
    BatchConfig {
        items_max: 64,
        linger: Duration::from_millis(50),
        buffer_max: 128,
        in_flight_max: 2,
    }
}

#[tokio::test]
async fn enqueues_from_many_tasks_share_one_call_and_keep_their_ids() {
    bounded(async {
        let node = FakeNode::start().await;
        // The one call fails once and is retried with the same ids.
        node.fake
            .script("enqueue", Scripted::fail(Code::Unavailable));
        let client = Client::connect(ClientConfig::new([node.addr.as_str()])).unwrap();
        let batcher = EnqueueBatcher::new(client, "q", batch_config()).unwrap();

        let mut tasks = JoinSet::new();
        for i in 0..20 {
            let batcher = batcher.clone();
            tasks.spawn(async move {
                let job = pb::Job {
                    id: (i % 2 == 0).then(|| format!("given-{i}")),
                    payload: vec![i],
                    ..Default::default()
                };
                (i, batcher.submit(job).await.unwrap())
            });
        }
        let mut offsets = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (i, enqueued) = joined.unwrap();
            assert_eq!(enqueued.outcome, EnqueueOutcome::Created);
            if i % 2 == 0 {
                assert_eq!(enqueued.id, format!("given-{i}"));
            } else {
                assert_eq!(enqueued.id.len(), 32);
            }
            offsets.push(enqueued.offset);
        }
        offsets.sort_unstable();
        assert_eq!(offsets, (0..20).collect::<Vec<u64>>(), "one offset each");

        let calls: Vec<pb::EnqueueRequest> = node
            .fake
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Enqueue(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(calls.len(), 2, "one batch, tried twice");
        assert_eq!(calls[0].jobs.len(), 20);
        assert_eq!(calls[0].jobs, calls[1].jobs, "the retry sent the same jobs");
        assert_eq!(node.fake.stored_ids().len(), 20);
    })
    .await;
}

#[tokio::test]
async fn acks_from_many_tasks_share_one_call_and_each_gets_its_own_result() {
    bounded(async {
        let node = FakeNode::start().await;
        node.fake.ack_answers(2, Code::FailedPrecondition);
        let client = Client::connect(ClientConfig::new([node.addr.as_str()])).unwrap();
        let batcher = AckBatcher::new(client, "q", batch_config()).unwrap();

        let (a, b, c) = tokio::join!(
            batcher.submit(1, 10),
            batcher.submit(2, 20),
            batcher.submit(3, 30)
        );
        assert_eq!(a, Ok(()));
        assert!(b.unwrap_err().is_lease_lost());
        assert_eq!(c, Ok(()));
        assert_eq!(node.fake.count("ack"), 1);
    })
    .await;
}

#[tokio::test]
async fn a_batch_larger_than_items_max_is_split() {
    bounded(async {
        let node = FakeNode::start().await;
        let client = Client::connect(ClientConfig::new([node.addr.as_str()])).unwrap();
        let config = BatchConfig {
            items_max: 3,
            ..batch_config()
        };
        let batcher = AckBatcher::new(client, "q", config).unwrap();
        let mut tasks = JoinSet::new();
        for i in 0..7u64 {
            let batcher = batcher.clone();
            tasks.spawn(async move { batcher.submit(i, i).await });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap().unwrap();
        }
        let sizes: Vec<usize> = node
            .fake
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Ack(r) => Some(r.items.len()),
                _ => None,
            })
            .collect();
        assert!(sizes.iter().all(|&n| n <= 3), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 7);
    })
    .await;
}
