//! The mesh's root certificate authority: holds the root key and turns CSRs into
//! X.509-SVIDs.
//!
//! The authority, not the requester, decides what a certificate says. From a CSR (PKCS#10,
//! RFC 2986) it takes only the public key, after checking that the key is ECDSA P-256 and
//! that the request's signature proves possession of it. Everything else, including any
//! SANs the CSR asks for, is ignored. The leaf follows the SPIFFE X.509-SVID specification
//! (section 4) and RFC 5280: exactly one URI SAN, `CA:FALSE`, key usage digitalSignature,
//! extended key usage serverAuth and clientAuth, and a random serial number.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
    SignatureAlgorithm,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
};
use x509_parser::prelude::FromDer;

use super::cert::{self, TrustBundle, WorkloadCert};
use super::spiffe::check_trust_domain;
use super::{IdentityError, SpiffeId, SpiffeIdError};

/// Certificates start this far in the past, so that a peer whose clock runs a little
/// behind the authority's still accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Lifetime of a generated root.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// File names `write` uses, Istio's `cacerts` names.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const ROOT_KEY_FILE: &str = "root-key.pem";

/// A self-signed ECDSA P-256 root that signs workload certificates of one trust domain.
pub struct CertificateAuthority {
    trust_domain: String,
    root_pem: String,
    root_der: CertificateDer<'static>,
    root_not_after: SystemTime,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    /// Leaves the key out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("root_not_after", &self.root_not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new root for `trust_domain`, valid for ten years. The root carries the URI SAN
    /// `spiffe://<trust-domain>` (X.509-SVID specification, section 4.1: a signing
    /// certificate may carry the trust domain's ID), which is how [`load`](Self::load)
    /// learns the trust domain back.
    pub fn generate(trust_domain: &str) -> Result<Self, IdentityError> {
        check_trust_domain(trust_domain).map_err(|reason| SpiffeIdError {
            input: trust_domain.to_owned(),
            reason,
        })?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, trust_domain);
        name.push(DnType::CommonName, "Weft root CA");
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(format!(
            "spiffe://{trust_domain}"
        ))?)];
        // The root signs leaves directly; a path length of 0 forbids intermediates.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + ROOT_LIFETIME).into();
        params.serial_number = Some(random_serial());
        let root = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            trust_domain: trust_domain.to_owned(),
            root_pem: root.pem(),
            root_der: root.der().clone(),
            root_not_after: now + ROOT_LIFETIME,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a root from a PEM certificate and a PEM PKCS#8 P-256 key, as written by
    /// [`write`](Self::write).
    pub fn load(
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Self, IdentityError> {
        let read = |path: &Path| {
            fs::read_to_string(path).map_err(|source| IdentityError::Io {
                path: path.to_owned(),
                source,
            })
        };
        Self::from_pem(&read(cert_path.as_ref())?, &read(key_path.as_ref())?)
    }

    /// Like [`load`](Self::load), from PEM text. The certificate must be a CA whose public
    /// key matches the private key, with a `spiffe://<trust-domain>` URI SAN.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let root_der = cert::certs_from_pem(cert_pem, "root certificate")?
            .into_iter()
            .next()
            .ok_or_else(|| IdentityError::Certificate("no root certificate".into()))?;
        let key = KeyPair::from_pkcs8_pem_and_sign_algo(key_pem, &PKCS_ECDSA_P256_SHA256).map_err(
            |e| IdentityError::Pem {
                what: "root key (PKCS#8 ECDSA P-256)",
                reason: e.to_string(),
            },
        )?;
        let root = cert::parse(&root_der)?;
        if !root.is_ca() {
            return Err(IdentityError::Certificate(
                "root is not a CA certificate".into(),
            ));
        }
        if root.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(IdentityError::Certificate(
                "root certificate and key do not match".into(),
            ));
        }
        let trust_domain = cert::root_trust_domain(&root)?;
        let (_, root_not_after) = cert::validity(&root_der)?;
        let issuer = Issuer::from_ca_cert_der(&root_der, key)?;
        Ok(CertificateAuthority {
            trust_domain,
            root_pem: cert_pem.to_owned(),
            root_der,
            root_not_after,
            issuer,
        })
    }

    /// Writes `root-cert.pem` and `root-key.pem` into `dir` (created if missing). The key
    /// file is readable by its owner only.
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<(), IdentityError> {
        let dir = dir.as_ref();
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| IdentityError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let cert_path = dir.join(ROOT_CERT_FILE);
        fs::write(&cert_path, &self.root_pem).map_err(io(&cert_path))?;
        let key_path = dir.join(ROOT_KEY_FILE);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(io(&key_path))?;
        // `mode` applies only when the file is created; an existing file is tightened too.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io(&key_path))?;
        file.write_all(self.issuer.key().serialize_pem().as_bytes())
            .map_err(io(&key_path))?;
        Ok(())
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// A bundle holding this root only.
    pub fn trust_bundle(&self) -> Result<TrustBundle, IdentityError> {
        TrustBundle::from_certs(vec![self.root_der.clone()])
    }

    /// Signs a PEM CSR for `id`, valid from one minute ago until `lifetime` from now (or
    /// the root's own expiry, if sooner). Returns the leaf certificate, PEM.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<String, IdentityError> {
        self.sign_csr_at(csr_pem, id, lifetime, &[])
    }

    /// Like [`sign_csr`](Self::sign_csr), with `addresses` as IP address SANs beside the
    /// SPIFFE ID: the addresses the certificate may serve at. A node agent's certificate
    /// names its node's address, so that a client that dialled one node can tell that
    /// node's agent from another's (they share one SPIFFE ID).
    pub fn sign_csr_at(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        lifetime: Duration,
        addresses: &[std::net::IpAddr],
    ) -> Result<String, IdentityError> {
        if id.trust_domain() != self.trust_domain {
            return Err(IdentityError::ForeignTrustDomain {
                id: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let public_key = csr_public_key(csr_pem)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        // An empty subject: the identity is the SAN alone, which RFC 5280 then requires
        // to be critical (rcgen marks it so).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id.to_string())?)];
        params
            .subject_alt_names
            .extend(addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + lifetime).min(self.root_not_after).into();
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        Ok(params.signed_by(&public_key, &self.issuer)?.pem())
    }

    /// Generates a key, signs it for `id` and returns the result: the authority's own
    /// serving certificate, and certificates for tests.
    pub fn issue(&self, id: &SpiffeId, lifetime: Duration) -> Result<WorkloadCert, IdentityError> {
        self.issue_at(id, lifetime, &[])
    }

    /// Like [`issue`](Self::issue), for `addresses` too (see [`sign_csr_at`](Self::sign_csr_at)).
    pub fn issue_at(
        &self,
        id: &SpiffeId,
        lifetime: Duration,
        addresses: &[std::net::IpAddr],
    ) -> Result<WorkloadCert, IdentityError> {
        let (key_pem, csr_pem) = generate_key_and_csr(id)?;
        let leaf_pem = self.sign_csr_at(&csr_pem, id, lifetime, addresses)?;
        WorkloadCert::from_pem(&leaf_pem, &key_pem)
    }
}

/// A fresh ECDSA P-256 key and a CSR for `id`, both PEM (the key PKCS#8). The CSR asks for
/// the URI SAN `id`, for the record only: the authority decides the SAN itself.
pub fn generate_key_and_csr(id: &SpiffeId) -> Result<(String, String), IdentityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id.to_string())?)];
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// The public key a CSR proves possession of: the key must be ECDSA P-256 and the request
/// signed with ECDSA-SHA256 by it (RFC 2986, section 3; RFC 5480 for the key encoding).
fn csr_public_key(csr_pem: &str) -> Result<CsrKey, IdentityError> {
    let refuse = |reason: &str| IdentityError::Csr(reason.to_owned());
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| refuse(&format!("no PEM CERTIFICATE REQUEST: {e}")))?;
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| refuse(&format!("not a PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(refuse("trailing bytes after the request"));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err(refuse("key is not ECDSA P-256"));
    }
    let point = spki.subject_public_key.data.to_vec();
    // An uncompressed SEC1 point, 0x04 || X || Y, is all RFC 5480 allows for P-256 here.
    if point.len() != 65 || point[0] != 0x04 {
        return Err(refuse("P-256 key is not an uncompressed point"));
    }
    if csr.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA256 {
        return Err(refuse("request is not signed with ECDSA-SHA256"));
    }
    csr.verify_signature()
        .map_err(|_| refuse("signature does not verify"))?;
    Ok(CsrKey(point))
}

/// The requester's public key, all the authority keeps of a CSR.
struct CsrKey(Vec<u8>);

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// A positive 128-bit serial (RFC 5280, section 4.1.2.2: positive, at most 20 octets).
/// The top bit is cleared so the DER integer needs no sign byte, and the next one set so
/// the serial is never zero.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
#[path = "authority_tests.rs"]
mod tests;
