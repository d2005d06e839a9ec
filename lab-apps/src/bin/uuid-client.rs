//! `uuid-client`: N Whoami calls over one HTTP/2 connection; prints how the replies were
//! spread over server UUIDs and pods. Exits 0 only if every call succeeded.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use weft_lab_apps::print_json;
use weft_lab_apps::whoami::{ClientConfig, hostname, run_client};

#[derive(Parser)]
#[command(
    name = "uuid-client",
    about = "Counts which servers answer gRPC Whoami calls"
)]
struct Cli {
    /// Server URL, `http://IP:PORT`.
    #[arg(long)]
    connect: String,
    #[arg(long)]
    calls: u64,
    /// Calls in flight at a time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// Sent as the request's `caller` (default: $POD_NAME, else the hostname).
    #[arg(long, env = "POD_NAME")]
    caller: Option<String>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = ClientConfig {
        url: cli.connect,
        calls: cli.calls,
        // Bounded to 10 000 by the parser, so this fits.
        concurrency: cli.concurrency as usize,
        caller: cli.caller.unwrap_or_else(hostname),
        connect_timeout: CONNECT_TIMEOUT,
        call_timeout: CALL_TIMEOUT,
    };
    let report = match run_client(&cfg).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("uuid-client: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = print_json(&report.to_json()) {
        eprintln!("uuid-client: stdout: {e}");
        return ExitCode::FAILURE;
    }
    if report.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
