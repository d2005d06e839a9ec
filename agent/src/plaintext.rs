//! The plaintext inbound (:15006): connections from outside the mesh to a PERMISSIVE pod or
//! port. The sk_lookup program in the pod's namespace hands them to the agent's listener
//! there (see `redirect::netns`), so the accepted socket's local address is the original
//! destination. The agent checks L4 policy with no peer identity (a principal-based ALLOW
//! refuses it, an ipBlocks rule can admit it), counts the connection with Istio's labels and
//! `connection_security_policy="none"`, and dials the pod from its dial address with its
//! mark, as the tunnel's inbound does.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};
use weft_mesh::state::State;

use tokio::{net::TcpStream, sync::watch};

use crate::{
    metrics::{Metrics, TcpLabels, destination_labels},
    policy::L4Policy,
    redirect::{PLAINTEXT_PORT, ServerHandle},
    upstream::{DirectTcp, Upstream},
};

pub struct PlaintextInbound {
    pub model: watch::Receiver<Arc<State>>,
    pub trust_domain: String,
    /// Dials the pod from the agent's dial address and mark, as the tunnel's inbound does.
    pub direct: DirectTcp,
    pub metrics: Metrics,
    pub policy: L4Policy,
    pub connections: crate::connections::Connections,
}

impl PlaintextInbound {
    /// Serves the listener made in the namespace of the pod at `pod_ip`.
    pub fn serve(
        self: &Arc<Self>,
        listener: std::net::TcpListener,
        pod_ip: Ipv4Addr,
    ) -> ServerHandle {
        let this = self.clone();
        let task = tokio::spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(err) => {
                    tracing::warn!(%pod_ip, %err, "cannot serve the plaintext inbound");
                    return;
                }
            };
            loop {
                match listener.accept().await {
                    Ok((client, peer)) => {
                        let this = this.clone();
                        tokio::spawn(async move { this.handle(client, peer, pod_ip).await });
                    }
                    Err(err) => {
                        tracing::warn!(%pod_ip, %err, "plaintext inbound accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        ServerHandle(task.abort_handle())
    }

    async fn handle(&self, mut client: TcpStream, peer: SocketAddr, pod_ip: Ipv4Addr) {
        // sk_lookup keeps the original destination as the socket's local address.
        let Ok(destination) = client.local_addr() else {
            return;
        };
        let model = self.model.borrow().clone();
        let labels = destination_labels(
            &model,
            &self.trust_domain,
            peer.ip(),
            None,
            destination.ip(),
        );
        let refuse = |labels: TcpLabels, flags: &'static str, reason: String| {
            tracing::info!(%peer, %destination, %reason, "plaintext connection refused");
            self.metrics.denied("plaintext");
            self.metrics.tcp_refused(labels, flags);
        };
        // Only the pod's own address is handed over; anything else reached the loopback
        // listener directly (from inside the pod) and would loop back to it.
        if destination.ip() != pod_ip || destination.port() == PLAINTEXT_PORT {
            let reason = format!("{destination} is not a destination of pod {pod_ip}");
            return refuse(labels, "UF", reason);
        }
        let Some(pod) = model.pod_by_ip(destination.ip()) else {
            return refuse(labels, "UF", format!("{pod_ip} is no longer a pod"));
        };
        let port = destination.port();
        if !self.policy.plaintext_allowed(&model, pod, port) {
            let reason = format!("{}/{}:{port} is STRICT", pod.namespace, pod.name);
            return refuse(labels, "UAEX", reason);
        }
        if let Err(reason) = self.policy.check(&model, pod, port, None, peer.ip()) {
            return refuse(labels, "UAEX", reason);
        }
        // Registered before the dial, so that a policy change during it reaches it.
        let tracked = self.connections.track_at(
            crate::connections::Admitted {
                destination: destination.ip(),
                port,
                peer: None,
                source_ip: peer.ip(),
                plaintext: true,
                epoch: model.epoch(),
            },
            &self.model.borrow(),
            &self.policy,
        );
        let tracked = match tracked {
            Ok(tracked) => tracked,
            Err(reason) => return refuse(labels, "UO", reason),
        };
        let upstream = match self.direct.connect(peer, destination).await {
            Ok((upstream, _)) => upstream,
            Err(err) => return refuse(labels, "UF", format!("dialling {destination}: {err}")),
        };
        let _ = client.set_nodelay(true);
        self.metrics.tcp_opened(&labels);
        let upstream = crate::upstream::Opened::Revocable(Box::new(upstream), tracked);
        let (request, response) = upstream.join(&mut client, None, None).await.unwrap_or_else(|err| {
            tracing::debug!(%peer, %destination, %err, "plaintext connection ended with an error");
            (0, 0)
        });
        self.metrics.tcp_closed(&labels, request, response);
    }
}
