//! The planted bugs the simulator's models honour, and the switch.
//!
//! The core's bugs (skip-fence, ignore-dedup, retries-without-reply-cache)
//! break `lockstep_core` itself, which the simulator runs. The node's and
//! the store's bugs break rules that live in `lockstep-node` and
//! `lockstep-store` on the real processes; here they break the same rules
//! in the simulator's models of them ([`crate::node`]), so the schedule and
//! the checker are shown to find each kind of mistake.

/// The bugs a model in this crate can break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Model {
    /// The log answers an append before it is synced.
    AckBeforeFsync,
    /// A re-run bootstrap lifts a wiped node's vote guard.
    GuardLiftedByBootstrap,
    /// The vote guard is forgotten by a restart.
    GuardNotPersisted,
    /// A guarded node acknowledges appends from any leader, a deposed one
    /// too.
    GuardAcksStaleLeader,
    /// The leader stamps its wall clock as cluster time.
    WallClockTime,
    /// A precheck refusal is final without the read-index round.
    PrecheckOnStaleState,
}

#[cfg(feature = "planted-bugs")]
pub(crate) fn active(model: Model) -> bool {
    use lockstep_core::planted::{active, Bug};
    active(match model {
        Model::AckBeforeFsync => Bug::AckBeforeFsync,
        Model::GuardLiftedByBootstrap => Bug::GuardLiftedByBootstrap,
        Model::GuardNotPersisted => Bug::GuardNotPersisted,
        Model::WallClockTime => Bug::WallClockTime,
        Model::PrecheckOnStaleState => Bug::PrecheckOnStaleState,
        Model::GuardAcksStaleLeader => Bug::GuardAcksStaleLeader,
    })
}

#[cfg(not(feature = "planted-bugs"))]
pub(crate) fn active(_: Model) -> bool {
    false
}

/// Turns on the planted bug `name` for this process (every later run).
/// Without the `planted-bugs` feature, or for a name no bug has, the error
/// says so.
#[cfg(feature = "planted-bugs")]
pub fn plant(name: &str) -> Result<(), String> {
    let bug = lockstep_core::planted::Bug::parse(name).ok_or_else(|| {
        let names: Vec<&str> = lockstep_core::planted::Bug::ALL
            .iter()
            .map(|b| b.name())
            .collect();
        format!(
            "no planted bug is named `{name}`; known: {}",
            names.join(", ")
        )
    })?;
    lockstep_core::planted::plant(bug);
    Ok(())
}

/// Turns every planted bug off.
pub fn unplant() {
    #[cfg(feature = "planted-bugs")]
    lockstep_core::planted::clear();
}

#[cfg(not(feature = "planted-bugs"))]
pub fn plant(name: &str) -> Result<(), String> {
    Err(format!(
        "cannot plant `{name}`: this build has no planted bugs (build with the `planted-bugs` feature, debug only)"
    ))
}
