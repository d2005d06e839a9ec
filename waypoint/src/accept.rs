//! The waypoint's HBONE server side. A source agent opens one CONNECT stream per client
//! connection, addressed to the Service's cluster IP and port. If that port carries gRPC or
//! HTTP/2, the waypoint speaks HTTP/2 as a server inside the stream and hands each call to
//! the proxy on its own; any other port is carried at L4, to an endpoint the Service's
//! balancer picks.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};
use weft_mesh::state::State;

use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use weft_mesh::{
    config::{AppProtocol, WaypointRef},
    hbone::{ConnectRequest, H2Stream, Opener, Refusal, splice},
    identity::{SpiffeId, peer_identity},
    policy::Peer,
};

use crate::{
    balance::Tried,
    called::{Called, Source},
    cluster::{Cluster, ClusterKey},
    proxy::Proxy,
    upstream::Dialer,
};

pub struct Accept {
    pub proxy: Arc<Proxy>,
    /// For connections carried at L4.
    pub dialer: Arc<Dialer>,
    pub model: watch::Receiver<Arc<State>>,
    pub trust_domain: String,
    /// This waypoint: it serves the Services bound to it and no others.
    pub waypoint: WaypointRef,
    /// HTTP/2 flow-control window of each call, towards the client.
    pub window: u32,
    /// Turns true when the waypoint stops: each client connection then gets GOAWAY and
    /// ends when its calls have.
    pub draining: watch::Receiver<bool>,
    /// Client connections served now (HTTP/2, and L4 ones carried as bytes), which the
    /// waypoint waits for when it stops.
    pub serving: Arc<AtomicUsize>,
}

/// A client connection being served, counted in [`Accept::serving`] while it lasts.
struct Serving(Arc<AtomicUsize>);

impl Serving {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Serving(count.clone())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub enum Opened {
    Http(Arc<Called>),
    Tcp(Arc<Cluster>, L4Admission),
    /// Traffic to a pod's own address (a workload bound by its service account or pod
    /// label): carried at L4 to that pod.
    Pod {
        address: SocketAddr,
        node: SocketAddr,
        admission: L4Admission,
    },
}

/// What an L4 connection was authorized as, to decide it again under each new state: a
/// DENY added later ends it, as the node agents end theirs.
pub struct L4Admission {
    service: Option<(String, String)>,
    port: u16,
    client: Source,
}

impl L4Admission {
    fn decide(&self, proxy: &Proxy, model: &State) -> Result<(), String> {
        let service = self
            .service
            .as_ref()
            .map(|(ns, n)| (ns.as_str(), n.as_str()));
        proxy.authz.authorize_connection(
            model,
            service,
            self.port,
            &self.client.principal,
            &self.client.peer,
        )
    }
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

impl Opener for Accept {
    type Opened = Opened;
    type Peer = Result<SpiffeId, String>;

    fn identify(&self, certificates: &[CertificateDer<'static>]) -> Self::Peer {
        peer_identity(certificates).map_err(|e| e.to_string())
    }

    async fn open(&self, request: ConnectRequest, peer: &Self::Peer) -> Result<Opened, Refusal> {
        let peer = peer
            .as_ref()
            .map_err(|e| refuse(401, format!("peer identity: {e}")))?;
        if peer.trust_domain() != self.trust_domain {
            return Err(refuse(
                401,
                format!("{peer} is not in trust domain {}", self.trust_domain),
            ));
        }
        let model = self.model.borrow().clone();
        let target = request.authority;
        if let Some(pod) = model
            .pod_by_ip(target.ip())
            .filter(|pod| model.workload_waypoint(pod).as_ref() == Some(&self.waypoint))
        {
            let node = pod
                .node_name
                .as_deref()
                .and_then(|n| model.nodes.get(n))
                .and_then(|n| n.internal_ip)
                .ok_or_else(|| refuse(503, format!("no node address for pod {}", pod.name)))?;
            let admission = L4Admission {
                service: None,
                port: target.port(),
                client: source(&model, peer, client_ip(&model, &request, peer)),
            };
            admission
                .decide(&self.proxy, &model)
                .map_err(|reason| refuse(403, reason))?;
            return Ok(Opened::Pod {
                address: target,
                node: SocketAddr::new(node, weft_mesh::hbone::PORT),
                admission,
            });
        }
        let service = model
            .service_by_ip(target.ip())
            .filter(|s| model.service_waypoint(s).as_ref() == Some(&self.waypoint))
            .ok_or_else(|| {
                refuse(
                    503,
                    format!("{target} is no Service bound to this waypoint"),
                )
            })?;
        let port = service
            .ports
            .iter()
            .find(|p| p.port == target.port())
            .ok_or_else(|| {
                refuse(
                    503,
                    format!(
                        "Service {}/{} has no port {}",
                        service.namespace,
                        service.name,
                        target.port()
                    ),
                )
            })?;
        let client_ip = client_ip(&model, &request, peer);
        match port.protocol {
            AppProtocol::Grpc | AppProtocol::Http2 => Ok(Opened::Http(Arc::new(Called {
                service: (service.namespace.clone(), service.name.clone()),
                label: format!("{}/{}", service.namespace, service.name).into(),
                host: format!("{}.{}.svc.cluster.local", service.name, service.namespace).into(),
                port: port.port,
                client_ip,
                source: source(&model, peer, client_ip),
            }))),
            AppProtocol::Tcp => {
                let admission = L4Admission {
                    service: Some((service.namespace.clone(), service.name.clone())),
                    port: port.port,
                    client: source(&model, peer, client_ip),
                };
                admission
                    .decide(&self.proxy, &model)
                    .map_err(|reason| refuse(403, reason))?;
                let key = ClusterKey {
                    namespace: service.namespace.clone(),
                    service: service.name.clone(),
                    subset: None,
                    port: port.port,
                };
                Ok(Opened::Tcp(
                    self.proxy.clusters.get(&model, service, &key),
                    admission,
                ))
            }
        }
    }

    async fn carry(
        &self,
        request: ConnectRequest,
        _peer: &Self::Peer,
        mut tunnel: H2Stream,
        opened: Opened,
    ) {
        match opened {
            Opened::Http(called) => {
                let _serving = Serving::enter(&self.serving);
                let mut draining = self.draining.clone();
                let drain = async move {
                    let _ = draining.wait_for(|d| *d).await;
                };
                let proxy = self.proxy.clone();
                let served = serve_calls(tunnel, proxy, called, self.window, drain).await;
                if let Err(err) = served {
                    tracing::debug!(peer = %request.peer, %err, "client HTTP/2 connection ended");
                }
            }
            Opened::Tcp(cluster, admission) => {
                let Some(endpoint) = cluster.pick(None, Tried::default()) else {
                    tracing::info!(cluster = %cluster.key, "no healthy endpoint for an L4 connection");
                    return;
                };
                self.l4(&mut tunnel, endpoint.address, endpoint.node, &admission)
                    .await;
            }
            Opened::Pod {
                address,
                node,
                admission,
            } => self.l4(&mut tunnel, address, node, &admission).await,
        }
    }
}

/// Serves the calls of one client connection (`io`, a tunnelled stream in the waypoint),
/// each handed to the proxy on its own, until the client closes it. When `drain` completes,
/// the client gets GOAWAY (RFC 9113, section 6.8): no new call is accepted on the
/// connection, and it ends when the calls in flight have.
pub async fn serve_calls<IO>(
    io: IO,
    proxy: Arc<Proxy>,
    called: Arc<Called>,
    window: u32,
    drain: impl Future<Output = ()>,
) -> Result<(), hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |call| {
        let (proxy, called) = (proxy.clone(), called.clone());
        async move { Ok::<_, Infallible>(proxy.handle(called, call).await) }
    });
    // Bounded as the tunnel is (`weft_mesh::hbone::Settings`): calls in flight per client
    // connection, and the size of a call's headers.
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(window)
        .initial_connection_window_size(window.saturating_mul(4))
        .max_frame_size(64 * 1024)
        .max_concurrent_streams(1000)
        .max_header_list_size(16 * 1024)
        .max_pending_accept_reset_streams(20)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection, drain);
    tokio::select! {
        served = connection.as_mut() => return served,
        () = drain => {}
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}

/// The client's address: the one the source agent forwarded, if the peer may speak for it
/// ([`State::client_address`]), else the tunnel peer's own.
fn client_ip(model: &State, request: &ConnectRequest, peer: &SpiffeId) -> IpAddr {
    model.client_address(
        None,
        (peer.namespace(), peer.service_account()),
        request.peer.ip(),
        request.forwarded_for,
    )
}

/// The client as its certificate proves it; its workload is looked up by address (a name
/// for metrics only, never trusted for policy).
fn source(model: &State, peer: &SpiffeId, client_ip: IpAddr) -> Source {
    let principal = peer.to_string();
    let bare = principal.strip_prefix("spiffe://").unwrap_or(&principal);
    let policy_peer = Peer::authenticated(bare, client_ip);
    Source {
        namespace: policy_peer
            .namespace
            .clone()
            .unwrap_or_else(|| "unknown".into())
            .into(),
        workload: model
            .workload(client_ip)
            .map_or_else(|| "unknown".to_string(), |w| w.name.clone())
            .into(),
        principal: principal.into(),
        peer: policy_peer,
    }
}

impl Accept {
    /// Carries a tunnelled stream to `pod` as bytes, through its node agent, for as long as
    /// each new state still admits it.
    async fn l4(
        &self,
        tunnel: &mut H2Stream,
        pod: SocketAddr,
        node: SocketAddr,
        admission: &L4Admission,
    ) {
        // A stopping waypoint lets it run on for its drain period, as it does calls.
        let _serving = Serving::enter(&self.serving);
        let mut upstream = match self.dialer.stream(pod, node).await {
            Ok(upstream) => upstream,
            Err(err) => return tracing::info!(%pod, %err, "L4 upstream unreachable"),
        };
        let mut states = self.model.clone();
        let revoked = async {
            while states.changed().await.is_ok() {
                let model = states.borrow_and_update().clone();
                if let Err(reason) = admission.decide(&self.proxy, &model) {
                    return reason;
                }
            }
            std::future::pending().await
        };
        tokio::select! {
            spliced = splice(tunnel, &mut upstream) => {
                if let Err(err) = spliced {
                    tracing::debug!(%pod, %err, "L4 stream ended with an error");
                }
            }
            reason = revoked => {
                self.proxy.metrics.l4_closed_by_policy.inc();
                tracing::info!(%pod, %reason, "closing an L4 connection the new policy denies");
            }
        }
    }
}
