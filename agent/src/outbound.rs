//! Outbound: the listener (:15001) that captured connections arrive at.
//!
//! For each connection it recovers the original destination the eBPF capture recorded, resolves
//! a Service address to one of its pods (per connection, as an L4 balancer would), and joins
//! the client to an `Upstream` stream, byte for byte, with half-close carried both ways. Each
//! connection is counted in Istio's TCP metrics, as the source side reports them.

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};
use weft_mesh::{
    config::AppProtocol,
    refusal::{Answer, answer_every_stream},
    state::State,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::{
    metrics::{Ends, Metrics, TcpLabels, tcp_labels},
    redirect::SharedMaps,
    upstream::Upstream,
};

/// How long a connection that no upstream takes is answered in HTTP/2 before its GOAWAY (and
/// again after it, for what the client still sends).
pub const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

pub struct Outbound<U> {
    pub maps: SharedMaps,
    pub upstream: U,
    pub model: watch::Receiver<Arc<State>>,
    pub metrics: Metrics,
    /// Set when identities exist (a CA is configured): principals appear in the metrics.
    pub trust_domain: Option<String>,
    /// The connections this side carries, which a stopping agent drains.
    pub live: crate::handover::Live,
    next: AtomicUsize,
}

impl<U: Upstream> Outbound<U> {
    pub fn new(
        maps: SharedMaps,
        upstream: U,
        model: watch::Receiver<Arc<State>>,
        metrics: Metrics,
        trust_domain: Option<String>,
    ) -> Self {
        Outbound {
            maps,
            upstream,
            model,
            metrics,
            trust_domain,
            live: crate::handover::Live::default(),
            next: AtomicUsize::new(0),
        }
    }

    /// Accepts until `shutdown` turns true, which also tells the relayed HTTP/2 clients
    /// of the connections still open to go (the agent drains them).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let (client, peer) = tokio::select! {
                _ = shutdown.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(err) => {
                        tracing::warn!(%err, "outbound accept failed");
                        continue;
                    }
                },
            };
            let (this, draining) = (self.clone(), shutdown.clone());
            let live = self.live.enter();
            tokio::spawn(async move {
                this.handle(client, peer, &draining).await;
                drop(live);
            });
        }
    }

    async fn handle(&self, client: TcpStream, peer: SocketAddr, draining: &watch::Receiver<bool>) {
        let Some(orig) = client_v4(peer).and_then(|p| self.maps.take_orig_dst(p)) else {
            // No record: not captured by our programs (someone dialled :15001 directly), or
            // its client had already closed before this end was established, and sockops
            // dropped the record with it.
            tracing::debug!(%peer, "no original destination recorded; closing");
            self.metrics.outbound("no_original_destination");
            return;
        };
        let Some((target, service)) = self.resolve(orig) else {
            tracing::warn!(%peer, %orig, "service has no endpoints; refusing");
            self.metrics.outbound("no_endpoint");
            refuse(client);
            return;
        };
        let http2 = self.speaks_http2(orig);
        let (upstream, security) = match self.upstream.connect(peer, SocketAddr::V4(target)).await {
            Ok(connected) => connected,
            Err(err) => {
                let denied = err.kind() == std::io::ErrorKind::PermissionDenied;
                if denied {
                    tracing::warn!(%peer, %target, %err, "connection denied");
                } else {
                    tracing::warn!(%peer, %target, %err, "upstream connect failed");
                }
                self.metrics
                    .outbound(if denied { "denied" } else { "connect_failed" });
                let mut labels = self.labels(peer, target, service, "none");
                labels.response_flags = if denied { "UAEX" } else { "UF" };
                self.metrics.tcp_opened(&labels);
                self.metrics.tcp_closed(&labels, 0, 0);
                match http2 {
                    // Each call gets UNAVAILABLE (503), which every gRPC client reads alike;
                    // a reset connection reads as UNKNOWN to some.
                    Some(grpc) if !denied => {
                        let answer = Answer::unavailable(grpc, &format!("{target}: {err}"));
                        answer_every_stream(client, &answer, ANSWER_WITHIN).await;
                    }
                    _ => refuse(client),
                }
                return;
            }
        };
        self.metrics.outbound("forwarded");
        let labels = self.labels(peer, target, service, security.label());
        self.metrics.tcp_opened(&labels);
        let _ = client.set_nodelay(true);
        let mut client = client;
        // Calls open when the tunnel breaks are answered (by their agent, not their server).
        let broke = http2.map(|grpc| {
            Answer::unavailable(grpc, &format!("the mesh connection to {target} broke"))
        });
        let (request, response) = match upstream
            .join(&mut client, broke.as_ref(), Some(draining))
            .await
        {
            Ok(counts) => counts,
            Err(err) => {
                tracing::debug!(%peer, %target, %err, "connection ended with an error");
                (0, 0)
            }
        };
        self.metrics.bytes(request, response);
        self.metrics.tcp_closed(&labels, request, response);
    }

    /// Whether `orig` is a Service port declared gRPC (`Some(true)`) or HTTP/2
    /// (`Some(false)`).
    fn speaks_http2(&self, orig: SocketAddrV4) -> Option<bool> {
        let model = self.model.borrow();
        let service = model.service_by_ip(IpAddr::V4(*orig.ip()))?;
        let port = service.ports.iter().find(|p| p.port == orig.port())?;
        match port.protocol {
            AppProtocol::Grpc => Some(true),
            AppProtocol::Http2 => Some(false),
            AppProtocol::Tcp => None,
        }
    }

    /// The principal of the mesh pod at `ip`, when identities exist.
    fn principal(&self, model: &State, ip: IpAddr) -> Option<String> {
        let td = self.trust_domain.as_deref()?;
        let pod = model.pod_by_ip(ip).filter(|p| model.in_mesh(p))?;
        crate::tunnel::pod_identity(td, pod)
            .ok()
            .map(|id| id.to_string())
    }

    fn labels(
        &self,
        peer: SocketAddr,
        target: SocketAddrV4,
        service: Option<String>,
        security: &'static str,
    ) -> TcpLabels {
        let model = self.model.borrow().clone();
        let destination = IpAddr::V4(*target.ip());
        let ends = Ends {
            source_ip: peer.ip(),
            source_principal: self.principal(&model, peer.ip()),
            destination_ip: destination,
            destination_principal: self.principal(&model, destination),
            destination_service: service,
        };
        tcp_labels("source", &model, ends, security)
    }

    /// A Service address becomes one of its pods (round robin per connection), with the
    /// Service's name; a pod address stays as it is.
    fn resolve(&self, orig: SocketAddrV4) -> Option<(SocketAddrV4, Option<String>)> {
        let model = self.model.borrow().clone();
        let Some(service) = model.service_by_ip(IpAddr::V4(*orig.ip())) else {
            return Some((orig, None));
        };
        let name = format!("{}.{}.svc.cluster.local", service.name, service.namespace);
        let port = service.ports.iter().find(|p| p.port == orig.port())?;
        if self.upstream.sends_to_waypoints() && model.service_waypoint(service).is_some() {
            // The waypoint balances this Service's traffic (per call, for gRPC).
            return Some((orig, Some(name)));
        }
        let endpoints: Vec<_> = model
            .endpoints(service)
            .filter_map(|pod| match pod.ip {
                Some(IpAddr::V4(ip)) => Some(SocketAddrV4::new(ip, port.target_on(pod)?)),
                _ => None,
            })
            .collect();
        if endpoints.is_empty() {
            return None;
        }
        let pick = self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
        Some((endpoints[pick], Some(name)))
    }
}

fn client_v4(peer: SocketAddr) -> Option<SocketAddrV4> {
    match peer {
        SocketAddr::V4(v4) => Some(v4),
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map(|ip| SocketAddrV4::new(ip, v6.port())),
    }
}

/// Closes with a reset, so the client sees a refused connection rather than a clean end.
fn refuse(client: TcpStream) {
    // A zero linger makes close() send RST at once; it never blocks.
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::Linger, &linger);
    drop(client);
}
