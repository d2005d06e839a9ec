//! What a caller of the CA sends: a CSR, as PEM text. Signing it either fails with an error
//! or yields a certificate for the identity asked, never a panic.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weft_mesh::identity::{CertificateAuthority, SpiffeId};

static CA: LazyLock<CertificateAuthority> =
    LazyLock::new(|| CertificateAuthority::generate("cluster.local").expect("a CA"));
static ID: LazyLock<SpiffeId> =
    LazyLock::new(|| SpiffeId::new("cluster.local", "app", "fuzz").expect("an id"));

fuzz_target!(|data: &[u8]| {
    let Ok(pem) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(leaf) = CA.sign_csr(pem, &ID, Duration::from_secs(3600)) {
        assert!(leaf.contains("BEGIN CERTIFICATE"));
    }
});
