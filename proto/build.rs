fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    // Never set PROTOC globally: raft's own build helper refuses a modern protoc.
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=drover/v1");
    // A revision's template is encoded once and shared (refcounted) by
    // every replica's assignment that runs it.
    config.bytes([".drover.v1.Assignment.template_json"]);
    tonic_prost_build::configure()
        // prost's codec with small starting buffers (src/codec.rs).
        .codec_path("crate::codec::ProstCodec")
        // Secrets travel in these: their Debug (hand-written in lib.rs)
        // shows names and sizes, never values.
        .skip_debug([
            "drover.v1.ConfigObject",
            "drover.v1.ConfigRecord",
            "drover.v1.ManifestFile",
        ])
        .compile_with_config(
            config,
            &[
                "drover/v1/control.proto",
                "drover/v1/raft.proto",
                "drover/v1/agent.proto",
                "drover/v1/security.proto",
            ],
            &["."],
        )?;
    Ok(())
}
