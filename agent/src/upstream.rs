//! The seam between capture and transport: how the agent reaches a connection's destination.
//!
//! Today the destination is dialled directly in plain TCP. The HBONE tunnel (mutual TLS,
//! HTTP/2 CONNECT to the destination node's agent) will be a second implementation of
//! `Upstream`; nothing in `outbound` changes when it arrives.

use std::{
    future::Future,
    io,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use tokio::{
    net::{TcpSocket, TcpStream},
    sync::watch,
};
use weft_mesh::{
    hbone::{H2Stream, splice},
    refusal::Answer,
    relayed::splice_answering,
};

/// Copy buffer per direction of a TCP-to-TCP connection, at most: large enough that bulk
/// transfers cost few system calls. A direction starts at `FIRST_BUFFER` when bytes arrive,
/// doubles while reads fill it, and gives its buffer back once the socket has had nothing
/// to read for `IDLE_BUFFER`, so an idle connection holds none and a busy one keeps its size.
const COPY_BUFFER: usize = 64 * 1024;
const FIRST_BUFFER: usize = 4 * 1024;
const IDLE_BUFFER: Duration = Duration::from_secs(1);

/// How a connection reached its destination, for `connection_security_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Through the mutual-TLS tunnel.
    MutualTls,
    /// In plaintext: on this node, or to a destination outside the mesh.
    None,
}

impl Security {
    pub fn label(self) -> &'static str {
        match self {
            Security::MutualTls => "mutual_tls",
            Security::None => "none",
        }
    }
}

/// An opened way to a destination: a TCP connection, or a stream of the tunnel; either
/// of them registered with the connection manager when policy admitted it, so that a
/// later policy can end it.
pub enum Opened {
    Tcp(TcpStream),
    Tunnel(H2Stream),
    Revocable(Box<Opened>, crate::connections::Tracked),
}

impl Opened {
    /// Joins `client` to it both ways, half-close included, until both sides finish.
    /// Returns the bytes (from the client, to the client). With `answer` (a port declared
    /// gRPC or HTTP/2), a tunnel that breaks leaves the client's open calls answered with
    /// it, not cut (`weft_mesh::relayed`), and `drain` turning true (the agent stops) tells
    /// the client to take its next calls elsewhere (GOAWAY).
    pub async fn join(
        self,
        client: &mut TcpStream,
        answer: Option<&Answer>,
        drain: Option<&watch::Receiver<bool>>,
    ) -> io::Result<(u64, u64)> {
        match self {
            Opened::Tcp(upstream) => {
                let (client, upstream) = (&*client, &upstream);
                tokio::try_join!(pump(client, upstream), pump(upstream, client))
            }
            Opened::Tunnel(mut tunnel) => match answer {
                Some(answer) => {
                    let within = crate::outbound::ANSWER_WITHIN;
                    splice_answering(&mut tunnel, client, answer, within, drain.cloned()).await
                }
                None => splice(&mut tunnel, client).await,
            }
            .map(|(to_client, from_client)| (from_client, to_client)),
            Opened::Revocable(inner, mut tracked) => {
                tokio::select! {
                    joined = Box::pin(inner.join(client, answer, drain)) => joined,
                    reason = tracked.revoked() => {
                        Err(io::Error::new(io::ErrorKind::PermissionDenied, reason))
                    }
                }
            }
        }
    }
}

/// Copies `from` to `to` until `from` ends, then ends `to`'s sending side (half-close).
/// Returns the bytes copied. A buffer exists only while `from` has had bytes lately.
async fn pump(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    use std::os::fd::{AsFd, AsRawFd};
    let mut buf: Vec<u8> = Vec::new();
    let mut copied = 0u64;
    loop {
        if buf.is_empty() {
            from.readable().await?;
        } else if let Ok(ready) = tokio::time::timeout(IDLE_BUFFER, from.readable()).await {
            ready?;
        } else {
            // Idle: nothing to hold on to until the next bytes.
            buf = Vec::new();
            from.readable().await?;
        }
        if buf.is_empty() {
            buf = vec![0; FIRST_BUFFER];
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut written = 0;
        while written < n {
            to.writable().await?;
            match to.try_write(&buf[written..n]) {
                Ok(w) => written += w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        copied += n as u64;
        if n == buf.len() && buf.len() < COPY_BUFFER {
            buf = vec![0; buf.len() * 2];
        }
    }
    match nix::sys::socket::shutdown(to.as_fd().as_raw_fd(), nix::sys::socket::Shutdown::Write) {
        // The peer may have gone already.
        Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(copied),
        Err(e) => Err(e.into()),
    }
}

/// Opens ways to destinations.
pub trait Upstream: Send + Sync + 'static {
    /// Opens a way to `target` on behalf of the pod at `source`.
    fn connect(
        &self,
        source: SocketAddr,
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<(Opened, Security)>> + Send;

    /// Whether `connect` takes a Service's cluster IP bound to a waypoint as it is (and
    /// sends it there), rather than a pod the agent picked.
    fn sends_to_waypoints(&self) -> bool {
        false
    }
}

/// Where the agent's own connections leave from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DialFrom {
    pub ip: Ipv4Addr,
    /// `SO_MARK` for the socket: the agent's mark on connections to the node's pods, whose
    /// gate trusts the dial address only with it.
    pub mark: Option<u32>,
}

impl DialFrom {
    /// To the node's pods: from the dial address, with the agent's mark. A pod sees the
    /// connection come from `ip`, and routes its answers back through its default route.
    pub fn pods(ip: Ipv4Addr) -> Self {
        DialFrom {
            ip,
            mark: Some(weft_ebpf_common::AGENT_MARK),
        }
    }
}

/// Plain TCP straight to the destination.
#[derive(Debug, Clone)]
pub struct DirectTcp {
    pub connect_timeout: Duration,
    pub from: DialFrom,
}

impl Upstream for DirectTcp {
    async fn connect(
        &self,
        _source: SocketAddr,
        target: SocketAddr,
    ) -> io::Result<(Opened, Security)> {
        Ok((
            Opened::Tcp(dial_from(self.from, target, self.connect_timeout).await?),
            Security::None,
        ))
    }
}

/// To destinations outside the mesh, as the pod itself would reach them: from a socket in
/// the pod's own network namespace, bound to the pod's address. Cloud metadata protections
/// and egress NetworkPolicy see the pod, not the node, and `0.0.0.0` means the pod. A pod
/// whose namespace the agent has not found yet is refused rather than dialled as the node.
#[derive(Clone)]
pub struct Egress {
    pub connect_timeout: Duration,
    pub namespaces: crate::redirect::netns::PodNamespaces,
}

impl Upstream for Egress {
    async fn connect(
        &self,
        source: SocketAddr,
        target: SocketAddr,
    ) -> io::Result<(Opened, Security)> {
        let std::net::IpAddr::V4(pod) = source.ip() else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "IPv6 pods are not captured",
            ));
        };
        let namespaces = self.namespaces.clone();
        let fd = tokio::task::spawn_blocking(move || {
            let netns = namespaces.get(pod).map_err(|reason| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the network namespace of pod {pod}: {reason}"),
                )
            })?;
            crate::redirect::netns::tcp_socket_in(&netns)
        })
        .await
        .map_err(io::Error::other)??;
        let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
        let from = DialFrom {
            ip: pod,
            mark: None,
        };
        let stream = connect_socket(socket, from, target, self.connect_timeout).await?;
        Ok((Opened::Tcp(stream), Security::None))
    }
}

/// Dials `target` from `from`, with TCP_NODELAY.
///
/// The port is left to connect() (IP_BIND_ADDRESS_NO_PORT): a port chosen at bind() time
/// must be free of TIME_WAIT sockets for every destination, so an agent dialling one pod many
/// times a second would run out of ports; connect() only needs the whole 4-tuple unique, and
/// may reuse TIME_WAIT ports (tcp_tw_reuse).
pub async fn dial_from(
    from: DialFrom,
    target: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    connect_socket(TcpSocket::new_v4()?, from, target, timeout).await
}

async fn connect_socket(
    socket: TcpSocket,
    from: DialFrom,
    target: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(&socket, sockopt::IpBindAddressNoPort, &true)?;
    if let Some(mark) = from.mark {
        setsockopt(&socket, sockopt::Mark, &mark)?;
    }
    socket.bind(SocketAddr::from((from.ip, 0)))?;
    let stream = tokio::time::timeout(timeout, socket.connect(target))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {target} timed out"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
