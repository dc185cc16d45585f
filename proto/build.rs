//! Compiles the .proto files with protox (a pure-Rust compiler), so a
//! fresh machine needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/ringway/cluster/v1/membership.proto",
        "proto/ringway/cluster/v1/node.proto",
        "proto/ringway/cluster/v1/recovery.proto",
        "proto/ringway/v1/push.proto",
        "proto/ringway/v1/upstream.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // Binary fields as `bytes::Bytes`: frames pass through without copies.
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
