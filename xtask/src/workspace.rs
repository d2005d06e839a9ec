//! Running cargo on the workspace from xtask.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

/// The workspace root (xtask's parent directory).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Where the release binaries land.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("release")
}

pub fn cargo(args: &[&str]) -> Result<()> {
    println!("==> cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Builds every binary in release: the agent (with its eBPF object) and the lab programs.
pub fn build() -> Result<()> {
    build_with(&[])
}

/// [`build`], with `extra` arguments for cargo (features).
pub fn build_with(extra: &[String]) -> Result<()> {
    let mut args = vec!["build", "--release", "--workspace", "--bins"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)?;
    // The lab finds the binaries here.
    // SAFETY: single-threaded at this point; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("WEFT_BIN_DIR", bin_dir()) };
    Ok(())
}
