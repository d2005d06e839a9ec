//! Shared fixtures for the identity and CA tests: an authority, identities and
//! certificates shaped the ways the tests need.

use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls_pki_types::CertificateDer;

use super::{CertificateAuthority, SpiffeId, WorkloadCert};

pub(crate) const TRUST_DOMAIN: &str = "cluster.local";

pub(crate) fn ca() -> CertificateAuthority {
    CertificateAuthority::generate(TRUST_DOMAIN).unwrap()
}

pub(crate) fn id(namespace: &str, service_account: &str) -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, namespace, service_account).unwrap()
}

pub(crate) fn issue(ca: &CertificateAuthority, id: &SpiffeId, lifetime: Duration) -> WorkloadCert {
    ca.issue(id, lifetime).unwrap()
}

/// A self-signed certificate whose SAN holds exactly these URIs.
pub(crate) fn self_signed_with_uris(uris: &[&str]) -> CertificateDer<'static> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|uri| SanType::URI(Ia5String::try_from(*uri).unwrap()))
        .collect();
    params.self_signed(&key).unwrap().der().clone()
}

/// A self-signed certificate for `id`, valid from now for `lifetime` (no backdating, so
/// its half-life is exactly `lifetime / 2` from now).
pub(crate) fn short_lived(id: &SpiffeId, lifetime: Duration) -> WorkloadCert {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id.to_string()).unwrap())];
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + lifetime).into();
    let cert = params.self_signed(&key).unwrap();
    WorkloadCert::from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
}
