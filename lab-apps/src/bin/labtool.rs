//! `labtool`: raw TCP traffic for the lab. Servers print `{"listen":"IP:PORT"}` once bound
//! and run until killed; clients print one JSON result and exit 0 only on success.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use weft_lab_apps::burst::{self, BurstConfig, BurstKind};
use weft_lab_apps::churn::{self, ChurnConfig};
use weft_lab_apps::integrity::{self, SendConfig};
use weft_lab_apps::latency::{self, RrConfig};
use weft_lab_apps::throughput::{self, TputConfig};
use weft_lab_apps::{net, print_json};

#[derive(Parser)]
#[command(
    name = "labtool",
    about = "TCP integrity, latency and throughput tools for the lab"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer each connection with the SHA-256 (hex line) of all it sent before EOF.
    Sink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Send N seeded pseudo-random bytes to a sink, half-close, and check its digest.
    Send {
        #[arg(long)]
        connect: SocketAddr,
        /// Connect from this local address.
        #[arg(long)]
        bind: Option<std::net::IpAddr>,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 65536, value_parser = positive)]
        write_size: usize,
        /// Limit in seconds on the exchange after connecting.
        #[arg(long, default_value_t = 120.0, value_parser = seconds)]
        timeout: f64,
    },
    /// Echo each connection back to itself until EOF.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Request/response latency over one TCP_NODELAY connection against `echo`.
    Rr {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 10000, value_parser = positive)]
        count: usize,
        #[arg(long, default_value_t = 1000)]
        warmup: usize,
        #[arg(long, default_value_t = 1, value_parser = positive)]
        size: usize,
        /// Limit in seconds on all round trips together.
        #[arg(long, default_value_t = 60.0, value_parser = seconds)]
        timeout: f64,
    },
    /// Count the bytes of each connection until EOF, answer the count as a big-endian u64.
    Discard {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Bulk throughput against `discard` over K parallel connections.
    Tput {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 3.0, value_parser = seconds)]
        seconds: f64,
        #[arg(long, default_value_t = 131072, value_parser = positive)]
        write_size: usize,
        #[arg(long, default_value_t = 1, value_parser = positive)]
        streams: usize,
        /// Seconds allowed after the run for the last writes and the counts.
        #[arg(long, default_value_t = 10.0, value_parser = seconds)]
        grace: f64,
    },
    /// Hold one connection to `echo`, one byte each way every 50 ms, until it ends or
    /// `seconds` pass; report how long it lived and how it ended (for revocation tests).
    Hold {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 20.0, value_parser = seconds)]
        seconds: f64,
    },
    /// Open `count` connections and leave them idle for `seconds`; report how many opened
    /// and how many the other side had not closed by then (for connection-cap tests).
    Idle {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, value_parser = positive)]
        count: usize,
        #[arg(long, default_value_t = 3.0, value_parser = seconds)]
        seconds: f64,
    },
    /// Open `count` connections that each use the path only in part (see `--kind`); report
    /// how many opened and how many failed to (for tests of what such connections leave).
    Burst {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, value_parser = positive)]
        count: usize,
        #[arg(long, value_enum)]
        kind: BurstKind,
        #[arg(long, default_value_t = 64, value_parser = positive)]
        concurrency: usize,
        /// Limit in seconds on opening one connection.
        #[arg(long, default_value_t = 10.0, value_parser = seconds)]
        connect_timeout: f64,
    },
    /// New connections per second against `echo`: connect, one byte each way, close.
    Conns {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 3.0, value_parser = seconds)]
        seconds: f64,
        #[arg(long, default_value_t = 16, value_parser = positive)]
        concurrency: usize,
    },
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(v)
    } else {
        Err("must be a positive number of seconds".into())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse().command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("labtool: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Sink { listen } => {
            let listener = bind("sink", listen)?;
            integrity::sink(listener).await;
        }
        Command::Echo { listen } => {
            let listener = bind("echo", listen)?;
            latency::echo(listener).await;
        }
        Command::Discard { listen } => {
            let listener = bind("discard", listen)?;
            throughput::discard(listener).await;
        }
        Command::Send {
            connect,
            bind,
            bytes,
            seed,
            write_size,
            timeout,
        } => {
            let cfg = SendConfig {
                addr: connect,
                bind,
                bytes,
                seed,
                write_size,
                timeout: Duration::from_secs_f64(timeout),
            };
            let report = integrity::send(&cfg)
                .await
                .with_context(|| format!("send {bytes} bytes to {connect}"))?;
            print_json(&report.to_json())?;
            if !report.ok {
                eprintln!(
                    "labtool send: digest mismatch: sent {} received {:?}",
                    report.sent_sha256, report.received_sha256
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Rr {
            connect,
            count,
            warmup,
            size,
            timeout,
        } => {
            let cfg = RrConfig {
                addr: connect,
                count,
                warmup,
                size,
                timeout: Duration::from_secs_f64(timeout),
            };
            let summary = latency::rr(&cfg)
                .await
                .with_context(|| format!("rr against {connect}"))?;
            print_json(&summary.to_json())?;
        }
        Command::Tput {
            connect,
            seconds,
            write_size,
            streams,
            grace,
        } => {
            let cfg = TputConfig {
                addr: connect,
                duration: Duration::from_secs_f64(seconds),
                write_size,
                streams,
                grace: Duration::from_secs_f64(grace),
            };
            let report = throughput::tput(&cfg)
                .await
                .with_context(|| format!("tput against {connect}"))?;
            print_json(&report.to_json())?;
        }
        Command::Hold { connect, seconds } => {
            print_json(&hold(connect, Duration::from_secs_f64(seconds)).await?)?;
        }
        Command::Idle {
            connect,
            count,
            seconds,
        } => {
            let mut open = Vec::with_capacity(count);
            let mut failed = 0;
            for _ in 0..count {
                match weft_lab_apps::net::connect(connect).await {
                    Ok(stream) => open.push(stream),
                    Err(_) => failed += 1,
                }
            }
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            // Still open: a read would block (no EOF, no reset, nothing sent).
            let mut probe = [0u8; 1];
            let alive = open
                .iter()
                .filter(|s| {
                    matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                })
                .count();
            print_json(&serde_json::json!({
                "opened": open.len(),
                "failed": failed,
                "alive": alive,
            }))?;
        }
        Command::Burst {
            connect,
            count,
            kind,
            concurrency,
            connect_timeout,
        } => {
            let cfg = BurstConfig {
                addr: connect,
                count,
                kind,
                concurrency,
                connect_timeout: Duration::from_secs_f64(connect_timeout),
            };
            print_json(&burst::burst(cfg).await?)?;
        }
        Command::Conns {
            connect,
            seconds,
            concurrency,
        } => {
            let cfg = ChurnConfig {
                addr: connect,
                duration: Duration::from_secs_f64(seconds),
                concurrency,
            };
            let report = churn::churn(&cfg)
                .await
                .with_context(|| format!("conns against {connect}"))?;
            print_json(&report.to_json())?;
            if report.conns == 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `labtool hold`: `{"round_trips": N, "held_ms": T, "ended": "closed"|"error: .."|"timeout"}`.
async fn hold(addr: SocketAddr, limit: Duration) -> Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let started = std::time::Instant::now();
    let mut trips = 0u64;
    let ended = loop {
        if started.elapsed() >= limit {
            break "timeout".to_string();
        }
        let mut byte = [0u8; 1];
        let trip = async {
            stream.write_all(b"x").await?;
            stream.read(&mut byte).await
        };
        match tokio::time::timeout(Duration::from_secs(2), trip).await {
            Ok(Ok(1)) => trips += 1,
            Ok(Ok(_)) => break "closed".to_string(),
            Ok(Err(e)) => break format!("error: {e}"),
            Err(_) => break "error: no echo within 2 s".to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Ok(serde_json::json!({
        "round_trips": trips,
        "held_ms": started.elapsed().as_millis() as u64,
        "ended": ended,
    }))
}

/// Binds, and announces the bound address on stdout for the harness.
fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener> {
    let listener = net::listen(addr).with_context(|| format!("{name}: listen"))?;
    print_json(&net::listen_report(&listener)?)?;
    eprintln!("labtool {name}: listening on {}", listener.local_addr()?);
    Ok(listener)
}
