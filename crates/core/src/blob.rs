//! The payload store seen from the core: a trait the storage layer
//! implements, and an in-memory twin for tests. The RocksDB store lives in the
//! store crate.

use std::collections::BTreeMap;

use crate::command::{Effect, JobBlob, QueueId};

pub trait BlobStore {
    /// Makes the writes one applied batch produced, in order.
    fn apply_effects(&mut self, effects: &[Effect]);
    fn get(&self, queue_id: QueueId, blob: u64) -> Option<JobBlob>;
}

/// The in-memory twin of the payload store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemBlobStore {
    pub blobs: BTreeMap<(QueueId, u64), JobBlob>,
}

impl BlobStore for MemBlobStore {
    fn apply_effects(&mut self, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::PutBlob {
                    queue_id,
                    blob,
                    data,
                } => {
                    self.blobs.insert((*queue_id, *blob), data.clone());
                }
                Effect::DeleteBlob { queue_id, blob } => {
                    self.blobs.remove(&(*queue_id, *blob));
                }
                Effect::DropQueue { queue_id } => {
                    self.blobs.retain(|(q, _), _| q != queue_id);
                }
            }
        }
    }

    fn get(&self, queue_id: QueueId, blob: u64) -> Option<JobBlob> {
        self.blobs.get(&(queue_id, blob)).cloned()
    }
}

impl MemBlobStore {
    /// Every referenced payload is stored, and nothing is stored that the
    /// state no longer references (a deleted job's payload is gone).
    pub fn check_against(&self, state: &crate::State) -> Result<(), String> {
        let referenced = state.referenced_blobs();
        for key in &referenced {
            if !self.blobs.contains_key(key) {
                return Err(format!("payload {key:?} referenced but not stored"));
            }
        }
        if let Some(key) = self.blobs.keys().find(|k| !referenced.contains(k)) {
            return Err(format!("payload {key:?} stored but no longer referenced"));
        }
        Ok(())
    }
}
