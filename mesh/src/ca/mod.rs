//! The certificate authority service (`weft-agent ca`) and its client.
//!
//! Node agents need a certificate for each workload identity they run. They send the CA a
//! CSR over gRPC (`proto/ca.proto`, package `weft.ca.v1`), with a bearer token that
//! identifies their node. The CA signs only identities of pods the configuration model
//! places on that node, so a compromised node can obtain the identities of its own pods
//! and no others. The channel is TLS 1.3: the CA presents a certificate it issues to itself
//! (`spiffe://<td>/ns/weft-system/sa/weft-ca`), which agents check against the trust bundle.
//!
//! - `auth`: how the CA learns the calling node ([`NodeAuthenticator`], [`TokenFile`]);
//! - `token_review`: the same from a Kubernetes TokenReview of a bound service-account token;
//! - `server`: [`CaServer`], authorization and signing;
//! - `client`: [`CaClient`], and [`CaSource`], which plugs it into the `IdentityManager`.

mod auth;
mod client;
mod enrol;
mod limits;
mod server;
mod token_review;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use auth::{AuthError, Caller, NodeAuth, NodeAuthenticator, TokenFile};
pub use client::{CaClient, CaSource};
pub use enrol::{EnrolError, Enrolled, Enrolment, resolve_ca};
pub use server::CaServer;
pub use token_review::{NODE_NAME_EXTRA, TokenReviewer};

use crate::identity::{IdentityError, SpiffeId, SpiffeIdError};

/// Generated from `proto/ca.proto`.
pub mod proto {
    tonic::include_proto!("weft.ca.v1");
}

/// Lifetime of a certificate when the request asks for none (`ttl_seconds = 0`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest lifetime the CA grants, whatever the request asks for.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Namespace and service account of the CA's own identity.
pub const CA_NAMESPACE: &str = "weft-system";
pub const CA_SERVICE_ACCOUNT: &str = "weft-ca";

/// The identity the CA serves with in `trust_domain`.
pub fn ca_identity(trust_domain: &str) -> Result<SpiffeId, SpiffeIdError> {
    SpiffeId::new(trust_domain, CA_NAMESPACE, CA_SERVICE_ACCOUNT)
}

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("CA transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The CA answered with an error status (boxed: a `Status` is large).
    #[error("CA refused: {}: {}", .0.code(), .0.message())]
    Status(Box<tonic::Status>),
    /// The token cannot be sent as an HTTP/2 header value.
    #[error("bearer token holds characters not allowed in a header")]
    InvalidToken,
    #[error("trust bundle: {0}")]
    TrustBundle(String),
    #[error("CA response holds no certificate")]
    EmptyChain,
}

impl From<tonic::Status> for CaError {
    fn from(status: tonic::Status) -> Self {
        CaError::Status(Box::new(status))
    }
}

impl From<SpiffeIdError> for CaError {
    fn from(error: SpiffeIdError) -> Self {
        CaError::Identity(error.into())
    }
}

impl CaError {
    /// The gRPC status code, when the CA answered with one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            CaError::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}
