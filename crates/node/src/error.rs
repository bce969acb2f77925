//! Why a node could not start or stopped: one error type for start-up,
//! shutdown and bootstrap, whose messages say what to do.

/// Why a node could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store failed (RocksDB, a file, a record).
    #[error("storage: {0}")]
    Store(#[from] lockstep_store::StoreError),
    /// openraft refused its configuration, or failed.
    #[error("raft: {0}")]
    Raft(String),
    /// RocksDB found damage it cannot repair without losing entries this
    /// node may have acknowledged; see `lockstep_store::open_db`.
    #[error(
        "the data directory {dir} is damaged ({problem}); this node refuses to start rather than \
         lose entries it acknowledged. Move the directory aside and start the node with an empty \
         one: it rejoins and catches up from the leader while a majority of the cluster is up"
    )]
    Damaged {
        /// The data directory at fault.
        dir: String,
        /// What RocksDB reported.
        problem: String,
    },
    /// A server, the runtime or a planted bug could not be set up.
    #[error("server: {0}")]
    Server(String),
    /// The configuration is invalid; the error names the key.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// An address could not be bound.
    #[error("config key `{key}`: cannot listen on `{addr}`: {message}")]
    Listen {
        /// The configuration key of the address.
        key: &'static str,
        /// The address.
        addr: String,
        /// Why binding failed.
        message: String,
    },
}

impl RunError {
    /// `Damaged` when `text`, a storage error, says RocksDB found damaged
    /// data in `dir`; otherwise what `otherwise` makes of it.
    pub(crate) fn damaged_or(
        dir: &std::path::Path,
        text: String,
        otherwise: impl FnOnce(String) -> RunError,
    ) -> RunError {
        if text.contains("Corruption") {
            RunError::Damaged {
                dir: dir.display().to_string(),
                problem: text,
            }
        } else {
            otherwise(text)
        }
    }
}
