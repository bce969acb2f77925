//! A driver that plays the leader against one store: it appends entries to
//! the log, commits and applies them, and keeps a reference replica (the
//! pure core and its in-memory payload store) in step to compare against.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use lockstep_core::{
    AckItem, BlobStore, Command, Delivery, MemBlobStore, NewJob, QueueConfig, Reply, Stamp, State,
};
use lockstep_store::{open, Batch, BatchReply, LogStore, StateMachineStore, TypeConfig};
use lockstep_types::{Entry, LogId};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, Membership};

pub const QUEUE: &str = "jobs";

pub fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

#[derive(Debug)]
pub struct Driver {
    pub log: LogStore,
    pub sm: StateMachineStore,
    pub next_index: u64,
    pub time_ms: u64,
    pub reference: State,
    pub reference_blobs: MemBlobStore,
    /// Leases granted and not yet acked: (queue, delivery).
    pub leased: Vec<(String, Delivery)>,
}

impl Driver {
    /// Opens a store in `dir` and commits the one-node membership at index 0, as `Raft::initialize` does.
    pub async fn start(dir: &Path) -> anyhow::Result<Driver> {
        let (log, sm) = open(dir).await?;
        let mut driver = Driver {
            log,
            sm,
            next_index: 0,
            time_ms: 1_000,
            reference: State::new(),
            reference_blobs: MemBlobStore::default(),
            leased: Vec::new(),
        };
        let membership =
            Membership::<u64, lockstep_store::NodeInfo>::new(vec![BTreeSet::from([1u64])], None);
        driver.commit(EntryPayload::Membership(membership)).await?;
        Ok(driver)
    }

    async fn commit(&mut self, payload: EntryPayload<TypeConfig>) -> anyhow::Result<BatchReply> {
        let entry = Entry {
            log_id: log_id(self.next_index),
            payload,
        };
        self.next_index += 1;
        self.log.blocking_append([entry.clone()]).await?;
        self.log.save_committed(Some(entry.log_id)).await?;
        let mut replies = self.sm.apply([entry]).await?;
        anyhow::ensure!(replies.len() == 1, "one reply per entry");
        Ok(replies.remove(0))
    }

    /// Proposes one batch, applies it to the store and to the reference.
    pub async fn propose(&mut self, commands: Vec<Command>) -> anyhow::Result<BatchReply> {
        let stamp = Stamp {
            index: self.next_index,
            time_ms: self.time_ms,
        };
        let mut effects = Vec::new();
        let expected: Vec<_> = commands
            .iter()
            .map(|c| self.reference.apply(stamp, c.clone(), &mut effects))
            .collect();
        self.reference_blobs.apply_effects(&effects);
        let reply = self
            .commit(EntryPayload::Normal(Batch {
                time_ms: self.time_ms,
                commands,
            }))
            .await?;
        anyhow::ensure!(reply.0 == expected, "the store answered like the core");
        self.time_ms += 10;
        Ok(reply)
    }

    pub async fn create_queue(&mut self, name: &str) -> anyhow::Result<()> {
        self.propose(vec![Command::CreateQueue {
            name: name.into(),
            config: QueueConfig::default(),
        }])
        .await?;
        Ok(())
    }

    /// Enqueues `batches` entries of `per_batch` jobs each, over 7 groups.
    pub async fn enqueue(
        &mut self,
        queue: &str,
        batches: u32,
        per_batch: u32,
    ) -> anyhow::Result<()> {
        for b in 0..batches {
            let jobs = (0..per_batch)
                .map(|j| {
                    let n = self.next_index * 1_000 + u64::from(b * per_batch + j);
                    NewJob {
                        id: format!("job-{n}"),
                        group: Some(format!("g{}", n % 7)),
                        payload: format!("payload of job {n}").into_bytes(),
                        headers: vec![("n".into(), n.to_string())],
                        priority: (n % 10) as u8,
                        delay_ms: 0,
                        fairness_key: None,
                    }
                })
                .collect();
            self.propose(vec![Command::Enqueue {
                queue: queue.into(),
                jobs,
            }])
            .await?;
        }
        Ok(())
    }

    /// Fetches up to `max` jobs and remembers their leases.
    pub async fn fetch(&mut self, queue: &str, max: u32) -> anyhow::Result<()> {
        let reply = self
            .propose(vec![Command::Fetch {
                queue: queue.into(),
                consumer: "worker".into(),
                max,
                lease_ms: 0,
            }])
            .await?;
        for result in reply.0 {
            if let Ok(Reply::Fetched(deliveries)) = result {
                self.leased
                    .extend(deliveries.into_iter().map(|d| (queue.to_string(), d)));
            }
        }
        Ok(())
    }

    /// Acks every remembered lease, in one entry.
    pub async fn ack_all(&mut self) -> anyhow::Result<()> {
        let mut by_queue: BTreeMap<String, Vec<AckItem>> = BTreeMap::new();
        for (queue, d) in self.leased.drain(..) {
            by_queue.entry(queue).or_default().push(AckItem {
                offset: d.offset,
                fence: d.fence,
            });
        }
        let commands = by_queue
            .into_iter()
            .map(|(queue, items)| Command::Ack { queue, items })
            .collect();
        self.propose(commands).await?;
        Ok(())
    }

    /// A varied history: queues created and dropped, jobs enqueued, leased
    /// and acked, so every kind of payload effect happens.
    pub async fn workload(&mut self, round: u32) -> anyhow::Result<()> {
        let scratch = format!("scratch-{round}");
        self.create_queue(&scratch).await?;
        self.enqueue(&scratch, 2, 3).await?;
        self.enqueue(QUEUE, 4, 5).await?;
        self.fetch(QUEUE, 6).await?;
        self.ack_all().await?;
        self.propose(vec![Command::DeleteQueue { name: scratch }])
            .await?;
        self.fetch(QUEUE, 3).await?;
        self.propose(vec![Command::Tick]).await?;
        Ok(())
    }
}

/// Checks that a store holds exactly the reference's state and payloads.
pub fn assert_matches(sm: &StateMachineStore, reference: &State, blobs: &MemBlobStore) {
    let handle = sm.handle();
    assert_eq!(
        handle.digest().expect("digest"),
        reference.digest(),
        "the store's core state differs from the reference"
    );
    for ((queue_id, blob), data) in &blobs.blobs {
        assert_eq!(
            handle
                .get_blob(*queue_id, *blob)
                .expect("read payload")
                .as_ref(),
            Some(data),
            "payload {queue_id}/{blob}"
        );
    }
    assert_eq!(
        handle.blob_count().expect("count payloads"),
        blobs.blobs.len() as u64,
        "the store holds payloads the reference does not"
    );
    blobs
        .check_against(reference)
        .expect("reference is consistent");
}

pub async fn reopen(dir: &Path) -> anyhow::Result<(LogStore, StateMachineStore)> {
    Ok(open(dir).await?)
}

/// Reads the whole current snapshot of a store into memory.
pub async fn snapshot_bytes(
    sm: &mut StateMachineStore,
) -> anyhow::Result<(lockstep_types::SnapshotMeta, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut snapshot = sm
        .get_current_snapshot()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no current snapshot"))?;
    let mut bytes = Vec::new();
    snapshot.snapshot.read_to_end(&mut bytes).await?;
    Ok((snapshot.meta, bytes))
}
