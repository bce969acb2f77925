//! Snapshot files: their on-disk format and the handle openraft streams.
//!
//! A snapshot is one file in `<data_dir>/snapshots/`, laid out as:
//!
//! ```text
//! magic        8 bytes  "LOCKSNAP"
//! header_len   u32 LE   then the header through lockstep_core::codec:
//!                       { file_version, meta: SnapshotMeta,
//!                         payloads_included, payload_bounds }
//! core_len     u64 LE   then lockstep_core::State::snapshot() bytes
//! records      repeated: tag 1 (u8), len (u32 LE), queue id BE (8),
//!                        blob BE (8), the payload record (len - 16 bytes)
//! end          tag 0 (u8), record count (u64 LE),
//!              xxh3-64 (u64 LE) of every byte before it
//! ```
//!
//! Two kinds share the layout. The snapshot a node builds for itself holds
//! the core state only (`payloads_included` false): the payloads are in the
//! `blobs` column family already, and a copy in every snapshot was one more
//! copy of every pending payload on disk. The snapshot a node *sends* is
//! written when openraft first reads it ([`SnapshotFile::deferred`]): the
//! same header and core, then the payloads the node holds at that moment
//! that the snapshot's state holds, told apart by `payload_bounds` (each
//! queue's next offset at the snapshot; see
//! `lockstep_core::State::payload_bounds`). A payload the state held but
//! the sender has deleted since was deleted by a later entry, which the
//! receiver applies after the snapshot, so it never needs it. Only a file
//! with its payloads is installed.
//!
//! The records are streamed from RocksDB, so a snapshot never has to fit in
//! memory beyond the core state (which is in memory anyway). The
//! reader checks every length against a named limit and against the bytes
//! left in the file before it allocates, and the checksum and record count
//! catch truncation and bit rot: a corrupt file is refused with an error,
//! never a panic.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use lockstep_core::{codec, QueueId};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::error::{Result, StoreError};
pub use lockstep_types::SnapshotFile;
use lockstep_types::SnapshotMeta;

const MAGIC: [u8; 8] = *b"LOCKSNAP";
/// The layout version of the file, inside the header. The codec's version
/// byte covers the encoding of each record; this covers the framing.
const FILE_VERSION: u32 = 2;
/// The largest header: a snapshot meta holds the membership, a few hundred
/// bytes per node.
pub const HEADER_BYTES_MAX: u32 = 1024 * 1024;
/// The largest payload record: the key plus the codec's record limit.
pub const BLOB_RECORD_BYTES_MAX: u32 = 16 + codec::RECORD_BYTES_MAX as u32;
const TAG_END: u8 = 0;
const TAG_BLOB: u8 = 1;

/// Suffix of a published snapshot.
pub(crate) const SUFFIX_SNAPSHOT: &str = "snap";
/// Suffix of a snapshot being received from a leader.
pub(crate) const SUFFIX_RECEIVING: &str = "recv";
/// Suffix of a snapshot being built locally.
pub(crate) const SUFFIX_BUILDING: &str = "build";
/// Suffix of the file that sends the current snapshot, with its payloads.
pub(crate) const SUFFIX_SENDING: &str = "send";

#[derive(Serialize, Deserialize)]
struct Header {
    file_version: u32,
    meta: SnapshotMeta,
    /// Whether the payload records follow: true in a file made to be sent.
    payloads_included: bool,
    /// Each queue's id and next offset at the snapshot.
    payload_bounds: Vec<(QueueId, u64)>,
}

/// A name no other file of this process or an earlier one has used:
/// wall-clock nanoseconds (distinct across restarts) and a counter (distinct
/// within one).
pub(crate) fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos}-{n}")
}

/// A file name made of `prefix`, [`unique_id`] and `suffix`.
pub(crate) fn unique_name(prefix: &str, suffix: &str) -> String {
    format!("{prefix}{}.{suffix}", unique_id())
}

/// Makes a rename or a new file in `dir` durable: the entry lives in the
/// directory, so the directory itself must be fsynced.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(format!(
            "fsync the directory {}",
            dir.display()
        )))
}

/// Counts and hashes everything written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Xxh3,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one snapshot file, front to back.
pub(crate) struct SnapshotWriter {
    path: PathBuf,
    out: HashingWriter<BufWriter<File>>,
    records: u64,
}

impl SnapshotWriter {
    /// Creates `path` (which must not exist) and writes the header and the
    /// core state.
    pub(crate) fn create(
        path: PathBuf,
        meta: &SnapshotMeta,
        core: &[u8],
        payloads: Payloads,
    ) -> Result<SnapshotWriter> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(StoreError::io(format!("create {}", path.display())))?;
        let mut writer = SnapshotWriter {
            out: HashingWriter {
                inner: BufWriter::with_capacity(1 << 20, file),
                hasher: Xxh3::new(),
            },
            path,
            records: 0,
        };
        let header = codec::encode(&Header {
            file_version: FILE_VERSION,
            meta: meta.clone(),
            payloads_included: payloads.included,
            payload_bounds: payloads.bounds,
        })
        .map_err(StoreError::codec("encode the snapshot header"))?;
        let header_len = u32::try_from(header.len())
            .ok()
            .filter(|&n| n <= HEADER_BYTES_MAX)
            .ok_or_else(|| {
                StoreError::bad_snapshot(&writer.path, "the header exceeds HEADER_BYTES_MAX")
            })?;
        writer.put(&MAGIC)?;
        writer.put(&header_len.to_le_bytes())?;
        writer.put(&header)?;
        writer.put(&(core.len() as u64).to_le_bytes())?;
        writer.put(core)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(StoreError::io(format!("write {}", self.path.display())))
    }

    /// Appends one payload record: its 16-byte key and its stored value.
    pub(crate) fn blob(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if key.len() != 16 {
            return Err(StoreError::Inconsistent(format!(
                "a payload key has {} bytes instead of 16",
                key.len()
            )));
        }
        let len = u32::try_from(key.len() + value.len())
            .ok()
            .filter(|&n| n <= BLOB_RECORD_BYTES_MAX)
            .ok_or_else(|| {
                StoreError::Inconsistent(format!(
                    "a stored payload of {} bytes exceeds the record limit",
                    value.len()
                ))
            })?;
        self.put(&[TAG_BLOB])?;
        self.put(&len.to_le_bytes())?;
        self.put(key)?;
        self.put(value)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the end record and the checksum, then fsyncs the file.
    pub(crate) fn finish(mut self) -> Result<PathBuf> {
        self.put(&[TAG_END])?;
        self.put(&self.records.to_le_bytes())?;
        let checksum = self.out.hasher.digest();
        self.put(&checksum.to_le_bytes())?;
        let file = self.out.inner.into_inner().map_err(|e| {
            StoreError::io(format!("flush {}", self.path.display()))(e.into_error())
        })?;
        file.sync_all()
            .map_err(StoreError::io(format!("fsync {}", self.path.display())))?;
        Ok(self.path)
    }
}

/// Reads through a file, hashing and counting what it consumes, so that
/// every length can be checked against the bytes that remain.
struct HashingReader<R> {
    inner: R,
    hasher: Xxh3,
    remaining: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.remaining = self.remaining.saturating_sub(n as u64);
        Ok(n)
    }
}

/// The header of file version 1, read only to name it.
#[derive(Deserialize)]
struct HeaderV1 {
    file_version: u32,
    #[allow(dead_code)]
    meta: SnapshotMeta,
}

/// Whether a file holds its payloads, and the bounds that tell which
/// stored payloads its state holds ([`Header`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Payloads {
    pub included: bool,
    pub bounds: Vec<(QueueId, u64)>,
}

impl Payloads {
    /// `bounds` in any order; kept sorted by queue id for [`Payloads::holds`].
    pub(crate) fn new(included: bool, mut bounds: Vec<(QueueId, u64)>) -> Payloads {
        bounds.sort_unstable();
        Payloads { included, bounds }
    }

    /// Whether the payload stored under `key` (queue id and offset, big
    /// endian) is one the snapshot's state holds.
    pub(crate) fn holds(&self, key: &[u8]) -> bool {
        let (Some(queue), Some(offset)) = (
            key.get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes),
            key.get(8..16)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes),
        ) else {
            return false;
        };
        match self.bounds.binary_search_by_key(&queue, |&(id, _)| id) {
            Ok(at) => offset < self.bounds[at].1,
            Err(_) => false,
        }
    }
}

/// What [`read_snapshot`] returns besides the records.
#[derive(Debug)]
pub(crate) struct SnapshotContents {
    pub meta: SnapshotMeta,
    /// The core state bytes, when asked for.
    pub core: Option<Vec<u8>>,
    pub payloads: Payloads,
}

struct SnapshotReader<'a> {
    path: &'a Path,
    input: HashingReader<BufReader<File>>,
}

impl SnapshotReader<'_> {
    fn bad(&self, reason: impl Into<String>) -> StoreError {
        StoreError::bad_snapshot(self.path, reason)
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => self.bad(format!("truncated in the {what}")),
            _ => StoreError::io(format!("read {}", self.path.display()))(e),
        })
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        let mut b = [0u8; 1];
        self.exact(&mut b, what)?;
        Ok(b[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Checks a claimed length against its limit and the bytes left in the
    /// file, before anything is allocated for it.
    fn check_len(&self, len: u64, limit: u64, what: &str) -> Result<usize> {
        if len > limit {
            return Err(self.bad(format!(
                "the {what} claims {len} bytes, over the limit of {limit}"
            )));
        }
        if len > self.input.remaining {
            return Err(self.bad(format!(
                "truncated: the {what} claims {len} bytes but {} remain",
                self.input.remaining
            )));
        }
        usize::try_from(len).map_err(|_| self.bad(format!("the {what} does not fit in memory")))
    }
}

/// Reads and checks a whole snapshot file, calling `on_blob(key, value)` for
/// each payload record in order.
///
/// The checksum is known only at the end, so a caller that must not act on a
/// corrupt file reads it twice: once to check it (with a callback that only
/// validates), then once to use it.
pub(crate) fn read_snapshot(
    path: &Path,
    keep_core: bool,
    on_blob: impl FnMut(&[u8; 16], &[u8]) -> Result<()>,
) -> Result<SnapshotContents> {
    let file = File::open(path).map_err(StoreError::io(format!("open {}", path.display())))?;
    read_snapshot_from(file, path, keep_core, on_blob)
}

/// [`read_snapshot`] of a file already open (from its start), which a
/// publish may have removed from the directory since.
pub(crate) fn read_snapshot_from(
    file: File,
    path: &Path,
    keep_core: bool,
    mut on_blob: impl FnMut(&[u8; 16], &[u8]) -> Result<()>,
) -> Result<SnapshotContents> {
    let len = file
        .metadata()
        .map_err(StoreError::io(format!("stat {}", path.display())))?
        .len();
    let mut r = SnapshotReader {
        path,
        input: HashingReader {
            inner: BufReader::with_capacity(1 << 20, file),
            hasher: Xxh3::new(),
            remaining: len,
        },
    };

    let mut magic = [0u8; 8];
    r.exact(&mut magic, "magic")?;
    if magic != MAGIC {
        return Err(r.bad("not a Lockstep snapshot (wrong magic bytes)"));
    }
    let header_len = r.u32("header length")?;
    let header_len = r.check_len(header_len.into(), HEADER_BYTES_MAX.into(), "header")?;
    let mut header = vec![0u8; header_len];
    r.exact(&mut header, "header")?;
    let header: Header = match codec::decode(&header) {
        Ok(header) => header,
        // The header of file version 1 had no payload fields: name the
        // version rather than report a decoding error.
        Err(e) => match codec::decode::<HeaderV1>(&header) {
            Ok(old) => {
                return Err(r.bad(format!(
                    "file version {} is not the version {FILE_VERSION} this build reads",
                    old.file_version
                )))
            }
            Err(_) => return Err(r.bad(format!("the header does not decode: {e}"))),
        },
    };
    if header.file_version != FILE_VERSION {
        return Err(r.bad(format!(
            "file version {} is not the version {FILE_VERSION} this build reads",
            header.file_version
        )));
    }

    let core_len = r.u64("core state length")?;
    let core_len = r.check_len(core_len, codec::SNAPSHOT_BYTES_MAX as u64, "core state")?;
    let core = if keep_core {
        let mut core = vec![0u8; core_len];
        r.exact(&mut core, "core state")?;
        Some(core)
    } else {
        let skipped = io::copy(&mut (&mut r.input).take(core_len as u64), &mut io::sink())
            .map_err(StoreError::io(format!("read {}", path.display())))?;
        if skipped != core_len as u64 {
            return Err(r.bad("truncated in the core state"));
        }
        None
    };

    let mut records = 0u64;
    let mut record = Vec::new();
    loop {
        match r.u8("record tag")? {
            TAG_BLOB => {
                let len = r.u32("record length")?;
                let len =
                    r.check_len(len.into(), BLOB_RECORD_BYTES_MAX.into(), "payload record")?;
                if len < 16 {
                    return Err(r.bad(format!(
                        "a payload record of {len} bytes has no room for its key"
                    )));
                }
                record.resize(len, 0);
                r.exact(&mut record, "payload record")?;
                let (key, value) = record.split_at(16);
                let key: &[u8; 16] = key
                    .try_into()
                    .map_err(|_| r.bad("a payload key is not 16 bytes"))?;
                on_blob(key, value)?;
                records += 1;
            }
            TAG_END => break,
            tag => return Err(r.bad(format!("unknown record tag {tag}"))),
        }
    }
    let claimed = r.u64("record count")?;
    if claimed != records {
        return Err(r.bad(format!(
            "the end record counts {claimed} payloads but {records} were read"
        )));
    }
    let computed = r.input.hasher.digest();
    let stored = r.u64("checksum")?;
    if stored != computed {
        return Err(r.bad(format!(
            "checksum mismatch: stored {stored:#018x}, computed {computed:#018x}"
        )));
    }
    if r.input.remaining != 0 {
        return Err(r.bad(format!(
            "{} unexpected bytes after the end record",
            r.input.remaining
        )));
    }
    Ok(SnapshotContents {
        meta: header.meta,
        core,
        payloads: Payloads::new(header.payloads_included, header.payload_bounds),
    })
}

#[cfg(test)]
mod tests {
    use lockstep_core::JobBlob;

    use super::*;
    use crate::blob_key;

    fn sample(dir: &Path) -> Result<(PathBuf, Vec<u8>)> {
        let meta = SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "test".into(),
        };
        let core = lockstep_core::State::new().snapshot();
        let path = dir.join("sample.snap");
        let payloads = Payloads::new(true, vec![(7, 5)]);
        let mut writer = SnapshotWriter::create(path.clone(), &meta, &core, payloads)?;
        for blob in 0..5u64 {
            let value = codec::encode(&JobBlob {
                id: format!("job-{blob}"),
                headers: vec![("k".into(), "v".into())],
                payload: vec![blob as u8; 40],
            })
            .map_err(StoreError::codec("encode"))?;
            writer.blob(&blob_key(7, blob), &value)?;
        }
        let path = writer.finish()?;
        let bytes = std::fs::read(&path).map_err(StoreError::io("read back"))?;
        Ok((path, bytes))
    }

    fn count_records(path: &Path) -> Result<u64> {
        let mut n = 0;
        read_snapshot(path, true, |_, _| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    #[test]
    fn a_written_file_reads_back() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (path, _) = sample(dir.path())?;
        assert_eq!(count_records(&path)?, 5);
        let contents = read_snapshot(&path, false, |_, _| Ok(()))?;
        assert_eq!(contents.payloads, Payloads::new(true, vec![(7, 5)]));
        Ok(())
    }

    /// A payload belongs to a snapshot's state when its queue was there and
    /// its offset below that queue's next one.
    #[test]
    fn the_bounds_tell_the_payloads_of_the_state() {
        let payloads = Payloads::new(true, vec![(9, 3), (2, 10)]);
        assert!(payloads.holds(&blob_key(2, 0)));
        assert!(payloads.holds(&blob_key(2, 9)));
        assert!(!payloads.holds(&blob_key(2, 10)), "enqueued after");
        assert!(payloads.holds(&blob_key(9, 2)));
        assert!(!payloads.holds(&blob_key(5, 0)), "a queue created after");
        assert!(!payloads.holds(&[0u8; 3]), "not a payload key");
    }

    /// Every prefix of a valid file, and every single-byte change of it, is
    /// refused with an error: no panic, no silent acceptance.
    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (path, bytes) = sample(dir.path())?;
        for cut in 0..bytes.len() {
            std::fs::write(&path, &bytes[..cut])?;
            assert!(count_records(&path).is_err(), "a cut at {cut} was accepted");
        }
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            std::fs::write(&path, &damaged)?;
            assert!(count_records(&path).is_err(), "a flip at {at} was accepted");
        }
        Ok(())
    }
}
