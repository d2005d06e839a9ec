//! Workload identity: who is at each end of a mesh connection, and the certificates that
//! prove it.
//!
//! Weft names workloads the way SPIFFE does, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`, and
//! carries the name in X.509-SVIDs (the SPIFFE X.509-SVID specification): one URI SAN, an
//! ECDSA P-256 key, signed by the mesh's root. Every mesh hop is TLS 1.3 (RFC 8446) with both
//! ends authenticated by such certificates. The module holds:
//!
//! - `spiffe`: the [`SpiffeId`] type and its strict parser;
//! - `authority`: the root [`CertificateAuthority`] that signs CSRs, and CSR generation;
//! - `cert`: issued certificates ([`WorkloadCert`]), roots ([`TrustBundle`]) and reading the
//!   identity out of a peer's certificate ([`peer_identity`]);
//! - `slot`: [`CertSlot`], the hot-swappable certificate a TLS configuration presents;
//! - `tls`: the rustls server and client configurations that check SPIFFE identities;
//! - `manager`: [`IdentityManager`], which keeps one slot per identity and renews it.

mod authority;
pub(crate) mod cert;
mod manager;
mod slot;
mod spiffe;
mod tls;

#[cfg(test)]
pub(crate) mod testutil;
#[cfg(test)]
mod tls_tests;

use std::io;
use std::path::PathBuf;

pub use authority::{CertificateAuthority, ROOT_CERT_FILE, ROOT_KEY_FILE, generate_key_and_csr};
pub use cert::{TrustBundle, WorkloadCert, peer_identity};
pub use manager::{CertificateSource, IdentityManager};
pub use slot::{CertInfo, CertSlot};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use tls::{
    ServerIdentity, client_config, client_config_no_client_auth, server_config,
    server_config_no_client_auth,
};

/// ALPN protocol every mesh TLS connection negotiates: HBONE and the CA both speak HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Id(#[from] SpiffeIdError),
    /// PEM input that does not hold what it should.
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    /// A certificate that cannot be parsed or lacks what an SVID must have.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A CSR the authority refuses: unparseable, wrong key type or bad signature.
    #[error("CSR refused: {0}")]
    Csr(String),
    /// The authority only signs identities of its own trust domain.
    #[error("identity {id} is outside trust domain {trust_domain}")]
    ForeignTrustDomain { id: SpiffeId, trust_domain: String },
    /// A certificate source returned a certificate for another identity than asked.
    #[error("asked for a certificate for {wanted}, got one for {got}")]
    WrongIdentity {
        wanted: Box<SpiffeId>,
        got: Box<SpiffeId>,
    },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The one crypto provider every Weft TLS configuration uses, named explicitly so that no
/// process-wide default provider is needed (or can change behaviour).
/// ring unless the `aws-lc` feature is on.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    #[cfg(feature = "aws-lc")]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(not(feature = "aws-lc"))]
    let provider = rustls::crypto::ring::default_provider();
    std::sync::Arc::new(provider)
}
