//! Generates the gRPC contract code from `proto/` into OUT_DIR.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/ferry/registry/v1/registry.proto",
    "proto/ferry/inference/v1/inference.proto",
    "proto/inference/grpc_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps the build offline-safe; PROTOC still wins when set.
    if env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
        unsafe { env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("ferry_descriptor.bin"))
        .compile_protos(PROTOS, &["proto"])?;
    Ok(())
}
