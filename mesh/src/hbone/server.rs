//! The tunnel's server side: TLS with a required client certificate, then HTTP/2, where each
//! CONNECT stream asks to reach one destination. What may be reached is the `Opener`'s
//! decision (identity checks, policy, dialling); this module only speaks the protocol:
//! a request that is not CONNECT gets 400, a refusal the status the opener chose (401 for
//! policy, 503 for an unreachable destination), and every refusal is logged with its reason.
//!
//! What a peer can make the server hold is bounded ([`Settings`]): connections per peer
//! address, the time to finish TLS and send the HTTP/2 preface, streams per connection,
//! the size of a header list, and the time a connection with no stream stays open. A
//! stream the client has already reset is not opened (no destination is dialled for it),
//! and h2 closes a connection that keeps resetting streams it opened (the "rapid reset"
//! pattern, CVE-2023-44487).

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::{H2Stream, Settings};

/// One CONNECT request, as the opener sees it.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// The TLS peer (the tunnel's client end).
    pub peer: SocketAddr,
    /// The peer's certificate chain, leaf first (already verified against the trust bundle).
    pub peer_certificates: Arc<Vec<CertificateDer<'static>>>,
    /// Where the stream should lead (`:authority`).
    pub authority: SocketAddr,
    /// The original client's address from `Forwarded: for=`, if given.
    pub forwarded_for: Option<std::net::IpAddr>,
}

/// A refused tunnel: the HTTP status to answer and why, for the log.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

/// Decides on each CONNECT, opens the destination, and carries the stream's bytes.
pub trait Opener: Send + Sync + 'static {
    /// What `open` hands to `carry`: a dialled socket for an agent, a routing decision
    /// for a waypoint that serves HTTP/2 inside the tunnel itself.
    type Opened: Send + 'static;
    /// What the opener makes of a peer's certificates, worked out once per TLS connection
    /// (parsing X.509 for every stream would cost more than the stream).
    type Peer: Send + Sync + 'static;

    fn identify(&self, certificates: &[CertificateDer<'static>]) -> Self::Peer;

    /// Accepts (the stream is then answered 200) or refuses the CONNECT.
    fn open(
        &self,
        request: ConnectRequest,
        peer: &Self::Peer,
    ) -> impl Future<Output = Result<Self::Opened, Refusal>> + Send;

    /// Runs the accepted stream to its end ([`super::splice`] it to a socket, for example).
    fn carry(
        &self,
        request: ConnectRequest,
        peer: &Self::Peer,
        tunnel: H2Stream,
        opened: Self::Opened,
    ) -> impl Future<Output = ()> + Send;
}

/// Accepts tunnel connections on `listener` until `shutdown` completes; then each open
/// connection gets GOAWAY (RFC 9113, section 6.8), so that its client opens new streams
/// elsewhere while the streams it has run on.
pub async fn serve<O: Opener>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    settings: Settings,
    opener: Arc<O>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let peers = Arc::new(Peers::default());
    // Dropped when the server stops, which the connections see.
    let (_serving, stopped) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(%err, "tunnel accept failed");
                    continue;
                }
            },
        };
        let Some(admitted) = peers.admit(peer.ip(), settings.max_connections_per_peer) else {
            tracing::warn!(%peer, limit = settings.max_connections_per_peer, "tunnel connection refused: too many from this peer");
            continue;
        };
        let (acceptor, settings, opener) = (acceptor.clone(), settings.clone(), opener.clone());
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let served = connection(tcp, peer, acceptor, settings, opener, stopped).await;
            if let Err(reason) = served {
                tracing::info!(%peer, %reason, "tunnel connection refused or ended");
            }
            drop(admitted);
        });
    }
}

async fn connection<O: Opener>(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    settings: Settings,
    opener: Arc<O>,
    mut stopped: tokio::sync::watch::Receiver<()>,
) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(settings.connect_timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let certificates: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    if certificates.is_empty() {
        return Err("no client certificate".into());
    }
    let identity = Arc::new(opener.identify(&certificates));
    let certificates = Arc::new(certificates);
    let handshake = h2::server::Builder::new()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_send_buffer_size(settings.stream_window as usize)
        .max_frame_size(super::MAX_FRAME)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(settings.max_header_list_size)
        .handshake::<_, Bytes>(tls);
    let mut h2 = tokio::time::timeout(settings.connect_timeout, handshake)
        .await
        .map_err(|_| "no HTTP/2 preface in time".to_string())?
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    let open = Arc::new(AtomicUsize::new(0));
    let mut draining = false;
    loop {
        // A connection without streams may stay for twice the idle timeout (so that a
        // client pool, which drops it after one, is never raced by the GOAWAY), no longer.
        // No timer while streams are open: a stream's accept costs none.
        let idle = (open.load(Ordering::Relaxed) == 0).then_some(settings.idle_timeout * 2);
        let accepted = tokio::select! {
            accepted = async {
                match idle {
                    Some(idle) => tokio::time::timeout(idle, h2.accept()).await.ok(),
                    None => Some(h2.accept().await),
                }
            } => accepted,
            // The server stopped: GOAWAY, and the streams already open run on.
            _ = stopped.changed(), if !draining => {
                h2.graceful_shutdown();
                draining = true;
                continue;
            }
        };
        let Some(accepted) = accepted else {
            h2.graceful_shutdown();
            // Let the GOAWAY out, and any stream that raced it finish.
            while let Some(Ok(_)) = h2.accept().await {}
            return Err("idle".into());
        };
        let Some(accepted) = accepted else {
            return Ok(());
        };
        let (request, respond) = accepted.map_err(|e| format!("HTTP/2: {e}"))?;
        let (opener, certificates, identity) =
            (opener.clone(), certificates.clone(), identity.clone());
        let open = open.clone();
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            stream(request, respond, peer, certificates, identity, opener).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn reply(respond: &mut h2::server::SendResponse<Bytes>, status: StatusCode) {
    reply_with(respond, status, None);
}

/// A refusal, with its reason in [`super::REFUSAL_HEADER`] when there is one, so that a
/// waypoint can tell its caller which policy refused (the peer is authenticated: the reason
/// goes to a mesh workload, never to plaintext).
fn reply_with(
    respond: &mut h2::server::SendResponse<Bytes>,
    status: StatusCode,
    reason: Option<&str>,
) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    if let Some(value) = reason.and_then(|r| http::HeaderValue::from_str(r).ok()) {
        response.headers_mut().insert(super::REFUSAL_HEADER, value);
    }
    let _ = respond.send_response(response, true);
}

async fn stream<O: Opener>(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    peer: SocketAddr,
    peer_certificates: Arc<Vec<CertificateDer<'static>>>,
    identity: Arc<O::Peer>,
    opener: Arc<O>,
) {
    if request.method() != Method::CONNECT {
        tracing::info!(%peer, method = %request.method(), "tunnel refused: not a CONNECT request (400)");
        reply(&mut respond, StatusCode::BAD_REQUEST);
        return;
    }
    let Some(authority) = request
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        tracing::info!(%peer, uri = %request.uri(), "tunnel refused: :authority is not ip:port (400)");
        reply(&mut respond, StatusCode::BAD_REQUEST);
        return;
    };
    let forwarded_for = request
        .headers()
        .get(http::header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(forwarded_for);
    let connect = ConnectRequest {
        peer,
        peer_certificates,
        authority,
        forwarded_for,
    };
    // A stream the client already reset gets no dial.
    if std::future::poll_fn(|cx| std::task::Poll::Ready(respond.poll_reset(cx).is_ready())).await {
        return;
    }
    let opened = match opener.open(connect.clone(), &identity).await {
        Ok(opened) => opened,
        Err(refusal) => {
            tracing::info!(%peer, %authority, status = refusal.status, reason = %refusal.reason, "tunnel refused");
            reply_with(
                &mut respond,
                StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                Some(&refusal.reason),
            );
            return;
        }
    };
    let send = match respond.send_response(Response::new(()), false) {
        Ok(send) => send,
        Err(err) => {
            tracing::debug!(%peer, %err, "tunnel stream closed before the reply");
            return;
        }
    };
    let tunnel = H2Stream::new(send, request.into_body(), None);
    opener.carry(connect, &identity, tunnel, opened).await;
}

/// Open connections per peer address.
#[derive(Default)]
struct Peers(Mutex<HashMap<IpAddr, usize>>);

/// One admitted connection; counted until dropped.
struct Admitted {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Peers {
    fn admit(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<Admitted> {
        let mut open = self.0.lock().ok()?;
        let count = open.entry(ip).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Admitted {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut open) = self.peers.0.lock()
            && let Some(count) = open.get_mut(&self.ip)
        {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The first `for=` node of a `Forwarded` header (RFC 7239), as an IP address.
pub fn forwarded_for(header: &str) -> Option<std::net::IpAddr> {
    header.split([';', ',']).find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        let value = value
            .strip_prefix('[')
            .and_then(|v| v.split(']').next())
            .unwrap_or(value);
        value.parse().ok()
    })
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod bounds;

#[cfg(test)]
mod tests {
    use super::forwarded_for;

    #[test]
    fn reads_forwarded_for() {
        assert_eq!(
            forwarded_for("for=10.200.1.11"),
            Some("10.200.1.11".parse().unwrap())
        );
        assert_eq!(
            forwarded_for("proto=https; for=10.0.0.1, for=10.0.0.2"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            forwarded_for("for=\"[2001:db8::1]\""),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(forwarded_for("for=unknown"), None);
        assert_eq!(forwarded_for("by=10.0.0.1"), None);
    }
}
