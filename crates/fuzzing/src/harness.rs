//! A checked driver of the state machine: it stamps commands as a leader
//! would, keeps an in-memory payload store in step, and after every apply
//! asserts what ARCHITECTURE.md promises of it.

use lockstep_core::{BlobStore, Command, Error, MemBlobStore, QueueConfig, Reply, Stamp, State};

/// A state, its payload store and the stamp of the next command.
#[derive(Clone, Debug, Default)]
pub struct Harness {
    pub state: State,
    pub store: MemBlobStore,
    /// Log index of the next command; commands in one entry share it.
    pub index: u64,
    /// Cluster time of the next command.
    pub time_ms: u64,
}

impl Harness {
    pub fn new(index: u64, time_ms: u64) -> Harness {
        Harness {
            state: State::new(),
            store: MemBlobStore::default(),
            index,
            time_ms,
        }
    }

    /// The stamp of the next command.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            index: self.index,
            time_ms: self.time_ms,
        }
    }

    /// Applies `command` at [`Harness::stamp`] and panics unless:
    /// - a `precheck` refusal is the very error `apply` returns (the leader
    ///   answers from precheck, so it must never refuse differently);
    /// - a refused command pushed no effect and changed nothing but the
    ///   passage of time (SPEC 7: no partial write);
    /// - every invariant holds and the payload store agrees with the state.
    pub fn step(&mut self, command: Command) -> Result<Reply, Error> {
        let stamp = self.stamp();
        let before = self.state.clone();
        let precheck = self.state.precheck(&command);
        let queue = command.queue().map(str::to_owned);
        let shown = format!("{command:?}");
        let mut effects = Vec::new();
        let result = self.state.apply(stamp, command, &mut effects);
        if let Err(refused) = &precheck {
            assert_eq!(
                result.as_ref().err(),
                Some(refused),
                "precheck and apply disagree on {shown} at {stamp:?}"
            );
        }
        match &result {
            Ok(_) => self.store.apply_effects(&effects),
            Err(error) => {
                assert!(
                    effects.is_empty(),
                    "refused {shown} ({error}) pushed effects {effects:?}"
                );
                assert_only_time_moved(&before, &self.state, stamp, queue.as_deref(), &shown);
            }
        }
        if let Err(broken) = self.state.check_invariants() {
            panic!("invariant broken after {shown} at {stamp:?} -> {result:?}: {broken}");
        }
        if let Err(broken) = self.store.check_against(&self.state) {
            panic!("payload store disagrees after {shown} at {stamp:?} -> {result:?}: {broken}");
        }
        result
    }

    /// Snapshots the state, restores it, and panics unless the copy is
    /// equal, has the same digest and snapshots to the same bytes. The
    /// harness carries on with the restored copy, as a restarted node would.
    pub fn restart(&mut self) {
        let bytes = self.state.snapshot();
        let restored = match State::restore(&bytes) {
            Ok(state) => state,
            Err(e) => panic!("restore refused a snapshot of a live state: {e}"),
        };
        assert_eq!(restored, self.state, "restore changed the state");
        assert_eq!(restored.digest(), self.state.digest(), "digests differ");
        assert_eq!(restored.snapshot(), bytes, "snapshot is not stable");
        self.state = restored;
    }
}

/// A refused command may move the cluster clock and the applied index, and
/// may advance the clock of the queue it names (expiring leases, waking
/// delays, forgetting old ids) before it fails; nothing else. Two probes
/// build the allowed outcomes from `before`: one that fails before touching
/// any queue, one that fails just after advancing the named queue.
fn assert_only_time_moved(
    before: &State,
    after: &State,
    stamp: Stamp,
    queue: Option<&str>,
    shown: &str,
) {
    let mut untouched = before.clone();
    // An invalid configuration is refused before any queue is looked up.
    let invalid = QueueConfig {
        max_attempts: 0,
        ..QueueConfig::default()
    };
    let probe = untouched.apply(
        stamp,
        Command::UpdateQueue {
            name: String::new(),
            config: invalid,
        },
        &mut Vec::new(),
    );
    assert!(probe.is_err(), "the untouched probe was accepted");
    if *after == untouched {
        return;
    }
    if let Some(name) = queue {
        let mut advanced = before.clone();
        // No lease is ever granted at offset u64::MAX: refused after the
        // queue's clock moved.
        let probe = advanced.apply(
            stamp,
            Command::Release {
                queue: name.to_string(),
                offset: u64::MAX,
                fence: 0,
            },
            &mut Vec::new(),
        );
        assert!(probe.is_err(), "the advancing probe was accepted");
        if *after == advanced {
            return;
        }
    }
    panic!("refused {shown} at {stamp:?} changed more than time");
}
