//! Hand-over between two agents on one node, as a DaemonSet's rolling update with
//! `maxSurge: 1` runs them: the new agent starts while the old one still serves, and the old
//! one is told to stop (SIGTERM) once the new one is ready.
//!
//! - Every listener the agent serves (:15001 for captured connections, :15008 for the
//!   tunnel, the admin, metrics and readiness ports, and the plaintext listener in each
//!   pod's namespace) is bound with `SO_REUSEPORT`, so the new agent listens beside the old
//!   one instead of failing to bind, and the kernel hands new connections to either.
//! - When the old agent closes a listener, the connections queued on it (handshake done, not
//!   accepted yet) would be reset. With `net.ipv4.tcp_migrate_req = 1` the kernel moves them
//!   to another listener of the same group instead (Linux 5.14, Documentation/networking/
//!   ip-sysctl.rst); the agent sets it in the node's namespace and in each enrolled pod's.
//! - The old agent then drains: the connections it carries run on until they end or the
//!   drain period (`--drain-seconds`) is over. There is no kernel TLS on these machines, so
//!   a tunnelled connection's TLS state lives in the process that made it and cannot move
//!   to the new agent; it ends with the old process, at the end of the drain at the latest.
//!   Connections the kernel splices between two pods of the node need no process at all.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use nix::sys::socket::{Backlog, SockaddrIn, bind, listen, setsockopt, sockopt};
use tokio::net::TcpListener;

/// The sysctl that moves a closed listener's queued connections to another of its group.
const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// A listener on `addr` that a next agent can bind beside this one.
pub fn listen_shared(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The same for a socket made elsewhere (in a pod's namespace): binds and listens on
/// `socket`, which must be a new IPv4 TCP socket.
pub fn listen_shared_fd(socket: OwnedFd, addr: std::net::SocketAddrV4) -> io::Result<OwnedFd> {
    setsockopt(&socket, sockopt::ReuseAddr, &true)?;
    setsockopt(&socket, sockopt::ReusePort, &true)?;
    bind(socket.as_raw_fd(), &SockaddrIn::from(addr))?;
    listen(&socket, Backlog::new(1024)?)?;
    Ok(socket)
}

/// Sets `net.ipv4.tcp_migrate_req = 1` in the calling thread's network namespace, so that a
/// closed listener's queued connections move to the next agent's. Whether it is already set
/// is read first, so that a read-only `/proc/sys` that has it is no error.
pub fn migrate_requests() -> io::Result<()> {
    if std::fs::read_to_string(MIGRATE_REQ)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(MIGRATE_REQ, "1")
}

/// Connections the agent carries that no registry of policy tracks (the outbound side of
/// the tunnel): counted, so that a stopping agent knows when it has drained.
#[derive(Clone, Default)]
pub struct Live(Arc<AtomicUsize>);

/// Held by a live connection's task.
pub struct LiveGuard(Arc<AtomicUsize>);

impl Live {
    pub fn enter(&self) -> LiveGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        LiveGuard(self.0.clone())
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Waits until `live` reports no connection or `grace` is over; returns how many were left
/// (and are cut when the agent exits).
pub async fn drain(grace: Duration, live: impl Fn() -> usize) -> usize {
    let deadline = tokio::time::Instant::now() + grace;
    let mut left = live();
    if left > 0 {
        tracing::info!(
            connections = left,
            grace_s = grace.as_secs(),
            "draining: the connections this agent carries run on until they end or the drain period is over"
        );
    }
    while left > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = live();
    }
    if left > 0 {
        tracing::warn!(
            connections = left,
            "drain period over: the connections still open end with this agent"
        );
    } else {
        tracing::info!("drained: no connection left");
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_listeners_share_a_port_and_the_second_serves_when_the_first_closes() {
        let first = listen_shared("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = first.local_addr().unwrap();
        let second = listen_shared(addr, 16).unwrap();
        drop(first);
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_, peer) = second.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
    }

    #[tokio::test]
    async fn a_plain_listener_still_refuses_a_second_binding() {
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let taken = listen_shared(plain.local_addr().unwrap(), 16);
        assert!(
            taken.is_err(),
            "SO_REUSEPORT must not take a port from a process that did not offer it"
        );
    }

    #[tokio::test]
    async fn drain_returns_when_the_last_connection_ends_and_counts_what_is_left() {
        let live = Live::default();
        let guard = live.enter();
        let counted = live.clone();
        let drained =
            tokio::spawn(async move { drain(Duration::from_secs(10), || counted.count()).await });
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            !drained.is_finished(),
            "drained while a connection was open"
        );
        drop(guard);
        assert_eq!(drained.await.unwrap(), 0);

        let _held = live.enter();
        let left = drain(Duration::from_millis(200), || live.count()).await;
        assert_eq!(left, 1);
    }
}
