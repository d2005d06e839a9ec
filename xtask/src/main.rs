//! Weft's developer commands. `cargo xtask <command>`; each one bootstraps what it needs.
//!
//! - `setup`: nightly rust-src, bpf-linker (against nightly's own libLLVM), Debian packages.
//! - `test`: every test: unit tests, then the end-to-end tests in the lab (root).
//! - `demo`: a two-node lab, a gRPC service with three replicas, real traffic, the results.
//! - `bench <scenario> --json FILE`: figures against a direct baseline measured in the same run.
//! - `fuzz --seconds N`: every fuzz target, a million executions each (nightly, cargo-fuzz).
//! - `lab down`: removes every lab on the machine, including those of crashed runs.

mod bench;
mod demo;
mod fuzz;
mod setup;
mod test;
mod workspace;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what builds and tests need (idempotent).
    Setup,
    /// Build everything (the agent embeds the eBPF object).
    Build,
    /// Run every test: unit tests and the end-to-end lab tests.
    Test {
        /// Only tests whose name contains this (passed to cargo test).
        filter: Option<String>,
    },
    /// Bring up a lab, run the gRPC demo, show the results, tear down.
    Demo,
    /// Run a benchmark scenario and write its figures as one flat JSON object.
    Bench {
        #[arg(value_enum)]
        scenario: bench::Scenario,
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Build with these cargo features too (`weft-agent/mimalloc,weft-waypoint/mimalloc`,
        /// `weft-mesh/aws-lc`): the same benchmark of an alternative.
        #[arg(long)]
        features: Option<String>,
        /// Build without the default features (the system allocator instead of jemalloc).
        #[arg(long)]
        no_default_features: bool,
    },
    /// Run every fuzz target (`fuzz/`) for `--runs` executions, at most `--seconds` each.
    Fuzz {
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        #[arg(long, default_value_t = 1_000_000)]
        runs: u64,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Manage labs.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
}

#[derive(Subcommand)]
enum LabCommand {
    /// Remove every lab on this machine (idempotent).
    Down,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::run(),
        Command::Build => {
            setup::run()?;
            workspace::build()
        }
        Command::Test { filter } => test::run(filter.as_deref()),
        Command::Demo => demo::run(),
        Command::Bench {
            scenario,
            json,
            features,
            no_default_features,
        } => {
            let mut build = Vec::new();
            if no_default_features {
                build.push("--no-default-features".to_string());
            }
            if let Some(features) = features {
                build.extend(["--features".to_string(), features]);
            }
            bench::run(scenario, json.as_deref(), &build)
        }
        Command::Fuzz {
            seconds,
            runs,
            target,
        } => fuzz::run(seconds, runs, target.as_deref()),
        Command::Lab {
            command: LabCommand::Down,
        } => {
            weft_lab::down_all();
            println!("no lab is left on this machine");
            Ok(())
        }
    }
}
