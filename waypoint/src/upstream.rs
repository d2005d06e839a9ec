//! The waypoint's connections to backends. Each is HTTP/2 inside one HBONE stream to the
//! backend's node agent, which hands it to the pod, so the backend sees an ordinary h2c
//! connection and the node agent still enforces L4 policy with the waypoint's identity.
//!
//! An endpoint keeps a few such connections and spreads calls over them. A connection
//! takes calls up to the stream limit (`http.maxConcurrentStreams`, at most the backend's
//! own SETTINGS_MAX_CONCURRENT_STREAMS, which h2 enforces by queueing) and up to
//! `http.maxRequestsPerConnection`; past that the endpoint dials another, up to
//! `tcp.maxConnections`. Connections idle longer than `http.idleTimeout` are closed. The
//! endpoints of one pod in clusters with the same limits share their connections
//! (`Clusters::connections`), so that a pod behind many Services is not dialled once per
//! Service.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use weft_mesh::hbone::{H2Stream, Pool, PoolKey};

use http::{Request, Response, request::Parts};
use hyper::body::Incoming;

use crate::{
    deadline::Deadline,
    endpoint::Endpoint,
    grpc,
    replay::{Replay, ReplayBody},
    retry::Failure,
};

/// The limits a cluster puts on each endpoint's connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Limits {
    pub max_connections: usize,
    pub max_streams: usize,
    pub max_requests_per_connection: Option<u64>,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_streams: 100,
            max_requests_per_connection: None,
            // Istio's default idle timeout for upstream HTTP connections.
            idle_timeout: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

struct Connection {
    send: SendRequest<ReplayBody>,
    active: AtomicUsize,
    served: AtomicU64,
    idle_since: Mutex<Instant>,
}

/// One endpoint's connections.
#[derive(Default)]
pub struct Connections {
    open: Mutex<Vec<Arc<Connection>>>,
    dialling: tokio::sync::Mutex<()>,
    /// When the last dial failed, and why: calls that queued behind it fail with it rather
    /// than each waiting out a connect timeout of its own.
    failed: Mutex<Option<(Instant, io::ErrorKind, String)>>,
    reachability: weft_mesh::reachability::Reachability,
}

/// Passive health of the pod behind a set of connections, whatever the DestinationRule
/// says (outlier detection keeps its own meaning): a failed connection or a reset takes the
/// pod out of the balancers' picks for a back-off (`weft_mesh::reachability`).
/// A call's hold on a connection's stream slot, released when dropped.
pub struct Lease(Arc<Connection>);

impl Drop for Lease {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1
            && let Ok(mut idle) = self.0.idle_since.lock()
        {
            *idle = Instant::now();
        }
    }
}

impl Connection {
    /// Whether it takes new calls: open, and short of `maxRequestsPerConnection`. One that
    /// does not stays in the list until the next dial or reap prunes it; the calls still on
    /// it hold it open until they finish.
    fn usable(&self, limits: &Limits) -> bool {
        !self.send.is_closed()
            && limits
                .max_requests_per_connection
                .is_none_or(|max| self.served.load(Ordering::Relaxed) < max)
    }
}

impl Connections {
    /// Whether the pod may be picked at `now`: no failure, or its back-off is over.
    pub fn reachable(&self, now: Instant) -> bool {
        self.reachability.reachable(now)
    }

    /// A connection to the pod failed, or a stream on one was reset: it is out for a while.
    pub fn unreachable(&self, now: Instant) {
        self.reachability.failed(now);
    }

    /// A new connection succeeded: the pod is back.
    fn reached(&self) {
        self.reachability.reached();
    }

    /// A connection with a free stream slot, if one is open: the least busy usable one.
    fn pick(&self, limits: &Limits, overflow: bool) -> Option<(SendRequest<ReplayBody>, Lease)> {
        let open = self.open.lock().ok()?;
        let best = open
            .iter()
            .filter(|c| c.usable(limits))
            .min_by_key(|c| c.active.load(Ordering::Relaxed))?;
        if !overflow && best.active.load(Ordering::Relaxed) >= limits.max_streams {
            return None;
        }
        best.active.fetch_add(1, Ordering::AcqRel);
        best.served.fetch_add(1, Ordering::Relaxed);
        Some((best.send.clone(), Lease(best.clone())))
    }

    /// A stream slot on an open connection, or on a new one from `dial`.
    pub async fn acquire<F>(
        &self,
        limits: &Limits,
        dial: F,
    ) -> io::Result<(SendRequest<ReplayBody>, Lease)>
    where
        F: Future<Output = io::Result<SendRequest<ReplayBody>>>,
    {
        if let Some(lease) = self.pick(limits, false) {
            return Ok(lease);
        }
        let queued = Instant::now();
        let _dialling = self.dialling.lock().await;
        if let Some(lease) = self.pick(limits, false) {
            return Ok(lease);
        }
        // Calls that queued behind a dial that failed share its failure (and its kind: a
        // policy refusal stays a refusal).
        if let Some((at, kind, why)) = self.failed.lock().ok().and_then(|f| f.clone())
            && at >= queued
        {
            return Err(io::Error::new(kind, why));
        }
        let count = self
            .open
            .lock()
            .map(|mut open| {
                open.retain(|c| c.usable(limits));
                open.len()
            })
            .unwrap_or(0);
        if count >= limits.max_connections {
            // At the connection limit: share the least busy one; h2 queues what the
            // backend's stream limit does not admit yet.
            return self
                .pick(limits, true)
                .ok_or_else(|| io::Error::other("no usable connection within tcp.maxConnections"));
        }
        let dialled = tokio::time::timeout(limits.connect_timeout, dial)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")));
        let send = match dialled {
            Ok(send) => send,
            Err(err) => {
                if let Ok(mut failed) = self.failed.lock() {
                    *failed = Some((Instant::now(), err.kind(), err.to_string()));
                }
                return Err(err);
            }
        };
        self.reached();
        let connection = Arc::new(Connection {
            send: send.clone(),
            active: AtomicUsize::new(1),
            served: AtomicU64::new(1),
            idle_since: Mutex::new(Instant::now()),
        });
        if let Ok(mut open) = self.open.lock() {
            open.push(connection.clone());
        }
        Ok((send, Lease(connection)))
    }

    /// Drops the connections that take no new calls, and those without calls for longer
    /// than `http.idleTimeout` (dropping the last sender ends the connection).
    pub fn reap(&self, limits: &Limits) {
        let (now, idle) = (Instant::now(), limits.idle_timeout);
        if let Ok(mut open) = self.open.lock() {
            open.retain(|c| {
                c.usable(limits)
                    && (c.active.load(Ordering::Relaxed) > 0
                        || c.idle_since
                            .lock()
                            .is_ok_and(|t| now.duration_since(*t) < idle))
            });
        }
    }

    pub fn count(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }
}

/// Opens HTTP/2 connections to pods through their node agents.
pub struct Dialer {
    pub pool: Arc<Pool>,
    pub tls: Arc<rustls::ClientConfig>,
    /// The waypoint's identity: connections are pooled per source identity.
    pub identity: String,
    /// The address the node agent sees as the client (`Forwarded: for=`): the waypoint's,
    /// because one upstream connection carries the calls of many clients.
    pub source_ip: IpAddr,
    pub window: u32,
}

/// A new HTTP/2 connection to a pod, on its way.
pub type Dialling<'a> =
    Pin<Box<dyn Future<Output = io::Result<SendRequest<ReplayBody>>> + Send + 'a>>;

/// Where the proxy's upstream connections come from: in the waypoint, HTTP/2 inside an
/// HBONE stream to the pod's node agent ([`Dialer`]); in the unit tests, HTTP/2 over an
/// in-memory pipe to a scripted backend. An error of kind `PermissionDenied` is the node
/// agent refusing the tunnel by policy; any other is a connect failure.
pub trait Dial: Send + Sync {
    fn dial(&self, pod: SocketAddr, node: SocketAddr) -> Dialling<'_>;
}

/// The client side of an upstream HTTP/2 connection over `io`, with the waypoint's
/// flow-control windows; the connection runs on its own task until the last sender is
/// dropped.
pub async fn handshake<IO>(
    io: IO,
    window: u32,
    pod: SocketAddr,
) -> io::Result<SendRequest<ReplayBody>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(window)
        .initial_connection_window_size(window.saturating_mul(4))
        .max_frame_size(64 * 1024)
        .handshake(TokioIo::new(io))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%pod, ?err, "upstream connection ended");
        }
    });
    Ok(send)
}

impl Dialer {
    /// A byte stream to `pod`, tunnelled through its node agent at `node`.
    pub async fn stream(&self, pod: SocketAddr, node: SocketAddr) -> io::Result<H2Stream> {
        let key = PoolKey {
            source: self.identity.clone(),
            destination: node,
        };
        let tls = self.tls.clone();
        Ok(self.pool.connect(&key, tls, pod, self.source_ip).await?)
    }
}

impl Dial for Dialer {
    fn dial(&self, pod: SocketAddr, node: SocketAddr) -> Dialling<'_> {
        Box::pin(async move { handshake(self.stream(pod, node).await?, self.window, pod).await })
    }
}

/// One try: a stream on a connection to `endpoint` (an open one, or one `upstream` dials),
/// until its response headers or `try_at`.
pub async fn send(
    upstream: &dyn Dial,
    limits: &Limits,
    endpoint: &Endpoint,
    parts: &Parts,
    replay: &Replay,
    deadline: &Deadline,
    try_at: Option<Instant>,
) -> Result<(Response<Incoming>, Lease), Failure> {
    let work = async {
        let dial = upstream.dial(endpoint.address, endpoint.node);
        let (mut send, lease) = endpoint
            .connections
            .acquire(limits, dial)
            .await
            .map_err(|e| Failure::of_connection(&e))?;
        let mut request = Request::new(replay.body());
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.headers_mut() = parts.headers.clone();
        if let Some(left) = deadline.upstream(try_at, Instant::now()) {
            request.headers_mut().insert(grpc::TIMEOUT, left);
        }
        send.ready()
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        match send.send_request(request).await {
            Ok(response) => Ok((response, lease)),
            Err(err) => Err(Failure::of_stream(&err)),
        }
    };
    match try_at {
        Some(at) => tokio::time::timeout_at(at.into(), work)
            .await
            .unwrap_or(Err(Failure::Timeout)),
        None => work.await,
    }
}
