//! `uuid-server`: the `weft.demo.Whoami` gRPC service over h2c. It prints
//! `{"listen":"IP:PORT","uuid":"..","pod":".."}` on stdout once bound, then serves until
//! killed. Its fault flags make it a bad backend on purpose, for the waypoint's tests.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tonic::Code;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use weft_lab_apps::whoami::faults::FaultConfig;
use weft_lab_apps::whoami::{WhoamiService, hostname};
use weft_lab_apps::{net, print_json};

#[derive(Parser)]
#[command(
    name = "uuid-server",
    about = "gRPC Whoami server that answers with one UUID"
)]
struct Cli {
    #[arg(long)]
    listen: SocketAddr,
    /// Pod name in replies (default: $POD_NAME, else the hostname).
    #[arg(long, env = "POD_NAME")]
    pod: Option<String>,
    /// For each value of the `x-request-key` header, fail the first N calls (any method)
    /// with UNAVAILABLE. Calls without the header are not affected.
    #[arg(long, default_value_t = 0)]
    fail_first: u64,
    /// The gRPC status code (number) of the --fail-percent share of Whoami calls.
    #[arg(long, value_parser = error_code, requires = "fail_percent")]
    fail_status: Option<Code>,
    /// Share of Whoami calls that fail, spread evenly by arrival (100: every call).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    fail_percent: u8,
    /// Every Whoami call waits this long before it answers; a call's `x-delay-ms` header
    /// overrides it.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=300_000))]
    delay_ms: u64,
    /// Every Whoami call fails at once with this gRPC status code (number), which tonic
    /// sends as a trailers-only response.
    #[arg(long, value_parser = error_code)]
    trailers_only_status: Option<Code>,
}

/// A gRPC status code other than OK, by number (1..=16).
fn error_code(s: &str) -> Result<Code, String> {
    let n: i32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(1..=16).contains(&n) {
        return Err(format!("{n} is not an error code (1..=16)"));
    }
    Ok(Code::from_i32(n))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let faults = FaultConfig {
        fail_first: cli.fail_first,
        fail_status: cli.fail_status.unwrap_or(Code::Unavailable),
        fail_percent: cli.fail_percent,
        delay: Duration::from_millis(cli.delay_ms),
        trailers_only: cli.trailers_only_status,
    };
    let service = WhoamiService::with_faults(cli.pod.unwrap_or_else(hostname), faults.clone());
    let listener = net::listen(cli.listen).context("uuid-server: listen")?;
    let mut report = net::listen_report(&listener)?;
    report["uuid"] = service.uuid().into();
    report["pod"] = service.pod().into();
    print_json(&report)?;
    eprintln!(
        "uuid-server: uuid {} pod {} listening on {}",
        service.uuid(),
        service.pod(),
        listener.local_addr()?
    );
    if faults != FaultConfig::default() {
        eprintln!("uuid-server: misbehaving on purpose: {faults:?}");
    }
    // grpc.health.v1, as a real backend offers it: SERVING for the server as a whole and
    // for the Whoami service; any other name is NOT_FOUND.
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in ["", "weft.demo.Whoami"] {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    Server::builder()
        .add_service(health_service)
        .add_service(service.into_server())
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
        .context("uuid-server: serve")
}
