//! The simulator's power cut, for the planted `ack-before-fsync` only.
//!
//! RocksDB's in-memory environment ([`crate::MemoryDisk`]) keeps every
//! write it is given, synced or not, so a simulated node that stops finds
//! all of them again. That is right for a correct node, which syncs every
//! write it acknowledges, but it hides the one planted bug that
//! acknowledges appends it never synced. So, only under that bug and only
//! in the simulator (whose storage work runs inline on its one thread,
//! [`crate::run_inline_on_this_thread`]), a disk keeps an image of its
//! database as its last synced write left it, and the next open puts that
//! image back: a power cut after which the node finds exactly what it
//! synced, and nothing after it. One sync of RocksDB's write-ahead log
//! covers every write before it, so the image is taken at the first
//! unsynced write after a sync and dropped at the next sync.
//!
//! The image is the whole database, copied. That is cheap enough here: a
//! simulated run holds a few MB, and under this bug a node syncs only its
//! votes, its guard, truncations and purges, so it takes one image per
//! election or so.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};

use crate::COLUMN_FAMILIES;

/// Every key and value of every column family.
type Image = Vec<(&'static str, Vec<(Box<[u8]>, Box<[u8]>)>)>;

/// The image a disk keeps while its database holds unsynced writes.
pub(crate) type Kept = Arc<Mutex<Option<Image>>>;

thread_local! {
    /// The kept image of each database open on this thread, by its path:
    /// the write paths know their database, not its disk.
    static OPEN: RefCell<HashMap<PathBuf, Weak<Mutex<Option<Image>>>>> =
        RefCell::new(HashMap::new());
}

/// Whether stops lose unsynced writes: the planted bug, in the simulator.
fn modelled() -> bool {
    crate::planted_ack_before_fsync() && crate::error::runs_inline()
}

fn kept_for(db: &DB) -> Option<Kept> {
    OPEN.with(|open| open.borrow().get(db.path()).and_then(Weak::upgrade))
}

/// At the open of a database on a simulated disk: puts back what its last
/// sync left if unsynced writes came after it, then keeps the disk's image
/// for this database's writes.
pub(crate) fn restart(db: &DB, kept: &Kept) -> Result<(), rocksdb::Error> {
    let mut kept_image = kept.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(image) = kept_image.as_ref() {
        let mut batch = WriteBatch::default();
        for (name, pairs) in image {
            let Some(cf) = db.cf_handle(name) else {
                continue;
            };
            for item in db.iterator_cf(cf, IteratorMode::Start) {
                let (key, _) = item?;
                batch.delete_cf(cf, key);
            }
            for (key, value) in pairs {
                batch.put_cf(cf, key, value);
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(true);
        db.write_opt(batch, &options)?;
        // Only once it is back: an open that failed here and is tried
        // again must still lose what the cut lost.
        *kept_image = None;
    }
    drop(kept_image);
    OPEN.with(|open| {
        let mut open = open.borrow_mut();
        // Disks dropped since (earlier runs on this thread, wiped nodes).
        open.retain(|_, disk| disk.strong_count() > 0);
        open.insert(db.path().to_path_buf(), Arc::downgrade(kept));
    });
    Ok(())
}

/// Before an unsynced write: keeps the database as its last sync left it,
/// unless an earlier unsynced write already did.
pub(crate) fn before_unsynced(db: &DB) -> Result<(), rocksdb::Error> {
    if !modelled() {
        return Ok(());
    }
    let Some(kept) = kept_for(db) else {
        return Ok(());
    };
    let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
    if kept.is_some() {
        return Ok(());
    }
    let mut image = Vec::with_capacity(COLUMN_FAMILIES.len());
    for name in COLUMN_FAMILIES.iter().copied() {
        let Some(cf) = db.cf_handle(name) else {
            continue;
        };
        let pairs = db
            .iterator_cf(cf, IteratorMode::Start)
            .collect::<Result<Vec<_>, _>>()?;
        image.push((name, pairs));
    }
    *kept = Some(image);
    Ok(())
}

/// After a synced write: every write before it is durable.
pub(crate) fn synced(db: &DB) {
    if !modelled() {
        return;
    }
    if let Some(kept) = kept_for(db) {
        *kept.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}
