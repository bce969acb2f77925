//! The Raft log and vote in RocksDB (openraft storage v2).
//!
//! Durability: entries, the vote, truncations and purges are written in one
//! `WriteBatch` with `WriteOptions::set_sync(true)` before `append` reports
//! them flushed or `save_vote` returns, so an entry a node has acknowledged
//! and a vote it has cast survive power loss. Writes run on the blocking
//! pool, so the fsync never stalls the async worker threads.

use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use lockstep_core::codec;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, RaftLogReader};
use rocksdb::{ReadOptions, WriteBatch, DB};
use serde::de::DeserializeOwned;

use crate::error::{blocking, Result, StoreError};
use crate::{cf, log_key, CF_LOGS, CF_META, CF_SM_META};
use lockstep_types::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
/// Whether the vote guard is up (see `lockstep_raft::VoteGuard`): written,
/// synced, before Raft starts on an empty directory, and kept until the
/// guard lifts, so a restart in the middle of catching up stays guarded.
const KEY_GUARDED: &[u8] = b"guarded";
/// The state machine's last applied log id, in its own column family; see
/// [`LogStore::read_committed`] for why the log store reads it.
pub(crate) const KEY_LAST_APPLIED: &[u8] = b"last_applied";

/// The Raft log store. Cloning it is cheap (the database is shared), which is
/// how it serves as its own [`RaftLogReader`] for the replication tasks.
#[derive(Clone)]
pub struct LogStore {
    pub(crate) db: Arc<DB>,
    /// The compaction of purged entries ([`LogStore::compact_purged`]).
    compactor: Arc<Compactor>,
}

/// At most one background compaction of purged log entries at a time.
/// Dropped with the last clone of its store, it waits for that compaction:
/// the thread holds the database open, and a node reopened in the same
/// process (an embedded restart, the store tests) must find it closed.
#[derive(Default)]
struct Compactor {
    /// What the purges asked for, shared with the running thread.
    wanted: Arc<std::sync::Mutex<Wanted>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Wanted {
    /// The end (exclusive) of the purged range, from the newest purge.
    end: u64,
    /// A thread runs and takes up `end` before it ends.
    running: bool,
}

impl Drop for Compactor {
    fn drop(&mut self) {
        let thread = match self.thread.get_mut() {
            Ok(thread) => thread.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.db.path())
            .finish()
    }
}

pub(crate) fn read_value<T: DeserializeOwned>(
    db: &DB,
    cf_name: &'static str,
    key: &[u8],
) -> Result<Option<T>> {
    let what = || format!("{cf_name}/{}", String::from_utf8_lossy(key));
    let bytes = db
        .get_pinned_cf(cf(db, cf_name)?, key)
        .map_err(StoreError::rocks(format!("read {}", what())))?;
    bytes
        .map(|b| codec::decode(&b).map_err(StoreError::codec(format!("decode {}", what()))))
        .transpose()
}

/// `[start, end)` of a range of log indexes; `end` is `None` when unbounded.
fn index_range(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i.checked_add(1),
        Bound::Excluded(&i) => Some(i),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>) -> Result<LogStore> {
        // Fail at open, not at the first write, if the database lacks a family.
        cf(&db, CF_LOGS)?;
        cf(&db, CF_META)?;
        Ok(LogStore {
            db,
            compactor: Arc::default(),
        })
    }

    /// Writes every column family's memtable to table files and syncs
    /// them: what was only in the write-ahead log is then in SST files too
    /// (before a backup or a file-level copy, and in tests of damaged
    /// table files).
    pub async fn flush(&self) -> Result<()> {
        let db = self.db.clone();
        blocking(move || {
            let handles: Vec<_> = crate::COLUMN_FAMILIES
                .iter()
                .map(|name| cf(&db, name))
                .collect::<Result<_>>()?;
            db.flush_cfs_opt(&handles, &rocksdb::FlushOptions::default())
                .map_err(StoreError::rocks("flush the memtables"))?;
            // Table files are durable: what they hold survives a power cut.
            crate::power_cut::synced(&db);
            Ok(())
        })
        .await
    }

    /// Whether the vote guard was left up (false when never written).
    pub async fn read_guarded(&self) -> Result<bool> {
        let db = self.db.clone();
        blocking(move || Ok(read_value::<bool>(&db, CF_META, KEY_GUARDED)?.unwrap_or(false))).await
    }

    /// Records, synced, whether the vote guard is up: it must be on disk
    /// before Raft can act on it (raising it) or after the node acted on it
    /// being lifted (a vote may follow at once).
    pub async fn save_guarded(&self, guarded: bool) -> Result<()> {
        let db = self.db.clone();
        blocking(move || {
            let value = codec::encode(&guarded)
                .map_err(StoreError::codec("encode the vote guard's state"))?;
            let mut batch = WriteBatch::default();
            batch.put_cf(cf(&db, CF_META)?, KEY_GUARDED, value);
            crate::write_synced(&db, batch)
                .map_err(StoreError::rocks("write and sync the vote guard's state"))
        })
        .await
    }

    fn entries(db: &DB, start: u64, end: Option<u64>) -> Result<Vec<Entry>> {
        let mut opts = ReadOptions::default();
        if let Some(end) = end {
            if end <= start {
                return Ok(Vec::new());
            }
            opts.set_iterate_upper_bound(log_key(end));
        }
        let mut iter = db.raw_iterator_cf_opt(cf(db, CF_LOGS)?, opts);
        iter.seek(log_key(start));
        let mut entries = Vec::new();
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            let entry: Entry = codec::decode(value).map_err(StoreError::codec(format!(
                "decode the log entry under key {key:?}"
            )))?;
            if key != log_key(entry.get_log_id().index).as_slice() {
                return Err(StoreError::Inconsistent(format!(
                    "log entry {} is stored under key {key:?}",
                    entry.get_log_id()
                )));
            }
            entries.push(entry);
            iter.next();
        }
        iter.status()
            .map_err(StoreError::rocks("scan the log entries"))?;
        Ok(entries)
    }

    fn last_entry_log_id(db: &DB) -> Result<Option<LogId>> {
        let mut iter = db.raw_iterator_cf(cf(db, CF_LOGS)?);
        iter.seek_to_last();
        let last = match iter.value() {
            Some(value) => {
                let entry: Entry =
                    codec::decode(value).map_err(StoreError::codec("decode the last log entry"))?;
                Some(*entry.get_log_id())
            }
            None => None,
        };
        iter.status()
            .map_err(StoreError::rocks("seek to the last log entry"))?;
        Ok(last)
    }

    fn log_state(db: &DB) -> Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = read_value(db, CF_META, KEY_LAST_PURGED)?;
        let last_log_id = Self::last_entry_log_id(db)?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    fn append_blocking(db: &DB, entries: &[Entry]) -> Result<()> {
        // Test builds only: the chaos harness's `slow-disk` fault delays
        // appends here (`crate::failpoints`).
        fail::fail_point!("log-append");
        let logs = cf(db, CF_LOGS)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            let value = codec::encode(entry).map_err(StoreError::codec(format!(
                "encode the log entry {}",
                entry.get_log_id()
            )))?;
            batch.put_cf(logs, log_key(entry.get_log_id().index), value);
        }
        if crate::planted_ack_before_fsync() {
            // Planted bug (tests only): not synced; the write-ahead log is
            // flushed about once a second (`open_db`), and on a simulated
            // disk a stop loses it (`power_cut.rs`).
            return crate::write_unsynced(db, batch)
                .map_err(StoreError::rocks("write the appended log entries"));
        }
        crate::write_synced(db, batch)
            .map_err(StoreError::rocks("write and sync the appended log entries"))
    }

    /// Adds the deletion of `[start, ∞)` of the log to `batch`.
    fn delete_from(batch: &mut WriteBatch, db: &DB, start: u64) -> Result<()> {
        let logs = cf(db, CF_LOGS)?;
        // `delete_range` excludes its end, so the one index it cannot reach is
        // deleted on its own.
        batch.delete_range_cf(logs, log_key(start), log_key(u64::MAX));
        batch.delete_cf(logs, log_key(u64::MAX));
        Ok(())
    }

    fn truncate_blocking(db: &DB, since: u64) -> Result<()> {
        let mut batch = WriteBatch::default();
        Self::delete_from(&mut batch, db, since)?;
        // Synced, so entries a new leader overwrote never come back after a
        // crash to be read next to the ones that replaced them.
        crate::write_synced(db, batch).map_err(StoreError::rocks(format!(
            "truncate the log since index {since}"
        )))
    }

    fn purge_blocking(db: &DB, upto: LogId) -> Result<()> {
        let logs = cf(db, CF_LOGS)?;
        let mut batch = WriteBatch::default();
        // The last purged id and the deletion are one atomic batch: after a
        // crash either both are there or neither, so `get_log_state` never
        // reports a log that starts past a hole.
        let value =
            codec::encode(&upto).map_err(StoreError::codec("encode the last purged log id"))?;
        batch.put_cf(cf(db, CF_META)?, KEY_LAST_PURGED, value);
        match upto.index.checked_add(1) {
            Some(end) => batch.delete_range_cf(logs, log_key(0), log_key(end)),
            None => Self::delete_from(&mut batch, db, 0)?,
        }
        // Reads seek to an index at or after the purged range, so its range
        // tombstone is never scanned; the space comes back when a
        // compaction drops the dead entries ([`LogStore::purge`]).
        crate::write_synced(db, batch)
            .map_err(StoreError::rocks(format!("purge the log up to {upto}")))
    }

    /// Compacts the purged part of the log in the background, so its files
    /// leave the disk now. Left to RocksDB, they stayed until enough new
    /// files piled up over them: with 1,000,000 pending 1 KiB jobs a leader
    /// measured 1.56-1.87 bytes on disk per payload byte where its followers
    /// had 1.39-1.42 (`scripts/bench-memory`; SPEC 7 allows 1.5). Files the
    /// range tombstone covers whole are dropped without being read, so the
    /// work is about one file at the boundary. Not awaited: the Raft core
    /// waits for the purge, and the compaction is no part of it. One thread
    /// at a time; a purge while it runs moves its goal, and it compacts
    /// again before it ends, so the last purge of a burst is compacted too.
    /// Not in the simulator, whose stores run inline on one thread.
    fn compact_purged(&self, upto: LogId) {
        if crate::error::runs_inline() {
            return;
        }
        {
            let Ok(mut wanted) = self.compactor.wanted.lock() else {
                return;
            };
            wanted.end = wanted.end.max(upto.index.saturating_add(1));
            if wanted.running {
                return;
            }
            wanted.running = true;
        }
        let Ok(mut thread) = self.compactor.thread.lock() else {
            return;
        };
        // The one before said it ends (`running` was false): join it.
        if let Some(done) = thread.take() {
            let _ = done.join();
        }
        let db = self.db.clone();
        let wanted = self.compactor.wanted.clone();
        let started = std::thread::Builder::new()
            .name("log-compact".into())
            .spawn(move || {
                let mut done = 0;
                loop {
                    let end = {
                        let Ok(mut wanted) = wanted.lock() else {
                            return;
                        };
                        if wanted.end <= done {
                            wanted.running = false;
                            return;
                        }
                        wanted.end
                    };
                    if let Ok(logs) = cf(&db, CF_LOGS) {
                        db.compact_range_cf(logs, None::<&[u8]>, Some(log_key(end)));
                    }
                    done = end;
                }
            });
        match started {
            Ok(started) => *thread = Some(started),
            Err(e) => {
                if let Ok(mut wanted) = self.compactor.wanted.lock() {
                    wanted.running = false;
                }
                tracing::warn!(error = %e, "purged log entries left to RocksDB's own compaction")
            }
        }
    }

    fn save_vote_blocking(db: &DB, vote: &Vote) -> Result<()> {
        let value = codec::encode(vote).map_err(StoreError::codec("encode the vote"))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(db, CF_META)?, KEY_VOTE, value);
        crate::write_synced(db, batch)
            .map_err(StoreError::rocks(format!("write and sync the vote {vote}")))
    }

    fn save_committed_blocking(db: &DB, committed: Option<LogId>) -> Result<()> {
        let key_cf = cf(db, CF_META)?;
        let mut batch = WriteBatch::default();
        match committed {
            Some(log_id) => {
                let value = codec::encode(&log_id)
                    .map_err(StoreError::codec("encode the committed log id"))?;
                batch.put_cf(key_cf, KEY_COMMITTED, value);
            }
            None => batch.delete_cf(key_cf, KEY_COMMITTED),
        }
        // Not synced: see `read_committed` and README.md. The write goes into
        // the WAL before the apply batch of the entries it commits, and the
        // next synced append makes both durable.
        crate::write_unsynced(db, batch).map_err(StoreError::rocks("write the committed log id"))
    }

    fn read_committed_blocking(db: &DB) -> Result<Option<LogId>> {
        let committed: Option<LogId> = read_value(db, CF_META, KEY_COMMITTED)?;
        let applied: Option<LogId> = read_value(db, CF_SM_META, KEY_LAST_APPLIED)?;
        Ok(committed.max(applied))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = index_range(&range);
        let db = self.db.clone();
        blocking(move || Self::entries(&db, start, end))
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        blocking(move || Self::log_state(&db))
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || Self::save_vote_blocking(&db, &vote))
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let db = self.db.clone();
        blocking(move || read_value(&db, CF_META, KEY_VOTE))
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // An unsynced write is a memtable insert and a `write(2)` to the WAL:
        // cheap enough to make here rather than on the blocking pool.
        Self::save_committed_blocking(&self.db, committed)
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    /// The committed log id, or the state machine's last applied id when that
    /// is greater.
    ///
    /// Only committed entries are applied, so the applied id is a lower bound
    /// of the committed one. Returning it makes openraft re-apply, on start,
    /// every entry whose effects may already be in the `blobs` column family,
    /// so the in-memory core state (rebuilt from the last snapshot) catches
    /// up with the payload store before the node serves anything.
    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let db = self.db.clone();
        blocking(move || Self::read_committed_blocking(&db))
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Read))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let db = self.db.clone();
        let res = blocking(move || Self::append_blocking(&db, &entries)).await;
        // The callback runs only once the batch is synced: openraft counts
        // this node towards a quorum from that moment.
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e.into_storage(ErrorSubject::Logs, ErrorVerb::Write))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || Self::truncate_blocking(&db, log_id.index))
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || Self::purge_blocking(&db, log_id))
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Log(log_id), ErrorVerb::Delete))?;
        self.compact_purged(log_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::storage::RaftLogStorage;
    use openraft::CommittedLeaderId;

    /// Bytes of the log's table files.
    fn log_table_bytes(db: &DB) -> u64 {
        let logs = cf(db, CF_LOGS).expect("the log family");
        db.property_int_value_cf(logs, "rocksdb.total-sst-files-size")
            .expect("a RocksDB property")
            .unwrap_or(0)
    }

    /// A purged log leaves the disk without waiting for new files to pile
    /// over it: RocksDB alone compacts a level once it holds 4 files, so 3
    /// flushed files of purged entries stayed (a leader measured 1.56-1.87
    /// bytes on disk per payload byte, `scripts/bench-memory`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_takes_the_purged_entries_off_the_disk() -> anyhow::Result<()> {
        const ENTRIES_PER_FILE: u64 = 256;
        const ENTRY_BYTES: usize = 4096;
        const WAIT: std::time::Duration = std::time::Duration::from_secs(20);
        let dir = tempfile::tempdir()?;
        let (mut log, _sm) = crate::open(dir.path()).await?;
        let db = log.db.clone();
        // Raw values stand in for entries: a purge deletes a key range and
        // never reads what it deletes.
        let mut index = 0;
        for _file in 0..3 {
            let mut batch = WriteBatch::default();
            for _ in 0..ENTRIES_PER_FILE {
                batch.put_cf(cf(&db, CF_LOGS)?, log_key(index), vec![7u8; ENTRY_BYTES]);
                index += 1;
            }
            crate::write_synced(&db, batch)?;
            log.flush().await?;
        }
        let before = log_table_bytes(&db);
        assert!(
            before > 3 * ENTRIES_PER_FILE * ENTRY_BYTES as u64 / 2,
            "{before} bytes of table files"
        );

        let last = LogId::new(CommittedLeaderId::new(1, 1), index - 1);
        log.purge(last).await?;
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let now = log_table_bytes(&db);
            if now < before / 10 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{now} of {before} bytes of purged log still on disk after {WAIT:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(())
    }

    #[test]
    fn index_range_converts_every_bound() {
        assert_eq!(index_range(&(3..7)), (3, Some(7)));
        assert_eq!(index_range(&(3..=7)), (3, Some(8)));
        assert_eq!(index_range(&(3..)), (3, None));
        assert_eq!(index_range(&(..)), (0, None));
        assert_eq!(index_range(&(..=u64::MAX)), (0, None));
    }
}
