//! Compiles `proto/ferry/**/*.proto` with the vendored protoc (no system protoc needed) and writes a
//! file descriptor set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };

    // The manifest dir at *run* time, not `env!` (compile time): cargo reuses a compiled build
    // script across checkouts at different paths (CI's clean clone and a dev tree share a target
    // dir), and a baked-in path then points at the other checkout.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["ferry/v1/content.proto", "ferry/v1/messages.proto", "ferry/chat/v1/chat.proto"];
    let paths: Vec<PathBuf> = files.iter().map(|f| root.join(f)).collect();
    for p in &paths {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("ferry_descriptor.bin"))
        .compile_protos(&paths, &[root])?;
    Ok(())
}
