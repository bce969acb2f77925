//! The bodies of Lockstep's fuzz targets, as plain functions of `&[u8]`.
//!
//! The cargo-fuzz crate in `fuzz/` wraps each function in a `fuzz_target!`
//! and needs nightly flags and libFuzzer; this crate needs neither, so
//! `tests/corpus.rs` replays the checked-in corpus and every regression input
//! through the same functions in the ordinary test run. A target panics when
//! it finds a bug; returning means the input was handled correctly.
//!
//! | target | what it feeds | what must hold |
//! |---|---|---|
//! | [`command`] | bytes decoded as one core `Command`, as a peer or the log hands it to the state machine | no panic; `precheck` refuses only what `apply` refuses, with the same error; a refused command changes nothing but time; every invariant holds |
//! | [`records`] | bytes decoded as every persisted or replicated core type, and as a snapshot through `State::restore` | decoding returns an error or a value that re-encodes to a record that decodes to the same value; truncated records are refused; a restored state is usable |
//! | [`sequence`] | bytes read by `arbitrary` as a sequence of commands over a small alphabet of queues, groups and ids | every step checked as in `command`; snapshot, restore and digest agree along the way |
//!
//! The checks after each step live in [`Harness::step`].

mod harness;
pub mod seeds;

mod command;
mod records;
mod sequence;

pub use command::command;
pub use harness::Harness;
pub use records::records;
pub use sequence::sequence;

/// A fuzz target: its name (the directory of its corpus under `fuzz/`) and
/// its body.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, in the order `scripts/fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "command",
        run: command,
    },
    Target {
        name: "records",
        run: records,
    },
    Target {
        name: "sequence",
        run: sequence,
    },
];
