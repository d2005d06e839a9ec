//! `discard` and `tput`: bulk throughput.
//!
//! Throughput is counted at the receiver: each stream half-closes when its time is up and
//! the server answers with the bytes it actually read, as a big-endian u64. Bytes still in
//! flight in a proxy's buffers when the clock stops are therefore not counted as delivered.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::net;
use crate::pattern::Pattern;

/// Serves `discard` on `listener` forever.
pub async fn discard(listener: TcpListener) {
    net::serve(listener, "discard", discard_connection).await
}

async fn discard_connection(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut count: u64 = 0;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        count += n as u64;
    }
    stream.write_all(&count.to_be_bytes()).await?;
    stream.shutdown().await
}

#[derive(Debug, Clone)]
pub struct TputConfig {
    pub addr: SocketAddr,
    pub duration: Duration,
    pub write_size: usize,
    pub streams: usize,
    /// Extra time, after `duration`, allowed for the last writes and the counts.
    pub grace: Duration,
}

#[derive(Debug, Clone)]
pub struct TputReport {
    pub streams: usize,
    pub write_size: usize,
    /// Sum of the counts the server reported.
    pub bytes: u64,
    /// From the first write to the last count received.
    pub seconds: f64,
    pub gbps: f64,
}

impl TputReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "streams": self.streams,
            "write_size": self.write_size,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "gbps": self.gbps,
        })
    }
}

/// Opens all streams, then writes on all of them for `duration`.
pub async fn tput(cfg: &TputConfig) -> io::Result<TputReport> {
    let streams = cfg.streams.max(1);
    let mut conns = Vec::with_capacity(streams);
    for _ in 0..streams {
        let stream = net::connect(cfg.addr).await?;
        conns.push(stream);
    }

    let mut buf = vec![0u8; cfg.write_size.max(1)];
    Pattern::new(0).fill(&mut buf);
    let buf: Arc<[u8]> = buf.into();

    let start = Instant::now();
    let deadline = start + cfg.duration;
    let limit = cfg.duration + cfg.grace;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|stream| {
            let buf = Arc::clone(&buf);
            tokio::spawn(net::within(
                limit,
                "tput stream",
                one_stream(stream, buf, deadline),
            ))
        })
        .collect();

    let mut bytes = 0u64;
    let mut last = start;
    for task in tasks {
        let (count, at) = task.await.map_err(io::Error::other)??;
        bytes += count;
        last = last.max(at);
    }
    let seconds = (last - start).as_secs_f64();
    Ok(TputReport {
        streams,
        write_size: buf.len(),
        bytes,
        seconds,
        gbps: if seconds > 0.0 {
            bytes as f64 * 8.0 / seconds / 1e9
        } else {
            0.0
        },
    })
}

/// Writes until `deadline`, half-closes, and returns the server's count and when it came.
async fn one_stream(
    mut stream: TcpStream,
    buf: Arc<[u8]>,
    deadline: Instant,
) -> io::Result<(u64, Instant)> {
    while Instant::now() < deadline {
        stream.write_all(&buf).await?;
    }
    stream.shutdown().await?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).await?;
    Ok((u64::from_be_bytes(count), Instant::now()))
}
