//! A map from `u64` keys handed out in increasing order (job offsets, group
//! ids) to fixed-size records, stored densely.
//!
//! Why not `BTreeMap<u64, V>`: keys that only grow fill each B-tree leaf to
//! half (a full leaf splits 6 + 5, and the left half never sees another
//! key), so a 96-byte job record cost about 195 bytes of heap, the largest
//! part of the core's memory per pending job (SPEC 7 asks for at most 150
//! bytes per pending job on every node). Here the keys are split into
//! chunks of [`CHUNK_KEYS`] consecutive keys; a chunk keeps a bit per key and
//! its present records in a `Vec`, in key order, so a record costs its own
//! size plus about a byte of chunk overhead. A chunk whose keys are all gone
//! is dropped, and a chunk that lost most of its records gives memory back,
//! so a key that lingers (a stuck group's head) costs one small chunk, not
//! every key after it.
//!
//! The map iterates in key order and serializes exactly as a `BTreeMap<u64,
//! V>` does (a length, then the pairs in order), so the snapshot format does
//! not change.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Keys per chunk: one bit each in [`Chunk::present`].
const CHUNK_KEYS: u64 = 64;

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct OffsetMap<V> {
    /// By `key / CHUNK_KEYS`; never holds an empty chunk.
    chunks: BTreeMap<u64, Chunk<V>>,
    len: usize,
}

#[derive(Clone, PartialEq, Eq)]
struct Chunk<V> {
    /// Bit `i` is set when key `base + i` is present.
    present: u64,
    /// The present records, in key order: bit `i`'s record is at the number
    /// of set bits below `i`.
    values: Vec<V>,
}

impl<V> Chunk<V> {
    fn slot(&self, bit: u32) -> Option<usize> {
        let mask = 1u64 << bit;
        (self.present & mask != 0).then(|| (self.present & (mask - 1)).count_ones() as usize)
    }
}

fn split(key: u64) -> (u64, u32) {
    (key / CHUNK_KEYS, (key % CHUNK_KEYS) as u32)
}

impl<V> Default for OffsetMap<V> {
    fn default() -> Self {
        OffsetMap {
            chunks: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<V> OffsetMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, key: &u64) -> Option<&V> {
        let (base, bit) = split(*key);
        let chunk = self.chunks.get(&base)?;
        chunk.slot(bit).map(|i| &chunk.values[i])
    }

    pub fn get_mut(&mut self, key: &u64) -> Option<&mut V> {
        let (base, bit) = split(*key);
        let chunk = self.chunks.get_mut(&base)?;
        chunk.slot(bit).map(|i| &mut chunk.values[i])
    }

    pub fn contains_key(&self, key: &u64) -> bool {
        self.get(key).is_some()
    }

    /// Inserts `value` under `key`, returning the record it replaced.
    pub fn insert(&mut self, key: u64, value: V) -> Option<V> {
        let (base, bit) = split(key);
        let chunk = self.chunks.entry(base).or_insert_with(|| Chunk {
            present: 0,
            values: Vec::new(),
        });
        if let Some(i) = chunk.slot(bit) {
            return Some(std::mem::replace(&mut chunk.values[i], value));
        }
        chunk.present |= 1 << bit;
        let i = chunk.slot(bit).expect("just set");
        chunk.values.insert(i, value);
        self.len += 1;
        None
    }

    pub fn remove(&mut self, key: &u64) -> Option<V> {
        let (base, bit) = split(*key);
        let chunk = self.chunks.get_mut(&base)?;
        let i = chunk.slot(bit)?;
        let value = chunk.values.remove(i);
        chunk.present &= !(1 << bit);
        self.len -= 1;
        if chunk.present == 0 {
            self.chunks.remove(&base);
        } else if chunk.values.len() * 4 <= chunk.values.capacity() {
            // Give back what a chunk mostly emptied holds, keeping room to
            // grow so alternating inserts and removals do not reallocate
            // every time.
            chunk.values.shrink_to(chunk.values.len() * 2);
        }
        Some(value)
    }

    /// The records in key order. Keys are not stored, so they come by
    /// value (a `BTreeMap` hands out references).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, &V)> + '_ {
        self.chunks.iter().flat_map(|(&base, chunk)| {
            Bits(chunk.present)
                .zip(chunk.values.iter())
                .map(move |(bit, value)| (base * CHUNK_KEYS + u64::from(bit), value))
        })
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = u64> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + '_ {
        self.chunks.values().flat_map(|chunk| chunk.values.iter())
    }
}

/// The set bits of a chunk's mask, lowest first.
struct Bits(u64);

impl Iterator for Bits {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        (self.0 != 0).then(|| {
            let bit = self.0.trailing_zeros();
            self.0 &= self.0 - 1;
            bit
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.0.count_ones() as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Bits {}

impl DoubleEndedIterator for Bits {
    fn next_back(&mut self) -> Option<u32> {
        (self.0 != 0).then(|| {
            let bit = 63 - self.0.leading_zeros();
            self.0 &= !(1 << bit);
            bit
        })
    }
}

impl<V> std::ops::Index<&u64> for OffsetMap<V> {
    type Output = V;
    fn index(&self, key: &u64) -> &V {
        self.get(key).expect("no record under this key")
    }
}

impl<V: fmt::Debug> fmt::Debug for OffsetMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V: Serialize> Serialize for OffsetMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for (key, value) in self.iter() {
            map.serialize_entry(&key, value)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OffsetMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = OffsetMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from u64 keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = OffsetMap::new();
                while let Some((key, value)) = access.next_entry::<u64, V>()? {
                    map.insert(key, value);
                }
                Ok(map)
            }
        }
        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a `BTreeMap` under a mixed run of inserts (mostly growing
    /// keys, some old ones again) and removals: the same answers, the same
    /// order, and the same encoding.
    #[test]
    fn behaves_and_encodes_as_a_btree_map() {
        let mut map = OffsetMap::new();
        let mut model = BTreeMap::new();
        // A fixed xorshift sequence: the test is deterministic.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut top = 0u64;
        for step in 0..20_000u64 {
            let r = next();
            let key = match r % 4 {
                0 | 1 => {
                    top += 1 + r % 3;
                    top
                }
                2 => next() % (top + 1),
                _ => top.saturating_sub(next() % 200),
            };
            if r % 7 < 3 {
                assert_eq!(map.remove(&key), model.remove(&key), "step {step}");
            } else {
                assert_eq!(
                    map.insert(key, step),
                    model.insert(key, step),
                    "step {step}"
                );
            }
            assert_eq!(map.get(&key), model.get(&key));
            assert_eq!(map.len(), model.len());
        }
        let pairs: Vec<(u64, u64)> = map.iter().map(|(k, v)| (k, *v)).collect();
        let expected: Vec<(u64, u64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(pairs, expected);
        assert!(map.keys().eq(model.keys().copied()));
        assert!(map.values().eq(model.values()));
        let bytes = crate::codec::encode(&map).expect("checked");
        assert_eq!(bytes, crate::codec::encode(&model).expect("checked"));
        let back: OffsetMap<u64> = crate::codec::decode(&bytes).expect("checked");
        assert!(back == map);
        for key in model.keys().copied().collect::<Vec<_>>() {
            map.remove(&key);
        }
        assert!(map.chunks.is_empty() && map.len() == 0);
    }
}
