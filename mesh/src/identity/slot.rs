//! A certificate that can be swapped while TLS configurations use it.
//!
//! rustls asks a resolver for the certificate at each handshake, so a configuration built
//! once around a [`CertSlot`] presents whatever the slot holds at that moment. Rotation is
//! therefore one pointer swap: handshakes after [`CertSlot::replace`] present the new
//! certificate, and connections already established are untouched, since TLS 1.3 never
//! looks at the certificate again after the handshake (RFC 8446, section 4.4.2).

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::cert::half_life;
use super::{IdentityError, SpiffeId, WorkloadCert, provider};

/// What a slot currently presents, without the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    /// Half-way through the validity period; see [`WorkloadCert::renew_at`].
    pub fn renew_at(&self) -> SystemTime {
        half_life(self.not_before, self.not_after)
    }
}

struct Current {
    info: CertInfo,
    key: Arc<CertifiedKey>,
}

/// The current certificate of one identity, shared by every TLS configuration that
/// presents it.
pub struct CertSlot {
    current: RwLock<Current>,
}

impl CertSlot {
    /// Fails if the key cannot be loaded or does not match the leaf.
    pub fn new(cert: WorkloadCert) -> Result<Self, IdentityError> {
        Ok(CertSlot {
            current: RwLock::new(certified(cert)?),
        })
    }

    /// Presents `cert` from the next handshake on. On error the old certificate stays.
    pub fn replace(&self, cert: WorkloadCert) -> Result<(), IdentityError> {
        let next = certified(cert)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    pub fn current(&self) -> CertInfo {
        self.read(|current| current.info.clone())
    }

    fn key(&self) -> Arc<CertifiedKey> {
        self.read(|current| current.key.clone())
    }

    /// A poisoned lock still holds a whole value (writers only assign), so it is used.
    fn read<T>(&self, f: impl FnOnce(&Current) -> T) -> T {
        f(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

fn certified(cert: WorkloadCert) -> Result<Current, IdentityError> {
    let info = CertInfo {
        id: cert.id,
        not_before: cert.not_before,
        not_after: cert.not_after,
    };
    let key = CertifiedKey::from_der(cert.chain, cert.key, &provider())?;
    Ok(Current {
        info,
        key: Arc::new(key),
    })
}

impl fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSlot")
            .field("current", &self.current())
            .finish()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
