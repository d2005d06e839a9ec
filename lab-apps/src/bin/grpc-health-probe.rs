//! A gRPC health probe, as a kubelet's `grpc:` probe makes it: `grpc.health.v1.Health/Check`
//! (or the first `--watch` updates of `Watch`) against one address, over plaintext HTTP/2.
//! Prints one JSON line, `{"status":"SERVING"}` or `{"error":"NOT_FOUND","message":".."}`,
//! and exits 0 either way: the caller asserts on the answer.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Parser)]
struct Cli {
    /// IP:PORT of the health service.
    #[arg(long)]
    addr: String,
    /// The service to ask about; empty for the server as a whole.
    #[arg(long, default_value = "")]
    service: String,
    /// Read this many updates of Watch instead of calling Check.
    #[arg(long)]
    watch: Option<usize>,
    /// Extra metadata (key=value), repeatable.
    #[arg(long)]
    header: Vec<String>,
}

fn status_name(status: i32) -> String {
    tonic_health::pb::health_check_response::ServingStatus::try_from(status)
        .map_or_else(|_| status.to_string(), |s| s.as_str_name().to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cli.addr))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connecting to {}", cli.addr))?;
    let mut client = HealthClient::new(channel);
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: cli.service.clone(),
    });
    for h in &cli.header {
        let (k, v) = h.split_once('=').context("--header is key=value")?;
        request.metadata_mut().insert(
            tonic::metadata::MetadataKey::from_bytes(k.as_bytes())?,
            v.parse()?,
        );
    }
    let answer = match cli.watch {
        None => client
            .check(request)
            .await
            .map(|r| serde_json::json!({"status": status_name(r.into_inner().status)})),
        Some(n) => match client.watch(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let mut seen = Vec::new();
                while seen.len() < n {
                    match stream.message().await {
                        Ok(Some(update)) => seen.push(status_name(update.status)),
                        Ok(None) => break,
                        Err(status) => return print_error(&status),
                    }
                }
                Ok(serde_json::json!({"updates": seen}))
            }
            Err(status) => Err(status),
        },
    };
    match answer {
        Ok(value) => {
            println!("{value}");
            Ok(())
        }
        Err(status) => print_error(&status),
    }
}

fn print_error(status: &tonic::Status) -> Result<()> {
    println!(
        "{}",
        serde_json::json!({
            "error": format!("{:?}", status.code()),
            "code": status.code() as i32,
            "message": status.message(),
        })
    );
    Ok(())
}
