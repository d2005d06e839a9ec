//! Handshakes over loopback TCP between the configurations of `tls`, with certificates
//! from `authority` presented through `slot`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use super::testutil;
use super::*;

const HOUR: Duration = Duration::from_secs(3600);

type Pair = (
    io::Result<server::TlsStream<TcpStream>>,
    io::Result<client::TlsStream<TcpStream>>,
);

/// One handshake on 127.0.0.1; both ends' results. Any name: only `AtDialledAddress`
/// checks it, and SNI is off.
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Pair {
    handshake_as(server, client, ServerName::try_from("weft.test").unwrap()).await
}

/// One handshake on 127.0.0.1 whose client names the server `name`, as the HBONE client
/// names the node it dials by its address.
async fn handshake_as(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Pair {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_side = async {
        let (tcp, _) = listener.accept().await?;
        TlsAcceptor::from(server).accept(tcp).await
    };
    let client_side = async {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(client).connect(name, tcp).await
    };
    tokio::join!(server_side, client_side)
}

fn slot(ca: &CertificateAuthority, id: &SpiffeId) -> Arc<CertSlot> {
    Arc::new(CertSlot::new(testutil::issue(ca, id, HOUR)).unwrap())
}

/// Sends `msg` from client to server and back, proving the connection carries data.
async fn echo(
    server: &mut server::TlsStream<TcpStream>,
    client: &mut client::TlsStream<TcpStream>,
    msg: &[u8],
) {
    client.write_all(msg).await.unwrap();
    client.flush().await.unwrap();
    let mut buf = vec![0; msg.len()];
    server.read_exact(&mut buf).await.unwrap();
    server.write_all(&buf).await.unwrap();
    server.flush().await.unwrap();
    let mut back = vec![0; msg.len()];
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

/// A client whose handshake "succeeded" may still be refused by the server afterwards
/// (in TLS 1.3 the server checks the client's certificate last): it must not get data.
async fn assert_refused(client: io::Result<client::TlsStream<TcpStream>>) {
    if let Ok(mut stream) = client {
        let mut buf = [0u8; 1];
        let read = stream.read(&mut buf).await;
        assert!(matches!(read, Err(_) | Ok(0)), "{read:?}");
    }
}

#[tokio::test]
async fn mutual_tls_shows_each_side_the_other_identity() {
    let ca = testutil::ca();
    let trust = ca.trust_bundle().unwrap();
    let server_id = testutil::id("ns-server", "server");
    let client_id = testutil::id("ns-client", "client");
    let server_cfg = server_config(slot(&ca, &server_id), &trust).unwrap();
    let client_cfg = client_config(
        slot(&ca, &client_id),
        &trust,
        ServerIdentity::Exact(server_id.clone()),
    )
    .unwrap();

    let (server, client) = handshake(server_cfg.clone(), client_cfg).await;
    let (mut server, mut client) = (server.unwrap(), client.unwrap());
    let server_conn = server.get_ref().1;
    let client_conn = client.get_ref().1;
    assert_eq!(
        peer_identity(server_conn.peer_certificates().unwrap()).unwrap(),
        client_id
    );
    assert_eq!(
        peer_identity(client_conn.peer_certificates().unwrap()).unwrap(),
        server_id
    );
    assert_eq!(server_conn.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(
        client_conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    echo(&mut server, &mut client, b"hello mesh").await;

    // Trust-domain-wide and any-of acceptance work too.
    for accept in [
        ServerIdentity::AnyInTrustDomain(testutil::TRUST_DOMAIN.into()),
        ServerIdentity::AnyOf(vec![client_id.clone(), server_id.clone()]),
    ] {
        let client_cfg = client_config(slot(&ca, &client_id), &trust, accept).unwrap();
        let (server, client) = handshake(server_cfg.clone(), client_cfg).await;
        assert!(server.is_ok() && client.is_ok());
    }
}

#[tokio::test]
async fn a_client_certificate_from_another_root_is_refused() {
    let ca = testutil::ca();
    let stranger = testutil::ca();
    let trust = ca.trust_bundle().unwrap();
    let server_id = testutil::id("ns-server", "server");
    let server_cfg = server_config(slot(&ca, &server_id), &trust).unwrap();
    let client_cfg = client_config(
        slot(&stranger, &testutil::id("ns-client", "client")),
        &trust,
        ServerIdentity::Exact(server_id),
    )
    .unwrap();
    let (server, client) = handshake(server_cfg, client_cfg).await;
    assert!(server.is_err());
    assert_refused(client).await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let ca = testutil::ca();
    let trust = ca.trust_bundle().unwrap();
    let server_id = testutil::id("ns-server", "server");
    let server_cfg = server_config(slot(&ca, &server_id), &trust).unwrap();
    let client_cfg =
        client_config_no_client_auth(&trust, ServerIdentity::Exact(server_id)).unwrap();
    let (server, client) = handshake(server_cfg, client_cfg).await;
    assert!(server.is_err());
    assert_refused(client).await;
}

#[tokio::test]
async fn a_server_with_an_unexpected_identity_is_refused() {
    let ca = testutil::ca();
    let trust = ca.trust_bundle().unwrap();
    let server_id = testutil::id("ns-server", "server");
    let server_cfg = server_config(slot(&ca, &server_id), &trust).unwrap();
    for accept in [
        ServerIdentity::Exact(testutil::id("ns-server", "someone-else")),
        ServerIdentity::AnyOf(vec![]),
        ServerIdentity::AnyInTrustDomain("other.domain".into()),
    ] {
        let client_cfg =
            client_config(slot(&ca, &testutil::id("ns-client", "c")), &trust, accept).unwrap();
        let (server, client) = handshake(server_cfg.clone(), client_cfg).await;
        let err = client.unwrap_err();
        assert!(err.to_string().contains("UnexpectedServer"), "{err}");
        assert!(server.is_err());
    }
}

#[tokio::test]
async fn a_server_certificate_from_another_root_is_refused() {
    let ca = testutil::ca();
    let stranger = testutil::ca();
    let server_id = testutil::id("ns-server", "server");
    let server_cfg =
        server_config(slot(&stranger, &server_id), &ca.trust_bundle().unwrap()).unwrap();
    let client_cfg = client_config(
        slot(&ca, &testutil::id("ns-client", "c")),
        &ca.trust_bundle().unwrap(),
        ServerIdentity::Exact(server_id),
    )
    .unwrap();
    let (_, client) = handshake(server_cfg, client_cfg).await;
    assert!(client.is_err());
}

#[tokio::test]
async fn replace_applies_to_new_handshakes_and_spares_established_connections() {
    let ca = testutil::ca();
    let trust = ca.trust_bundle().unwrap();
    let server_id = testutil::id("ns-server", "server");
    let client_id = testutil::id("ns-client", "client");
    let first = testutil::issue(&ca, &server_id, HOUR);
    let first_leaf = first.chain[0].clone();
    let server_slot = Arc::new(CertSlot::new(first).unwrap());
    let server_cfg = server_config(server_slot.clone(), &trust).unwrap();
    let client_slot = slot(&ca, &client_id);
    let client_cfg = client_config(
        client_slot.clone(),
        &trust,
        ServerIdentity::Exact(server_id.clone()),
    )
    .unwrap();

    let (server, client) = handshake(server_cfg.clone(), client_cfg.clone()).await;
    let (mut old_server, mut old_client) = (server.unwrap(), client.unwrap());
    assert_eq!(
        old_client.get_ref().1.peer_certificates().unwrap()[0],
        first_leaf
    );

    // Rotate both ends.
    let second = testutil::issue(&ca, &server_id, HOUR);
    let second_leaf = second.chain[0].clone();
    assert_ne!(first_leaf, second_leaf);
    server_slot.replace(second).unwrap();
    let client_second = testutil::issue(&ca, &client_id, HOUR);
    let client_second_leaf = client_second.chain[0].clone();
    client_slot.replace(client_second).unwrap();

    let (server, client) = handshake(server_cfg, client_cfg).await;
    let (mut new_server, mut new_client) = (server.unwrap(), client.unwrap());
    assert_eq!(
        new_client.get_ref().1.peer_certificates().unwrap()[0],
        second_leaf
    );
    assert_eq!(
        new_server.get_ref().1.peer_certificates().unwrap()[0],
        client_second_leaf
    );
    echo(&mut new_server, &mut new_client, b"new connection").await;

    // The connection made before the rotation still carries data both ways.
    echo(
        &mut old_server,
        &mut old_client,
        b"old connection, after rotation",
    )
    .await;
    assert_eq!(
        old_client.get_ref().1.peer_certificates().unwrap()[0],
        first_leaf
    );
}

#[tokio::test]
async fn a_node_agent_must_hold_a_certificate_for_the_address_dialled() {
    let ca = testutil::ca();
    let trust = ca.trust_bundle().unwrap();
    let agent = testutil::id("weft-system", "weft-agent");
    let client_id = testutil::id("ns-client", "client");
    let node_2: std::net::IpAddr = "10.99.0.2".parse().unwrap();
    let node_3: std::net::IpAddr = "10.99.0.3".parse().unwrap();
    let dialled = |ip: std::net::IpAddr| ServerName::IpAddress(ip.into());
    let agent_of = |node| {
        let cert = ca.issue_at(&agent, HOUR, &[node]).unwrap();
        server_config(Arc::new(CertSlot::new(cert).unwrap()), &trust).unwrap()
    };
    let client = client_config(
        slot(&ca, &client_id),
        &trust,
        ServerIdentity::AtDialledAddress(agent.clone()),
    )
    .unwrap();

    let (_, ok) = handshake_as(agent_of(node_2), client.clone(), dialled(node_2)).await;
    assert!(ok.is_ok(), "{ok:?}");
    // Node 3's agent answering for node 2: the same SPIFFE ID, the wrong address.
    let (_, other) = handshake_as(agent_of(node_3), client.clone(), dialled(node_2)).await;
    let err = other
        .expect_err("node 3's agent passed for node 2's")
        .to_string();
    assert!(err.contains("10.99.0.2"), "{err}");
    // An agent certificate without an address (from a CA before this check) passes for none.
    let bare = server_config(slot(&ca, &agent), &trust).unwrap();
    let (_, none) = handshake_as(bare.clone(), client, dialled(node_2)).await;
    assert!(none.is_err());
    // Exact ignores the address, as for a waypoint pod.
    let exact = client_config(slot(&ca, &client_id), &trust, ServerIdentity::Exact(agent)).unwrap();
    let (_, exact) = handshake_as(bare, exact, dialled(node_2)).await;
    assert!(exact.is_ok(), "{exact:?}");
}
