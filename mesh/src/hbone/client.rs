//! The tunnel's client side: a pool of HTTP/2-over-TLS connections per (source identity,
//! destination), each carrying many CONNECT streams.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use http::{Method, Request};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{H2Stream, HboneError, Settings};
use crate::reachability::Reachability;

/// Which connections a stream may share: same source identity, same destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The source workload's identity (its SPIFFE ID), which its certificate presents.
    pub source: String,
    /// The destination's HBONE address (a node agent or a waypoint, port 15008).
    pub destination: SocketAddr,
}

struct Pooled {
    send: h2::client::SendRequest<Bytes>,
    streams: AtomicUsize,
    closed: AtomicBool,
    idle_since: Mutex<Instant>,
}

/// Counts a stream against its connection while the stream lives.
struct StreamGuard(Arc<Pooled>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1
            && let Ok(mut since) = self.0.idle_since.lock()
        {
            *since = Instant::now();
        }
    }
}

/// Figures for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub connections: usize,
    pub streams: usize,
    pub connections_opened: usize,
}

pub struct Pool {
    settings: Settings,
    connections: Mutex<HashMap<PoolKey, Vec<Arc<Pooled>>>>,
    /// One dial at a time per key: a burst of new streams waits for the connection being
    /// dialled instead of each opening its own.
    dialling: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
    opened: AtomicUsize,
    /// Destinations whose last dial failed, and when it did.
    failures: Mutex<HashMap<SocketAddr, (Reachability, Option<Instant>)>>,
}

/// Why a CONNECT on a connection failed.
enum Opening {
    /// The connection is gone (GOAWAY, closed): another may do.
    Stale(HboneError),
    /// The peer answered, or reset this stream.
    Failed(HboneError),
}

impl From<Opening> for HboneError {
    fn from(opening: Opening) -> Self {
        match opening {
            Opening::Stale(err) | Opening::Failed(err) => err,
        }
    }
}

/// How long a destination's failed dial is remembered.
const FAILURES_KEPT: std::time::Duration = std::time::Duration::from_secs(60);

impl Pool {
    /// A pool; a background task closes idle connections while the pool lives.
    pub fn new(settings: Settings) -> Arc<Self> {
        let pool = Arc::new(Pool {
            settings,
            connections: Mutex::new(HashMap::new()),
            dialling: Mutex::new(HashMap::new()),
            opened: AtomicUsize::new(0),
            failures: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&pool);
        let period = pool
            .settings
            .idle_timeout
            .min(std::time::Duration::from_secs(1))
            .max(std::time::Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                pool.reap();
            }
        });
        pool
    }

    /// Opens a tunnelled stream to `authority` through `key.destination`, on behalf of the
    /// client at `forwarded_for`. `tls` is the client configuration (with the source's
    /// certificate) for a connection that must be dialled.
    ///
    /// A pooled connection may have been told GOAWAY, or have died, since its last stream:
    /// then the stream is tried once more on another (a new one, or one that another
    /// stream dialled meanwhile). Nothing of the client's has been sent before the CONNECT
    /// is answered, so this is always safe.
    pub async fn connect(
        &self,
        key: &PoolKey,
        tls: Arc<rustls::ClientConfig>,
        authority: SocketAddr,
        forwarded_for: IpAddr,
    ) -> Result<H2Stream, HboneError> {
        let (conn, dialled) = self.take(key, &tls).await?;
        match self.open(conn, key, authority, forwarded_for).await {
            Err(Opening::Stale(err)) if !dialled => {
                tracing::debug!(peer = %key.destination, %err, "a pooled tunnel connection is gone; dialling");
                // Through the dial lock: the streams that found the same connection gone
                // share one new connection instead of each dialling its own.
                let (conn, _) = self.take(key, &tls).await?;
                self.open(conn, key, authority, forwarded_for)
                    .await
                    .map_err(HboneError::from)
            }
            opened => opened.map_err(HboneError::from),
        }
    }

    /// Whether `destination` may be dialled: no dial to it failed, or its back-off is over
    /// (`reachability`). Those who choose between destinations prefer reachable ones.
    pub fn reachable(&self, destination: SocketAddr) -> bool {
        self.failures.lock().map_or(true, |f| {
            f.get(&destination)
                .is_none_or(|(r, _)| r.reachable(Instant::now()))
        })
    }

    /// A connection for one more stream, counted as taken: a pooled one, or a new one (then
    /// `true`).
    async fn take(
        &self,
        key: &PoolKey,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<(Arc<Pooled>, bool), HboneError> {
        if let Some(conn) = self.pick(key) {
            return Ok((conn, false));
        }
        let lock = self
            .dialling
            .lock()
            .map(|mut d| d.entry(key.clone()).or_default().clone())
            .unwrap_or_default();
        let _dialling = lock.lock().await;
        // Another stream may have dialled while this one waited.
        match self.pick(key) {
            Some(conn) => Ok((conn, false)),
            None => Ok((self.dial(key, tls.clone()).await?, true)),
        }
    }

    /// Sends the CONNECT on `conn` and waits for its answer.
    async fn open(
        &self,
        conn: Arc<Pooled>,
        key: &PoolKey,
        authority: SocketAddr,
        forwarded_for: IpAddr,
    ) -> Result<H2Stream, Opening> {
        let peer = key.destination;
        let guard = StreamGuard(conn.clone());
        // The connection, not this stream, failed: it takes no more.
        let stale = |e: h2::Error| {
            conn.closed.store(true, Ordering::Release);
            Opening::Stale(HboneError::H2(peer, e))
        };
        let mut send = conn.send.clone().ready().await.map_err(stale)?;
        let forwarded = match forwarded_for {
            IpAddr::V4(ip) => format!("for={ip}"),
            // RFC 7239 §6: an IPv6 node is quoted and bracketed.
            IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
        };
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(authority.to_string())
            .header(http::header::FORWARDED, forwarded)
            .body(())
            .map_err(|e| Opening::Failed(HboneError::Connect(peer, std::io::Error::other(e))))?;
        let (response, send_stream) = send.send_request(request, false).map_err(stale)?;
        let response = response.await.map_err(|e| {
            // GOAWAY before this stream, or the connection broke: the connection is done.
            // A reset of this stream alone (REFUSED_STREAM, say) leaves it be.
            if e.is_go_away() || e.is_io() {
                stale(e)
            } else {
                Opening::Failed(HboneError::H2(peer, e))
            }
        })?;
        if response.status() != http::StatusCode::OK {
            return Err(Opening::Failed(HboneError::Refused {
                peer,
                authority,
                status: response.status().as_u16(),
                reason: response
                    .headers()
                    .get(super::REFUSAL_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            }));
        }
        Ok(H2Stream::new(
            send_stream,
            response.into_body(),
            Some(Box::new(guard)),
        ))
    }

    /// A live connection with room for one more stream, counted as taken.
    fn pick(&self, key: &PoolKey) -> Option<Arc<Pooled>> {
        let mut all = self.connections.lock().ok()?;
        let conns = all.get_mut(key)?;
        conns.retain(|c| !c.closed.load(Ordering::Acquire));
        // While fewer than `spread_connections` exist, a busy connection is not shared.
        let limit = if conns.len() < self.settings.spread_connections {
            1
        } else {
            self.settings.max_streams_per_connection
        };
        let conn = conns
            .iter()
            .filter(|c| c.streams.load(Ordering::Acquire) < limit)
            .min_by_key(|c| c.streams.load(Ordering::Acquire))?
            .clone();
        conn.streams.fetch_add(1, Ordering::AcqRel);
        Some(conn)
    }

    async fn dial(
        &self,
        key: &PoolKey,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Arc<Pooled>, HboneError> {
        let peer = key.destination;
        let settings = self.settings.clone();
        let handshake = async move {
            let tcp = TcpStream::connect(peer)
                .await
                .map_err(|e| HboneError::Connect(peer, e))?;
            let _ = tcp.set_nodelay(true);
            // SPIFFE peers are checked by identity, not name; the address stands in for SNI.
            let tls_stream = TlsConnector::from(tls)
                .connect(ServerName::IpAddress(peer.ip().into()), tcp)
                .await
                .map_err(|e| HboneError::Tls(peer, e))?;
            if tls_stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(HboneError::NoAlpn(peer));
            }
            h2::client::Builder::new()
                .initial_window_size(settings.stream_window)
                .initial_connection_window_size(settings.connection_window)
                .max_send_buffer_size(settings.stream_window as usize)
                .max_frame_size(super::MAX_FRAME)
                .handshake::<_, Bytes>(tls_stream)
                .await
                .map_err(|e| HboneError::H2(peer, e))
        };
        let dialled = tokio::time::timeout(self.settings.connect_timeout, handshake)
            .await
            .map_err(|_| HboneError::Timeout(peer))
            .flatten();
        let (send, connection) = match dialled {
            Ok(dialled) => {
                if let Ok(mut failures) = self.failures.lock() {
                    failures.remove(&peer);
                }
                dialled
            }
            Err(err) => {
                if let Ok(mut failures) = self.failures.lock() {
                    let now = Instant::now();
                    let (reachability, last) = failures.entry(peer).or_default();
                    reachability.failed(now);
                    *last = Some(now);
                }
                return Err(err);
            }
        };
        let pooled = Arc::new(Pooled {
            send,
            streams: AtomicUsize::new(1),
            closed: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
        });
        let watched = Arc::downgrade(&pooled);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, %err, "tunnel connection ended");
            }
            if let Some(pooled) = watched.upgrade() {
                pooled.closed.store(true, Ordering::Release);
            }
        });
        self.opened.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut all) = self.connections.lock() {
            all.entry(key.clone()).or_default().push(pooled.clone());
        }
        Ok(pooled)
    }

    /// Drops connections that are closed, or idle for longer than the idle timeout.
    fn reap(&self) {
        let timeout = self.settings.idle_timeout;
        let Ok(mut all) = self.connections.lock() else {
            return;
        };
        for conns in all.values_mut() {
            conns.retain(|c| {
                let idle = c.streams.load(Ordering::Acquire) == 0
                    && c.idle_since
                        .lock()
                        .map(|t| t.elapsed() >= timeout)
                        .unwrap_or(false);
                !c.closed.load(Ordering::Acquire) && !idle
            });
        }
        all.retain(|_, conns| !conns.is_empty());
        drop(all);
        // Dial locks of keys nobody is dialling or using any more.
        if let Ok(mut dialling) = self.dialling.lock() {
            dialling.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        if let Ok(mut failures) = self.failures.lock() {
            failures.retain(|_, (_, last)| last.is_some_and(|t| t.elapsed() < FAILURES_KEPT));
        }
    }

    pub fn stats(&self) -> PoolStats {
        let Ok(all) = self.connections.lock() else {
            return PoolStats::default();
        };
        let conns = all.values().flatten();
        PoolStats {
            connections: all.values().map(Vec::len).sum(),
            streams: conns.map(|c| c.streams.load(Ordering::Acquire)).sum(),
            connections_opened: self.opened.load(Ordering::Relaxed),
        }
    }
}
