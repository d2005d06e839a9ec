//! Compiles `proto/demo.proto` with protox (a pure-Rust protobuf compiler), so building
//! the crate needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/demo.proto");
    let fds = protox::compile(["proto/demo.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
