//! `grpc-stream`: checks the streaming calls of `weft.demo.Whoami` through whatever sits
//! between it and a `uuid-server`. Each command makes one call, prints one JSON object,
//! `{"ok":true,..}` or `{"ok":false,"error":"..","status":".."}`, and exits 0 only when
//! every message came back intact and in order.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use weft_lab_apps::print_json;
use weft_lab_apps::whoami::MAX_PAYLOAD;
use weft_lab_apps::whoami::metadata::Header;
use weft_lab_apps::whoami::streams::{self, StreamConfig};

#[derive(Parser)]
#[command(
    name = "grpc-stream",
    about = "Checks gRPC streaming calls message by message"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Common {
    /// Server URL, `http://IP:PORT`.
    #[arg(long)]
    connect: String,
    /// `K=V`: a header sent on the call (repeatable).
    #[arg(long = "header")]
    headers: Vec<Header>,
    /// Limit in seconds on the call after connecting.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
}

#[derive(Subcommand)]
enum Command {
    /// One bidirectional Echo call: send N numbered messages while reading the echoes.
    Echo {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        messages: u64,
        #[arg(long, default_value_t = 100, value_parser = payload_size)]
        size: usize,
    },
    /// One Echo call with one large message, checked by SHA-256.
    Big {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 4 * 1024 * 1024, value_parser = payload_size)]
        bytes: usize,
    },
    /// One client-streaming Upload call; the server's count and SHA-256 must match.
    Upload {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        messages: u64,
        #[arg(long, default_value_t = 1024, value_parser = payload_size)]
        size: usize,
    },
    /// One server-streaming Download call, checked message by message.
    Download {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        messages: u64,
        #[arg(long, default_value_t = 1024, value_parser = payload_size)]
        size: usize,
    },
    /// The server's counts of the calls it received.
    Stats {
        #[command(flatten)]
        common: Common,
    },
}

fn payload_size(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if n > MAX_PAYLOAD {
        return Err(format!("{n} is over the limit of {MAX_PAYLOAD}"));
    }
    Ok(n)
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn config(common: Common) -> StreamConfig {
    StreamConfig {
        url: common.connect,
        connect_timeout: CONNECT_TIMEOUT,
        timeout: Duration::from_secs(common.timeout),
        headers: common.headers,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Echo {
            common,
            messages,
            size,
        } => streams::echo(&config(common), messages, size).await,
        Command::Big { common, bytes } => streams::big(&config(common), bytes).await,
        Command::Upload {
            common,
            messages,
            size,
        } => streams::upload(&config(common), messages, size).await,
        Command::Download {
            common,
            messages,
            size,
        } => streams::download(&config(common), messages, size).await,
        Command::Stats { common } => streams::stats(&config(common)).await,
    };
    let (json, code) = match result {
        Ok(json) => (json, ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("grpc-stream: {e}");
            (e.to_json(), ExitCode::FAILURE)
        }
    };
    if let Err(e) = print_json(&json) {
        eprintln!("grpc-stream: stdout: {e}");
        return ExitCode::FAILURE;
    }
    code
}
