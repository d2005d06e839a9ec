//! The CA end to end on 127.0.0.1: a real server, TLS and gRPC, agents as clients.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::Code;

use super::proto::SignRequest;
use super::proto::certificate_authority_client::CertificateAuthorityClient;
use super::*;
use crate::config::{Model, PodInfo};
use crate::identity::{
    CertificateAuthority, IdentityManager, TrustBundle, WorkloadCert, generate_key_and_csr,
    peer_identity, testutil,
};
use crate::state::State;

const TOKENS: &str = "# lab tokens\ntoken-a node-a\ntoken-b node-b\n";

fn pod(namespace: &str, name: &str, service_account: &str, node: &str) -> PodInfo {
    PodInfo {
        container_ports: Default::default(),
        probe_ports: Default::default(),
        namespace: namespace.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        node_name: Some(node.into()),
        ip: None,
        service_account: service_account.into(),
        service_account_unset: false,
        mirror: false,
        labels: BTreeMap::new(),
        host_network: false,
    }
}

fn model(pods: &[PodInfo]) -> Arc<State> {
    let mut model = Model::default();
    for pod in pods {
        model
            .pods
            .insert((pod.namespace.clone(), pod.name.clone()), pod.clone());
    }
    Arc::new(State::compile(model))
}

struct Running {
    addr: SocketAddr,
    trust: TrustBundle,
    root_pem: String,
    model: watch::Sender<Arc<State>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), CaError>>,
}

impl Running {
    fn client(&self, token: &str) -> CaClient {
        CaClient::new(self.addr, self.trust.clone(), token.into()).unwrap()
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

async fn start(server: impl FnOnce(CaServer<TokenFile>) -> CaServer<TokenFile>) -> Running {
    start_with(TokenFile::parse(TOKENS).unwrap(), server).await
}

async fn start_with<A: NodeAuthenticator>(
    authn: A,
    server: impl FnOnce(CaServer<A>) -> CaServer<A>,
) -> Running {
    let ca = testutil::ca();
    let trust = ca.trust_bundle().unwrap();
    let root_pem = ca.root_pem().to_owned();
    let (model_tx, model_rx) = watch::channel(model(&[pod("ns1", "pod1", "sa1", "node-a")]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = server(CaServer::new(ca, authn, model_rx));
    let task = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        trust,
        root_pem,
        model: model_tx,
        stop,
        task,
    }
}

async fn sign(client: &CaClient, id: &crate::identity::SpiffeId) -> Result<WorkloadCert, CaError> {
    let (key, csr) = generate_key_and_csr(id).unwrap();
    let (chain, _root) = client.sign(id, &csr).await?;
    Ok(WorkloadCert::from_pem(&chain.join("\n"), &key).unwrap())
}

#[tokio::test]
async fn the_node_of_a_pod_gets_its_identity_and_no_other_node_does() {
    let ca = start(|s| s).await;
    let id = testutil::id("ns1", "sa1");

    let (key, csr) = generate_key_and_csr(&id).unwrap();
    let (chain, root) = ca.client("token-a").sign(&id, &csr).await.unwrap();
    assert_eq!(root, ca.root_pem);
    assert_eq!(chain.len(), 1);
    let cert = WorkloadCert::from_pem(&chain[0], &key).unwrap();
    assert_eq!(peer_identity(&cert.chain).unwrap(), id);
    // The default lifetime: a day, plus the minute of backdating.
    let life = cert.not_after.duration_since(cert.not_before).unwrap();
    assert_eq!(
        life.as_secs().div_ceil(60),
        (DEFAULT_TTL.as_secs() + 60) / 60
    );

    let err = sign(&ca.client("token-b"), &id).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    let CaError::Status(status) = &err else {
        panic!("{err}")
    };
    assert!(status.message().contains("node-b"), "{}", status.message());
    assert!(
        status.message().contains(&id.to_string()),
        "{}",
        status.message()
    );

    // Another identity on node-a's own node, or in another trust domain: refused too.
    let err = sign(&ca.client("token-a"), &testutil::id("ns1", "sa2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    let foreign = crate::identity::SpiffeId::new("other.domain", "ns1", "sa1").unwrap();
    let err = sign(&ca.client("token-a"), &foreign).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");

    // When the pod moves to node-b, the model says so and node-b may have the identity.
    ca.model
        .send(model(&[pod("ns1", "pod1", "sa1", "node-b")]))
        .unwrap();
    sign(&ca.client("token-b"), &id).await.unwrap();
    let err = sign(&ca.client("token-a"), &id).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    ca.stop().await;
}

#[tokio::test]
async fn callers_without_a_valid_token_are_unauthenticated() {
    let ca = start(|s| s).await;
    let id = testutil::id("ns1", "sa1");
    let (_, csr) = generate_key_and_csr(&id).unwrap();

    let err = sign(&ca.client("token-x"), &id).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
    let err = sign(&ca.client(""), &id).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
    assert!(matches!(
        CaClient::new(ca.addr, ca.trust.clone(), "bad\ntoken".into()),
        Err(CaError::InvalidToken)
    ));

    // Raw requests: no metadata at all, and a scheme other than Bearer.
    let mut raw = CertificateAuthorityClient::new(ca.client("unused").channel().await);
    let request = || SignRequest {
        identity: id.to_string(),
        csr_pem: csr.clone(),
        ttl_seconds: 0,
    };
    let status = raw.sign(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut basic = tonic::Request::new(request());
    basic
        .metadata_mut()
        .insert("authorization", "Basic token-a".parse().unwrap());
    let status = raw.sign(basic).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut lower = tonic::Request::new(request());
    lower
        .metadata_mut()
        .insert("authorization", "bearer token-a".parse().unwrap());
    raw.sign(lower).await.unwrap();
    ca.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_invalid_arguments() {
    let ca = start(|s| s).await;
    let client = ca.client("token-a");
    let id = testutil::id("ns1", "sa1");

    let err = client.sign(&id, "not a csr").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    let garbage = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
    let err = client.sign(&id, garbage).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");

    let mut raw = CertificateAuthorityClient::new(client.channel().await);
    let (_, csr) = generate_key_and_csr(&id).unwrap();
    let mut request = tonic::Request::new(SignRequest {
        identity: "spiffe://cluster.local/ns1/sa1".into(),
        csr_pem: csr,
        ttl_seconds: 0,
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer token-a".parse().unwrap());
    let status = raw.sign(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    ca.stop().await;
}

#[tokio::test]
async fn lifetimes_are_clamped() {
    let ca = start(|s| s.with_ttls(Duration::from_secs(600), Duration::from_secs(3600))).await;
    let id = testutil::id("ns1", "sa1");
    let expires_in = |cert: &WorkloadCert| {
        let secs = cert
            .not_after
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs();
        secs.div_ceil(10) * 10
    };
    let cert = sign(&ca.client("token-a"), &id).await.unwrap();
    assert_eq!(expires_in(&cert), 600);
    let client = ca.client("token-a").with_ttl(Duration::from_secs(120));
    assert_eq!(expires_in(&sign(&client, &id).await.unwrap()), 120);
    let client = ca
        .client("token-a")
        .with_ttl(Duration::from_secs(30 * 24 * 3600));
    assert_eq!(expires_in(&sign(&client, &id).await.unwrap()), 3600);
    ca.stop().await;
}

#[tokio::test]
async fn agents_get_certificates_through_the_identity_manager() {
    let ca = start(|s| s).await;
    let manager = IdentityManager::new(CaSource::new(ca.client("token-a")));
    let id = testutil::id("ns1", "sa1");
    let slot = manager.slot(&id).await.unwrap();
    assert_eq!(slot.current().id, id);
    let err = manager
        .slot(&testutil::id("ns1", "nope"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    ca.stop().await;
}

#[tokio::test]
async fn clients_refuse_a_ca_they_do_not_trust() {
    let ca = start(|s| s).await;
    let stranger = CertificateAuthority::generate(testutil::TRUST_DOMAIN).unwrap();
    let client =
        CaClient::new(ca.addr, stranger.trust_bundle().unwrap(), "token-a".into()).unwrap();
    let err = sign(&client, &testutil::id("ns1", "sa1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    ca.stop().await;
}

/// A workload's own token (a waypoint's): every token is `ns1/sa1`'s, bound to node-a.
struct WorkloadToken;

impl NodeAuthenticator for WorkloadToken {
    async fn authenticate(&self, _token: &str) -> Result<Caller, AuthError> {
        Ok(Caller {
            node: "node-a".into(),
            only: Some(("ns1".into(), "sa1".into())),
        })
    }
}

#[tokio::test]
async fn a_workload_token_gets_its_own_identity_only() {
    let ca = start_with(WorkloadToken, |s| s).await;
    ca.model
        .send(model(&[
            pod("ns1", "pod1", "sa1", "node-a"),
            pod("ns1", "pod2", "sa2", "node-a"),
        ]))
        .unwrap();
    let client = ca.client("any");
    sign(&client, &testutil::id("ns1", "sa1")).await.unwrap();
    let err = sign(&client, &testutil::id("ns1", "sa2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    assert!(err.to_string().contains("its own identity only"), "{err}");
    ca.stop().await;
}

#[tokio::test]
async fn mirror_pods_and_pods_without_a_service_account_get_no_identity() {
    let ca = start(|s| s).await;
    let id = testutil::id("kube-system", "default");
    // A static pod's mirror on node-a, in a namespace with a `default` account.
    let mut mirror = pod("kube-system", "etcd-node-a", "default", "node-a");
    mirror.mirror = true;
    ca.model.send(model(&[mirror.clone()])).unwrap();
    let err = sign(&ca.client("token-a"), &id).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");

    // A pod whose manifest names no service account: `default` was filled in, not granted.
    let mut unnamed = pod("kube-system", "unnamed", "default", "node-a");
    unnamed.service_account_unset = true;
    ca.model.send(model(&[unnamed])).unwrap();
    let err = sign(&ca.client("token-a"), &id).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");

    // The same pod, admitted with its account named: signed.
    mirror.mirror = false;
    ca.model.send(model(&[mirror])).unwrap();
    sign(&ca.client("token-a"), &id).await.unwrap();
    ca.stop().await;
}

/// The lab's token file, counting how often it is asked.
struct Counting {
    tokens: TokenFile,
    asked: std::sync::atomic::AtomicUsize,
}

impl NodeAuthenticator for Counting {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        self.asked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tokens.authenticate(token).await
    }
}

#[tokio::test]
async fn the_authenticator_is_asked_once_per_token_and_a_flood_is_refused() {
    let counting = Arc::new(Counting {
        tokens: TokenFile::parse(TOKENS).unwrap(),
        asked: Default::default(),
    });
    let ca = start_with(counting.clone(), |s| s).await;
    let id = testutil::id("ns1", "sa1");
    for _ in 0..3 {
        sign(&ca.client("token-a"), &id).await.unwrap();
    }
    for _ in 0..3 {
        let err = sign(&ca.client("made-up"), &id).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
    }
    assert_eq!(
        counting.asked.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "one question per token, yes and no"
    );

    // One address may not go on asking at any rate: after its burst, RESOURCE_EXHAUSTED.
    let client = ca.client("made-up");
    let mut exhausted = false;
    for _ in 0..400 {
        if let Err(err) = sign(&client, &id).await
            && err.code() == Some(Code::ResourceExhausted)
        {
            exhausted = true;
            break;
        }
    }
    assert!(exhausted, "400 requests in a row were all served");
    ca.stop().await;
}

/// The IP address SANs of `cert`'s leaf.
fn ip_sans(cert: &WorkloadCert) -> Vec<std::net::IpAddr> {
    use x509_parser::extensions::GeneralName;
    let leaf = crate::identity::cert::parse(&cert.chain[0]).unwrap();
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::IPAddress(bytes) => {
                <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from)
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_node_agents_certificate_names_its_nodes_address_and_no_other_does() {
    let ca = start(|s| s).await;
    let mut agent = pod("weft-system", "weft-agent-a", "weft-agent", "node-a");
    agent.host_network = true;
    let mut model = Model::default();
    for pod in [agent, pod("ns1", "pod1", "sa1", "node-a")] {
        model
            .pods
            .insert((pod.namespace.clone(), pod.name.clone()), pod);
    }
    for (name, ip) in [("node-a", "10.99.0.1"), ("node-b", "10.99.0.2")] {
        model.nodes.insert(
            name.into(),
            crate::config::NodeInfo {
                name: name.into(),
                internal_ip: Some(ip.parse().unwrap()),
            },
        );
    }
    ca.model.send(Arc::new(State::compile(model))).unwrap();

    let agent_id = testutil::id("weft-system", "weft-agent");
    let cert = sign(&ca.client("token-a"), &agent_id).await.unwrap();
    assert_eq!(peer_identity(&cert.chain).unwrap(), agent_id);
    assert_eq!(
        ip_sans(&cert),
        ["10.99.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    // A pod in its own network namespace serves at no node address.
    let cert = sign(&ca.client("token-a"), &testutil::id("ns1", "sa1"))
        .await
        .unwrap();
    assert!(ip_sans(&cert).is_empty());
    ca.stop().await;
}
