//! Stable hashes. They are part of the replicated state (the dedup index and
//! the backoff jitter), so they must give the same value on every node and in
//! every build: xxh3 with a fixed seed, never `std`'s randomly keyed hasher.

use xxhash_rust::xxh3::{xxh3_128, xxh3_64, Xxh3};

/// The dedup key of a job id. 128 bits make a collision between two ids in
/// one window vanishingly unlikely while keeping the index compact.
pub fn id_hash(id: &str) -> u128 {
    xxh3_128(id.as_bytes())
}

/// Fingerprint of what must match for a repeated id to be a `DUPLICATE`
/// rather than an `ID_CONFLICT`: the group and the payload.
pub fn content_hash(group: Option<&str>, payload: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    match group {
        None => h.update(&[0]),
        Some(g) => {
            h.update(&[1]);
            h.update(&(g.len() as u64).to_le_bytes());
            h.update(g.as_bytes());
        }
    }
    h.update(payload);
    h.digest()
}

/// The jitter draw for one (job, attempt): uniform enough, and the same on
/// every replica.
pub fn jitter(id_hash: u128, attempt: u32) -> u64 {
    let mut bytes = [0u8; 20];
    bytes[..16].copy_from_slice(&id_hash.to_le_bytes());
    bytes[16..].copy_from_slice(&attempt.to_le_bytes());
    xxh3_64(&bytes)
}
