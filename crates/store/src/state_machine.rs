//! The replicated queue state machine: [`lockstep_core::State`] in memory,
//! its payloads in the `blobs` column family, its snapshots on disk.
//!
//! See the crate's `README.md` for the durability design. In short:
//! - `apply` writes every effect of a run of entries, with `last_applied` and
//!   `last_membership`, in ONE unsynced RocksDB batch;
//! - the core state is persisted only in snapshots; on open it is loaded from
//!   the latest one, and openraft re-applies the committed log after it.
//!
//! Locking, so that no async task ever waits on work proportional to the
//! state (a `Cluster.Status` digest of a million jobs takes about 250 ms in
//! a release build, seconds in a debug one):
//! - The applied state is behind a std `RwLock`. Its write lock is held
//!   only by `apply` (O(batch)) and by the swap at the end of an install
//!   (O(1); the old state is dropped after the lock is released).
//! - Whole-state work (the Status digest, a snapshot's capture, the
//!   payload load of an install) runs on a blocking thread holding the
//!   *gate*, a mutex every writer takes before the write lock, and at most
//!   a read lock. While it runs no writer can be waiting on the `RwLock`,
//!   so the lock's preference for writers never makes a reader queue
//!   behind it: async readers get their read lock at once. Applies wait
//!   for the gate instead, on their own blocking thread; openraft awaits
//!   them without stopping heartbeats.
//! - The Status digest is cached by applied index and computed once per
//!   index, one computation at a time ([`StateHandle::applied_digest_cached`]).
//! - Precheck reads a copy of each queue's configuration published through
//!   `arc-swap` after every apply that changes one: no lock at all.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use arc_swap::ArcSwap;
use lockstep_core::{codec, Command, Configs, Effect, JobBlob, QueueId, Stamp, State};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use rocksdb::{WriteBatch, DB};
use tokio::sync::oneshot;

use crate::error::{blocking, Result, StoreError};
use crate::log_store::{read_value, KEY_LAST_APPLIED};
use crate::snapshot::{
    read_snapshot, read_snapshot_from, sync_dir, unique_id, unique_name, Payloads, SnapshotFile,
    SnapshotWriter, SUFFIX_BUILDING, SUFFIX_RECEIVING, SUFFIX_SENDING, SUFFIX_SNAPSHOT,
};
use crate::{blob_key, blob_queue_end, cf, CF_BLOBS, CF_SM_META};
use lockstep_types::{
    BatchReply, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

const KEY_LAST_MEMBERSHIP: &[u8] = b"last_membership";
/// File name of the snapshot the state machine restarts from.
const KEY_CURRENT_SNAPSHOT: &[u8] = b"current_snapshot";
/// File name of a snapshot whose installation began but may not have ended.
const KEY_PENDING_INSTALL: &[u8] = b"pending_install";
/// Bytes of payload records per write batch while installing a snapshot:
/// large enough to amortise the write, small enough to bound memory.
const INSTALL_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The applied state, behind one lock so readers see the core state and the
/// log position it matches together.
#[derive(Debug)]
struct Applied {
    core: State,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

/// An applied log id and the digest of the state it left.
type AppliedDigest = (Option<LogId>, u128);

/// A cheap, cloneable read handle on the applied state, for the server's
/// queries and payload reads.
///
/// Writers hold the lock across the RocksDB write of an applied batch, so a
/// reader that finds a job in the core state also finds its payload. See
/// the module's documentation for what may hold the lock, and how long.
#[derive(Clone)]
pub struct StateHandle {
    applied: Arc<RwLock<Applied>>,
    /// Taken before the write lock by every writer, and by whole-state
    /// work before its read lock: while the gate is held, no writer waits
    /// on `applied`, so readers never queue behind a writer that waits
    /// behind a long read.
    gate: Arc<Mutex<()>>,
    /// The Status digest of the last applied index it was computed for.
    /// Read and written under the gate by the computation itself, so a
    /// caller that gave up (a cancelled Status) loses nothing and the next
    /// one finds it.
    digest: Arc<Mutex<Option<AppliedDigest>>>,
    /// One digest computation at a time from async code: callers that
    /// arrive meanwhile wait here, holding no thread, then find the cache.
    digest_flight: Arc<tokio::sync::Mutex<()>>,
    /// Each queue's configuration as of the last apply that changed one.
    configs: Arc<ArcSwap<Configs>>,
    /// How much payload the log has carried since the snapshots, so the
    /// node can snapshot and purge by bytes ([`StateHandle::log_payload`]).
    log_bytes: Arc<Mutex<LogBytes>>,
    db: Arc<DB>,
}

/// Snapshots taken, at most this many remembered: purging by bytes needs
/// only the few most recent.
const SNAPSHOT_MARKS_MAX: usize = 64;

/// Payload bytes applied since the store opened, and where each recent
/// snapshot was captured: (log index, payload bytes applied by then).
#[derive(Debug, Default)]
struct LogBytes {
    applied: u64,
    marks: std::collections::VecDeque<(u64, u64)>,
}

/// What the log holds in payload, for snapshotting and purging by bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogPayload {
    /// Payload bytes applied since the last snapshot was captured (since
    /// the store opened, if none was).
    pub since_snapshot: u64,
    /// The newest snapshot index with at least the asked-for payload bytes
    /// applied after it: purging the log up to it keeps that much.
    pub purge_upto: Option<u64>,
}

impl fmt::Debug for StateHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateHandle")
            .field("db", &self.db.path())
            .finish_non_exhaustive()
    }
}

impl StateHandle {
    fn read_guard(&self) -> Result<RwLockReadGuard<'_, Applied>> {
        self.applied.read().map_err(|_| StoreError::Poisoned)
    }

    fn write_guard(&self) -> Result<RwLockWriteGuard<'_, Applied>> {
        self.applied.write().map_err(|_| StoreError::Poisoned)
    }

    /// The gate: taken by every writer before the write lock, and by
    /// whole-state work before its read lock. Never on an async task.
    fn gate(&self) -> Result<MutexGuard<'_, ()>> {
        self.gate.lock().map_err(|_| StoreError::Poisoned)
    }

    fn new(applied: Applied, db: Arc<DB>) -> StateHandle {
        let configs = applied.core.configs();
        StateHandle {
            applied: Arc::new(RwLock::new(applied)),
            gate: Arc::new(Mutex::new(())),
            digest: Arc::new(Mutex::new(None)),
            digest_flight: Arc::new(tokio::sync::Mutex::new(())),
            configs: Arc::new(ArcSwap::from_pointee(configs)),
            log_bytes: Arc::new(Mutex::new(LogBytes::default())),
            db,
        }
    }

    /// The payload bytes applied since the last snapshot, and the newest
    /// snapshot index that leaves at least `kept` payload bytes of log
    /// after it.
    pub fn log_payload(&self, kept: u64) -> Result<LogPayload> {
        let log = self.log_bytes.lock().map_err(|_| StoreError::Poisoned)?;
        let last = log.marks.back().map_or(0, |&(_, bytes)| bytes);
        let purge_upto = log
            .marks
            .iter()
            .rev()
            .find(|&&(_, bytes)| log.applied - bytes >= kept)
            .map(|&(index, _)| index);
        Ok(LogPayload {
            since_snapshot: log.applied - last,
            purge_upto,
        })
    }

    /// Runs a query on the applied core state. Keep `f` O(small) (a few
    /// lookups, a bounded page): it may run on an async task, and while it
    /// holds the read lock an apply waits, and readers behind that apply.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> Result<R> {
        Ok(f(&self.read_guard()?.core))
    }

    /// [`State::precheck`] against each queue's configuration as of the
    /// last apply that changed one, read without any lock. It may trail the
    /// applied state by the apply in progress, as a read under the lock
    /// would trail the entry being committed; `apply` checks again.
    pub fn precheck(&self, command: &Command) -> std::result::Result<(), lockstep_core::Error> {
        self.configs.load().precheck(command)
    }

    /// The log id of the last applied entry.
    pub fn last_applied(&self) -> Result<Option<LogId>> {
        Ok(self.read_guard()?.last_applied)
    }

    /// The membership as of the last applied membership entry.
    pub fn membership(&self) -> Result<StoredMembership> {
        Ok(self.read_guard()?.last_membership.clone())
    }

    /// The digest of the core state, for comparing replicas. O(state) and
    /// blocking: see [`StateHandle::applied_digest`].
    pub fn digest(&self) -> Result<u128> {
        Ok(self.applied_digest()?.1)
    }

    /// The last applied log id and the digest of the state it left, read
    /// under one lock. Two reads would let an apply slip in between and
    /// pair a digest with the index after it: a false divergence when
    /// replicas are compared at one index.
    ///
    /// O(state), and it blocks the calling thread (applies wait for it):
    /// call it from a blocking thread or a test, or use
    /// [`StateHandle::applied_digest_cached`] from async code.
    pub fn applied_digest(&self) -> Result<AppliedDigest> {
        let _gate = self.gate()?;
        let applied = self.read_guard()?;
        if let Some(pair) = self.cached_digest(applied.last_applied)? {
            return Ok(pair);
        }
        let pair = (applied.last_applied, applied.core.digest());
        *self.digest.lock().map_err(|_| StoreError::Poisoned)? = Some(pair);
        Ok(pair)
    }

    /// [`StateHandle::applied_digest`] for async code: computed on a
    /// blocking thread at most once per applied index, one computation at
    /// a time, and shared by every caller that asks while it runs. The
    /// pair is of one state, and its index is at least the one applied
    /// when this was called.
    pub async fn applied_digest_cached(&self) -> Result<AppliedDigest> {
        let _flight = self.digest_flight.lock().await;
        if let Some(pair) = self.cached_digest(self.last_applied()?)? {
            return Ok(pair);
        }
        let handle = self.clone();
        blocking(move || handle.applied_digest()).await
    }

    /// The cached digest, if it is of the state at `last_applied`.
    fn cached_digest(&self, last_applied: Option<LogId>) -> Result<Option<AppliedDigest>> {
        let cached = *self.digest.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(cached.filter(|pair| pair.0 == last_applied))
    }

    /// The last applied log id and the cluster time the core had reached
    /// with it, read under one lock. A new leader's cluster clock starts
    /// from this time once the log id is of its own term (every entry of
    /// earlier leaders is then applied), so it never stamps below a time
    /// an earlier leader stamped.
    pub fn applied_clock(&self) -> Result<(Option<LogId>, u64)> {
        let applied = self.read_guard()?;
        Ok((applied.last_applied, applied.core.clock_ms()))
    }

    /// The stored payload of a job, if it still exists.
    pub fn get_blob(&self, queue_id: QueueId, blob: u64) -> Result<Option<JobBlob>> {
        if crate::planted_lose_payload() {
            return Ok(None);
        }
        let key = blob_key(queue_id, blob);
        let value = self
            .db
            .get_pinned_cf(cf(&self.db, CF_BLOBS)?, key)
            .map_err(StoreError::rocks(format!("read payload {queue_id}/{blob}")))?;
        value
            .map(|v| {
                codec::decode(&v).map_err(StoreError::codec(format!(
                    "decode payload {queue_id}/{blob}"
                )))
            })
            .transpose()
    }
}

impl StateHandle {
    /// Counts the stored payloads by scanning them all: a diagnostic for
    /// tests and operators, not for a request path.
    pub fn blob_count(&self) -> Result<u64> {
        let mut iter = self.db.raw_iterator_cf(cf(&self.db, CF_BLOBS)?);
        iter.seek_to_first();
        let mut count = 0;
        while iter.valid() {
            count += 1;
            iter.next();
        }
        iter.status()
            .map_err(StoreError::rocks("count the stored payloads"))?;
        Ok(count)
    }
}

/// The published snapshot the state machine would restart from.
#[derive(Clone, Debug)]
struct Current {
    file_name: String,
    meta: SnapshotMeta,
}

/// The snapshot directory and which file in it is current. The mutex
/// serialises publishing: a snapshot built concurrently with an install must
/// not replace a newer installed one.
#[derive(Debug)]
struct Snapshots {
    dir: PathBuf,
    current: Mutex<Option<Current>>,
    /// The file written to send the current snapshot, by snapshot id. One
    /// per snapshot, written once: openraft resends a snapshot under the
    /// same id from offset 0 into the receiver's file without truncating
    /// it, so the bytes of one id must never change; and every follower
    /// behind is sent the one copy. Taken across the write, so a second
    /// send waits for the first file rather than writing another.
    sending: Mutex<Option<(String, PathBuf)>>,
}

impl Snapshots {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Option<Current>>> {
        self.current.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Forgets the file that sends a snapshot no longer current. A send
    /// still reading it keeps it open; its name goes now.
    fn forget_sending(&self) {
        if let Ok(mut sending) = self.sending.lock() {
            if let Some((_, path)) = sending.take() {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn path(&self, file_name: &str) -> PathBuf {
        self.dir.join(file_name)
    }

    /// Whether `path` is a file this store is receiving (or received).
    fn received(&self, path: &Path) -> bool {
        path.parent() == Some(self.dir.as_path())
            && path.extension().and_then(|s| s.to_str()) == Some(SUFFIX_RECEIVING)
    }

    /// Removes every file of the directory but `keep`. Files being built or
    /// received belong to tasks that may still run, so they go only when
    /// `temps` says no such task can exist (on open, or for received files
    /// once an install ended the one receive openraft runs at a time).
    fn remove_others(&self, keep: Option<&str>, temps: &[&str]) {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list snapshots");
                return;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if Some(name.as_ref()) == keep {
                continue;
            }
            let suffix = path.extension().and_then(|s| s.to_str()).unwrap_or("");
            if suffix == SUFFIX_SNAPSHOT || temps.contains(&suffix) {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove an old snapshot");
                }
            }
        }
    }
}

/// The openraft state machine of a node.
pub struct StateMachineStore {
    handle: StateHandle,
    snapshots: Arc<Snapshots>,
}

impl fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("handle", &self.handle)
            .field("snapshots", &self.snapshots.dir)
            .finish()
    }
}

fn put_value<T: serde::Serialize>(
    batch: &mut WriteBatch,
    db: &DB,
    key: &[u8],
    value: &T,
) -> Result<()> {
    let bytes = codec::encode(value).map_err(StoreError::codec(format!(
        "encode sm_meta/{}",
        String::from_utf8_lossy(key)
    )))?;
    batch.put_cf(cf(db, CF_SM_META)?, key, bytes);
    Ok(())
}

/// Stored as a plain log id, absent for "nothing applied", so the log store
/// reads it with the same type as its committed id.
fn put_last_applied(batch: &mut WriteBatch, db: &DB, last_applied: Option<LogId>) -> Result<()> {
    match last_applied {
        Some(log_id) => put_value(batch, db, KEY_LAST_APPLIED, &log_id),
        None => {
            batch.delete_cf(cf(db, CF_SM_META)?, KEY_LAST_APPLIED);
            Ok(())
        }
    }
}

/// Adds the payload writes of `effects` to `batch`, in order, and returns
/// the bytes of payload records written.
fn put_effects(batch: &mut WriteBatch, db: &DB, effects: &[Effect]) -> Result<u64> {
    let blobs = cf(db, CF_BLOBS)?;
    let mut written = 0u64;
    for effect in effects {
        match effect {
            Effect::PutBlob {
                queue_id,
                blob,
                data,
            } => {
                let value = codec::encode(data).map_err(StoreError::codec(format!(
                    "encode payload {queue_id}/{blob}"
                )))?;
                written += value.len() as u64;
                batch.put_cf(blobs, blob_key(*queue_id, *blob), value);
            }
            Effect::DeleteBlob { queue_id, blob } => {
                batch.delete_cf(blobs, blob_key(*queue_id, *blob));
            }
            Effect::DropQueue { queue_id } => {
                batch.delete_range_cf(
                    blobs,
                    blob_key(*queue_id, 0).as_slice(),
                    &blob_queue_end(*queue_id),
                );
            }
        }
    }
    Ok(written)
}

/// Applies `entries` to the core and makes their effects in one batch.
fn apply_blocking(handle: &StateHandle, entries: Vec<Entry>) -> Result<Vec<BatchReply>> {
    let db = &handle.db;
    let _gate = handle.gate()?;
    let mut applied = handle.write_guard()?;
    let mut effects = Vec::new();
    let mut replies = Vec::with_capacity(entries.len());
    let mut configs_changed = false;
    for entry in entries {
        let log_id = entry.log_id;
        applied.last_applied = Some(log_id);
        match entry.payload {
            EntryPayload::Blank => replies.push(BatchReply::default()),
            EntryPayload::Normal(batch) => {
                let stamp = Stamp {
                    index: log_id.index,
                    time_ms: batch.time_ms,
                };
                let results = batch
                    .commands
                    .into_iter()
                    .map(|command| {
                        configs_changed |= command.changes_configs();
                        applied.core.apply(stamp, command, &mut effects)
                    })
                    .collect();
                replies.push(BatchReply(results));
            }
            EntryPayload::Membership(membership) => {
                applied.last_membership = StoredMembership::new(Some(log_id), membership);
                replies.push(BatchReply::default());
            }
        }
    }
    let mut batch = WriteBatch::default();
    let payload_bytes = put_effects(&mut batch, db, &effects)?;
    put_last_applied(&mut batch, db, applied.last_applied)?;
    put_value(
        &mut batch,
        db,
        KEY_LAST_MEMBERSHIP,
        &applied.last_membership,
    )?;
    // Not synced, and still durable enough:
    // - every entry applied here is already synced in the `logs` column
    //   family of the same database, and a lost apply batch is rebuilt by
    //   re-applying the log on restart (README.md);
    // - RocksDB recovers a prefix of its one write-ahead log, so this batch
    //   survives a crash only with every write before it (the entries, the
    //   committed id), and whole or not at all.
    // The lock is held across the write so a reader never sees a job whose
    // payload is not yet stored. On an error the in-memory state is ahead of
    // the database; openraft stops the node on any storage error, and a
    // restart rebuilds both from the snapshot and the log.
    crate::write_unsynced(db, batch).map_err(StoreError::rocks("write the applied batch"))?;
    if let Ok(mut log) = handle.log_bytes.lock() {
        log.applied += payload_bytes;
    }
    if configs_changed {
        // O(queues), and only after a command that creates, changes or
        // deletes a queue.
        handle.configs.store(Arc::new(applied.core.configs()));
    }
    Ok(replies)
}

/// Builds a snapshot file of the state as it is when this is called and
/// publishes it, unless a newer snapshot was published meanwhile.
///
/// `taken` is signalled once the consistent view is captured (the core
/// bytes under the read lock, and a RocksDB snapshot of the payloads), so
/// the caller can let applies run on while the file is written.
fn build_blocking(
    handle: &StateHandle,
    snapshots: &Snapshots,
    taken: oneshot::Sender<()>,
) -> Result<(SnapshotMeta, PathBuf, std::fs::File)> {
    let db = &handle.db;
    let (meta, core, bounds) = {
        // O(state) under the read lock, with the gate held so no writer
        // waits on the lock meanwhile (see the module's documentation).
        let _gate = handle.gate()?;
        let applied = handle.read_guard()?;
        let last_applied = applied.last_applied;
        let snapshot_id = match last_applied {
            Some(id) => format!(
                "{}-{}-{}-{}",
                id.leader_id.term,
                id.leader_id.node_id,
                id.index,
                unique_id()
            ),
            None => format!("empty-{}", unique_id()),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: applied.last_membership.clone(),
            snapshot_id,
        };
        let bounds = applied.core.payload_bounds();
        // Under the gate, so no apply counts bytes meanwhile: the mark
        // matches the captured index.
        if let (Some(id), Ok(mut log)) = (last_applied, handle.log_bytes.lock()) {
            let applied_bytes = log.applied;
            log.marks.push_back((id.index, applied_bytes));
            if log.marks.len() > SNAPSHOT_MARKS_MAX {
                log.marks.pop_front();
            }
        }
        (meta, applied.core.snapshot(), bounds)
    };
    // The receiver may be gone if the builder was dropped; the build goes on.
    let _ = taken.send(());
    // The bytes are at hand: the Status digest of this index costs one
    // hash now instead of a second encoding later. Applies may have gone
    // on since the capture; a newer cached digest is kept.
    if let Ok(mut cached) = handle.digest.lock() {
        if cached.is_none_or(|(index, _)| index < meta.last_log_id) {
            *cached = Some((meta.last_log_id, State::digest_of_snapshot(&core)));
        }
    }

    // The core only: the payloads are in `blobs` already, and are copied
    // into a file only to send one ([`transfer_blocking`]).
    let temp = snapshots.path(&unique_name("", SUFFIX_BUILDING));
    let written = SnapshotWriter::create(temp.clone(), &meta, &core, Payloads::new(false, bounds))
        .and_then(SnapshotWriter::finish);
    drop(core);
    let temp = match written {
        Ok(path) => path,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };

    let mut current = snapshots.lock()?;
    if let Some(cur) = current.as_ref() {
        if cur.meta.last_log_id > meta.last_log_id {
            // An installed snapshot overtook this build: keep the newer one,
            // and report it, since it covers everything this one would.
            let _ = std::fs::remove_file(&temp);
            let path = snapshots.path(&cur.file_name);
            let file = open_for_read(&path)?;
            return Ok((cur.meta.clone(), path, file));
        }
    }
    let file_name = publish_name(&meta);
    let path = publish(snapshots, &temp, &file_name)?;
    let mut batch = WriteBatch::default();
    put_value(&mut batch, db, KEY_CURRENT_SNAPSHOT, &file_name)?;
    crate::write_synced(db, batch).map_err(StoreError::rocks("record the current snapshot"))?;
    *current = Some(Current {
        file_name: file_name.clone(),
        meta: meta.clone(),
    });
    snapshots.remove_others(Some(&file_name), &[]);
    let file = open_for_read(&path)?;
    // Not under `current`: a send being written holds `sending` for as
    // long as it takes, and openraft's worker asks for `current`.
    drop(current);
    snapshots.forget_sending();
    Ok((meta, path, file))
}

/// The file that sends snapshot `current` (open from its start, at `path`)
/// to a follower: its header and core, then every payload stored when the
/// file was written that its state holds (see the `snapshot` module).
/// Written at the first send of a snapshot and reused by every later one
/// ([`Snapshots::sending`]).
fn transfer_blocking(
    db: &DB,
    snapshots: &Snapshots,
    current: std::fs::File,
    path: &Path,
    meta: &SnapshotMeta,
) -> Result<std::fs::File> {
    let mut sending = snapshots.sending.lock().map_err(|_| StoreError::Poisoned)?;
    if let Some((id, written)) = sending.as_ref() {
        if *id == meta.snapshot_id {
            return open_for_read(written);
        }
    }
    let contents = read_snapshot_from(current, path, true, |_, _| Ok(()))?;
    let core = contents
        .core
        .ok_or_else(|| StoreError::bad_snapshot(path, "the core state was not read"))?;
    let temp = snapshots.path(&unique_name("", SUFFIX_BUILDING));
    let written = (|| {
        let payloads = Payloads::new(true, contents.payloads.bounds.clone());
        let mut writer = SnapshotWriter::create(temp.clone(), &contents.meta, &core, payloads)?;
        // An iterator reads one consistent view of the family.
        let mut iter = db.raw_iterator_cf(cf(db, CF_BLOBS)?);
        iter.seek_to_first();
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if contents.payloads.holds(key) {
                writer.blob(key, value)?;
            }
            iter.next();
        }
        iter.status()
            .map_err(StoreError::rocks("scan the payloads of a snapshot to send"))?;
        writer.finish()
    })();
    let temp = match written {
        Ok(temp) => temp,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };
    let name = snapshots.path(&unique_name("", SUFFIX_SENDING));
    std::fs::rename(&temp, &name).map_err(StoreError::io(format!(
        "rename {} to {}",
        temp.display(),
        name.display()
    )))?;
    if let Some((_, old)) = sending.replace((meta.snapshot_id.clone(), name.clone())) {
        let _ = std::fs::remove_file(old);
    }
    open_for_read(&name)
}

fn open_for_read(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(StoreError::io(format!("open {}", path.display())))
}

/// The name a snapshot is published under: its last index first, so a
/// directory listing reads in log order.
fn publish_name(meta: &SnapshotMeta) -> String {
    let index = meta.last_log_id.map(|id| id.index).unwrap_or(0);
    unique_name(&format!("{index:020}-"), SUFFIX_SNAPSHOT)
}

/// Renames a complete, fsynced file to its published name and fsyncs the
/// directory, so the name survives a crash only with the whole file behind it.
fn publish(snapshots: &Snapshots, temp: &Path, file_name: &str) -> Result<PathBuf> {
    let path = snapshots.path(file_name);
    std::fs::rename(temp, &path).map_err(StoreError::io(format!(
        "rename {} to {}",
        temp.display(),
        path.display()
    )))?;
    sync_dir(&snapshots.dir)?;
    Ok(path)
}

/// Reads and checks a whole snapshot file without acting on it: the
/// checksum, every length, every payload record and the core state's own
/// invariants.
fn verify(path: &Path) -> Result<(SnapshotMeta, State, Payloads)> {
    let contents = read_snapshot(path, true, |key, value| {
        codec::decode::<JobBlob>(value).map(drop).map_err(|e| {
            StoreError::bad_snapshot(path, format!("payload {key:?} does not decode: {e}"))
        })
    })?;
    let core = contents
        .core
        .ok_or_else(|| StoreError::bad_snapshot(path, "the core state was not read"))?;
    let state = State::restore(&core)
        .map_err(|e| StoreError::bad_snapshot(path, format!("the core state is refused: {e}")))?;
    if state.last_index() > contents.meta.last_log_id.map(|id| id.index).unwrap_or(0) {
        return Err(StoreError::bad_snapshot(
            path,
            format!(
                "the core state is at index {} but the snapshot claims to end at {:?}",
                state.last_index(),
                contents.meta.last_log_id
            ),
        ));
    }
    Ok((contents.meta, state, contents.payloads))
}

/// Replaces the whole `blobs` column family with the payloads of a verified
/// snapshot file, in bounded unsynced batches; the synced batch that
/// finishes the install (see [`finish_install`]) makes them durable.
fn load_blobs(db: &DB, path: &Path) -> Result<()> {
    let blobs = cf(db, CF_BLOBS)?;
    let mut batch = WriteBatch::default();
    // Every key is 16 bytes, so [empty, 17 × 0xff) covers them all.
    batch.delete_range_cf(blobs, [].as_slice(), [0xffu8; 17].as_slice());
    let mut bytes = 0usize;
    read_snapshot(path, false, |key, value| {
        batch.put_cf(blobs, key, value);
        bytes += key.len() + value.len();
        if bytes >= INSTALL_BATCH_BYTES_MAX {
            crate::write_unsynced(db, std::mem::take(&mut batch)).map_err(StoreError::rocks(
                "write the payloads of an installed snapshot",
            ))?;
            bytes = 0;
        }
        Ok(())
    })?;
    crate::write_unsynced(db, batch).map_err(StoreError::rocks(
        "write the payloads of an installed snapshot",
    ))
}

/// The synced batch that ends an install: the new position, the current
/// snapshot, and the end of the pending marker, all at once.
fn finish_install(db: &DB, file_name: &str, meta: &SnapshotMeta) -> Result<()> {
    let mut batch = WriteBatch::default();
    put_last_applied(&mut batch, db, meta.last_log_id)?;
    put_value(&mut batch, db, KEY_LAST_MEMBERSHIP, &meta.last_membership)?;
    put_value(&mut batch, db, KEY_CURRENT_SNAPSHOT, &file_name)?;
    batch.delete_cf(cf(db, CF_SM_META)?, KEY_PENDING_INSTALL);
    crate::write_synced(db, batch).map_err(StoreError::rocks("record the installed snapshot"))
}

/// Installs a received snapshot file, crash-atomically:
///
/// 1. the file is made ours (renamed if we received it, else copied), fsynced
///    and verified, then published under its final name;
/// 2. a synced `pending_install` marker names it;
/// 3. the `blobs` column family is replaced from it;
/// 4. one synced batch sets the position and the current snapshot and clears
///    the marker; then the in-memory state is swapped.
///
/// A crash before 2 leaves the old state (the stray file is removed on open);
/// a crash between 2 and 4 is finished on open from the marker ([`StateMachineStore::open`]).
fn install_blocking(
    handle: &StateHandle,
    snapshots: &Snapshots,
    source: &Path,
    meta: &SnapshotMeta,
) -> Result<()> {
    let db = &handle.db;
    if !snapshots.received(source) {
        return Err(StoreError::Inconsistent(format!(
            "{} is not a file this store received",
            source.display()
        )));
    }
    let received = source.to_path_buf();
    let (file_meta, state, payloads) = match verify(&received) {
        Ok(verified) => verified,
        Err(e) => {
            let _ = std::fs::remove_file(&received);
            return Err(e);
        }
    };
    if !payloads.included {
        // A node's own core-only snapshot: installing it would drop every
        // payload. Only files written for sending carry them.
        let _ = std::fs::remove_file(&received);
        return Err(StoreError::bad_snapshot(
            &received,
            "the file holds the core state without its payloads",
        ));
    }
    if file_meta != *meta {
        let _ = std::fs::remove_file(&received);
        return Err(StoreError::bad_snapshot(
            &received,
            format!("the file describes snapshot {file_meta} but openraft installs {meta}"),
        ));
    }

    let mut current = snapshots.lock()?;
    let file_name = publish_name(meta);
    publish(snapshots, &received, &file_name)?;
    let mut batch = WriteBatch::default();
    put_value(&mut batch, db, KEY_PENDING_INSTALL, &file_name)?;
    crate::write_synced(db, batch)
        .map_err(StoreError::rocks("mark a snapshot install as pending"))?;

    // The payloads are replaced with the gate held (no apply can run) but
    // not the write lock: loading them is O(state), and a reader must never
    // wait on that. Until the swap below, a reader of this follower's
    // applied state may therefore find a job whose payload is gone, or not
    // yet there: installs are rare (a lagging or wiped follower), its state
    // is stale until the install ends anyway, and requests that need
    // payloads (fetch) run on the leader, which never installs.
    let gate = handle.gate()?;
    load_blobs(db, &snapshots.path(&file_name))?;
    finish_install(db, &file_name, meta)?;
    let configs = Arc::new(state.configs());
    let old = {
        let mut applied = handle.write_guard()?;
        handle.configs.store(configs);
        std::mem::replace(
            &mut *applied,
            Applied {
                core: state,
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
            },
        )
    };
    drop(gate);
    // Dropping a whole state is O(state) too: after the lock.
    drop(old);
    *current = Some(Current {
        file_name: file_name.clone(),
        meta: meta.clone(),
    });
    snapshots.remove_others(Some(&file_name), &[SUFFIX_RECEIVING]);
    drop(current);
    snapshots.forget_sending();
    Ok(())
}

impl StateMachineStore {
    /// Opens the state machine over `db`, with its snapshots in `dir`.
    pub(crate) fn open(db: Arc<DB>, dir: PathBuf) -> Result<StateMachineStore> {
        cf(&db, CF_BLOBS)?;
        cf(&db, CF_SM_META)?;
        std::fs::create_dir_all(&dir)
            .map_err(StoreError::io(format!("create {}", dir.display())))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let snapshots = Snapshots {
            dir,
            current: Mutex::new(None),
            sending: Mutex::new(None),
        };

        // Finish an install a crash interrupted: its file was published and
        // verified before the marker was written.
        if let Some(file_name) = read_value::<String>(&db, CF_SM_META, KEY_PENDING_INSTALL)? {
            let path = snapshots.path(&file_name);
            if path.exists() {
                tracing::warn!(file = %path.display(), "finishing an interrupted snapshot install");
                let (meta, _, _) = verify(&path)?;
                load_blobs(&db, &path)?;
                finish_install(&db, &file_name, &meta)?;
            } else {
                let mut batch = WriteBatch::default();
                batch.delete_cf(cf(&db, CF_SM_META)?, KEY_PENDING_INSTALL);
                crate::write_synced(&db, batch)
                    .map_err(StoreError::rocks("clear a stale install marker"))?;
            }
        }

        let current: Option<String> = read_value(&db, CF_SM_META, KEY_CURRENT_SNAPSHOT)?;
        let (applied, current) = match current {
            Some(file_name) => {
                let (meta, core, _) = verify(&snapshots.path(&file_name))?;
                let applied = Applied {
                    core,
                    last_applied: meta.last_log_id,
                    last_membership: meta.last_membership.clone(),
                };
                (applied, Some(Current { file_name, meta }))
            }
            None => (
                Applied {
                    core: State::new(),
                    last_applied: None,
                    last_membership: StoredMembership::default(),
                },
                None,
            ),
        };
        // Files being built or received belonged to the previous run.
        snapshots.remove_others(
            current.as_ref().map(|c| c.file_name.as_str()),
            &[SUFFIX_BUILDING, SUFFIX_RECEIVING, SUFFIX_SENDING],
        );
        let persisted: Option<LogId> = read_value(&db, CF_SM_META, KEY_LAST_APPLIED)?;
        tracing::info!(
            snapshot = ?applied.last_applied,
            payloads_applied_up_to = ?persisted,
            "state machine opened from its latest snapshot; openraft re-applies the log after it"
        );
        if let Ok(mut guard) = snapshots.current.lock() {
            *guard = current;
        }
        Ok(StateMachineStore {
            handle: StateHandle::new(applied, db),
            snapshots: Arc::new(snapshots),
        })
    }

    /// A read handle on the applied state, for the rest of the node.
    pub fn handle(&self) -> StateHandle {
        self.handle.clone()
    }

    fn snapshot_error(meta: Option<&SnapshotMeta>, e: StoreError, verb: ErrorVerb) -> StorageError {
        let signature = meta.map(SnapshotMeta::signature);
        e.into_storage(ErrorSubject::Snapshot(signature), verb)
    }
}

/// Builds one snapshot. The view it writes was captured when the builder
/// was made, so applies run on meanwhile.
pub struct SnapshotBuilder {
    job: Option<tokio::task::JoinHandle<Result<(SnapshotMeta, PathBuf, std::fs::File)>>>,
}

impl fmt::Debug for SnapshotBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotBuilder")
            .field("pending", &self.job.is_some())
            .finish()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let err = |e: StoreError| StateMachineStore::snapshot_error(None, e, ErrorVerb::Write);
        let job = self.job.take().ok_or_else(|| {
            err(StoreError::Task(
                "this builder already built its snapshot".into(),
            ))
        })?;
        let (meta, path, file) = job
            .await
            .map_err(|e| err(StoreError::Task(e.to_string())))?
            .map_err(err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile::from_std(path, file)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let handle = self.handle.clone();
        let applied = handle
            .read_guard()
            .map(|a| (a.last_applied, a.last_membership.clone()));
        applied.map_err(|e| e.into_storage(ErrorSubject::StateMachine, ErrorVerb::Read))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchReply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let handle = self.handle.clone();
        blocking(move || apply_blocking(&handle, entries))
            .await
            .map_err(|e| e.into_storage(ErrorSubject::Apply(last), ErrorVerb::Write))
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let handle = self.handle.clone();
        let snapshots = self.snapshots.clone();
        let (taken_tx, taken_rx) = oneshot::channel();
        let job =
            tokio::task::spawn_blocking(move || build_blocking(&handle, &snapshots, taken_tx));
        // Wait until the view is captured: openraft applies more entries as
        // soon as this returns, and they must not leak into this snapshot.
        // An error before the capture drops the sender; `build_snapshot`
        // then reports it.
        let _ = taken_rx.await;
        SnapshotBuilder { job: Some(job) }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let path = self.snapshots.path(&unique_name("", SUFFIX_RECEIVING));
        let file = SnapshotFile::create(&path).await.map_err(|e| {
            Self::snapshot_error(
                None,
                StoreError::io(format!("create {}", path.display()))(e),
                ErrorVerb::Write,
            )
        })?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let err = |e: StoreError| Self::snapshot_error(Some(meta), e, ErrorVerb::Write);
        if !self.snapshots.received(snapshot.path()) {
            // A snapshot handed over whole (openraft's own tests install a
            // store's current snapshot into it): read it through the handle
            // into a received file, since a file written to be sent exists
            // only behind its handle.
            let mut received = self.begin_receiving_snapshot().await?;
            let copied = async {
                use tokio::io::AsyncSeekExt;
                snapshot.seek(std::io::SeekFrom::Start(0)).await?;
                tokio::io::copy(&mut *snapshot, &mut *received).await
            };
            copied.await.map_err(|e| {
                err(StoreError::io(format!(
                    "copy {} to {}",
                    snapshot.path().display(),
                    received.path().display()
                ))(e))
            })?;
            snapshot = received;
        }
        snapshot.sync().await.map_err(|e| {
            err(StoreError::io(format!(
                "fsync {}",
                snapshot.path().display()
            ))(e))
        })?;
        let source = snapshot.path().to_path_buf();
        drop(snapshot);
        let handle = self.handle.clone();
        let snapshots = self.snapshots.clone();
        let owned_meta = meta.clone();
        blocking(move || install_blocking(&handle, &snapshots, &source, &owned_meta))
            .await
            .map_err(err)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let snapshots = self.snapshots.clone();
        // The file is opened under the lock, so a concurrent publish cannot
        // remove it between choosing it and opening it.
        let found = blocking(move || {
            let current = snapshots.lock()?;
            match current.as_ref() {
                Some(cur) => {
                    let path = snapshots.path(&cur.file_name);
                    let file = open_for_read(&path)?;
                    Ok(Some((cur.meta.clone(), path, file)))
                }
                None => Ok(None),
            }
        })
        .await
        .map_err(|e| Self::snapshot_error(None, e, ErrorVerb::Read))?;
        // The file that carries the payloads is written only if openraft
        // reads it, to send it; it is asked for at start and by the worker
        // that applies entries, neither of which may wait on a copy of
        // every payload (`SnapshotFile::deferred`).
        let db = self.handle.db.clone();
        let snapshots = self.snapshots.clone();
        Ok(found.map(|(meta, path, file)| {
            let named = path.clone();
            let owned_meta = meta.clone();
            let make = move || {
                transfer_blocking(&db, &snapshots, file, &path, &owned_meta).map_err(|e| {
                    std::io::Error::other(format!("write {} to send: {e}", path.display()))
                })
            };
            Snapshot {
                meta,
                snapshot: Box::new(SnapshotFile::deferred(named, Box::new(make))),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use lockstep_core::{Command, NewJob, QueueConfig};
    use openraft::{CommittedLeaderId, Entry as RaftEntry};

    use super::*;
    use lockstep_types::Batch;

    fn entry(index: u64, commands: Vec<Command>) -> Entry {
        RaftEntry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch {
                time_ms: 1_000 + index,
                commands,
            }),
        }
    }

    fn history() -> Vec<Entry> {
        let create = Command::CreateQueue {
            name: "q".into(),
            config: QueueConfig::default(),
        };
        let enqueue = |n: u64| Command::Enqueue {
            queue: "q".into(),
            jobs: vec![NewJob {
                id: format!("job-{n}"),
                group: None,
                payload: vec![n as u8; 100],
                headers: Vec::new(),
                priority: 0,
                delay_ms: 0,
                fairness_key: None,
            }],
        };
        vec![
            entry(1, vec![create]),
            entry(2, vec![enqueue(1), enqueue(2)]),
            entry(3, vec![enqueue(3)]),
        ]
    }

    fn wipe_blobs(db: &DB) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf(db, CF_BLOBS)?, [].as_slice(), [0xffu8; 17].as_slice());
        crate::write_synced(db, batch).map_err(StoreError::rocks("wipe"))
    }

    /// The file a store sends as its current snapshot.
    async fn sent(sm: &mut StateMachineStore) -> anyhow::Result<Box<SnapshotFile>> {
        let current = sm.get_current_snapshot().await?;
        Ok(current
            .ok_or_else(|| anyhow::anyhow!("no current snapshot"))?
            .snapshot)
    }

    fn mark_pending(db: &DB, file_name: &str) -> Result<()> {
        let mut batch = WriteBatch::default();
        put_value(&mut batch, db, KEY_PENDING_INSTALL, &file_name)?;
        crate::write_synced(db, batch).map_err(StoreError::rocks("mark"))
    }

    /// Precheck answers from the configurations published after each apply
    /// that creates or deletes a queue, and after an install.
    #[tokio::test]
    async fn precheck_follows_the_applied_queues() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (_log, mut sm) = crate::open(dir.path()).await?;
        let handle = sm.handle();
        let fetch = |queue: &str| Command::Fetch {
            queue: queue.into(),
            consumer: "c".into(),
            max: 1,
            lease_ms: 0,
        };
        assert!(handle.precheck(&fetch("q")).is_err(), "no queue yet");
        sm.apply(history()).await?;
        handle.precheck(&fetch("q"))?;
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await?;

        let delete = Command::DeleteQueue { name: "q".into() };
        sm.apply(vec![entry(4, vec![delete])]).await?;
        assert_eq!(
            handle.precheck(&fetch("q")),
            handle.read(|s| s.precheck(&fetch("q")))?,
            "the copy answers as the state does"
        );
        assert!(handle.precheck(&fetch("q")).is_err(), "the queue is gone");

        let other = tempfile::tempdir()?;
        let (_log, mut follower) = crate::open(other.path()).await?;
        let mut receiving = follower.begin_receiving_snapshot().await?;
        let mut source = sent(&mut sm).await?;
        tokio::io::copy(&mut *source, &mut *receiving).await?;
        follower.install_snapshot(&snapshot.meta, receiving).await?;
        follower.handle().precheck(&fetch("q"))?;
        Ok(())
    }

    /// The Status digest is the digest of the state at the index it is
    /// paired with, recomputed only when the applied index moved.
    #[tokio::test]
    async fn the_cached_digest_follows_the_applied_index() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (_log, mut sm) = crate::open(dir.path()).await?;
        let handle = sm.handle();
        let mut entries = history();
        let last = entries.pop().ok_or_else(|| anyhow::anyhow!("empty"))?;
        sm.apply(entries).await?;
        let first = handle.applied_digest_cached().await?;
        assert_eq!(first, handle.applied_digest()?);
        assert_eq!(handle.applied_digest_cached().await?, first);
        sm.apply(vec![last]).await?;
        // A snapshot build seeds the cache with the digest of its bytes.
        sm.get_snapshot_builder().await.build_snapshot().await?;
        let seeded = handle.cached_digest(handle.last_applied()?)?;
        let second = handle.applied_digest_cached().await?;
        assert_eq!(seeded, Some(second));
        assert_eq!(second.1, handle.read(State::digest)?);
        assert_ne!(second, first);
        Ok(())
    }

    /// While whole-state work runs (here: the gate and a read lock held as
    /// a digest holds them), an apply waits for the gate, not on the
    /// lock, so a reader still gets the read lock at once. Without the
    /// gate the apply would wait on the lock and, the lock preferring
    /// writers, the reader behind it (this test then times out).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_never_queues_behind_whole_state_work() -> anyhow::Result<()> {
        const READ_MS_MAX: u64 = 5_000;
        let dir = tempfile::tempdir()?;
        let (_log, mut sm) = crate::open(dir.path()).await?;
        let handle = sm.handle();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        let long = {
            let handle = handle.clone();
            std::thread::spawn(move || -> Result<()> {
                let _gate = handle.gate()?;
                let _read = handle.read_guard()?;
                let _ = held_tx.send(());
                let _ = release_rx.recv();
                Ok(())
            })
        };
        held_rx.recv()?;
        let apply = tokio::spawn(async move { sm.apply(history()).await.map(|_| ()) });
        // Let the apply reach the gate.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (read_tx, read_rx) = std::sync::mpsc::channel();
        let reader = handle.clone();
        std::thread::spawn(move || {
            let _ = read_tx.send(reader.last_applied());
        });
        let read = read_rx.recv_timeout(std::time::Duration::from_millis(READ_MS_MAX));
        release_tx.send(())?;
        long.join()
            .map_err(|_| anyhow::anyhow!("the holder panicked"))??;
        apply.await??;
        assert_eq!(read?.ok().flatten(), None, "read before the apply, at once");
        assert_eq!(handle.last_applied()?.map(|l| l.index), Some(3));
        Ok(())
    }

    /// A crash after the pending marker and before the end of the install
    /// leaves the payloads half replaced; the next open finishes the job.
    #[tokio::test]
    async fn an_interrupted_install_is_finished_on_open() -> anyhow::Result<()> {
        let leader_dir = tempfile::tempdir()?;
        let (_log, mut leader) = crate::open(leader_dir.path()).await?;
        leader.apply(history()).await?;
        let snapshot = leader.get_snapshot_builder().await.build_snapshot().await?;
        let digest = leader.handle().digest()?;
        assert_eq!(leader.handle().blob_count()?, 3);

        let dir = tempfile::tempdir()?;
        let (log, mut follower) = crate::open(dir.path()).await?;
        let mut receiving = follower.begin_receiving_snapshot().await?;
        let mut source = sent(&mut leader).await?;
        tokio::io::copy(&mut *source, &mut *receiving).await?;
        follower.install_snapshot(&snapshot.meta, receiving).await?;
        let file_name = follower
            .snapshots
            .lock()?
            .as_ref()
            .map(|c| c.file_name.clone())
            .ok_or_else(|| anyhow::anyhow!("no current snapshot"))?;

        // Simulate the crash: the marker is back and the payloads are gone.
        let db = follower.handle.db.clone();
        mark_pending(&db, &file_name)?;
        wipe_blobs(&db)?;
        drop((log, follower, db));

        let (_log, follower) = crate::open(dir.path()).await?;
        assert_eq!(follower.handle().blob_count()?, 3);
        assert_eq!(follower.handle().digest()?, digest);
        assert_eq!(follower.handle().last_applied()?, snapshot.meta.last_log_id);
        let pending: Option<String> =
            read_value(&follower.handle.db, CF_SM_META, KEY_PENDING_INSTALL)?;
        assert_eq!(pending, None, "the marker is cleared");
        Ok(())
    }

    /// A crash after the marker but before the file was published (it
    /// cannot happen in this order, but a lost file must not wedge the node)
    /// clears the marker and keeps the old state.
    #[tokio::test]
    async fn a_marker_without_its_file_is_cleared() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (log, mut sm) = crate::open(dir.path()).await?;
        sm.apply(history()).await?;
        let db = sm.handle.db.clone();
        mark_pending(&db, "00000000000000000003-missing.snap")?;
        drop((log, sm, db));

        let (_log, sm) = crate::open(dir.path()).await?;
        let pending: Option<String> = read_value(&sm.handle.db, CF_SM_META, KEY_PENDING_INSTALL)?;
        assert_eq!(pending, None);
        assert_eq!(sm.handle().blob_count()?, 3, "the payloads stay");
        Ok(())
    }
}
