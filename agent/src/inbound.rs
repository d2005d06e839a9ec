//! Inbound: the tunnel's receiving end (:15008). For each CONNECT it checks the peer's
//! certificate identity, that the destination is an enrolled pod on this node, and L4 policy,
//! then dials the pod. The pod sees the connection come from this node's agent's dial
//! address (169.254.15.8, with the agent's mark, which the pod's gate checks), not from the
//! client pod: the agent does not use transparent sockets. The client's address travels in
//! the tunnel's `Forwarded` header and in the logs.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};
use weft_mesh::state::State;

use rustls_pki_types::CertificateDer;
use tokio::{net::TcpStream, sync::watch};
use weft_mesh::{
    hbone::{ConnectRequest, H2Stream, Opener, Refusal},
    identity::{SpiffeId, peer_identity},
    relayed::splice_inward,
};

use crate::metrics::{Metrics, TcpLabels, destination_labels};

pub struct Inbound {
    pub model: watch::Receiver<Arc<State>>,
    pub node_name: String,
    pub trust_domain: String,
    /// The agent's dial address and mark, which the pod's gate trusts.
    pub dial: crate::upstream::DialFrom,
    pub metrics: Metrics,
    pub policy: crate::policy::L4Policy,
    pub connections: crate::connections::Connections,
    /// Turns true when the agent stops: an HTTP/2 client beyond the tunnel (a waypoint) is
    /// then told to take its next calls to the pod through the next agent.
    pub draining: watch::Receiver<bool>,
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

impl Inbound {
    /// The destination-side labels of a tunnelled connection.
    fn labels(&self, model: &State, request: &ConnectRequest, peer: &SpiffeId) -> TcpLabels {
        destination_labels(
            model,
            &self.trust_domain,
            request.forwarded_for.unwrap_or(request.peer.ip()),
            Some(peer.to_string()),
            request.authority.ip(),
        )
    }

    async fn dial(&self, target: SocketAddr) -> io::Result<TcpStream> {
        crate::upstream::dial_from(self.dial, target, Duration::from_secs(5)).await
    }
}

/// The peer's SPIFFE ID, or why its certificate has none.
type PeerId = Result<SpiffeId, String>;

impl Opener for Inbound {
    /// The pod's connection, the labels it is counted under, and its registration with the
    /// connection manager.
    type Opened = (TcpStream, TcpLabels, crate::connections::Tracked);
    type Peer = PeerId;

    fn identify(&self, certificates: &[CertificateDer<'static>]) -> PeerId {
        peer_identity(certificates).map_err(|e| e.to_string())
    }

    async fn open(
        &self,
        request: ConnectRequest,
        peer_id: &PeerId,
    ) -> Result<(TcpStream, TcpLabels, crate::connections::Tracked), Refusal> {
        let peer = peer_id.as_ref().map_err(|e| {
            self.metrics.denied("bad_identity");
            refuse(401, format!("peer identity: {e}"))
        })?;
        if peer.trust_domain() != self.trust_domain {
            self.metrics.denied("foreign_trust_domain");
            return Err(refuse(
                401,
                format!("{peer} is not in trust domain {}", self.trust_domain),
            ));
        }
        let model = self.model.borrow().clone();
        let Some(pod) = model.pod_by_ip(request.authority.ip()) else {
            self.metrics.denied("unknown_destination");
            return Err(refuse(503, format!("{} is no pod", request.authority.ip())));
        };
        if pod.node_name.as_deref() != Some(self.node_name.as_str()) || !model.in_mesh(pod) {
            self.metrics.denied("not_local");
            return Err(refuse(
                503,
                format!(
                    "{}/{} is not an enrolled pod of this node",
                    pod.namespace, pod.name
                ),
            ));
        }
        let source_ip = model.client_address(
            Some(pod),
            (peer.namespace(), peer.service_account()),
            request.peer.ip(),
            request.forwarded_for,
        );
        if let Err(reason) =
            self.policy
                .check(&model, pod, request.authority.port(), Some(peer), source_ip)
        {
            self.metrics.denied("policy");
            self.metrics
                .tcp_refused(self.labels(&model, &request, peer), "UAEX");
            return Err(refuse(401, reason));
        }
        // Registered before the dial, so that a policy change during it reaches it.
        let tracked = self.connections.track_at(
            crate::connections::Admitted {
                destination: request.authority.ip(),
                port: request.authority.port(),
                peer: Some(peer.clone()),
                source_ip,
                plaintext: false,
                epoch: model.epoch(),
            },
            &self.model.borrow(),
            &self.policy,
        );
        let tracked = match tracked {
            Ok(tracked) => tracked,
            Err(reason) => {
                self.metrics.denied("connection_limit");
                self.metrics
                    .tcp_refused(self.labels(&model, &request, peer), "UO");
                return Err(refuse(503, reason));
            }
        };
        match self.dial(request.authority).await {
            Ok(stream) => {
                let labels = self.labels(&model, &request, peer);
                self.metrics.tcp_opened(&labels);
                Ok((stream, labels, tracked))
            }
            Err(e) => {
                self.metrics.denied("destination_unreachable");
                self.metrics
                    .tcp_refused(self.labels(&model, &request, peer), "UF");
                Err(refuse(503, format!("dialling {}: {e}", request.authority)))
            }
        }
    }

    async fn carry(
        &self,
        connect: ConnectRequest,
        _peer: &PeerId,
        mut tunnel: H2Stream,
        (mut pod, labels, mut tracked): (TcpStream, TcpLabels, crate::connections::Tracked),
    ) {
        let carried = tokio::select! {
            carried = splice_inward(&mut tunnel, &mut pod, self.draining.clone()) => carried,
            reason = tracked.revoked() => Err(io::Error::new(io::ErrorKind::PermissionDenied, reason)),
        };
        let (request, response) = carried.unwrap_or_else(|err| {
            tracing::debug!(authority = %connect.authority, %err, "tunnelled stream ended with an error");
            (0, 0)
        });
        self.metrics.tcp_closed(&labels, request, response);
    }
}
