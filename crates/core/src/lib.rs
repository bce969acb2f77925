//! Lockstep's queue state machine.
//!
//! [`State::apply`] takes a [`Command`] with the leader's [`Stamp`] (log index
//! and cluster time) and returns a typed [`Reply`] or [`Error`]. It reads no
//! clock and no randomness and does no I/O: payload writes come back as
//! [`Effect`]s for the storage layer. Run the same commands from the same
//! state on any node and you get the same state, byte for byte
//! ([`State::snapshot`]).
//!
//! Architecture invariant: this crate depends on no async runtime, storage,
//! network, clock or RNG crate; `scripts/check-boundaries` enforces it.

#![forbid(unsafe_code)]

mod blob;
pub mod codec;
mod command;
mod config;
mod dedup;
mod error;
pub mod hash;
mod invariants;
pub mod limits;
mod offset_map;
#[cfg(feature = "planted-bugs")]
pub mod planted;
mod query;
mod session;
mod state;

pub use blob::{BlobStore, MemBlobStore};
pub use command::*;
pub use config::{Fairness, GroupPolicy, QueueConfig, RateLimits};
pub use error::{Code, Error, Result};
pub use query::*;
pub use state::{
    backoff_ms, validate_queue_name, validate_subscription_name, Attempt, AttemptOutcome, Configs,
    Counters, State,
};

/// Whether the planted bug named by `bug` is on; always false without the
/// `planted-bugs` feature, so the checks compile away.
#[cfg(feature = "planted-bugs")]
#[inline]
pub(crate) fn planted_skip_fence() -> bool {
    planted::active(planted::Bug::SkipFence)
}
#[cfg(not(feature = "planted-bugs"))]
#[inline]
pub(crate) fn planted_skip_fence() -> bool {
    false
}
#[cfg(feature = "planted-bugs")]
#[inline]
pub(crate) fn planted_no_reply_cache() -> bool {
    planted::active(planted::Bug::RetriesWithoutReplyCache)
}
#[cfg(not(feature = "planted-bugs"))]
#[inline]
pub(crate) fn planted_no_reply_cache() -> bool {
    false
}
#[cfg(feature = "planted-bugs")]
#[inline]
pub(crate) fn planted_ignore_dedup() -> bool {
    planted::active(planted::Bug::IgnoreDedup)
}
#[cfg(not(feature = "planted-bugs"))]
#[inline]
pub(crate) fn planted_ignore_dedup() -> bool {
    false
}

impl State {
    /// The deterministic encoding of the whole state, behind the codec's
    /// version byte. Equal states give equal bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        codec::encode(self).expect("the state is always encodable")
    }

    /// Rebuilds a state from [`State::snapshot`] bytes, refusing bytes that
    /// decode to a state that breaks an invariant.
    pub fn restore(bytes: &[u8]) -> std::result::Result<State, String> {
        let mut state: State = codec::decode_snapshot(bytes).map_err(|e| e.to_string())?;
        state.rebuild_derived();
        state
            .check_invariants()
            .map_err(|e| format!("snapshot breaks an invariant: {e}"))?;
        Ok(state)
    }

    /// The encoding of the queues alone, without the log position and the
    /// cluster clock: what "a rejected command changes nothing" compares.
    pub fn queues_snapshot(&self) -> Vec<u8> {
        codec::encode(&self.queues).expect("the queues are always encodable")
    }

    /// A 128-bit digest of the state, for comparing replicas at the same
    /// applied index.
    pub fn digest(&self) -> u128 {
        State::digest_of_snapshot(&self.snapshot())
    }

    /// [`State::digest`] of the state whose [`State::snapshot`] is `bytes`,
    /// for a caller that already holds them (a snapshot build).
    pub fn digest_of_snapshot(bytes: &[u8]) -> u128 {
        xxhash_rust::xxh3::xxh3_128(bytes)
    }
}
