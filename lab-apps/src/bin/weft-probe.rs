//! `weft-probe`: speaks Weft's own protocols from outside an agent, as an attacker or a
//! misconfigured peer would, so tests can check what the CA and the tunnel refuse.
//!
//! - `csr`: asks the CA (`weft-agent ca serve`) to sign a fresh key for an identity, with a
//!   node's bearer token, a made-up one, or none at all;
//! - `hbone`: opens one HBONE stream (HTTP/2 CONNECT over mutual TLS) to a node agent with a
//!   client certificate minted on the spot from any root, for any identity.
//!
//! Each prints one JSON object on stdout and exits 0 only when the operation succeeded.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, string::Ia5String,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_mesh::ca::proto::SignRequest;
use weft_mesh::ca::proto::certificate_authority_client::CertificateAuthorityClient;
use weft_mesh::ca::{CaClient, CaError};
use weft_mesh::hbone::{HboneError, Pool, PoolKey, Settings};
use weft_mesh::identity::{
    CertSlot, CertificateAuthority, ServerIdentity, SpiffeId, TrustBundle, WorkloadCert,
    client_config, client_config_no_client_auth, generate_key_and_csr,
};

use weft_lab_apps::print_json;

#[derive(Parser)]
#[command(name = "weft-probe", about = "Probes Weft's CA and HBONE tunnel")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask the CA to sign a fresh key for an identity.
    Csr {
        /// The CA, IP:PORT.
        #[arg(long)]
        ca: SocketAddr,
        /// PEM roots the CA's certificate must chain to.
        #[arg(long)]
        bundle: PathBuf,
        /// File holding the bearer token; without it the request carries no
        /// `authorization` metadata at all.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// spiffe://<td>/ns/<ns>/sa/<sa>
        #[arg(long)]
        identity: SpiffeId,
        /// Requested lifetime in seconds (0: the CA's default).
        #[arg(long, default_value_t = 0)]
        ttl_seconds: u64,
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// Open one HBONE stream with a client certificate minted from a given root.
    Hbone {
        /// The tunnel endpoint, IP:15008.
        #[arg(long)]
        connect: SocketAddr,
        /// The stream's destination (`:authority`), IP:PORT.
        #[arg(long)]
        authority: SocketAddr,
        /// The identity the client certificate claims.
        #[arg(long)]
        identity: SpiffeId,
        /// The root that signs the client certificate (any root: the lab's, or a rogue one).
        #[arg(long)]
        root_cert: PathBuf,
        #[arg(long)]
        root_key: PathBuf,
        /// PEM roots the server's certificate must chain to (default: --root-cert).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// The identity the server must present.
        #[arg(
            long,
            default_value = "spiffe://cluster.local/ns/weft-system/sa/weft-agent"
        )]
        server_identity: SpiffeId,
        /// Bytes to send before half-closing.
        #[arg(long, default_value_t = 1024)]
        bytes: u64,
        /// Sent as `Forwarded: for=`.
        #[arg(long, default_value = "127.0.0.1")]
        forwarded_for: IpAddr,
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let (ok, report) = match Cli::parse().command {
        Command::Csr {
            ca,
            bundle,
            token_file,
            identity,
            ttl_seconds,
            timeout,
        } => {
            let run = csr(
                ca,
                &bundle,
                token_file.as_deref(),
                &identity,
                Duration::from_secs(ttl_seconds),
            );
            match within(timeout, run).await {
                Ok(report) => (true, report),
                Err(failure) => (false, failure.to_json()),
            }
        }
        Command::Hbone {
            connect,
            authority,
            identity,
            root_cert,
            root_key,
            bundle,
            server_identity,
            bytes,
            forwarded_for,
            timeout,
        } => {
            let target = Target {
                connect,
                authority,
                forwarded_for,
                server_identity,
            };
            let bundle = bundle.unwrap_or_else(|| root_cert.clone());
            let run = hbone(&target, &identity, &root_cert, &root_key, &bundle, bytes);
            match within(timeout, run).await {
                Ok(report) => (true, report),
                Err(failure) => (false, failure.to_json()),
            }
        }
    };
    if let Err(e) = print_json(&report) {
        eprintln!("weft-probe: stdout: {e}");
        return ExitCode::FAILURE;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Why an operation failed: where, the gRPC code or HTTP status if a peer answered with
/// one, and the whole error chain.
struct Failure {
    stage: &'static str,
    code: Option<String>,
    status: Option<u16>,
    error: String,
}

impl Failure {
    fn new(stage: &'static str, error: impl std::fmt::Display) -> Self {
        Failure {
            stage,
            code: None,
            status: None,
            error: error.to_string(),
        }
    }

    fn setup(error: anyhow::Error) -> Self {
        Failure::new("setup", format!("{error:#}"))
    }

    fn to_json(&self) -> Value {
        json!({
            "ok": false,
            "stage": self.stage,
            "code": self.code,
            "status": self.status,
            "error": self.error,
            "message": self.error,
        })
    }
}

async fn within(
    seconds: f64,
    run: impl Future<Output = Result<Value, Failure>>,
) -> Result<Value, Failure> {
    let limit = Duration::try_from_secs_f64(seconds).unwrap_or(Duration::from_secs(10));
    tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
        Err(Failure::new(
            "timeout",
            format!("timed out after {limit:?}"),
        ))
    })
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn csr(
    ca: SocketAddr,
    bundle: &Path,
    token_file: Option<&Path>,
    id: &SpiffeId,
    ttl: Duration,
) -> Result<Value, Failure> {
    let trust = read(bundle)
        .and_then(|pem| TrustBundle::from_pem(&pem).context("parsing the bundle"))
        .map_err(Failure::setup)?;
    let (key_pem, csr_pem) = generate_key_and_csr(id)
        .context("generating a key and CSR")
        .map_err(Failure::setup)?;
    let chain = match token_file {
        Some(file) => {
            let token = read(file).map_err(Failure::setup)?.trim().to_string();
            let client = CaClient::new(ca, trust, token)
                .map_err(|e| Failure::new("setup", e))?
                .with_ttl(ttl);
            client
                .sign(id, &csr_pem)
                .await
                .map(|(chain, _root)| chain)
                .map_err(|e| {
                    let code = e.code().map(|c| format!("{c:?}"));
                    let message = match &e {
                        CaError::Status(status) => status.message().to_string(),
                        other => other.to_string(),
                    };
                    Failure {
                        code,
                        ..Failure::new("sign", message)
                    }
                })?
        }
        None => sign_without_token(ca, &trust, id, &csr_pem, ttl).await?,
    };
    let cert = WorkloadCert::from_pem(&chain.join("\n"), &key_pem)
        .map_err(|e| Failure::new("certificate", e))?;
    Ok(json!({
        "ok": true,
        "identity": cert.id.to_string(),
        "requested": id.to_string(),
        "not_before": unix(cert.not_before),
        "not_after": unix(cert.not_after),
        "chain_len": chain.len(),
    }))
}

/// The `Sign` call with no `authorization` metadata: `CaClient` always sends one, so this
/// opens its own TLS channel, checking the CA's identity the same way.
async fn sign_without_token(
    ca: SocketAddr,
    trust: &TrustBundle,
    id: &SpiffeId,
    csr_pem: &str,
    ttl: Duration,
) -> Result<Vec<String>, Failure> {
    let trust_domain = trust
        .trust_domain()
        .context("the bundle's root names no trust domain")
        .map_err(Failure::setup)?;
    let ca_id = weft_mesh::ca::ca_identity(&trust_domain).map_err(|e| Failure::new("setup", e))?;
    let tls = client_config_no_client_auth(trust, ServerIdentity::Exact(ca_id))
        .map_err(|e| Failure::new("setup", e))?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{ca}"))
        .map_err(|e| Failure::new("setup", e))?
        .connect_with_connector(tower_connector(move |_uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(ca).await?;
                let name = rustls_pki_types::ServerName::IpAddress(ca.ip().into());
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| Failure::new("connect", format!("{e}: {:?}", e)))?;
    let request = tonic::Request::new(SignRequest {
        identity: id.to_string(),
        csr_pem: csr_pem.to_owned(),
        ttl_seconds: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
    });
    let response = CertificateAuthorityClient::new(channel)
        .sign(request)
        .await
        .map_err(|status| Failure {
            code: Some(format!("{:?}", status.code())),
            ..Failure::new("sign", status.message())
        })?
        .into_inner();
    Ok(response.cert_chain_pem)
}

/// A tonic connector from an async function of the URI.
fn tower_connector<F, Fut, T>(f: F) -> ServiceFn<F>
where
    F: FnMut(tonic::codegen::http::Uri) -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    ServiceFn(f)
}

#[derive(Clone)]
struct ServiceFn<F>(F);

impl<F, Fut, T> tonic::codegen::Service<tonic::codegen::http::Uri> for ServiceFn<F>
where
    F: FnMut(tonic::codegen::http::Uri) -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    type Response = T;
    type Error = std::io::Error;
    type Future = Fut;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Fut {
        (self.0)(uri)
    }
}

/// Where an HBONE probe goes and whom it expects there.
struct Target {
    connect: SocketAddr,
    authority: SocketAddr,
    forwarded_for: IpAddr,
    server_identity: SpiffeId,
}

async fn hbone(
    target: &Target,
    id: &SpiffeId,
    root_cert: &Path,
    root_key: &Path,
    bundle: &Path,
    bytes: u64,
) -> Result<Value, Failure> {
    let cert = mint(root_cert, root_key, id).map_err(Failure::setup)?;
    let trust = read(bundle)
        .and_then(|pem| TrustBundle::from_pem(&pem).context("parsing the bundle"))
        .map_err(Failure::setup)?;
    let slot = Arc::new(CertSlot::new(cert).map_err(|e| Failure::new("setup", e))?);
    let tls = client_config(
        slot,
        &trust,
        ServerIdentity::Exact(target.server_identity.clone()),
    )
    .map_err(|e| Failure::new("setup", e))?;
    let pool = Pool::new(Settings::default());
    let key = PoolKey {
        source: id.to_string(),
        destination: target.connect,
    };
    let mut stream = pool
        .connect(&key, tls, target.authority, target.forwarded_for)
        .await
        .map_err(|e| {
            let (stage, status) = match &e {
                HboneError::Connect(..) => ("tcp", None),
                HboneError::Tls(..) => ("tls", None),
                HboneError::NoAlpn(_) => ("alpn", None),
                HboneError::H2(..) => ("h2", None),
                HboneError::Refused { status, .. } => ("refused", Some(*status)),
                HboneError::Timeout(_) => ("timeout", None),
            };
            Failure {
                status,
                ..Failure::new(stage, error_chain(&e))
            }
        })?;

    // Zeros: the content does not matter, its digest lets the caller check it arrived.
    let chunk = vec![0u8; 64 * 1024];
    let mut digest = Sha256::new();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream
            .write_all(&chunk[..n])
            .await
            .map_err(|e| Failure::new("stream", error_chain(&e)))?;
        digest.update(&chunk[..n]);
        left -= n as u64;
    }
    stream
        .shutdown()
        .await
        .map_err(|e| Failure::new("stream", error_chain(&e)))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .await
        .map_err(|e| Failure::new("stream", error_chain(&e)))?;
    Ok(json!({
        "ok": true,
        "status": 200,
        "error": null,
        "identity": id.to_string(),
        "sent": bytes,
        "sent_sha256": hex::encode(digest.finalize()),
        "reply": String::from_utf8_lossy(&reply[..reply.len().min(4096)]).trim(),
        "reply_bytes": reply.len(),
    }))
}

/// The error and its sources, one after another: a TLS alert is usually a source.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A client certificate for `id` signed by the root in `cert_path`/`key_path`. An identity
/// of the root's own trust domain goes through the CA code every Weft certificate comes
/// from; the authority refuses any other trust domain, so such a certificate is made here,
/// with the same profile (one URI SAN, ECDSA P-256, client and server auth).
fn mint(cert_path: &Path, key_path: &Path, id: &SpiffeId) -> Result<WorkloadCert> {
    const LIFETIME: Duration = Duration::from_secs(3600);
    let authority = CertificateAuthority::load(cert_path, key_path)
        .with_context(|| format!("loading the root {}", cert_path.display()))?;
    if authority.trust_domain() == id.trust_domain() {
        return Ok(authority.issue(id, LIFETIME)?);
    }
    let root_key = KeyPair::from_pkcs8_pem_and_sign_algo(&read(key_path)?, &PKCS_ECDSA_P256_SHA256)
        .context("the root key")?;
    let issuer = Issuer::from_ca_cert_pem(&read(cert_path)?, root_key).context("the root")?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id.to_string())?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + LIFETIME).into();
    params.use_authority_key_identifier_extension = true;
    let leaf = params.signed_by(&key, &issuer)?;
    Ok(WorkloadCert::from_pem(&leaf.pem(), &key.serialize_pem())?)
}
