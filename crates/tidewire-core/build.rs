//! Compiles the envelope protobuf (prost only) with the vendored `protoc`, so that a fresh machine
//! needs no system protoc.

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo");
    let root = std::path::Path::new(&manifest).join("../../proto");
    let file = root.join("tidewire/v1/envelope.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored_linux_x86_64::protoc_bin_path());
    config.bytes(["."]);
    config
        .compile_protos(&[file], &[root])
        .expect("compile envelope.proto");
}
