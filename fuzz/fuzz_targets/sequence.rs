//! Fuzz target `sequence`: see `lockstep_fuzzing::sequence` for what it feeds and
//! what must hold.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lockstep_fuzzing::sequence(data));
