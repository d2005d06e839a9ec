//! Bursts of connections that use a capture path only in part: connects abandoned before
//! they complete, connections reset as soon as they open, and connections that send a byte
//! and close without waiting for anything. The tests use them to check that what such
//! connections leave behind in the node's maps is bounded and goes away.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{io::AsyncWriteExt, net::TcpSocket};

/// What each connection of a burst does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BurstKind {
    /// connect() is started, and the socket closed before the handshake can complete.
    Abandon,
    /// The connection opens and is closed at once with a reset (zero linger).
    Reset,
    /// The connection opens, sends one byte and is closed (FIN), nothing read.
    SendClose,
}

pub struct BurstConfig {
    pub addr: SocketAddr,
    pub count: usize,
    pub kind: BurstKind,
    pub concurrency: usize,
    /// How long one connection may take to open.
    pub connect_timeout: Duration,
}

fn socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

/// One connection of the burst; true if it opened.
async fn one(cfg: &BurstConfig) -> io::Result<bool> {
    let connect = socket(cfg.addr)?.connect(cfg.addr);
    if cfg.kind == BurstKind::Abandon {
        // The first poll sends the SYN (a non-blocking connect); a zero timeout then drops
        // the socket before the answer can arrive.
        return Ok(tokio::time::timeout(Duration::ZERO, connect).await.is_ok());
    }
    let mut stream = tokio::time::timeout(cfg.connect_timeout, connect)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    match cfg.kind {
        BurstKind::Reset => {
            let linger = nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger)?;
        }
        BurstKind::SendClose => stream.write_all(b"x").await?,
        BurstKind::Abandon => {}
    }
    Ok(true)
}

/// Runs the burst: `{"attempted": N, "opened": N, "failed": N}`.
pub async fn burst(cfg: BurstConfig) -> io::Result<serde_json::Value> {
    let cfg = Arc::new(cfg);
    let next = Arc::new(AtomicUsize::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..cfg.concurrency.min(cfg.count))
        .map(|_| {
            let (cfg, next, opened, failed) =
                (cfg.clone(), next.clone(), opened.clone(), failed.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < cfg.count {
                    match one(&cfg).await {
                        Ok(true) => opened.fetch_add(1, Ordering::Relaxed),
                        Ok(false) => 0,
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.map_err(io::Error::other)?;
    }
    Ok(serde_json::json!({
        "attempted": cfg.count,
        "opened": opened.load(Ordering::Relaxed),
        "failed": failed.load(Ordering::Relaxed),
    }))
}
