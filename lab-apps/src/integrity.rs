//! `sink` and `send`: end-to-end integrity of one TCP stream.
//!
//! The sender half-closes after its last byte; the sink answers with the SHA-256 of all
//! it received, as one line of lowercase hex, and closes. A mesh that drops, reorders or
//! truncates bytes, or that mishandles half-close, fails the comparison (or never answers).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::digest::{digests_match, to_hex};
use crate::net;
use crate::pattern::Pattern;

/// Longest answer a sender reads: a digest line is 65 bytes.
const MAX_ANSWER: u64 = 256;

/// Serves `sink` on `listener` forever.
pub async fn sink(listener: TcpListener) {
    net::serve(listener, "sink", sink_connection).await
}

async fn sink_connection(mut stream: TcpStream) -> io::Result<()> {
    // Who connected, for tests of where a connection comes from.
    if let Ok(peer) = stream.peer_addr() {
        eprintln!("sink: connection from {peer}");
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let line = format!("{}\n", to_hex(hasher));
    stream.write_all(line.as_bytes()).await?;
    stream.shutdown().await
}

#[derive(Debug, Clone)]
pub struct SendConfig {
    pub addr: SocketAddr,
    /// The local address to connect from; the kernel's choice if `None`.
    pub bind: Option<std::net::IpAddr>,
    pub bytes: u64,
    pub seed: u64,
    pub write_size: usize,
    /// Limit on the whole exchange after connecting.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SendReport {
    pub bytes: u64,
    pub sent_sha256: String,
    /// The sink's answer without its newline; empty if it closed without one.
    pub received_sha256: String,
    pub ok: bool,
    /// From connected to the answer read.
    pub seconds: f64,
}

impl SendReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "bytes": self.bytes,
            "sent_sha256": self.sent_sha256,
            "received_sha256": self.received_sha256,
            "ok": self.ok,
            "seconds": self.seconds,
        })
    }
}

/// Sends `bytes` bytes of the seeded pattern to a sink and checks its digest.
pub async fn send(cfg: &SendConfig) -> io::Result<SendReport> {
    let mut stream = match cfg.bind {
        Some(bind) => net::connect_from(cfg.addr, bind).await?,
        None => net::connect(cfg.addr).await?,
    };
    let start = Instant::now();
    let (sent_sha256, answer) = net::within(cfg.timeout, "send", async {
        let mut pattern = Pattern::new(cfg.seed);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; cfg.write_size.max(1)];
        let mut left = cfg.bytes;
        while left > 0 {
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let chunk = &mut buf[..n];
            pattern.fill(chunk);
            hasher.update(&*chunk);
            stream.write_all(chunk).await?;
            left -= n as u64;
        }
        stream.shutdown().await?;
        let mut answer = Vec::with_capacity(80);
        (&mut stream)
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .await?;
        Ok((to_hex(hasher), answer))
    })
    .await?;
    let seconds = start.elapsed().as_secs_f64();
    let answer = String::from_utf8_lossy(&answer);
    Ok(SendReport {
        bytes: cfg.bytes,
        ok: digests_match(&sent_sha256, &answer),
        received_sha256: answer.trim_end_matches(['\n', '\r']).to_string(),
        sent_sha256,
        seconds,
    })
}
