//! New-connection rate: workers that connect, exchange one byte with an `echo` server, and
//! close, for a fixed time. Clients close with a reset (zero linger) so that the client's
//! port range is not held in TIME_WAIT and the rate measures the path, not the port supply.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net;

pub struct ChurnConfig {
    pub addr: SocketAddr,
    pub duration: Duration,
    pub concurrency: usize,
}

pub struct ChurnReport {
    pub conns: u64,
    pub errors: u64,
    pub seconds: f64,
}

impl ChurnReport {
    pub fn to_json(&self) -> serde_json::Value {
        let per_s = if self.seconds > 0.0 {
            self.conns as f64 / self.seconds
        } else {
            0.0
        };
        serde_json::json!({ "conns": self.conns, "errors": self.errors, "seconds": self.seconds, "per_s": per_s })
    }
}

async fn one(addr: SocketAddr) -> io::Result<()> {
    let mut stream = net::connect(addr).await?;
    stream.write_all(b"x").await?;
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply).await?;
    // A zero linger: close() sends RST and leaves no TIME_WAIT behind.
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger);
    Ok(())
}

pub async fn churn(cfg: &ChurnConfig) -> io::Result<ChurnReport> {
    let conns = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let workers: Vec<_> = (0..cfg.concurrency)
        .map(|_| {
            let (conns, errors, addr) = (conns.clone(), errors.clone(), cfg.addr);
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    match tokio::time::timeout(Duration::from_secs(5), one(addr)).await {
                        Ok(Ok(())) => conns.fetch_add(1, Ordering::Relaxed),
                        _ => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.map_err(io::Error::other)?;
    }
    Ok(ChurnReport {
        conns: conns.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
    })
}
