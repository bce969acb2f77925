//! Small things more than one step of a run shares: the wall clock every
//! recorded operation and fault is stamped with, and the bound on healing.

/// Bound on healing: a leader must be agreed within this.
pub(super) const LEADER_MS_MAX: u64 = 10_000;

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
