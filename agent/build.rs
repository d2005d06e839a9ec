//! Builds the eBPF programs (`agent-ebpf/`) and hands the object file to the agent, which
//! embeds it: the agent ships as one file. Needs the nightly toolchain with rust-src and
//! bpf-linker, which `cargo xtask setup` installs.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let ebpf = manifest.join("../agent-ebpf");
    for watched in [
        "src",
        "common/src",
        "Cargo.toml",
        "common/Cargo.toml",
        ".cargo/config.toml",
    ] {
        println!("cargo::rerun-if-changed={}", ebpf.join(watched).display());
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    let mut cargo = Command::new("rustup");
    cargo
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core"])
        .current_dir(&ebpf);
    // The outer build's toolchain and flags must not leak into the nightly BPF build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let leaks = (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTUP_TOOLCHAIN")
            || key == "RUSTFLAGS"
            || key == "RUSTDOC";
        if leaks {
            cargo.env_remove(key);
        }
    }
    let status = cargo.status().unwrap_or_else(|err| {
        panic!("cannot run `rustup run nightly cargo` to build agent-ebpf ({err}); run `cargo xtask setup`")
    });
    if !status.success() {
        panic!(
            "building agent-ebpf failed; `cargo xtask setup` installs nightly rust-src and bpf-linker"
        );
    }
    let object = ebpf.join("target/bpfel-unknown-none/release/weft-agent-ebpf");
    std::fs::copy(&object, out.join("weft.bpf.o"))
        .unwrap_or_else(|err| panic!("cannot copy {}: {err}", object.display()));
}
