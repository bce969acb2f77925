//! openraft's storage conformance suite, run against the RocksDB store.

use lockstep_store::{open, LogStore, StateMachineStore, TypeConfig};
use lockstep_types::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageIOError};
use tempfile::TempDir;

/// Builds each store in a fresh temporary directory, which the suite keeps
/// alive (the `TempDir` guard) until the test that uses it ends.
struct TempStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let (log, sm) = open(dir.path())
            .await
            .map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, log, sm))
    }
}

/// The suite runs each case on its own runtime (so this is a plain test),
/// and every case is short: the slowest sleeps one second.
#[test]
fn openraft_storage_suite() -> anyhow::Result<()> {
    Suite::test_all(TempStoreBuilder)?;
    Ok(())
}
