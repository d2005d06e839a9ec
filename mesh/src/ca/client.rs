//! The agent's side of the CA: send a CSR, get a certificate.
//!
//! The channel is gRPC over TLS 1.3 that this module sets up itself (tonic's own TLS
//! checks DNS names; the CA is checked by SPIFFE ID). The caller presents no certificate,
//! since it is asking for one; it authenticates with its node's bearer token instead.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio_rustls::TlsConnector;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::proto::SignRequest;
use super::proto::certificate_authority_client::CertificateAuthorityClient;
use super::{CaError, ca_identity};
use crate::identity::{
    CertificateSource, ServerIdentity, SpiffeId, TrustBundle, WorkloadCert,
    client_config_no_client_auth, generate_key_and_csr,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection to the CA, opened on first use and reopened by tonic when it breaks.
#[derive(Clone)]
pub struct CaClient {
    endpoint: Endpoint,
    connector: TlsConnect,
    authorization: MetadataValue<Ascii>,
    /// Where the token came from, re-read for each request: projected service-account
    /// tokens are rotated by the kubelet and expire, so the one read at start would not do.
    token_file: Option<std::path::PathBuf>,
    ttl: Duration,
    channel: Arc<OnceCell<Channel>>,
}

impl CaClient {
    /// A client of the CA at `addr`. The CA must present
    /// `spiffe://<td>/ns/weft-system/sa/weft-ca`, where `<td>` is the trust domain the
    /// bundle's root names in its `spiffe://<td>` URI SAN (as Weft's roots do), and a
    /// chain to `trust`. `token` is the node's bearer token.
    pub fn new(addr: SocketAddr, trust: TrustBundle, token: String) -> Result<Self, CaError> {
        let trust_domain = bundle_trust_domain(&trust)?;
        let tls = client_config_no_client_auth(
            &trust,
            ServerIdentity::Exact(ca_identity(&trust_domain)?),
        )?;
        let authorization = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| CaError::InvalidToken)?;
        // The scheme only labels requests; TLS is the connector's job.
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        Ok(CaClient {
            endpoint,
            connector: TlsConnect {
                addr,
                tls: TlsConnector::from(tls),
            },
            authorization,
            token_file: None,
            ttl: Duration::ZERO,
            channel: Arc::new(OnceCell::new()),
        })
    }

    /// Re-reads the token from `path` for each request (keeping the last good one if the
    /// file cannot be read or holds no valid token).
    pub fn with_token_file(mut self, path: std::path::PathBuf) -> Self {
        self.token_file = Some(path);
        self
    }

    fn authorization(&self) -> MetadataValue<Ascii> {
        self.token_file
            .as_ref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .and_then(|token| MetadataValue::try_from(format!("Bearer {}", token.trim())).ok())
            .unwrap_or_else(|| self.authorization.clone())
    }

    /// Asks for certificates of this lifetime (the CA clamps it). Zero, the default,
    /// leaves the lifetime to the CA.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sends `csr_pem` for `id`. Returns the chain (leaf first) and the root, each PEM.
    pub async fn sign(
        &self,
        id: &SpiffeId,
        csr_pem: &str,
    ) -> Result<(Vec<String>, String), CaError> {
        let mut request = tonic::Request::new(SignRequest {
            identity: id.to_string(),
            csr_pem: csr_pem.to_owned(),
            ttl_seconds: u32::try_from(self.ttl.as_secs()).unwrap_or(u32::MAX),
        });
        request
            .metadata_mut()
            .insert("authorization", self.authorization());
        let response = CertificateAuthorityClient::new(self.channel().await)
            .sign(request)
            .await?
            .into_inner();
        if response.cert_chain_pem.is_empty() {
            return Err(CaError::EmptyChain);
        }
        Ok((response.cert_chain_pem, response.root_pem))
    }
}

impl CaClient {
    /// The channel, created on first use (creating one needs a running runtime).
    pub(super) async fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| async {
                self.endpoint
                    .connect_with_connector_lazy(self.connector.clone())
            })
            .await
            .clone()
    }
}

/// The trust domain the bundle's roots name, `spiffe://<td>`.
fn bundle_trust_domain(trust: &TrustBundle) -> Result<String, CaError> {
    trust.trust_domain().ok_or_else(|| {
        CaError::TrustBundle("no root names its trust domain in a spiffe:// URI SAN".into())
    })
}

/// Certificates from the CA, for the `IdentityManager`: a fresh key and CSR each time.
pub struct CaSource {
    pub client: CaClient,
}

impl CaSource {
    pub fn new(client: CaClient) -> Self {
        CaSource { client }
    }
}

impl CertificateSource for CaSource {
    type Error = CaError;

    async fn fetch(&self, id: &SpiffeId) -> Result<WorkloadCert, CaError> {
        let (key_pem, csr_pem) = generate_key_and_csr(id)?;
        let (chain, _root) = self.client.sign(id, &csr_pem).await?;
        Ok(WorkloadCert::from_pem(&chain.join("\n"), &key_pem)?)
    }
}

/// Opens TCP to the CA and runs the TLS handshake; tonic speaks HTTP/2 over the result.
#[derive(Clone)]
struct TlsConnect {
    addr: SocketAddr,
    tls: TlsConnector,
}

type Connecting = Pin<
    Box<
        dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
    >,
>;

impl tonic::codegen::Service<http::Uri> for TlsConnect {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Connecting {
        let (addr, tls) = (self.addr, self.tls.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            // The verifier checks the SPIFFE ID and ignores this name; SNI is off.
            let name = ServerName::IpAddress(addr.ip().into());
            Ok(TokioIo::new(tls.connect(name, tcp).await?))
        })
    }
}
