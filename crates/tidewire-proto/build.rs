//! Generates the tidewire.v1 services with the vendored `protoc` (no system protoc needed) and a
//! file descriptor set for server reflection.

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo");
    let root = std::path::Path::new(&manifest).join("../../proto");
    let files: Vec<_> = ["federation", "publisher", "subscriber", "admin"]
        .iter()
        .map(|f| root.join(format!("tidewire/v1/{f}.proto")))
        .collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored_linux_x86_64::protoc_bin_path());
    config.bytes(["."]);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("tidewire_descriptor.bin"))
        .compile_with_config(config, &files, &[root])
        .expect("compile tidewire.v1 protos");
}
