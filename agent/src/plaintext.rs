//! The plaintext inbound (:15006): connections from outside the mesh to a PERMISSIVE pod or
//! port. The sk_lookup program in the pod's namespace hands them to the agent's listener
//! there (see `redirect::netns`), so the accepted socket's local address is the original
//! destination. The agent checks L4 policy with no peer identity (a principal-based ALLOW
//! refuses it, an ipBlocks rule can admit it), counts the connection with Istio's labels and
//! `connection_security_policy="none"`, and dials the pod from its own address, as the
//! tunnel's inbound does.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{net::TcpStream, sync::watch};
use weft_mesh::config::Model;

use crate::{
    metrics::{Ends, Metrics, TcpLabels, tcp_labels},
    policy::L4Policy,
    redirect::{PLAINTEXT_PORT, ServerHandle},
    tunnel::pod_identity,
};

pub struct PlaintextInbound {
    pub model: watch::Receiver<Arc<Model>>,
    pub trust_domain: String,
    pub source_ip: Ipv4Addr,
    pub metrics: Metrics,
    pub policy: L4Policy,
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

    fn labels(&self, model: &Model, peer: SocketAddr, destination: SocketAddr) -> TcpLabels {
        let destination_principal = model
            .pod_by_ip(destination.ip())
            .and_then(|p| pod_identity(&self.trust_domain, p).ok())
            .map(|id| id.to_string());
        let ends = Ends {
            source_ip: peer.ip(),
            source_principal: None,
            destination_ip: destination.ip(),
            destination_principal,
            destination_service: None,
        };
        tcp_labels("destination", model, ends, "none")
    }

    async fn handle(&self, mut client: TcpStream, peer: SocketAddr, pod_ip: Ipv4Addr) {
        // sk_lookup keeps the original destination as the socket's local address.
        let Ok(destination) = client.local_addr() else {
            return;
        };
        let model = self.model.borrow().clone();
        let refuse = |flags: &'static str, reason: String| {
            tracing::info!(%peer, %destination, %reason, "plaintext connection refused");
            self.metrics.denied("plaintext");
            let mut labels = self.labels(&model, peer, destination);
            labels.response_flags = flags;
            self.metrics.tcp_opened(&labels);
            self.metrics.tcp_closed(&labels, 0, 0);
        };
        // Only the pod's own address is handed over; anything else reached the loopback
        // listener directly (from inside the pod) and would loop back to it.
        if destination.ip() != pod_ip || destination.port() == PLAINTEXT_PORT {
            refuse(
                "UF",
                format!("{destination} is not a destination of pod {pod_ip}"),
            );
            return;
        }
        let Some(pod) = model.pod_by_ip(destination.ip()) else {
            refuse("UF", format!("{pod_ip} is no longer a pod"));
            return;
        };
        if !self
            .policy
            .plaintext_allowed(&model, pod, destination.port())
        {
            refuse(
                "UAEX",
                format!(
                    "{}/{}:{} is STRICT",
                    pod.namespace,
                    pod.name,
                    destination.port()
                ),
            );
            return;
        }
        if let Err(reason) = self
            .policy
            .check(&model, pod, destination.port(), None, peer.ip())
        {
            refuse("UAEX", reason);
            return;
        }
        let mut upstream =
            match crate::upstream::dial_from(self.source_ip, destination, Duration::from_secs(5))
                .await
            {
                Ok(s) => s,
                Err(err) => {
                    refuse("UF", format!("dialling {destination}: {err}"));
                    return;
                }
            };
        let _ = client.set_nodelay(true);
        let labels = self.labels(&model, peer, destination);
        self.metrics.tcp_opened(&labels);
        let (request, response) = tokio::io::copy_bidirectional(&mut client, &mut upstream)
            .await
            .unwrap_or_else(|err| {
                tracing::debug!(%peer, %destination, %err, "plaintext connection ended with an error");
                (0, 0)
            });
        self.metrics.tcp_closed(&labels, request, response);
    }
}
