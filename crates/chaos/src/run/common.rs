//! Small things more than one step of a run shares: the wall clock every
//! recorded operation and fault is stamped with, and the bound on healing.

/// Bound on healing: a leader must be agreed within this.
pub(super) const LEADER_MS_MAX: u64 = 10_000;

/// The harness's clock for every recorded time: milliseconds on the
/// monotonic clock, counted from the wall-clock time of the first reading
/// (so a timeline still shows the time of day). The checker's real-time
/// bounds (T) need a clock that never steps; the harness itself never
/// runs under libfaketime, but its host's wall clock may still be set.
pub(super) fn now_ms() -> u64 {
    use std::sync::OnceLock;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};
    static ORIGIN: OnceLock<(Instant, u64)> = OnceLock::new();
    let (at, wall_ms) = ORIGIN.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        (Instant::now(), wall)
    });
    wall_ms + at.elapsed().as_millis() as u64
}
