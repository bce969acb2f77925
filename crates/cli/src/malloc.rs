//! glibc's malloc, set for a long-running node.
//!
//! Why: under load a node allocates and frees request, entry and payload
//! buffers on every Tokio worker and RocksDB thread, between the core's
//! long-lived records, and glibc keeps what was freed. With 1,000,000
//! pending 1 KiB jobs (`scripts/bench-memory`, 2026-12-04) a leader held
//! 1.25 GB resident where its followers held 0.4 GB, and `malloc_trim(0)`
//! called from a debugger took a leader from 554 MB to 304 MB: the rest
//! was free memory glibc had not given back. Two settings, measured in the
//! README's tuning table:
//! - at most one arena per core (glibc's default is eight per core, each
//!   keeping its own freed memory);
//! - `malloc_trim(0)` every [`TRIM_INTERVAL`] while the node runs, which
//!   returns the free pages inside the heap, not only at its top.
//!
//! mimalloc (0.43-0.54 GB per node) and jemalloc (a leader at 0.57-0.92
//! GB) were measured instead and did no better, so glibc stays. An
//! application that embeds a node keeps its own allocator and settings.

/// glibc malloc arenas per core for this process.
const ARENAS_PER_CORE: usize = 1;

/// How often a running node gives free heap pages back. A trim walks the
/// free lists under each arena's lock, so it runs seldom: a burst's memory
/// is back within one interval, and `scripts/bench-memory` reads resident
/// size two intervals after its load.
const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Caps glibc's arenas at [`ARENAS_PER_CORE`] unless the operator chose a
/// cap with `MALLOC_ARENA_MAX`. Runs first in `main`, before any thread.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn cap_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arenas = i32::try_from(cores * ARENAS_PER_CORE).unwrap_or(i32::MAX);
    // SAFETY: `mallopt` only sets a parameter of the allocator; nothing
    // else of this process runs yet.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, arenas);
    }
}

/// Starts a thread that trims the heap every [`TRIM_INTERVAL`] until the
/// process exits (the node's whole life: it never blocks an exit).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn trim_every_while_running() {
    let started = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| loop {
            std::thread::sleep(TRIM_INTERVAL);
            // SAFETY: `malloc_trim` only returns free pages to the system;
            // it takes each arena's lock as `malloc` does.
            unsafe {
                nix::libc::malloc_trim(0);
            }
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "no malloc-trim thread: freed memory stays with the allocator");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn cap_arenas() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn trim_every_while_running() {}
