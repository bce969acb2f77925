//! The one codec for everything Lockstep persists or replicates.
//!
//! Every record starts with a format-version byte, followed by bincode 2
//! (standard configuration: little-endian, varint integers). bincode is no
//! longer maintained, so this module is the only place that names it: moving
//! to another encoding means changing this file and bumping
//! [`FORMAT_VERSION`].
//!
//! Decoding is bounded: a hostile or corrupt length prefix can never make the
//! decoder allocate more than the limit of the call it came through.

use serde::{de::DeserializeOwned, Serialize};

/// The version byte written at the front of every record.
pub const FORMAT_VERSION: u8 = 1;

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
    // The input length bounds every allocation: bincode checks each claimed
    // collection length against the bytes that remain before it allocates
    // (its `claim_bytes_read` guard), with the limit below as a second wall.
    let (value, used) = match limit {
        l if l <= RECORD_BYTES_MAX => {
            bincode::serde::decode_from_slice(body, config().with_limit::<RECORD_BYTES_MAX>())
        }
        _ => bincode::serde::decode_from_slice(body, config().with_limit::<SNAPSHOT_BYTES_MAX>()),
    }
    .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(value)
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
