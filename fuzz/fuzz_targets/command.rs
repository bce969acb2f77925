//! Fuzz target `command`: see `lockstep_fuzzing::command` for what it feeds and
//! what must hold.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lockstep_fuzzing::command(data));
