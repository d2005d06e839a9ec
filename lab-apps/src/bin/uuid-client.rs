//! `uuid-client`: N Whoami calls over one HTTP/2 connection; prints how the replies were
//! spread over server UUIDs and pods, their statuses and latency. Exits 0 only if every
//! call succeeded, unless `--allow-errors` (for tests that expect failures and read the
//! report instead).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use weft_lab_apps::print_json;
use weft_lab_apps::whoami::metadata::{Header, HeaderCycle};
use weft_lab_apps::whoami::{ClientConfig, MAX_PAYLOAD, hostname, run_client};

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
    /// `K=V`: a header sent on every call (repeatable).
    #[arg(long = "header")]
    headers: Vec<Header>,
    /// `K=PREFIX:N`: header K is PREFIX0..PREFIX{N-1}, round-robin over the calls; the
    /// report then counts the answering UUIDs per value (`by_header`).
    #[arg(long)]
    header_cycle: Option<HeaderCycle>,
    /// Send a fresh `x-request-key` on every call (see uuid-server --fail-first).
    #[arg(long)]
    unique_key: bool,
    /// Padding added to each request.
    #[arg(long, default_value_t = 0, value_parser = payload_size)]
    request_bytes: usize,
    /// Padding the server is asked to add to each reply.
    #[arg(long, default_value_t = 0, value_parser = payload_size)]
    reply_bytes: usize,
    /// How long the client waits for one call before counting it DeadlineExceeded.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    call_timeout_ms: u64,
    /// The gRPC deadline of each call, sent as `grpc-timeout`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    deadline_ms: Option<u64>,
    /// Calls per second: call i is due at start + i/RATE (as far as --concurrency allows),
    /// and its latency counts from then.
    #[arg(long, value_parser = rate)]
    rate: Option<f64>,
    /// Exit 0 even if calls failed (not if the connection did).
    #[arg(long)]
    allow_errors: bool,
}

fn payload_size(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if n > MAX_PAYLOAD {
        return Err(format!("{n} is over the limit of {MAX_PAYLOAD}"));
    }
    Ok(n)
}

fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a positive number of calls per second"
        )),
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = ClientConfig {
        // Bounded to 10 000 by the parser, so this fits.
        concurrency: cli.concurrency as usize,
        caller: cli.caller.unwrap_or_else(hostname),
        connect_timeout: CONNECT_TIMEOUT,
        call_timeout: Duration::from_millis(cli.call_timeout_ms),
        deadline: cli.deadline_ms.map(Duration::from_millis),
        headers: cli.headers,
        header_cycle: cli.header_cycle,
        unique_key: cli.unique_key,
        request_bytes: cli.request_bytes,
        // Checked against MAX_PAYLOAD, which fits a u32.
        reply_bytes: u32::try_from(cli.reply_bytes).unwrap_or(u32::MAX),
        rate: cli.rate,
        ..ClientConfig::new(cli.connect, cli.calls)
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
    if report.errors == 0 || cli.allow_errors {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
