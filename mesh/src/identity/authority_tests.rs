use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;

use super::*;
use crate::identity::cert::certs_from_pem;
use crate::identity::testutil;

fn verify(
    root: &CertificateDer<'_>,
    leaf: &CertificateDer<'_>,
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let anchor = webpki::anchor_from_trusted_cert(root)?;
    let leaf = webpki::EndEntityCert::try_from(leaf)?;
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        usage,
        None,
        None,
    )
    .map(|_| ())
}

fn one_cert(pem: &str) -> CertificateDer<'static> {
    let mut certs = certs_from_pem(pem, "test").unwrap();
    assert_eq!(certs.len(), 1);
    certs.remove(0)
}

/// A CSR that asks for more than its due: another workload's ID and a DNS name.
fn greedy_csr(alg: &'static SignatureAlgorithm) -> String {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI(
            Ia5String::try_from("spiffe://cluster.local/ns/kube-system/sa/admin").unwrap(),
        ),
        SanType::DnsName(Ia5String::try_from("evil.example").unwrap()),
    ];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn signs_exactly_the_requested_identity() {
    let ca = testutil::ca();
    let id = testutil::id("ns1", "sa1");
    let before = SystemTime::now();
    let leaf_pem = ca
        .sign_csr(
            &greedy_csr(&PKCS_ECDSA_P256_SHA256),
            &id,
            Duration::from_secs(3600),
        )
        .unwrap();
    let leaf = one_cert(&leaf_pem);
    let root = one_cert(ca.root_pem());

    let parsed = cert::parse(&leaf).unwrap();
    let san = parsed.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://cluster.local/ns/ns1/sa/sa1")]
    );
    assert!(san.critical, "an empty subject makes the SAN critical");
    let eku = parsed.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.any);
    let bc = parsed.basic_constraints().unwrap().unwrap().value;
    assert!(!bc.ca);
    assert_eq!(
        crate::identity::peer_identity(std::slice::from_ref(&leaf)).unwrap(),
        id
    );

    let (not_before, not_after) = cert::validity(&leaf).unwrap();
    let skew = before.duration_since(not_before).unwrap();
    assert!(
        skew >= Duration::from_secs(59) && skew <= Duration::from_secs(62),
        "{skew:?}"
    );
    let life = not_after.duration_since(before).unwrap();
    assert!(life >= Duration::from_secs(3599) && life <= Duration::from_secs(3602));

    verify(&root, &leaf, webpki::KeyUsage::server_auth()).unwrap();
    verify(&root, &leaf, webpki::KeyUsage::client_auth()).unwrap();
    let other_root = one_cert(testutil::ca().root_pem());
    assert!(verify(&other_root, &leaf, webpki::KeyUsage::server_auth()).is_err());
}

#[test]
fn serials_differ() {
    let ca = testutil::ca();
    let id = testutil::id("ns1", "sa1");
    let (_, csr) = generate_key_and_csr(&id).unwrap();
    let a = one_cert(&ca.sign_csr(&csr, &id, Duration::from_secs(60)).unwrap());
    let b = one_cert(&ca.sign_csr(&csr, &id, Duration::from_secs(60)).unwrap());
    let serial = |der| cert::parse(der).unwrap().raw_serial().to_vec();
    assert_ne!(serial(&a), serial(&b));
    assert_eq!(serial(&a).len(), 16);
}

#[test]
fn refuses_other_key_types() {
    let ca = testutil::ca();
    let id = testutil::id("ns1", "sa1");
    for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let err = ca
            .sign_csr(&greedy_csr(alg), &id, Duration::from_secs(60))
            .unwrap_err();
        assert!(matches!(err, IdentityError::Csr(_)), "{err}");
    }
}

#[test]
fn refuses_a_forged_signature() {
    let ca = testutil::ca();
    let id = testutil::id("ns1", "sa1");
    let (_, csr) = generate_key_and_csr(&id).unwrap();
    // The signature is the last thing in the DER, so the last base64 line encodes it.
    // Changing a character there keeps the structure and breaks the signature.
    let mut lines: Vec<String> = csr.lines().map(str::to_owned).collect();
    let last = lines.len() - 2;
    let line = &mut lines[last];
    let at = line.len().saturating_sub(8);
    let swapped = if &line[at..=at] == "A" { "B" } else { "A" };
    line.replace_range(at..=at, swapped);
    let forged = lines.join("\n");
    let err = ca
        .sign_csr(&forged, &id, Duration::from_secs(60))
        .unwrap_err();
    assert!(
        matches!(&err, IdentityError::Csr(reason) if reason.contains("signature")),
        "{err}"
    );
}

#[test]
fn refuses_garbage_and_foreign_trust_domains() {
    let ca = testutil::ca();
    let id = testutil::id("ns1", "sa1");
    for garbage in [
        "",
        "hello",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        let err = ca
            .sign_csr(garbage, &id, Duration::from_secs(60))
            .unwrap_err();
        assert!(matches!(err, IdentityError::Csr(_)), "{err}");
    }
    let foreign = SpiffeId::new("other.domain", "ns1", "sa1").unwrap();
    let (_, csr) = generate_key_and_csr(&foreign).unwrap();
    let err = ca
        .sign_csr(&csr, &foreign, Duration::from_secs(60))
        .unwrap_err();
    assert!(
        matches!(err, IdentityError::ForeignTrustDomain { .. }),
        "{err}"
    );
}

#[test]
fn writes_and_loads_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let ca = testutil::ca();
    ca.write(dir.path().join("ca")).unwrap();
    let cert_path = dir.path().join("ca").join(ROOT_CERT_FILE);
    let key_path = dir.path().join("ca").join(ROOT_KEY_FILE);
    let mode = fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let loaded = CertificateAuthority::load(&cert_path, &key_path).unwrap();
    assert_eq!(loaded.trust_domain(), testutil::TRUST_DOMAIN);
    assert_eq!(loaded.root_pem(), ca.root_pem());
    // What the loaded authority signs chains to the original root.
    let id = testutil::id("ns1", "sa1");
    let cert = loaded.issue(&id, Duration::from_secs(60)).unwrap();
    verify(
        &one_cert(ca.root_pem()),
        &cert.chain[0],
        webpki::KeyUsage::client_auth(),
    )
    .unwrap();

    // A key that is not the root's is refused.
    let other = testutil::ca();
    other.write(dir.path().join("other")).unwrap();
    let err = CertificateAuthority::load(&cert_path, dir.path().join("other").join(ROOT_KEY_FILE))
        .unwrap_err();
    assert!(matches!(err, IdentityError::Certificate(_)), "{err}");
    assert!(CertificateAuthority::load(dir.path().join("nope"), &key_path).is_err());
    assert!(CertificateAuthority::generate("Not A Domain").is_err());
}
