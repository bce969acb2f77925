//! The one codec for everything Lockstep persists or replicates.
//!
//! Every record starts with a format-version byte, followed by bincode 2
//! (standard configuration: little-endian, varint integers). bincode is no
//! longer maintained, so this module is the only place that names it: moving
//! to another encoding means changing this file and bumping
//! [`FORMAT_VERSION`].
//!
//! Decoding is bounded: a hostile or corrupt length prefix can never make the
//! decoder allocate more than the limit of the call it came through, nor more
//! than a small multiple of the bytes it was given (see `decode_bounded`).

use serde::{de::DeserializeOwned, Serialize};

/// The version byte written at the front of every record.
///
/// 2: the state holds client sessions and their reply cache, and commands
/// may be `OpenSession` or `Sequenced`; it keeps the offset floor of
/// deleted queues.
///
/// 3: a queue's configuration carries rate limits, and a queue keeps its
/// token buckets. A node refuses a data directory of an older version
/// with "unknown format version 2" rather than misreading it.
///
/// 4: a job may carry a fairness key (`NewJob::fairness_key`, and the
/// stored job its interned id), a queue's configuration carries fairness
/// weights, and a queue keeps its interned fairness keys and each priority
/// band's virtual times. A version-3 data directory is refused as such.
///
/// 5: a queue keeps named subscriptions (each with its own consumer
/// state over the queue's jobs) and the payload holds they share, and
/// commands and replies gained `InSubscription`, `CreateSubscription`,
/// `DeleteSubscription` and their answers. A version-4 data directory is
/// refused as such.
///
/// 6: a sequenced command carries which try of its request it is
/// (`Sequence::try_number`), a session keeps the fences of its empty fetches,
/// and errors gained `Superseded`. A version-5 data directory is refused
/// as such.
pub const FORMAT_VERSION: u8 = 6;

/// The largest single record (a Raft entry, a vote, a payload): 64 MiB.
pub const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The largest state snapshot of the core: 16 GiB.
pub const SNAPSHOT_BYTES_MAX: usize = 16 * 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("record is empty: no format-version byte")]
    Empty,
    #[error("unknown format version {found} (this build reads version {FORMAT_VERSION})")]
    UnknownVersion { found: u8 },
    #[error("record of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("record is malformed: {0}")]
    Malformed(String),
    #[error("record has {0} trailing bytes after its value")]
    Trailing(usize),
    #[error("value cannot be encoded: {0}")]
    Encode(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` behind the format-version byte.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Appends the encoding of `value` to `out` (which it does not clear).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a record (at most [`RECORD_BYTES_MAX`]).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_bounded(bytes, RECORD_BYTES_MAX)
}

/// Decodes a core snapshot (at most [`SNAPSHOT_BYTES_MAX`]).
pub fn decode_snapshot<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_bounded(bytes, SNAPSHOT_BYTES_MAX)
}

fn decode_bounded<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion { found: version });
    }
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    // bincode checks each claimed length against the configured limit
    // before it allocates, but not against the bytes that remain: a string
    // claiming 16 GiB in a 20-byte record would allocate 16 GiB before the
    // short read is noticed (found by the `records` fuzz target). So the
    // limit is the smallest rung of a ladder that still admits every valid
    // record of this length, capped at the call's limit.
    let needed = body.len().saturating_mul(CLAIM_BYTES_PER_INPUT_BYTE_MAX);
    let (value, used) = if limit <= RECORD_BYTES_MAX {
        decode_record_rung(body, needed)
    } else {
        decode_snapshot_rung(body, needed)
    }
    .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(value)
}

/// The most bytes bincode claims against its limit per input byte of a
/// valid record: it claims a value's in-memory size before reading it, and
/// the largest primitive, a `u128`, takes 16 bytes in memory and as little
/// as one encoded. A string claims one byte per byte read. A valid record of
/// `n` bytes therefore claims at most `16 n`.
const CLAIM_BYTES_PER_INPUT_BYTE_MAX: usize = 16;

type Decoded<T> = Result<(T, usize), bincode::error::DecodeError>;

fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(body: &[u8]) -> Decoded<T> {
    bincode::serde::decode_from_slice(body, config().with_limit::<LIMIT>())
}

/// Records: no rung above [`RECORD_BYTES_MAX`], which bounds a record's
/// claims however long it is.
fn decode_record_rung<T: DeserializeOwned>(body: &[u8], needed: usize) -> Decoded<T> {
    const KIB: usize = 1024;
    match needed {
        n if n <= 64 * KIB => decode_limited::<T, { 64 * KIB }>(body),
        n if n <= 1024 * KIB => decode_limited::<T, { 1024 * KIB }>(body),
        n if n <= 16 * 1024 * KIB => decode_limited::<T, { 16 * 1024 * KIB }>(body),
        _ => decode_limited::<T, RECORD_BYTES_MAX>(body),
    }
}

/// Snapshots: rungs 4 to 16 times apart, so a hostile snapshot allocates at
/// most 256 times its length (64 KiB for a short one).
fn decode_snapshot_rung<T: DeserializeOwned>(body: &[u8], needed: usize) -> Decoded<T> {
    const MIB: usize = 1024 * 1024;
    match needed {
        n if n <= RECORD_BYTES_MAX => decode_record_rung(body, n),
        n if n <= 256 * MIB => decode_limited::<T, { 256 * MIB }>(body),
        n if n <= 1024 * MIB => decode_limited::<T, { 1024 * MIB }>(body),
        n if n <= 4096 * MIB => decode_limited::<T, { 4096 * MIB }>(body),
        _ => decode_limited::<T, SNAPSHOT_BYTES_MAX>(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_value_and_leads_with_version() {
        let value = (7u64, String::from("job"), vec![1u8, 2, 3], u128::MAX);
        let bytes = encode(&value).expect("encode");
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (u64, String, Vec<u8>, u128) = decode(&bytes).expect("decode");
        assert_eq!(back, value);
    }

    #[test]
    fn rejects_unknown_version_empty_truncated_and_trailing() {
        let mut bytes = encode(&(1u32, String::from("abc"))).expect("encode");
        assert_eq!(decode::<(u32, String)>(&[]), Err(CodecError::Empty));
        let mut wrong = bytes.clone();
        wrong[0] = 99;
        assert_eq!(
            decode::<(u32, String)>(&wrong),
            Err(CodecError::UnknownVersion { found: 99 })
        );
        for cut in 1..bytes.len() {
            assert!(
                decode::<(u32, String)>(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        bytes.push(0);
        assert_eq!(
            decode::<(u32, String)>(&bytes),
            Err(CodecError::Trailing(1))
        );
    }

    #[test]
    fn a_huge_claimed_length_does_not_allocate() {
        // Version byte, then a varint claiming a vector of u64::MAX elements.
        let bytes = [
            FORMAT_VERSION,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
        ];
        assert!(decode::<Vec<u8>>(&bytes).is_err());
    }
}
