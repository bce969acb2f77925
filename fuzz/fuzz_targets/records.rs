//! Fuzz target `records`: see `lockstep_fuzzing::records` for what it feeds and
//! what must hold.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lockstep_fuzzing::records(data));
