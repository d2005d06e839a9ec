//! Issued certificates and trusted roots, and reading a SPIFFE ID out of a certificate.
//!
//! An X.509-SVID (SPIFFE X.509-SVID specification, section 2) carries its SPIFFE ID as the
//! certificate's only URI subject alternative name (RFC 5280, section 4.2.1.6). Everything
//! here parses certificates with `x509-parser`; chain verification lives in `tls`.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::spiffe::check_trust_domain;
use super::{IdentityError, SpiffeId};

/// A workload's certificate chain (leaf first) and private key, with what Weft needs to
/// know about them without parsing again.
pub struct WorkloadCert {
    pub id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl WorkloadCert {
    /// Reads a PEM chain (leaf first) and a PEM private key (PKCS#8, SEC1 or PKCS#1).
    /// The identity is the leaf's SPIFFE URI SAN.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let chain = certs_from_pem(chain_pem, "certificate chain")?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| IdentityError::Pem {
                what: "private key",
                reason: e.to_string(),
            })?;
        Self::from_der(chain, key)
    }

    /// Builds from DER. The chain must not be empty; the first certificate is the leaf.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, IdentityError> {
        let leaf = chain
            .first()
            .ok_or_else(|| IdentityError::Certificate("empty certificate chain".into()))?;
        let id = peer_identity(std::slice::from_ref(leaf))?;
        let (not_before, not_after) = validity(leaf)?;
        Ok(WorkloadCert {
            id,
            chain,
            key,
            not_before,
            not_after,
        })
    }

    /// When to fetch a replacement: half-way through the validity period, so that a CA
    /// outage shorter than half a lifetime never lets a certificate expire.
    pub fn renew_at(&self) -> SystemTime {
        half_life(self.not_before, self.not_after)
    }
}

impl fmt::Debug for WorkloadCert {
    /// Leaves the key out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("id", &self.id)
            .field("chain_len", &self.chain.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

pub(crate) fn half_life(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_before + lifetime / 2
}

/// The roots a peer's certificate must chain to.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    pub(crate) roots: Arc<RootCertStore>,
    certs: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// Reads one or more PEM root certificates.
    pub fn from_pem(pem: &str) -> Result<Self, IdentityError> {
        Self::from_certs(certs_from_pem(pem, "trust bundle")?)
    }

    /// Builds from DER root certificates (at least one).
    pub fn from_certs(certs: Vec<CertificateDer<'static>>) -> Result<Self, IdentityError> {
        if certs.is_empty() {
            return Err(IdentityError::Certificate("empty trust bundle".into()));
        }
        let mut roots = RootCertStore::empty();
        for cert in &certs {
            roots.add(cert.clone())?;
        }
        Ok(TrustBundle {
            roots: Arc::new(roots),
            certs,
        })
    }

    /// The trust domain of the first root that names one in a `spiffe://<td>` URI SAN
    /// (Weft's roots do; see `CertificateAuthority::generate`).
    pub fn trust_domain(&self) -> Option<String> {
        self.certs
            .iter()
            .find_map(|root| root_trust_domain(&parse(root).ok()?).ok())
    }

    /// The root certificates, as given.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }
}

/// The SPIFFE ID of a TLS peer: the URI SAN of the leaf (the first certificate).
///
/// The X.509-SVID specification (section 2) requires exactly one URI SAN, so a leaf with
/// none or several is refused rather than guessed at.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Result<SpiffeId, IdentityError> {
    let leaf = certs
        .first()
        .ok_or_else(|| IdentityError::Certificate("peer presented no certificate".into()))?;
    let cert = parse(leaf)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Certificate(format!("subjectAltName: {e}")))?
        .ok_or_else(|| IdentityError::Certificate("no subjectAltName".into()))?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => Ok(uri.parse()?),
        (None, _) => Err(IdentityError::Certificate("no URI SAN".into())),
        (Some(_), Some(_)) => Err(IdentityError::Certificate("more than one URI SAN".into())),
    }
}

/// Every certificate in a PEM text, in order; other PEM sections are skipped.
pub(crate) fn certs_from_pem(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::Pem {
            what,
            reason: "no CERTIFICATE section".into(),
        });
    }
    Ok(certs)
}

pub(crate) fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, IdentityError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Certificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IdentityError::Certificate(
            "trailing bytes after the certificate".into(),
        ));
    }
    Ok(cert)
}

/// notBefore and notAfter of a certificate.
pub(crate) fn validity(
    der: &CertificateDer<'_>,
) -> Result<(SystemTime, SystemTime), IdentityError> {
    let cert = parse(der)?;
    let validity = cert.validity();
    Ok((
        validity.not_before.to_datetime().into(),
        validity.not_after.to_datetime().into(),
    ))
}

/// The trust domain a root names in its `spiffe://<td>` URI SAN.
pub(crate) fn root_trust_domain(
    root: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<String, IdentityError> {
    let missing =
        || IdentityError::Certificate("root has no spiffe://<trust-domain> URI SAN".into());
    let san = root
        .subject_alternative_name()
        .map_err(|e| IdentityError::Certificate(format!("root subjectAltName: {e}")))?
        .ok_or_else(missing)?;
    san.value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) => uri
                .strip_prefix("spiffe://")
                .filter(|td| check_trust_domain(td).is_ok()),
            _ => None,
        })
        .map(str::to_owned)
        .ok_or_else(missing)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::testutil;

    #[test]
    fn peer_identity_wants_exactly_one_uri() {
        let none = testutil::self_signed_with_uris(&[]);
        assert!(peer_identity(&[none]).is_err());
        let two =
            testutil::self_signed_with_uris(&["spiffe://td/ns/a/sa/b", "spiffe://td/ns/c/sa/d"]);
        assert!(peer_identity(&[two]).is_err());
        let not_spiffe = testutil::self_signed_with_uris(&["https://example.com/x"]);
        assert!(peer_identity(&[not_spiffe]).is_err());
        let one = testutil::self_signed_with_uris(&["spiffe://td/ns/a/sa/b"]);
        assert_eq!(
            peer_identity(&[one]).unwrap().to_string(),
            "spiffe://td/ns/a/sa/b"
        );
        assert!(peer_identity(&[]).is_err());
        assert!(peer_identity(&[CertificateDer::from(vec![1, 2, 3])]).is_err());
    }

    #[test]
    fn workload_cert_reads_id_and_renews_at_half_life() {
        let ca = testutil::ca();
        let id = testutil::id("ns1", "sa1");
        let cert = testutil::issue(&ca, &id, Duration::from_secs(3600));
        assert_eq!(cert.id, id);
        assert_eq!(cert.chain.len(), 1);
        let lifetime = cert.not_after.duration_since(cert.not_before).unwrap();
        // One hour plus the minute the authority backdates for clock skew.
        assert_eq!(lifetime, Duration::from_secs(3660));
        assert_eq!(cert.renew_at(), cert.not_before + Duration::from_secs(1830));
    }

    #[test]
    fn bad_pem_is_refused() {
        assert!(TrustBundle::from_pem("").is_err());
        assert!(TrustBundle::from_pem("-----BEGIN CERTIFICATE-----\n!!\n").is_err());
        assert!(WorkloadCert::from_pem("nothing", "nothing").is_err());
    }
}
