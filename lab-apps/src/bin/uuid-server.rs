//! `uuid-server`: the `weft.demo.Whoami` gRPC service over h2c. It prints
//! `{"listen":"IP:PORT","uuid":"..","pod":".."}` on stdout once bound, then serves until
//! killed.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Parser;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

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
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let service = WhoamiService::new(cli.pod.unwrap_or_else(hostname));
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
    Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
        .context("uuid-server: serve")
}
