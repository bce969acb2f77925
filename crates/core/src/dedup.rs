//! A queue's dedup window: the ids it accepted, by first acceptance.
//!
//! Why not a `BTreeMap<u128, DedupEntry>` plus a `VecDeque` of expiry slots,
//! as before: that kept each id twice and cost about 92 bytes per id (a
//! B-tree filled by random keys is about two thirds full, and a `(u64,
//! u128)` slot is padded to 32 bytes), a third of the core's memory per
//! pending job (SPEC 7 allows 150 bytes per pending job on every node).
//! Here each id is one 40-byte record in a ring in order of first
//! acceptance, and a hash table of 8-byte record numbers finds it by id:
//! about 61 bytes per id.
//!
//! Determinism: the table is looked up by the id's own hash (the ids are
//! already 128-bit hashes), never iterated, and answers every lookup the
//! same whatever its layout, so replicas and restored snapshots behave
//! alike. The ring is what is iterated and serialized.
//!
//! The snapshot format is that of the two fields this replaces, in their
//! place: the index as a map by id, then the order as `(first_ms, id)`
//! pairs.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use hashbrown::HashTable;
use serde::de::{SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, SerializeTuple};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What an accepted id names: its job's offset (while the job is pending,
/// or its finished record), when it was first accepted, and a hash of its
/// content, so the same id with other content is a conflict, not a
/// duplicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DedupEntry {
    pub offset: u64,
    pub first_ms: u64,
    pub content_hash: u64,
}

/// One accepted id. The id is two `u64`s, not a `u128`, so the record is
/// 40 bytes rather than 48 (a `u128` is 16-aligned).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Record {
    id: [u64; 2],
    entry: DedupEntry,
}

fn split_id(id_hash: u128) -> [u64; 2] {
    [(id_hash >> 64) as u64, id_hash as u64]
}

fn join_id(id: [u64; 2]) -> u128 {
    (u128::from(id[0]) << 64) | u128::from(id[1])
}

/// The table's hash of an id: its low half (the ids are xxh3-128 hashes).
fn table_hash(id: [u64; 2]) -> u64 {
    id[1]
}

#[derive(Clone, Default)]
pub(crate) struct Dedup {
    /// By first acceptance (`entry.first_ms` never decreases), oldest first.
    records: VecDeque<Record>,
    /// The number of `records[0]`; a record's number never changes while
    /// it is held.
    first: u64,
    /// The number of each held record, found by the record's id.
    index: HashTable<u64>,
}

impl Dedup {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn find(&self, id: [u64; 2]) -> Option<usize> {
        let (records, first) = (&self.records, self.first);
        self.index
            .find(table_hash(id), |&n| records[(n - first) as usize].id == id)
            .map(|&n| (n - first) as usize)
    }

    pub fn get(&self, id_hash: &u128) -> Option<&DedupEntry> {
        self.find(split_id(*id_hash))
            .map(|i| &self.records[i].entry)
    }

    /// The entry, to change its offset. Its time and place in the order
    /// stay.
    pub fn get_mut(&mut self, id_hash: &u128) -> Option<&mut DedupEntry> {
        self.find(split_id(*id_hash))
            .map(|i| &mut self.records[i].entry)
    }

    pub fn contains_key(&self, id_hash: &u128) -> bool {
        self.find(split_id(*id_hash)).is_some()
    }

    /// Remembers a new id, unless it is already remembered (then its first
    /// entry stays). `entry.first_ms` must not be before the newest id's.
    pub fn insert_new(&mut self, id_hash: u128, entry: DedupEntry) {
        let id = split_id(id_hash);
        if self.find(id).is_some() {
            return;
        }
        debug_assert!(self
            .records
            .back()
            .is_none_or(|r| r.entry.first_ms <= entry.first_ms));
        let n = self.first + self.records.len() as u64;
        self.records.push_back(Record { id, entry });
        let (records, first) = (&self.records, self.first);
        self.index.insert_unique(table_hash(id), n, |&m| {
            table_hash(records[(m - first) as usize].id)
        });
    }

    /// The oldest id's time of first acceptance.
    pub fn oldest_ms(&self) -> Option<u64> {
        self.records.front().map(|r| r.entry.first_ms)
    }

    /// Forgets the oldest id and returns its entry.
    pub fn pop_oldest(&mut self) -> Option<DedupEntry> {
        let record = self.records.pop_front()?;
        let n = self.first;
        self.first += 1;
        if let Ok(slot) = self.index.find_entry(table_hash(record.id), |&m| m == n) {
            slot.remove();
        }
        Some(record.entry)
    }

    /// Every id with its entry, by first acceptance.
    pub fn iter(&self) -> impl Iterator<Item = (u128, &DedupEntry)> + '_ {
        self.records.iter().map(|r| (join_id(r.id), &r.entry))
    }

    /// Whether the table finds exactly the ring's records (for the
    /// invariant check).
    pub fn index_agrees(&self) -> bool {
        self.index.len() == self.records.len()
            && self
                .records
                .iter()
                .enumerate()
                .all(|(i, r)| self.find(r.id) == Some(i))
    }
}

impl PartialEq for Dedup {
    /// Equal when they remember the same ids in the same order with the
    /// same entries: record numbers and the table's layout are not state.
    fn eq(&self, other: &Self) -> bool {
        self.records == other.records
    }
}

impl Eq for Dedup {}

impl fmt::Debug for Dedup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The index as a map by id, in id order (the first of the two encoded
/// fields).
struct ById<'a>(&'a Dedup);

impl Serialize for ById<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut ids: Vec<(u128, &DedupEntry)> = self.0.iter().collect();
        ids.sort_unstable_by_key(|&(id, _)| id);
        let mut map = serializer.serialize_map(Some(ids.len()))?;
        for (id, entry) in ids {
            map.serialize_entry(&id, entry)?;
        }
        map.end()
    }
}

/// The order as `(first_ms, id)` pairs (the second encoded field).
struct Order<'a>(&'a Dedup);

impl Serialize for Order<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for (id, entry) in self.0.iter() {
            seq.serialize_element(&(entry.first_ms, id))?;
        }
        seq.end()
    }
}

impl Serialize for Dedup {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut fields = serializer.serialize_tuple(2)?;
        fields.serialize_element(&ById(self))?;
        fields.serialize_element(&Order(self))?;
        fields.end()
    }
}

impl<'de> Deserialize<'de> for Dedup {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Dedup;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a dedup index and its order")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dedup, A::Error> {
                use serde::de::Error;
                let by_id: BTreeMap<u128, DedupEntry> = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let order: Vec<(u64, u128)> = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                if order.len() != by_id.len() {
                    return Err(A::Error::custom(format!(
                        "the dedup order holds {} ids and the index {}",
                        order.len(),
                        by_id.len()
                    )));
                }
                let mut dedup = Dedup::default();
                for (first_ms, id_hash) in order {
                    let entry = by_id
                        .get(&id_hash)
                        .copied()
                        .filter(|e| e.first_ms == first_ms);
                    let newest = dedup.records.back().map_or(0, |r| r.entry.first_ms);
                    match entry {
                        Some(entry) if first_ms >= newest && !dedup.contains_key(&id_hash) => {
                            dedup.insert_new(id_hash, entry)
                        }
                        _ => {
                            return Err(A::Error::custom(format!(
                                "the dedup order's id {id_hash:032x} at {first_ms} ms is missing from the index, repeated or out of order"
                            )))
                        }
                    }
                }
                Ok(dedup)
            }
        }
        deserializer.deserialize_tuple(2, Fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn entry(offset: u64, first_ms: u64) -> DedupEntry {
        DedupEntry {
            offset,
            first_ms,
            content_hash: offset * 7,
        }
    }

    /// The encoding is byte for byte that of the two fields it replaced.
    #[test]
    fn encodes_as_the_index_and_order_it_replaced() {
        let mut dedup = Dedup::default();
        let (mut by_id, mut order) = (BTreeMap::new(), VecDeque::new());
        for i in 0..500u64 {
            let id = crate::hash::id_hash(&format!("id-{i}"));
            dedup.insert_new(id, entry(i, i / 3));
            by_id.insert(id, entry(i, i / 3));
            order.push_back((i / 3, id));
        }
        for _ in 0..100 {
            let (_, id) = order.pop_front().expect("100 of 500");
            by_id.remove(&id);
            assert!(dedup.pop_oldest().is_some());
        }
        let new = crate::codec::encode(&dedup).expect("encode");
        let old = crate::codec::encode(&(&by_id, &order)).expect("encode");
        assert_eq!(new, old);
        let back: Dedup = crate::codec::decode(&new).expect("decode");
        assert_eq!(back, dedup);
        assert!(back.index_agrees());
        assert_eq!(back.len(), 400);
    }

    #[test]
    fn finds_changes_and_forgets_by_first_acceptance() {
        let mut dedup = Dedup::default();
        let ids: Vec<u128> = (0..50)
            .map(|i| crate::hash::id_hash(&format!("{i}")))
            .collect();
        for (i, &id) in ids.iter().enumerate() {
            dedup.insert_new(id, entry(i as u64, i as u64));
        }
        // A repeated id keeps its first entry.
        dedup.insert_new(ids[3], entry(99, 60));
        assert_eq!(dedup.get(&ids[3]), Some(&entry(3, 3)));
        dedup.get_mut(&ids[4]).expect("held").offset = 77;
        assert_eq!(dedup.get(&ids[4]).expect("checked").offset, 77);
        for (i, id) in ids.iter().enumerate().take(10) {
            assert_eq!(dedup.oldest_ms(), Some(i as u64));
            assert!(dedup.pop_oldest().is_some());
            assert!(!dedup.contains_key(id));
        }
        assert!(dedup.contains_key(&ids[10]));
        assert_eq!(dedup.len(), 40);
        assert!(dedup.index_agrees());
    }

    #[test]
    fn a_damaged_order_is_a_decode_error() {
        let id = crate::hash::id_hash("a");
        let by_id = BTreeMap::from([(id, entry(0, 5))]);
        let order = vec![(6u64, id)];
        let bytes = crate::codec::encode(&(&by_id, &order)).expect("encode");
        assert!(crate::codec::decode::<Dedup>(&bytes).is_err());
    }
}
