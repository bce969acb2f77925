//! Writes the seeds of every target under `fuzz/corpus/<target>/`, named
//! `seed-<n>`. Run it once before the first fuzzing of a new target:
//! `cargo run -p lockstep-fuzzing --example seed_corpus`.

use std::fs;
use std::path::Path;

use lockstep_fuzzing::{seeds::seeds, TARGETS};

fn main() -> std::io::Result<()> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for target in TARGETS {
        let dir = fuzz.join(target.name);
        fs::create_dir_all(&dir)?;
        let seeds = seeds(target.name);
        for (n, seed) in seeds.iter().enumerate() {
            fs::write(dir.join(format!("seed-{n:02}")), seed)?;
        }
        eprintln!(
            "{}: {} seeds in {}",
            target.name,
            seeds.len(),
            dir.display()
        );
    }
    Ok(())
}
