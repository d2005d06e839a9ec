//! `cargo xtask fuzz --seconds N`: every fuzz target of `fuzz/` (cargo-fuzz, libFuzzer,
//! with the nightly toolchain), each until it has made `--runs` executions or spent
//! `--seconds`, from a corpus seeded with `fuzz/seeds/<target>/` (and, for `config`, every
//! YAML document of `../shared/seeds/`). Prints one JSON object: each target's executions.
//! Fails if a target crashes (libFuzzer leaves the input under `fuzz/artifacts/`) or
//! falls short of `--runs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::workspace::root;

const TARGETS: &[&str] = &[
    "hbone_connect",
    "config",
    "call_headers",
    "path_policy",
    "ca_csr",
];

fn cargo_fuzz() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if installed {
        return Ok(());
    }
    println!("==> cargo install cargo-fuzz --locked");
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()?;
    if !status.success() {
        bail!("cargo-fuzz did not install");
    }
    Ok(())
}

fn copy_files(from: &Path, to: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<usize> {
    let mut copied = 0;
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(0);
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            copied += copy_files(&path, to, keep)?;
        } else if keep(&path) {
            let name = format!(
                "{}-{}",
                path.parent()
                    .and_then(Path::file_name)
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                entry.file_name().to_string_lossy()
            );
            std::fs::copy(&path, to.join(name))
                .with_context(|| format!("copying {}", path.display()))?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// The executions libFuzzer reports (`stat::number_of_executed_units`, or `Done N runs`).
fn executions(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|line| {
        line.strip_prefix("stat::number_of_executed_units:")
            .map(str::trim)
            .or_else(|| {
                line.strip_prefix("Done ")
                    .and_then(|rest| rest.split_whitespace().next())
            })
            .and_then(|n| n.parse().ok())
    })
}

pub fn run(seconds: u64, runs: u64, only: Option<&str>) -> Result<()> {
    cargo_fuzz()?;
    let fuzz = root().join("fuzz");
    let shared = root()
        .parent()
        .map(|p| p.join("shared/seeds"))
        .unwrap_or_default();
    let mut figures = serde_json::Map::new();
    let mut failed = Vec::new();
    for target in TARGETS.iter().filter(|t| only.is_none_or(|o| o == **t)) {
        let corpus: PathBuf = fuzz.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        copy_files(&fuzz.join("seeds").join(target), &corpus, &|_| true)?;
        if *target == "config" {
            let n = copy_files(&shared, &corpus, &|p| {
                p.extension().is_some_and(|e| e == "yaml" || e == "yml")
            })?;
            if n == 0 {
                println!(
                    "note: no YAML under {}: the config corpus has the fuzz seeds only",
                    shared.display()
                );
            }
        }
        println!("==> cargo +nightly fuzz run {target} ({runs} runs, at most {seconds} s)");
        let out = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .args([
                "--",
                &format!("-runs={runs}"),
                &format!("-max_total_time={seconds}"),
                "-print_final_stats=1",
            ])
            .current_dir(root())
            .output()
            .context("running cargo fuzz")?;
        let log = String::from_utf8_lossy(&out.stderr);
        let done = executions(&log).unwrap_or(0);
        figures.insert(format!("{target}_executions"), done.into());
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "{target} failed:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            failed.push(format!("{target} crashed (see fuzz/artifacts/{target}/)"));
        } else if done < runs {
            failed.push(format!(
                "{target} made {done} executions in {seconds} s, not {runs}"
            ));
        }
    }
    println!("{}", serde_json::Value::Object(figures));
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}
