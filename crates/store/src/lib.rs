//! Lockstep's storage for openraft 0.9 (storage v2): the Raft log, the
//! replicated queue state machine, and its snapshots.
//!
//! One RocksDB instance holds four column families, so the log and the state
//! machine share one write-ahead log and one fsync orders them both:
//!
//! | column family | keys | values |
//! |---|---|---|
//! | `logs` | log index, `u64` big-endian | an [`Entry`](lockstep_types::Entry) |
//! | `meta` | `vote`, `committed`, `last_purged` | a vote or log id |
//! | `blobs` | queue id BE ++ blob BE | a [`JobBlob`](lockstep_core::JobBlob) |
//! | `sm_meta` | `last_applied`, `last_membership`, `current_snapshot`, `pending_install` | log id, membership, file name |
//!
//! Every value goes through [`lockstep_core::codec`] (a version byte, then
//! bincode). Snapshots are files in `<data_dir>/snapshots/` (see
//! [`snapshot`]). The durability design is in this crate's `README.md`.

#![forbid(unsafe_code)]

mod error;
mod log_store;
mod power_cut;
pub mod snapshot;
mod state_machine;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBRecoveryMode, Options,
    WriteBatch, WriteOptions, DB,
};

pub use error::{run_inline_on_this_thread, StoreError};
pub use lockstep_types::{Batch, BatchReply, NodeId, NodeInfo, TypeConfig};
pub use log_store::LogStore;
pub use state_machine::{LogPayload, StateHandle, StateMachineStore};

pub(crate) const CF_LOGS: &str = "logs";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_BLOBS: &str = "blobs";
pub(crate) const CF_SM_META: &str = "sm_meta";
pub(crate) const COLUMN_FAMILIES: [&str; 4] = [CF_LOGS, CF_META, CF_BLOBS, CF_SM_META];

/// The RocksDB directory inside a node's data directory.
const DB_DIR: &str = "db";
/// The snapshot directory inside a node's data directory.
const SNAPSHOT_DIR: &str = "snapshots";
/// The write-ahead log's size at which RocksDB flushes the column families
/// that keep its oldest file alive. Every write batch touches the small
/// families (`meta`, `sm_meta`) too, and their memtables never fill, so
/// without this bound no log file is ever released: RocksDB's own default
/// (four times the memtables' total) let 1 GB of payload leave 2.1 GB of
/// log files on each node (`scripts/bench-memory`); 128 MiB left 46-126 MB
/// and 64 MiB 48-54 MB. Flushing is what RocksDB does at every full
/// memtable anyway; it syncs the closed log files first, so the prefix
/// property below is kept.
const WAL_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// RocksDB's memtables, all column families together. SPEC 7 allows 150
/// bytes of RAM per pending job, and with RocksDB's defaults (64 MiB per
/// family's memtable, another while one flushes) a node with 1,000,000
/// pending jobs held up to 128 MB of memtables: 128 bytes per job before
/// the core's own. Payloads reach the tables once and are read back by
/// offset, so a smaller memtable only means more, smaller flushes
/// (README, tuning table).
const MEMTABLE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// RocksDB's block cache, shared by every column family. Reads are a
/// fetch's payloads, mostly just written (so still in a memtable or the
/// page cache), and the log tail; the operating system's page cache does
/// the rest.
const BLOCK_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Opens (or creates) the storage of a node in `data_dir`: the Raft log store
/// and the state machine, which share one RocksDB instance.
///
/// The state machine is rebuilt from the latest snapshot only; openraft then
/// re-applies the committed log after it (see `README.md`), so start-up time
/// is bounded by the snapshot interval, not by the total history.
pub async fn open(data_dir: impl AsRef<Path>) -> Result<(LogStore, StateMachineStore), StoreError> {
    let data_dir = data_dir.as_ref().to_path_buf();
    error::blocking(move || open_blocking(&data_dir)).await
}

/// [`open`] for callers outside an async runtime.
pub fn open_blocking(data_dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    open_on(data_dir, None)
}

/// A node's disk kept in memory: RocksDB's in-memory environment, which
/// holds every file the database writes for as long as a clone of it
/// lives. Opening the stores again on the same disk finds what they wrote
/// (a restart); a new disk is a wiped node. For the simulator: the stores
/// on it are the real ones, byte for byte, with no file I/O. A write it
/// took is never lost, except under the planted `ack-before-fsync`, whose
/// unsynced writes a stop loses as a power cut would (`power_cut.rs`).
#[derive(Clone)]
pub struct MemoryDisk {
    env: rocksdb::Env,
    /// The database opened on it last, while any of its stores lives: two
    /// instances over one disk would write over each other's files.
    open: Arc<std::sync::Mutex<std::sync::Weak<DB>>>,
    /// What a power cut would leave of it (`power_cut.rs`).
    last_synced: power_cut::Kept,
}

impl std::fmt::Debug for MemoryDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDisk").finish_non_exhaustive()
    }
}

impl MemoryDisk {
    /// An empty disk.
    pub fn new() -> Result<MemoryDisk, StoreError> {
        let env = rocksdb::Env::mem_env().map_err(StoreError::rocks("create an in-memory disk"))?;
        Ok(MemoryDisk {
            env,
            open: Arc::default(),
            last_synced: power_cut::Kept::default(),
        })
    }
}

/// Opens the stores of a node whose database lives on `disk` (in memory);
/// `data_dir` names it there, and holds its snapshot files on the real file
/// system (a simulated node never builds one unless its policy asks).
///
/// Fails with [`StoreError::StillOpen`] while a store of the previous
/// instance on `disk` lives (a stopped node's last tasks still hold it).
pub fn open_in_memory(
    disk: &MemoryDisk,
    data_dir: &Path,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    let mut open = disk.open.lock().map_err(|_| StoreError::Poisoned)?;
    if open.upgrade().is_some() {
        return Err(StoreError::StillOpen);
    }
    let (log_store, state_machine) = open_on(data_dir, Some(disk))?;
    *open = Arc::downgrade(&log_store.db);
    Ok((log_store, state_machine))
}

fn open_on(
    data_dir: &Path,
    disk: Option<&MemoryDisk>,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    std::fs::create_dir_all(data_dir)
        .map_err(StoreError::io(format!("create {}", data_dir.display())))?;
    let db = Arc::new(open_db(&data_dir.join(DB_DIR), disk.map(|d| &d.env))?);
    match disk {
        // The stop before this open was a power cut: what it lost goes
        // before any store reads the database.
        Some(disk) => power_cut::restart(&db, &disk.last_synced)
            .map_err(StoreError::rocks("undo the writes a power cut lost"))?,
        None if planted_ack_before_fsync() => flush_wal_every_second(Arc::downgrade(&db)),
        None => {}
    }
    let log_store = LogStore::new(db.clone())?;
    let state_machine = StateMachineStore::open(db, data_dir.join(SNAPSHOT_DIR))?;
    Ok((log_store, state_machine))
}

fn open_db(path: &PathBuf, env: Option<&rocksdb::Env>) -> Result<DB, StoreError> {
    let mut opts = Options::default();
    if let Some(env) = env {
        opts.set_env(env);
    }
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // After a crash RocksDB drops a torn last record of the write-ahead log
    // (a write cut off mid-way, whose fsync never returned, so never
    // acknowledged) and keeps every record before it: the prefix property
    // the durability argument of the state machine relies on (README.md).
    // Damage anywhere else stops the open. `PointInTime`, used before,
    // silently dropped everything after a damaged record, acknowledged
    // log entries included, and a node that forgot entries it acknowledged
    // may vote a leader that lacks committed ones.
    opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    // Check every table file's checksums and sizes when opening, so a
    // damaged one stops the node at start rather than at some later read.
    opts.set_paranoid_checks(true);
    opts.set_max_total_wal_size(WAL_BYTES_MAX);
    if planted_ack_before_fsync() && env.is_none() {
        // Planted bug (tests only): write-ahead log records wait in
        // RocksDB's buffer until a flush, so a kill loses the unflushed
        // tail as an operating-system crash would lose an unsynced one. On
        // a simulated disk, `power_cut` does this instead.
        opts.set_manual_wal_flush(true);
    }
    // Bounded memory (SPEC 7): one cap for all families' memtables
    // together, and one block cache shared by all. Each family's own
    // memtable is at most half the cap, so one busy family (the log under
    // enqueue load) cannot hold the whole budget between flushes.
    opts.set_db_write_buffer_size(MEMTABLE_BYTES_MAX);
    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let cfs = COLUMN_FAMILIES.iter().map(|name| {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let mut cf = Options::default();
        cf.set_block_based_table_factory(&table);
        cf.set_write_buffer_size(MEMTABLE_BYTES_MAX / 2);
        ColumnFamilyDescriptor::new(*name, cf)
    });
    DB::open_cf_descriptors(&opts, path, cfs).map_err(StoreError::rocks(format!(
        "open the database at {}",
        path.display()
    )))
}

/// Whether the planted "ack before fsync" bug is on (tests only; always
/// false without the `planted-bugs` feature).
pub(crate) fn planted_ack_before_fsync() -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        lockstep_core::planted::active(lockstep_core::planted::Bug::AckBeforeFsync)
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        false
    }
}

/// Writes `batch` and syncs it, with every write before it: what a node
/// must find again after a power cut (an entry it acknowledged, a vote).
pub(crate) fn write_synced(db: &DB, batch: WriteBatch) -> Result<(), rocksdb::Error> {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    db.write_opt(batch, &options)?;
    power_cut::synced(db);
    Ok(())
}

/// Writes `batch` without a sync: it survives a crash only with a later
/// synced write ([`write_synced`]), as RocksDB recovers a prefix of its one
/// write-ahead log.
pub(crate) fn write_unsynced(db: &DB, batch: WriteBatch) -> Result<(), rocksdb::Error> {
    power_cut::before_unsynced(db)?;
    db.write(batch)
}

/// Whether the planted "lose payload" bug is on: payload reads find
/// nothing (tests only; always false without the `planted-bugs` feature).
pub(crate) fn planted_lose_payload() -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        lockstep_core::planted::active(lockstep_core::planted::Bug::LosePayload)
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        false
    }
}

/// How often the planted bug's background thread flushes and syncs the
/// write-ahead log.
const PLANTED_WAL_FLUSH_MS: u64 = 1_000;

/// The planted bug's "fsync every second": a thread that ends when the
/// database is dropped.
fn flush_wal_every_second(db: std::sync::Weak<DB>) {
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(PLANTED_WAL_FLUSH_MS));
        match db.upgrade() {
            Some(db) => {
                let _ = db.flush_wal(true);
            }
            None => return,
        }
    });
}

/// The handle of a column family that [`open_db`] created.
pub(crate) fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a ColumnFamily, StoreError> {
    db.cf_handle(name)
        .ok_or(StoreError::MissingColumnFamily(name))
}

/// The key of a log entry: big-endian, so RocksDB's byte order is index
/// order and a range scan reads entries in sequence.
pub(crate) fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The key of a payload: queue id then blob id, both big-endian, so the
/// payloads of one queue are one contiguous key range.
pub(crate) fn blob_key(queue_id: u64, blob: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&queue_id.to_be_bytes());
    key[8..].copy_from_slice(&blob.to_be_bytes());
    key
}

/// The exclusive end of the key range of one queue's payloads: 16-byte keys
/// with that queue's prefix all sort before it, the next queue's after it.
pub(crate) fn blob_queue_end(queue_id: u64) -> [u8; 17] {
    let mut key = [0xffu8; 17];
    key[..8].copy_from_slice(&queue_id.to_be_bytes());
    key[16] = 0;
    key
}

/// Failpoints the chaos harness turns on and off while a node runs (test
/// builds only: the `planted-bugs` feature turns on `fail/failpoints`).
#[cfg(feature = "planted-bugs")]
pub mod failpoints {
    use std::path::PathBuf;
    use std::time::Duration;

    /// How often the failpoints file is read again.
    pub const FAILPOINTS_POLL_MS: u64 = 100;

    /// Reads `path` every [`FAILPOINTS_POLL_MS`] for as long as the process
    /// runs, and configures the failpoints it lists, one `name=actions` per
    /// line in the `fail` crate's syntax (`log-append=sleep(200)`); a name
    /// no longer listed is turned off. A missing file turns every one off.
    pub fn watch(path: PathBuf) {
        let spawned = std::thread::Builder::new()
            .name("failpoints".into())
            .spawn(move || {
                let mut last = String::new();
                let mut names: Vec<String> = Vec::new();
                loop {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    if text != last {
                        for name in names.drain(..) {
                            fail::remove(name);
                        }
                        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                            let Some((name, actions)) = line.split_once('=') else {
                                tracing::warn!(line, "failpoints: not `name=actions`");
                                continue;
                            };
                            match fail::cfg(name.trim(), actions.trim()) {
                                Ok(()) => names.push(name.trim().to_string()),
                                Err(e) => tracing::warn!(line, error = e, "failpoints"),
                            }
                        }
                        tracing::warn!(failpoints = %text.trim(), "failpoints changed");
                        last = text;
                    }
                    std::thread::sleep(Duration::from_millis(FAILPOINTS_POLL_MS));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "failpoints: cannot start the watcher");
        }
    }
}
