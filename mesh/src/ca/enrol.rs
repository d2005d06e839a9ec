//! How a workload process (a node agent, a waypoint) gets its first certificate: read its
//! bootstrap token and the trust bundle, then ask the CA, retrying for a while because the
//! CA may be starting at the same time. Renewals are the `IdentityManager`'s business.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{CaClient, CaError, CaSource};
use crate::identity::{CertSlot, IdentityManager, SpiffeId, TrustBundle};

/// What a process needs to ask the CA.
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub ca: SocketAddr,
    pub token_file: PathBuf,
    pub trust_bundle: PathBuf,
    pub ttl: Duration,
}

/// Resolves the CA's address: `IP:PORT`, or `host:port` (a Service's DNS name in a
/// cluster), to the first address it names.
pub async fn resolve_ca(address: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| format!("resolving the CA address {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("the CA address {address} names no address"))
}

/// A process's identities, and its own certificate, once the CA gave it.
pub struct Enrolled {
    pub identities: Arc<IdentityManager<CaSource>>,
    pub trust: TrustBundle,
    pub slot: Arc<CertSlot>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {}: {source}", path.display())]
    Bundle { path: PathBuf, source: Box<CaError> },
    #[error("getting the certificate of {id} from {ca}: {source}")]
    Ca {
        id: SpiffeId,
        ca: SocketAddr,
        source: Box<CaError>,
    },
}

fn read(path: &Path) -> Result<String, EnrolError> {
    std::fs::read_to_string(path).map_err(|source| EnrolError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl Enrolment {
    /// Gets `id`'s certificate, retrying for up to `wait` while the CA cannot be reached.
    pub async fn enrol(&self, id: &SpiffeId, wait: Duration) -> Result<Enrolled, EnrolError> {
        let token = read(&self.token_file)?.trim().to_string();
        let bundle = read(&self.trust_bundle)?;
        let trust = TrustBundle::from_pem(&bundle).map_err(|e| EnrolError::Bundle {
            path: self.trust_bundle.clone(),
            source: Box::new(e.into()),
        })?;
        let ca_error = |source: CaError| EnrolError::Ca {
            id: id.clone(),
            ca: self.ca,
            source: Box::new(source),
        };
        let client = CaClient::new(self.ca, trust.clone(), token)
            .map(|c| c.with_token_file(self.token_file.clone()))
            .map_err(ca_error)?
            .with_ttl(self.ttl);
        let identities = IdentityManager::new(CaSource::new(client));
        let deadline = Instant::now() + wait;
        loop {
            match identities.slot(id).await {
                Ok(slot) => {
                    return Ok(Enrolled {
                        identities,
                        trust,
                        slot,
                    });
                }
                Err(err) if Instant::now() < deadline => {
                    tracing::warn!(%err, "waiting for the CA");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => return Err(ca_error(err)),
            }
        }
    }
}
