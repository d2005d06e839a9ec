//! `echo` and `rr`: request/response latency over one connection.
//!
//! `rr` keeps exactly one message in flight, so each sample is one full round trip
//! through whatever sits between the pods; Nagle is off at both ends so that small
//! messages are not held back.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::net;
use crate::pattern::Pattern;
use crate::stats::Summary;

/// Serves `echo` on `listener` forever.
pub async fn echo(listener: TcpListener) {
    net::serve(listener, "echo", echo_connection).await
}

async fn echo_connection(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n]).await?;
    }
    stream.shutdown().await
}

#[derive(Debug, Clone)]
pub struct RrConfig {
    pub addr: SocketAddr,
    /// Round trips measured.
    pub count: usize,
    /// Round trips made first and not measured.
    pub warmup: usize,
    /// Bytes each way per round trip.
    pub size: usize,
    /// Limit on all round trips together.
    pub timeout: Duration,
}

/// Runs the round trips and summarises the measured ones.
pub async fn rr(cfg: &RrConfig) -> io::Result<Summary> {
    let mut stream = net::connect(cfg.addr).await?;
    stream.set_nodelay(true)?;
    let mut request = vec![0u8; cfg.size.max(1)];
    Pattern::new(0).fill(&mut request);
    let mut reply = vec![0u8; request.len()];
    let mut samples = Vec::with_capacity(cfg.count);
    net::within(cfg.timeout, "rr", async {
        for i in 0..cfg.warmup + cfg.count {
            let t = Instant::now();
            stream.write_all(&request).await?;
            stream.read_exact(&mut reply).await?;
            let rtt = t.elapsed();
            if i >= cfg.warmup {
                samples.push(rtt);
            }
        }
        Ok(())
    })
    .await?;
    if reply != request {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "echo answered different bytes",
        ));
    }
    stream.shutdown().await?;
    Summary::of(&mut samples)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "count must be at least 1"))
}
