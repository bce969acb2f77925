//! Replays the checked-in fuzz corpus, the regression inputs and the seeds
//! through every target, so the ordinary test run (stable, no libFuzzer)
//! keeps every input the fuzzer ever kept or crashed on passing.
//!
//! Inputs live in `fuzz/corpus/<target>/` (kept small with
//! `cargo fuzz cmin`) and `fuzz/regressions/<target>/` (one minimized
//! input per bug found, named after it). See `fuzz/README.md`.

use std::fs;
use std::path::{Path, PathBuf};

use lockstep_fuzzing::{seeds::seeds, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir`, sorted; none if it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every file of `fuzz/<kind>/<target>/` through its target and
/// returns how many there were. A panic names the file.
fn replay(kind: &str) -> usize {
    let mut total = 0;
    for target in TARGETS {
        for path in inputs(&fuzz_dir().join(kind).join(target.name)) {
            let data = fs::read(&path).expect("readable input");
            let run = std::panic::catch_unwind(|| (target.run)(&data));
            assert!(run.is_ok(), "{} failed on {}", target.name, path.display());
            total += 1;
        }
    }
    total
}

#[test]
fn every_corpus_input_passes_every_check() {
    for target in TARGETS {
        assert!(
            !inputs(&fuzz_dir().join("corpus").join(target.name)).is_empty(),
            "fuzz/corpus/{} is empty: the replay would prove nothing",
            target.name
        );
    }
    let total = replay("corpus");
    eprintln!("replayed {total} corpus inputs");
}

#[test]
fn every_regression_input_passes_every_check() {
    let total = replay("regressions");
    eprintln!("replayed {total} regression inputs");
}

#[test]
fn every_seed_passes_and_the_command_seeds_decode() {
    for target in TARGETS {
        let seeds = seeds(target.name);
        assert!(!seeds.is_empty(), "no seeds for {}", target.name);
        for seed in &seeds {
            (target.run)(seed);
        }
    }
    for seed in seeds("command") {
        lockstep_core::codec::decode::<lockstep_core::Command>(&seed)
            .expect("a command seed decodes");
    }
}
