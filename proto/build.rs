//! Compiles `orchestrator_service.proto` with protox (pure Rust, no system `protoc`) and generates
//! the prost messages plus the tonic client and server for `TaskHubSidecarService`.
//!
//! The proto file deliberately has no `package`, so prost would name the output `_.rs`
//! (tokio-rs/prost#426); we set `default_package_filename` so it becomes
//! `OUT_DIR/orchestrator_service.rs` instead. The encoded `FileDescriptorSet` is also written to
//! `OUT_DIR/orchestrator_service.bin` (exposed as `FILE_DESCRIPTOR_SET`).

use std::path::PathBuf;

use prost::Message as _;

const PROTO: &str = "orchestrator_service.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let fds = protox::compile([PROTO], ["."])?;
    std::fs::write(out_dir.join("orchestrator_service.bin"), fds.encode_to_vec())?;

    let mut config = tonic_prost_build::Config::new();
    config.default_package_filename("orchestrator_service");

    // Cargo sets CARGO_FEATURE_GRPC for build scripts when the `grpc` feature is on.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .build_transport(grpc)
        .compile_fds_with_config(fds, config)?;

    Ok(())
}
