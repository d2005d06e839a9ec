//! Sockets as every lab program wants them: listeners with `SO_REUSEADDR` (a restarted
//! server must not wait out TIME_WAIT), and clients whose every wait has a limit.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How long a client waits for a TCP connection to be established.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds a listener with `SO_REUSEADDR`.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    socket.listen(1024)
}

/// Connects within [`CONNECT_TIMEOUT`].
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    within(CONNECT_TIMEOUT, "connect", TcpStream::connect(addr))
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("connect {addr}: {e}")))
}

/// Like [`connect`], from the local address `bind` (port chosen by the kernel).
pub async fn connect_from(addr: SocketAddr, bind: std::net::IpAddr) -> io::Result<TcpStream> {
    let socket = match bind {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket
        .bind(SocketAddr::new(bind, 0))
        .map_err(|e| io::Error::new(e.kind(), format!("bind {bind}: {e}")))?;
    within(CONNECT_TIMEOUT, "connect", socket.connect(addr))
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("connect {addr} from {bind}: {e}")))
}

/// Runs `fut`, failing with [`io::ErrorKind::TimedOut`] if it takes longer than `limit`.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(limit, fut).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: not done within {limit:?}"),
        )
    })?
}

/// Accepts connections forever, each handled on its own task. A failed connection is
/// reported on stderr and does not stop the server.
pub async fn serve<F, Fut>(listener: TcpListener, name: &'static str, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let conn = handle(stream);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        eprintln!("{name}: connection from {peer}: {e}");
                    }
                });
            }
            Err(e) => {
                // Usually EMFILE or an aborted handshake: both pass, so back off and go on.
                eprintln!("{name}: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The readiness line every server prints once bound: `{"listen":"IP:PORT"}`.
pub fn listen_report(listener: &TcpListener) -> io::Result<serde_json::Value> {
    Ok(serde_json::json!({ "listen": listener.local_addr()?.to_string() }))
}
