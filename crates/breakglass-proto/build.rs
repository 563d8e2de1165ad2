//! Compiles `proto/` into Rust with prost. protoc comes vendored, so a fresh
//! machine needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let protos = [
        root.join("breakglass/v1/events.proto"),
        root.join("breakglass/v1/destination_test.proto"),
        root.join("breakglass/v1/runs.proto"),
        root.join("breakglass/v1/config.proto"),
    ];
    println!("cargo:rerun-if-changed={}", root.display());
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // The descriptors, for server reflection (grpcurl without the files).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    config.file_descriptor_set_path(out.join("breakglass_descriptor.bin"));
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &protos, &[root])?;
    Ok(())
}
