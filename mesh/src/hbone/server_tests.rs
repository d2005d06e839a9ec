//! The bounds of the tunnel's server side, against a peer that holds what it can: real TLS
//! and HTTP/2 over loopback, an opener that accepts every stream and holds it open.

use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls_pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::*;
use crate::hbone::{HboneError, Pool, PoolKey};
use crate::identity::{CertSlot, ServerIdentity, client_config, server_config, testutil};

/// Accepts every stream, counts the dials it would make, and holds each stream open until
/// the client ends it.
#[derive(Default)]
struct Holding {
    opened: AtomicUsize,
}

impl Opener for Holding {
    type Opened = ();
    type Peer = ();

    fn identify(&self, _: &[CertificateDer<'static>]) {}

    async fn open(&self, _: ConnectRequest, _: &()) -> Result<(), Refusal> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn carry(&self, _: ConnectRequest, _: &(), mut tunnel: H2Stream, _: ()) {
        let mut buf = [0u8; 64];
        while matches!(tunnel.read(&mut buf).await, Ok(n) if n > 0) {}
    }
}

struct Server {
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    opener: Arc<Holding>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(settings: Settings) -> Server {
    start_at(settings, "127.0.0.1:0".parse().unwrap()).await
}

async fn start_at(settings: Settings, at: SocketAddr) -> Server {
    let ca = testutil::ca();
    let trust = ca.trust_bundle().unwrap();
    let (server_id, client_id) = (
        testutil::id("weft-system", "agent"),
        testutil::id("app", "a"),
    );
    let slot =
        |id| Arc::new(CertSlot::new(testutil::issue(&ca, id, Duration::from_secs(3600))).unwrap());
    let tls = server_config(slot(&server_id), &trust).unwrap();
    let client = client_config(slot(&client_id), &trust, ServerIdentity::Exact(server_id)).unwrap();
    let listener = TcpListener::bind(at).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opener = Arc::new(Holding::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, tls, settings, opener.clone(), async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        client,
        opener,
        _stop: stop,
    }
}

fn quick() -> Settings {
    Settings {
        connect_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(200),
        max_concurrent_streams: 2,
        max_header_list_size: 4096,
        max_connections_per_peer: 3,
        ..Settings::default()
    }
}

/// Whether the server closes `tcp` within `within` (reads end or fail).
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline.into(), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

type Client = h2::client::SendRequest<Bytes>;

async fn h2_client(server: &Server) -> Client {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = TlsConnector::from(server.client.clone())
        .connect(ServerName::try_from("weft.test").unwrap(), tcp)
        .await
        .unwrap();
    let (send, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    send
}

fn connect(authority: &str) -> http::Request<()> {
    http::Request::builder()
        .method(Method::CONNECT)
        .uri(authority)
        .body(())
        .unwrap()
}

#[tokio::test]
async fn a_peer_that_never_finishes_its_handshake_is_dropped() {
    let server = start(quick()).await;
    // No TLS at all.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    assert!(closed_within(&mut tcp, Duration::from_secs(2)).await);
    // TLS, then no HTTP/2 preface.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut tls = TlsConnector::from(server.client.clone())
        .connect(ServerName::try_from("weft.test").unwrap(), tcp)
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the server kept a connection without a preface"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn streams_per_connection_and_connections_per_peer_are_capped() {
    let server = start(quick()).await;
    let mut client = h2_client(&server).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        client = client.ready().await.unwrap();
        let (response, send) = client.send_request(connect("10.0.0.1:80"), false).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        held.push(send);
    }
    // A third at once: the server's SETTINGS say two, and it refuses the stream.
    let third = async {
        let ready = client.clone().ready().await?;
        let mut ready = ready;
        let (response, _send) = ready.send_request(connect("10.0.0.1:80"), false)?;
        response.await
    };
    match tokio::time::timeout(Duration::from_millis(500), third).await {
        Err(_) => {} // held back by the client's own view of the limit
        Ok(Err(err)) => assert_eq!(err.reason(), Some(h2::Reason::REFUSED_STREAM), "{err}"),
        Ok(Ok(response)) => panic!("a third stream was accepted: {response:?}"),
    }
    assert_eq!(server.opener.opened.load(Ordering::Relaxed), 2);

    // Connections from one address: three, then the fourth is closed as it arrives.
    let _more = [h2_client(&server).await, h2_client(&server).await];
    let mut fourth = TcpStream::connect(server.addr).await.unwrap();
    assert!(closed_within(&mut fourth, Duration::from_secs(1)).await);
    drop(held);
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_big_headers_are_refused() {
    let server = start(quick()).await;
    let mut client = h2_client(&server).await;
    let mut request = connect("10.0.0.1:80");
    request.headers_mut().insert(
        "x-big",
        http::HeaderValue::from_str(&"a".repeat(8192)).unwrap(),
    );
    client = client.ready().await.unwrap();
    let refused = match client.send_request(request, true) {
        Ok((response, _)) => response.await.map(|r| r.status()),
        Err(err) => Err(err),
    };
    assert!(
        !matches!(refused, Ok(s) if s == 200),
        "an 8 KiB header passed a 4 KiB limit: {refused:?}"
    );
    assert_eq!(server.opener.opened.load(Ordering::Relaxed), 0);
    // No stream: the connection goes after twice the idle timeout.
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if client.clone().ready().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle connection stayed");
}

/// The client pool, against servers that go away: a pooled connection told GOAWAY takes no
/// new stream (the stream goes on a new connection, at once), and a destination that
/// refused a dial is unreachable until a dial to it succeeds.
#[tokio::test]
async fn the_pool_leaves_a_connection_that_went_away_and_marks_a_refusing_peer() {
    // Streams share a connection from the first, so that the held stream's connection,
    // told GOAWAY but still open, is the one the pool would pick.
    let pool = Pool::new(Settings {
        spread_connections: 1,
        ..Settings::default()
    });
    let first = start(quick()).await;
    let (addr, key) = (
        first.addr,
        PoolKey {
            source: "a".into(),
            destination: first.addr,
        },
    );
    let to: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let for_: std::net::IpAddr = "10.0.0.2".parse().unwrap();
    let held = pool
        .connect(&key, first.client.clone(), to, for_)
        .await
        .unwrap();
    // The server stops: its connection gets GOAWAY (the held stream runs on) and its port
    // closes; a dial now is refused, and the destination is out.
    drop(first._stop);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(pool.reachable(addr));
    assert_eq!(
        pool.stats().connections,
        1,
        "the held stream keeps its connection"
    );
    let client = testutil_client_for_refusal();
    let refused = pool.connect(&key, client, to, for_).await;
    assert!(
        matches!(refused, Err(HboneError::Connect(..))),
        "{:?}",
        refused.err()
    );
    assert!(
        !pool.reachable(addr),
        "a refused dial takes the destination out"
    );
    // A new server on the same port: the pool does not use the old connection, and the
    // destination is back after the new dial.
    let second = start_at(quick(), addr).await;
    let stream = pool.connect(&key, second.client.clone(), to, for_).await;
    assert!(stream.is_ok(), "{:?}", stream.err());
    assert!(pool.reachable(addr));
    assert_eq!(pool.stats().connections_opened, 2);
    assert_eq!(second.opener.opened.load(Ordering::Relaxed), 1);
    drop(held);
}

/// A client configuration for a dial that is refused before TLS begins.
fn testutil_client_for_refusal() -> Arc<rustls::ClientConfig> {
    let ca = testutil::ca();
    let trust = ca.trust_bundle().unwrap();
    let id = testutil::id("app", "a");
    let slot =
        Arc::new(CertSlot::new(testutil::issue(&ca, &id, Duration::from_secs(3600))).unwrap());
    client_config(slot, &trust, ServerIdentity::Exact(id)).unwrap()
}
