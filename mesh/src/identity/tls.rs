//! rustls configurations for mesh connections: TLS 1.3 only (RFC 8446), ALPN `h2`, and peers
//! authenticated by SPIFFE identity rather than by DNS name.
//!
//! SPIFFE X.509-SVIDs (X.509-SVID specification, section 5) are validated by building a
//! path to the trust bundle (RFC 5280, section 6) and then reading the peer's SPIFFE ID
//! from its URI SAN; the TLS server name plays no part. Servers require a client
//! certificate; clients check the server's ID against a [`ServerIdentity`].
//!
//! Session resumption is off on both sides. A resumed session would skip the identity
//! check above (the client's cache is keyed by server name, which SPIFFE does not use),
//! and mesh connections are pooled and long-lived, so full handshakes cost little.

use std::fmt;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{ALPN_H2, CertSlot, IdentityError, SpiffeId, TrustBundle, peer_identity, provider};

/// Which server identities a client accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerIdentity {
    /// Exactly this workload.
    Exact(SpiffeId),
    /// This workload, with a certificate for the IP address the client dialled: a node
    /// agent, whose SPIFFE ID every node shares, at the node the client meant.
    AtDialledAddress(SpiffeId),
    /// Any of these workloads (a service whose pods run as several service accounts).
    AnyOf(Vec<SpiffeId>),
    /// Any workload of this trust domain.
    AnyInTrustDomain(String),
}

impl ServerIdentity {
    pub fn accepts(&self, id: &SpiffeId) -> bool {
        match self {
            ServerIdentity::Exact(want) | ServerIdentity::AtDialledAddress(want) => want == id,
            ServerIdentity::AnyOf(want) => want.contains(id),
            ServerIdentity::AnyInTrustDomain(td) => id.trust_domain() == td,
        }
    }
}

impl fmt::Display for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerIdentity::Exact(id) => write!(f, "{id}"),
            ServerIdentity::AtDialledAddress(id) => write!(f, "{id} at the address dialled"),
            ServerIdentity::AnyOf(ids) => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                write!(f, "one of [{}]", ids.join(", "))
            }
            ServerIdentity::AnyInTrustDomain(td) => write!(f, "any identity in {td}"),
        }
    }
}

/// A server that presents `slot` and requires a client certificate chaining to `trust`
/// and carrying a SPIFFE ID.
pub fn server_config(
    slot: Arc<CertSlot>,
    trust: &TrustBundle,
) -> Result<Arc<ServerConfig>, IdentityError> {
    let provider = provider();
    let webpki = WebPkiClientVerifier::builder_with_provider(trust.roots.clone(), provider.clone())
        .build()?;
    let verifier = Arc::new(SpiffeClientVerifier { webpki });
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    Ok(Arc::new(server_defaults(config)))
}

/// A server that presents `slot` and asks for no client certificate: the CA's own
/// endpoint, whose callers authenticate with a bearer token instead.
pub fn server_config_no_client_auth(
    slot: Arc<CertSlot>,
) -> Result<Arc<ServerConfig>, IdentityError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    Ok(Arc::new(server_defaults(config)))
}

fn server_defaults(mut config: ServerConfig) -> ServerConfig {
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config
}

/// A client that presents `slot` and accepts a server whose certificate chains to `trust`
/// and whose SPIFFE ID `accept` allows. The server name given to rustls is ignored.
pub fn client_config(
    slot: Arc<CertSlot>,
    trust: &TrustBundle,
    accept: ServerIdentity,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let config = client_builder(trust, accept)?.with_client_cert_resolver(slot);
    Ok(Arc::new(client_defaults(config)))
}

/// Like [`client_config`], without a client certificate: for calling the CA before the
/// caller has one.
pub fn client_config_no_client_auth(
    trust: &TrustBundle,
    accept: ServerIdentity,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let config = client_builder(trust, accept)?.with_no_client_auth();
    Ok(Arc::new(client_defaults(config)))
}

fn client_builder(
    trust: &TrustBundle,
    accept: ServerIdentity,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, IdentityError> {
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        roots: trust.roots.clone(),
        accept,
        algorithms: provider.signature_verification_algorithms,
    });
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier))
}

fn client_defaults(mut config: ClientConfig) -> ClientConfig {
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    // The name is only a placeholder (SPIFFE does not use DNS names): do not send it.
    config.enable_sni = false;
    config
}

/// Verifies a server by path to the trust bundle and SPIFFE ID, not by DNS name.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    accept: ServerIdentity,
    algorithms: WebPkiSupportedAlgorithms,
}

/// A node agent's certificate that is not for the address the client dialled: another
/// node's agent answered.
#[derive(Debug, thiserror::Error)]
#[error("server {id} has no certificate for {dialled:?}: {reason}")]
struct OtherNode {
    id: SpiffeId,
    dialled: String,
    reason: String,
}

/// A server whose certificate is valid but names another workload than expected.
#[derive(Debug, thiserror::Error)]
#[error("server is {got}, expected {expected}")]
struct UnexpectedServer {
    got: SpiffeId,
    expected: String,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let leaf = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        leaf.verify_for_usage(
            self.algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(pki_error)?;
        let id = spiffe_id_of(end_entity)?;
        if !self.accept.accepts(&id) {
            return Err(other(UnexpectedServer {
                got: id,
                expected: self.accept.to_string(),
            }));
        }
        if matches!(self.accept, ServerIdentity::AtDialledAddress(_)) {
            // RFC 6125 / RFC 5280: an IP address name matches an iPAddress SAN only.
            leaf.verify_is_valid_for_subject_name(server_name)
                .map_err(|e| {
                    other(OtherNode {
                        id,
                        dialled: server_name.to_str().into_owned(),
                        reason: e.to_string(),
                    })
                })?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Unreachable with a TLS 1.3-only configuration; delegated for completeness.
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// rustls' WebPKI client verifier, plus the requirement that the leaf carries exactly one
/// SPIFFE ID, so a certificate from the right root but without an identity fails the
/// handshake instead of a later lookup.
#[derive(Debug)]
struct SpiffeClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.webpki.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        spiffe_id_of(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

fn spiffe_id_of(leaf: &CertificateDer<'_>) -> Result<SpiffeId, rustls::Error> {
    peer_identity(std::slice::from_ref(leaf)).map_err(other)
}

fn other(error: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

/// Maps a path-validation failure to the rustls error (and so the TLS alert) that fits.
fn pki_error(error: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let kind = match error {
        E::BadDer
        | E::BadDerTime
        | E::TrailingData(_)
        | E::MalformedExtensions
        | E::InvalidCertValidity => CertificateError::BadEncoding,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        E::UnsupportedCriticalExtension => CertificateError::UnhandledCriticalExtension,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(kind)
}
