//! Regressions found by the fuzz targets (`crates/fuzzing`, `fuzz/`), one
//! test per bug, named for what it proves. Each test's comment names the
//! minimized input under `fuzz/regressions/<target>/`, which
//! `crates/fuzzing/tests/corpus.rs` also replays.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use lockstep_core::*;

/// `fuzz/regressions/command/update-queue-bad-name-precheck-differs`:
/// `UpdateQueue { name: "", config: { max_attempts: 0, .. } }`. Precheck
/// refused the name, apply refused the configuration (or, with a valid
/// configuration, answered "queue not found"), so a leader and a deposed
/// leader answered the same request with different errors.
#[test]
fn update_queue_with_a_bad_name_is_refused_by_apply_as_precheck_refuses_it() {
    let mut sim = Sim::with_queue(QueueConfig::default());
    let bad_config = QueueConfig {
        max_attempts: 0,
        ..QueueConfig::default()
    };
    for (name, config) in [
        ("", bad_config.clone()),
        ("", QueueConfig::default()),
        ("no spaces", bad_config),
        ("no spaces", QueueConfig::default()),
    ] {
        let command = Command::UpdateQueue {
            name: name.into(),
            config,
        };
        let refused = sim.state.precheck(&command).unwrap_err();
        assert!(
            matches!(&refused, Error::InvalidArgument { field, .. } if field == "queue"),
            "{refused:?}"
        );
        assert_eq!(sim.run(command), Err(refused));
    }
}
