//! The store's own error type, and its mapping into openraft's
//! [`StorageError`](openraft::StorageError).
//!
//! Every RocksDB, codec and file failure keeps what the store was doing when
//! it failed, so the message a node logs before openraft shuts it down points
//! at the record or file at fault.

use std::path::PathBuf;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

use lockstep_types::{NodeId, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb failed to {context}: {source}")]
    Rocks {
        context: String,
        #[source]
        source: rocksdb::Error,
    },
    #[error("cannot {context}: {source}")]
    Codec {
        context: String,
        #[source]
        source: lockstep_core::codec::CodecError,
    },
    #[error("i/o failed to {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot file {path} is refused: {reason}")]
    BadSnapshot { path: PathBuf, reason: String },
    #[error("column family `{0}` is missing from the database")]
    MissingColumnFamily(&'static str),
    #[error("the in-memory state is poisoned: a thread panicked while changing it")]
    Poisoned,
    #[error("a blocking storage task did not finish: {0}")]
    Task(String),
    /// An in-memory disk's database is still open by an earlier instance
    /// of its node (a simulated restart waits for it to close).
    #[error("the in-memory database is still open by an earlier instance")]
    StillOpen,
    #[error("{0}")]
    Inconsistent(String),
}

impl StoreError {
    pub(crate) fn rocks(context: impl Into<String>) -> impl FnOnce(rocksdb::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Rocks { context, source }
    }

    pub(crate) fn codec(
        context: impl Into<String>,
    ) -> impl FnOnce(lockstep_core::codec::CodecError) -> StoreError {
        let context = context.into();
        move |source| StoreError::Codec { context, source }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }

    pub(crate) fn bad_snapshot(path: impl Into<PathBuf>, reason: impl Into<String>) -> StoreError {
        StoreError::BadSnapshot {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Wraps this error as openraft's storage error about `subject`.
    pub(crate) fn into_storage(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> StorageError {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

pub(crate) type Result<T, E = StoreError> = std::result::Result<T, E>;

thread_local! {
    /// Whether storage work started on this thread runs where it is called
    /// (see [`run_inline_on_this_thread`]).
    static INLINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes the storage work this thread starts run inline instead of on
/// Tokio's blocking pool. For the simulator only: it runs every node on
/// one thread over in-memory stores ([`crate::MemoryDisk`]), where a
/// blocking-pool thread would finish at a moment of real time and so
/// reorder a run that must replay exactly from its seed. A real node
/// never calls it.
pub fn run_inline_on_this_thread(inline: bool) {
    INLINE.with(|cell| cell.set(inline));
}

/// Whether this thread runs its storage work inline (the simulator's).
pub(crate) fn runs_inline() -> bool {
    INLINE.with(std::cell::Cell::get)
}

/// Runs blocking storage work (an fsync, a file scan) off the async worker
/// threads, so a slow disk stalls only the caller, not the network tasks that
/// share the runtime.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    if runs_inline() {
        return f();
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}
