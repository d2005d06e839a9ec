//! The CA's gRPC server: authenticate the node, authorize the identity against the pods
//! scheduled on it, sign.
//!
//! gRPC status codes follow the gRPC status code guide (`doc/statuscodes.md`): no or an
//! unknown token is UNAUTHENTICATED, an identity the node may not have is
//! PERMISSION_DENIED, a malformed identity or CSR is INVALID_ARGUMENT.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tonic::metadata::MetadataMap;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Response, Status};

use super::limits::{Answers, PerPeer};
use super::proto::certificate_authority_server::{
    CertificateAuthority as CaService, CertificateAuthorityServer,
};
use super::proto::{SignRequest, SignResponse};
use super::{AuthError, CaError, DEFAULT_TTL, MAX_TTL, NodeAuthenticator, ca_identity};
use crate::config::Model;
use crate::identity::{
    CertificateAuthority, CertificateSource, IdentityError, IdentityManager, SpiffeId,
    WorkloadCert, server_config_no_client_auth,
};
use crate::state::State;

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the gRPC server to take them.
const ACCEPT_QUEUE: usize = 64;
/// Per connection: streams open at once, and calls run at once.
const MAX_STREAMS: u32 = 100;
const CALLS_AT_ONCE: usize = 16;
/// A call that has not finished by then is ended with DEADLINE_EXCEEDED.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The CA service, ready to serve.
pub struct CaServer<A: NodeAuthenticator> {
    ca: Arc<CertificateAuthority>,
    authn: Arc<A>,
    model: watch::Receiver<Arc<State>>,
    default_ttl: Duration,
    max_ttl: Duration,
}

impl<A: NodeAuthenticator> CaServer<A> {
    /// `model` is the configuration the agents see: it says which pods run on which node.
    pub fn new(ca: CertificateAuthority, authn: A, model: watch::Receiver<Arc<State>>) -> Self {
        CaServer {
            ca: Arc::new(ca),
            authn: Arc::new(authn),
            model,
            default_ttl: DEFAULT_TTL,
            max_ttl: MAX_TTL,
        }
    }

    /// Other lifetimes than [`DEFAULT_TTL`] and [`MAX_TTL`].
    pub fn with_ttls(mut self, default_ttl: Duration, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self.default_ttl = default_ttl.min(max_ttl);
        self
    }

    /// Serves on `listener` until `shutdown` completes, then drains open calls.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), CaError> {
        // The serving certificate comes from the CA itself, renewed like any other.
        let serving_id = ca_identity(self.ca.trust_domain())?;
        let identities = IdentityManager::new(LocalIssuer {
            ca: self.ca.clone(),
            lifetime: DEFAULT_TTL,
        });
        let slot = identities.slot(&serving_id).await?;
        let acceptor = TlsAcceptor::from(server_config_no_client_auth(slot)?);
        tracing::info!(
            addr = ?listener.local_addr().ok(),
            identity = %serving_id,
            "CA serving"
        );

        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let accepting = tokio::spawn(accept_tls(listener, acceptor, tx));
        let incoming = futures::stream::unfold(rx, |mut rx| async move {
            let conn = rx.recv().await?;
            Some((Ok::<_, io::Error>(conn), rx))
        });
        let service = Signer {
            ca: self.ca,
            authn: self.authn,
            model: self.model,
            default_ttl: self.default_ttl,
            max_ttl: self.max_ttl,
            answers: Answers::default(),
            per_peer: PerPeer::default(),
        };
        let served = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(MAX_STREAMS))
            .concurrency_limit_per_connection(CALLS_AT_ONCE)
            .timeout(CALL_TIMEOUT)
            .add_service(CertificateAuthorityServer::new(service))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        accepting.abort();
        served.map_err(CaError::from)
    }
}

/// Issues the CA's own serving certificate, without a network hop.
struct LocalIssuer {
    ca: Arc<CertificateAuthority>,
    lifetime: Duration,
}

impl CertificateSource for LocalIssuer {
    type Error = IdentityError;

    async fn fetch(&self, id: &SpiffeId) -> Result<WorkloadCert, IdentityError> {
        self.ca.issue(id, self.lifetime)
    }
}

/// Accepts TCP connections and hands them on once TLS is up. Each handshake runs in its
/// own task, so a slow client delays no one else.
async fn accept_tls(listener: TcpListener, acceptor: TlsAcceptor, tx: mpsc::Sender<TlsConn>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually out of file descriptors: wait rather than spin.
                tracing::warn!(%error, "CA accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    // Fails only when the server is shutting down.
                    let _ = tx.send(TlsConn(tls)).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "CA TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "CA TLS handshake timed out"),
            }
        });
    }
}

/// A server-side TLS connection that tells tonic its TCP addresses (for `remote_addr`).
struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// The `Sign` handler.
struct Signer<A> {
    ca: Arc<CertificateAuthority>,
    authn: Arc<A>,
    model: watch::Receiver<Arc<State>>,
    default_ttl: Duration,
    max_ttl: Duration,
    answers: Answers,
    per_peer: PerPeer,
}

#[tonic::async_trait]
impl<A: NodeAuthenticator> CaService for Signer<A> {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let peer = request.remote_addr();
        let refuse = |node: Option<&str>, identity: &str, status: Status| {
            tracing::warn!(
                peer = ?peer,
                node = node.unwrap_or("-"),
                identity,
                code = ?status.code(),
                reason = status.message(),
                "CA refused a signing request"
            );
            status
        };
        let (metadata, _, request) = request.into_parts();
        let token = bearer_token(&metadata);
        let identity = request.identity.as_str();

        if let Some(peer) = peer
            && !self.per_peer.admit(peer.ip(), Instant::now())
        {
            return Err(refuse(
                None,
                identity,
                Status::resource_exhausted("too many requests from this address; retry later"),
            ));
        }
        let token =
            token.map_err(|reason| refuse(None, identity, Status::unauthenticated(reason)))?;
        let caller = match self.answers.get(token, Instant::now()) {
            Some(answer) => answer,
            None => {
                let answer = self.authn.authenticate(token).await;
                let definite = !matches!(answer, Err(AuthError::Backend(_)));
                let answer = answer.map_err(|e| e.to_string());
                if definite {
                    self.answers.put(token, answer.clone(), Instant::now());
                }
                answer
            }
        }
        .map_err(|error| refuse(None, identity, Status::unauthenticated(error)))?;
        let node = caller.node.as_str();

        let id: SpiffeId = identity
            .parse()
            .map_err(|error: crate::identity::SpiffeIdError| {
                refuse(
                    Some(node),
                    identity,
                    Status::invalid_argument(error.to_string()),
                )
            })?;
        if id.trust_domain() != self.ca.trust_domain() {
            let message = format!(
                "node {node} may not have identity {id}: this CA signs trust domain {} only",
                self.ca.trust_domain()
            );
            return Err(refuse(
                Some(node),
                identity,
                Status::permission_denied(message),
            ));
        }
        if let Some((namespace, account)) = &caller.only
            && (id.namespace(), id.service_account()) != (namespace.as_str(), account.as_str())
        {
            let message = format!(
                "a token of service account {namespace}/{account} may ask for its own identity only, not {id}"
            );
            return Err(refuse(
                Some(node),
                identity,
                Status::permission_denied(message),
            ));
        }
        if !scheduled_on(&self.model.borrow(), &id, node) {
            let message = format!("node {node} runs no pod with identity {id}");
            return Err(refuse(
                Some(node),
                identity,
                Status::permission_denied(message),
            ));
        }

        let ttl = match request.ttl_seconds {
            0 => self.default_ttl,
            seconds => Duration::from_secs(seconds.into()).min(self.max_ttl),
        };
        let addresses = serving_addresses(&self.model.borrow(), &id, node);
        let leaf = self
            .ca
            .sign_csr_at(&request.csr_pem, &id, ttl, &addresses)
            .map_err(|error| {
                let status = match error {
                    IdentityError::Csr(_) | IdentityError::Pem { .. } => {
                        Status::invalid_argument(error.to_string())
                    }
                    IdentityError::ForeignTrustDomain { .. } => {
                        Status::permission_denied(error.to_string())
                    }
                    _ => Status::internal(error.to_string()),
                };
                refuse(Some(node), identity, status)
            })?;
        tracing::info!(peer = ?peer, node, %id, ?ttl, ?addresses, "CA signed a certificate");
        Ok(Response::new(SignResponse {
            cert_chain_pem: vec![leaf],
            root_pem: self.ca.root_pem().to_owned(),
        }))
    }
}

/// Whether some pod on `node` runs as `id` (same namespace and service account) and may
/// have an identity. A mirror pod may not: the node defines it (a static pod), so it would
/// let a node mint any namespace's identity. Nor may a pod that names no service account:
/// the API server names one for every pod it admits except mirror pods, and the
/// `default` the model fills in was never granted.
fn scheduled_on(model: &Model, id: &SpiffeId, node: &str) -> bool {
    pods_as(model, id, node).next().is_some()
}

/// The pods on `node` that may have identity `id` (see [`scheduled_on`]).
fn pods_as<'a>(
    model: &'a Model,
    id: &'a SpiffeId,
    node: &'a str,
) -> impl Iterator<Item = &'a crate::config::PodInfo> {
    model.pods.values().filter(move |pod| {
        pod.namespace == id.namespace()
            && pod.service_account == id.service_account()
            && pod.node_name.as_deref() == Some(node)
            && !pod.mirror
            && !pod.service_account_unset
    })
}

/// The addresses a certificate for `id` asked by `node` may serve at: the node's own
/// (`InternalIP`) when a hostNetwork pod there runs as `id`, as the node agent does. Its
/// HBONE clients check that address, so one node's agent cannot answer for another.
fn serving_addresses(model: &Model, id: &SpiffeId, node: &str) -> Vec<std::net::IpAddr> {
    if !pods_as(model, id, node).any(|pod| pod.host_network) {
        return Vec::new();
    }
    model
        .nodes
        .get(node)
        .and_then(|n| n.internal_ip)
        .into_iter()
        .collect()
}

/// The token of `authorization: Bearer <token>` (RFC 6750, section 2.1; the scheme name is
/// case-insensitive).
fn bearer_token(metadata: &MetadataMap) -> Result<&str, &'static str> {
    let value = metadata
        .get("authorization")
        .ok_or("no authorization metadata")?
        .to_str()
        .map_err(|_| "authorization metadata is not ASCII text")?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or("authorization metadata is not `Bearer <token>`")?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err("authorization metadata is not `Bearer <token>`");
    }
    Ok(token)
}
