//! The types a run is given and gives back: the fault profile to apply,
//! the options of one run, and the outcomes it produced.

use std::path::PathBuf;
use std::time::Duration;

use crate::history::Op;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    None,
    Kill,
    /// Every node killed at once (a power cut), then restarted.
    KillAll,
    Pause,
    Wipe,
    PartitionLeader,
    PartitionHalves,
    PartitionOneway,
    Membership,
    Mixed,
}

impl Profile {
    pub const ALL: [Profile; 10] = [
        Profile::None,
        Profile::Kill,
        Profile::KillAll,
        Profile::Pause,
        Profile::Wipe,
        Profile::PartitionLeader,
        Profile::PartitionHalves,
        Profile::PartitionOneway,
        Profile::Membership,
        Profile::Mixed,
    ];

    /// The faults `mixed` draws from.
    pub(super) const MIXED: [Profile; 8] = [
        Profile::Kill,
        Profile::KillAll,
        Profile::Pause,
        Profile::Wipe,
        Profile::PartitionLeader,
        Profile::PartitionHalves,
        Profile::PartitionOneway,
        Profile::Membership,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profile::None => "none",
            Profile::Kill => "kill",
            Profile::KillAll => "kill-all",
            Profile::Pause => "pause",
            Profile::Wipe => "wipe",
            Profile::PartitionLeader => "partition-leader",
            Profile::PartitionHalves => "partition-halves",
            Profile::PartitionOneway => "partition-oneway",
            Profile::Membership => "membership",
            Profile::Mixed => "mixed",
        }
    }

    pub fn parse(text: &str) -> Result<Profile, String> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Profile::ALL.iter().map(|p| p.name()).collect();
                format!("unknown profile `{text}`; one of {}", names.join(", "))
            })
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub nodes: u64,
    pub seed: u64,
    pub profile: Profile,
    pub duration: Duration,
    pub producers: usize,
    pub workers: usize,
    pub groups: u64,
    /// A planted bug every node runs with (`LOCKSTEP_PLANTED_BUG`; needs a
    /// binary built with the `planted-bugs` feature).
    pub planted: Option<String>,
    /// The third octet of the nodes' loopback addresses, so runs in
    /// parallel (`scripts/chaos` lanes) never partition each other.
    pub net: u8,
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcomes {
    pub history: Vec<Op>,
    /// Faults applied, with their start time (wall ms), for the timeline.
    pub faults: Vec<(u64, String)>,
    /// A liveness failure (no leader after healing, drain not finished).
    pub liveness: Option<String>,
}
