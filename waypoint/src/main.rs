//! weft-waypoint: Weft's L7 proxy, one per namespace or service account.
//!
//! It will accept HBONE, split each HTTP/2 connection into its streams, and route, balance,
//! retry and authorize every gRPC call on its own. For now it only serves its health and
//! admin endpoints, so that deployments and probes can be wired up ahead of the proxy.

use std::{net::SocketAddr, process::ExitCode, sync::Arc};

use clap::Parser;
use tokio::net::TcpListener;
use weft_mesh::admin::{Handler, Reply};

#[derive(Parser)]
#[command(
    name = "weft-waypoint",
    version,
    about = "Weft's L7 waypoint (health endpoints only, so far)"
)]
struct Settings {
    /// Admin port (/healthz).
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// Readiness port (/healthz/ready).
    #[arg(long, default_value_t = 15021)]
    readiness_port: u16,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let settings = Settings::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("weft-waypoint: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("weft-waypoint: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> std::io::Result<()> {
    let health: Handler = Arc::new(|path| match path {
        "/healthz" | "/healthz/ready" => Reply::text(200, "ok\n"),
        _ => Reply::not_found(),
    });
    let mut servers = Vec::new();
    for port in [settings.admin_port, settings.readiness_port] {
        let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
        servers.push(tokio::spawn(weft_mesh::admin::serve(
            listener,
            health.clone(),
            shutdown(),
        )));
    }
    tracing::info!(
        admin = settings.admin_port,
        ready = settings.readiness_port,
        "weft-waypoint serving health"
    );
    for server in servers {
        let _ = server.await;
    }
    Ok(())
}

async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
}
