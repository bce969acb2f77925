//! Generates the gRPC code of `proto/` with a vendored `protoc`, so a build
//! needs nothing installed and no network.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Safety of set_var: build scripts are single-threaded.
    std::env::set_var("PROTOC", protoc);
    // The manifest directory of THIS build, read when the script runs: with
    // `env!` it would be the one it was compiled in, and a target directory
    // shared between clones reuses the compiled script.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["lockstep/v1/queue.proto", "lockstep/v1/admin.proto"].map(|f| root.join(f));
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(
            std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("lockstep_v1.bin"),
        )
        .compile_protos(&files, &[root])?;
    Ok(())
}
