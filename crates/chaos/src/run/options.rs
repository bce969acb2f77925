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
    /// The leader killed and its data directory deleted, then restarted.
    WipeLeader,
    PartitionLeader,
    PartitionHalves,
    PartitionOneway,
    Membership,
    /// A node's wall clock stepped or drifting (libfaketime).
    Clock,
    /// Answers dropped after the request ran (failpoints), direct and
    /// forwarded.
    LostReply,
    /// Log appends on one node delayed (a failpoint before the fsync).
    SlowDisk,
    /// What an operator does in an incident: bootstrap re-run through a
    /// wiped member, a wiped member restarted mid-catch-up, a wiped member
    /// removed and joined back.
    Operator,
    /// A node's data directory (each node's is on its own small tmpfs)
    /// filled below the node's disk reserve, or to the last byte, then
    /// freed.
    DiskFull,
    /// Two or three of the single faults above, overlapping.
    Compound,
    Mixed,
}

impl Profile {
    pub const ALL: [Profile; 17] = [
        Profile::None,
        Profile::Kill,
        Profile::KillAll,
        Profile::Pause,
        Profile::Wipe,
        Profile::WipeLeader,
        Profile::PartitionLeader,
        Profile::PartitionHalves,
        Profile::PartitionOneway,
        Profile::Membership,
        Profile::Clock,
        Profile::LostReply,
        Profile::SlowDisk,
        Profile::Operator,
        Profile::DiskFull,
        Profile::Compound,
        Profile::Mixed,
    ];

    /// The single faults `mixed` and `compound` draw from.
    pub(super) const SINGLE: [Profile; 14] = [
        Profile::Kill,
        Profile::KillAll,
        Profile::Pause,
        Profile::Wipe,
        Profile::WipeLeader,
        Profile::PartitionLeader,
        Profile::PartitionHalves,
        Profile::PartitionOneway,
        Profile::Membership,
        Profile::Clock,
        Profile::LostReply,
        Profile::SlowDisk,
        Profile::Operator,
        Profile::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profile::None => "none",
            Profile::Kill => "kill",
            Profile::KillAll => "kill-all",
            Profile::Pause => "pause",
            Profile::Wipe => "wipe",
            Profile::WipeLeader => "wipe-leader",
            Profile::PartitionLeader => "partition-leader",
            Profile::PartitionHalves => "partition-halves",
            Profile::PartitionOneway => "partition-oneway",
            Profile::Membership => "membership",
            Profile::Clock => "clock",
            Profile::LostReply => "lost-reply",
            Profile::SlowDisk => "slow-disk",
            Profile::Operator => "operator",
            Profile::DiskFull => "disk-full",
            Profile::Compound => "compound",
            Profile::Mixed => "mixed",
        }
    }

    /// Whether a run of this profile may step clocks, so its nodes must
    /// run under libfaketime from the start.
    pub(super) fn may_step_clocks(self) -> bool {
        matches!(self, Profile::Clock | Profile::Compound | Profile::Mixed)
    }

    /// Whether a run of this profile may fill a node's disk, so each node's
    /// data directory must sit on its own small tmpfs from the start.
    pub(super) fn fills_disks(self) -> bool {
        matches!(self, Profile::DiskFull | Profile::Compound | Profile::Mixed)
    }

    /// Whether a run of this profile may set failpoints (a test build's
    /// `LOCKSTEP_FAILPOINTS_FILE`).
    pub(super) fn uses_failpoints(self) -> bool {
        matches!(
            self,
            Profile::LostReply
                | Profile::SlowDisk
                | Profile::Operator
                | Profile::Compound
                | Profile::Mixed
        )
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
    /// The queue's `max_attempts`; `None` draws it from the seed: every
    /// third seed runs with [`MAX_ATTEMPTS_LOW`], so the server
    /// dead-letters jobs on its own and the checker accounts for them.
    pub max_attempts: Option<u32>,
}

/// The low `max_attempts` of some runs.
pub const MAX_ATTEMPTS_LOW: u32 = 3;
/// The `max_attempts` of the other runs: high enough that the server
/// almost never dead-letters on its own.
pub const MAX_ATTEMPTS_HIGH: u32 = 1_000;

impl Options {
    /// The queue's `max_attempts` in this run.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(if self.seed % 3 == 0 {
            MAX_ATTEMPTS_LOW
        } else {
            MAX_ATTEMPTS_HIGH
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_mounts_small_disks_exactly_when_its_profile_may_fill_one() {
        assert_eq!(Profile::parse("disk-full"), Ok(Profile::DiskFull));
        assert!(Profile::SINGLE.contains(&Profile::DiskFull));
        for p in Profile::ALL {
            // `compound` and `mixed` draw from SINGLE.
            let may_fill = p == Profile::DiskFull
                || (matches!(p, Profile::Compound | Profile::Mixed)
                    && Profile::SINGLE.contains(&Profile::DiskFull));
            assert_eq!(p.fills_disks(), may_fill, "{}", p.name());
        }
        for p in Profile::SINGLE {
            assert!(Profile::ALL.contains(&p), "{}", p.name());
        }
    }
}
