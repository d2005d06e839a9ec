//! Outbound: the listener (:15001) that captured connections arrive at.
//!
//! For each connection it recovers the original destination the eBPF capture recorded, resolves
//! a Service address to one of its pods (per connection, as an L4 balancer would), and joins
//! the client to an `Upstream` stream, byte for byte, with half-close carried both ways.

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use weft_mesh::config::Model;

use crate::{metrics::Metrics, redirect::SharedMaps, upstream::Upstream};

/// Copy buffers per direction: large, so that bulk transfers cost few system calls.
const COPY_BUFFER: usize = 256 * 1024;

pub struct Outbound<U> {
    pub maps: SharedMaps,
    pub upstream: U,
    pub model: watch::Receiver<Arc<Model>>,
    pub metrics: Metrics,
    next: AtomicUsize,
}

impl<U: Upstream> Outbound<U> {
    pub fn new(
        maps: SharedMaps,
        upstream: U,
        model: watch::Receiver<Arc<Model>>,
        metrics: Metrics,
    ) -> Self {
        Outbound {
            maps,
            upstream,
            model,
            metrics,
            next: AtomicUsize::new(0),
        }
    }

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
            let this = self.clone();
            tokio::spawn(async move { this.handle(client, peer).await });
        }
    }

    async fn handle(&self, client: TcpStream, peer: SocketAddr) {
        let Some(orig) = client_v4(peer).and_then(|p| self.maps.take_orig_dst(p)) else {
            // Not captured by our programs: someone dialled :15001 directly.
            tracing::debug!(%peer, "no original destination recorded; closing");
            self.metrics.outbound("no_original_destination");
            return;
        };
        let Some(target) = self.resolve(orig) else {
            tracing::warn!(%peer, %orig, "service has no endpoints; refusing");
            self.metrics.outbound("no_endpoint");
            refuse(client);
            return;
        };
        let mut upstream = match self.upstream.connect(peer, SocketAddr::V4(target)).await {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%peer, %target, %err, "upstream connect failed");
                self.metrics.outbound("connect_failed");
                refuse(client);
                return;
            }
        };
        self.metrics.outbound("forwarded");
        let _ = client.set_nodelay(true);
        let mut client = client;
        match tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut upstream,
            COPY_BUFFER,
            COPY_BUFFER,
        )
        .await
        {
            Ok((sent, received)) => self.metrics.bytes(sent, received),
            Err(err) => tracing::debug!(%peer, %target, %err, "connection ended with an error"),
        }
    }

    /// A Service address becomes one of its ready pods (round robin per connection); a pod
    /// address stays as it is.
    fn resolve(&self, orig: SocketAddrV4) -> Option<SocketAddrV4> {
        let model = self.model.borrow().clone();
        let Some(service) = model
            .services
            .values()
            .find(|s| s.cluster_ip == Some(IpAddr::V4(*orig.ip())))
        else {
            return Some(orig);
        };
        let port = service.ports.iter().find(|p| p.port == orig.port())?;
        let target_port = port.target_port.unwrap_or(port.port);
        let endpoints: Vec<_> = model
            .pods
            .values()
            .filter(|pod| pod.namespace == service.namespace)
            .filter(|pod| {
                !service.selector.is_empty()
                    && service
                        .selector
                        .iter()
                        .all(|(k, v)| pod.labels.get(k) == Some(v))
            })
            .filter_map(|pod| match pod.ip {
                Some(IpAddr::V4(ip)) => Some(ip),
                _ => None,
            })
            .collect();
        if endpoints.is_empty() {
            return None;
        }
        let pick = self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
        Some(SocketAddrV4::new(endpoints[pick], target_port))
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
