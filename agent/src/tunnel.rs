//! The tunnel's outbound half: an `Upstream` that carries captured connections to pods on other
//! nodes through HBONE, presenting the source pod's own identity, and dials everything else
//! directly (a pod on this node, or a destination outside the mesh).

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};
use weft_mesh::state::State;

use tokio::sync::watch;
use weft_mesh::{
    config::PodInfo,
    hbone::{self, Pool, PoolKey},
    identity::{
        CertificateSource, IdentityManager, ServerIdentity, SpiffeId, TrustBundle, client_config,
    },
};

use crate::upstream::{DirectTcp, Opened, Security, Upstream};

/// A pod's SPIFFE identity.
pub fn pod_identity(trust_domain: &str, pod: &PodInfo) -> io::Result<SpiffeId> {
    SpiffeId::new(trust_domain, &pod.namespace, &pod.service_account).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("pod {}/{}: {e}", pod.namespace, pod.name),
        )
    })
}

/// Client TLS configurations by (source identity, the server identity it must see).
type TlsConfigs = HashMap<(SpiffeId, ServerIdentity), Arc<rustls::ClientConfig>>;

pub struct Tunnel<S: CertificateSource> {
    pub pool: Arc<Pool>,
    pub identities: Arc<IdentityManager<S>>,
    pub trust: TrustBundle,
    pub model: watch::Receiver<Arc<State>>,
    pub node_name: String,
    pub trust_domain: String,
    /// The identity every node agent presents on its HBONE port.
    pub agent_identity: SpiffeId,
    /// To destinations outside the mesh, from the pod's own namespace and address.
    pub direct: crate::upstream::Egress,
    /// To this node's pods in the mesh, from the dial address with the agent's mark.
    pub to_pods: DirectTcp,
    /// Checked here for destinations on this node; the destination's agent checks the rest.
    pub policy: crate::policy::L4Policy,
    /// Where same-node connections admitted by policy are registered, for revocation.
    pub connections: crate::connections::Connections,
    /// Client TLS by (source identity, server identity).
    configs: Arc<Mutex<TlsConfigs>>,
}

/// Where a captured connection goes.
enum Route {
    /// Straight to the destination; tracked when policy admitted it on this node.
    Direct(Option<crate::connections::Admitted>),
    /// Through HBONE to the first of `via` that takes the stream: the destination's node
    /// agent, or one of a waypoint's pods.
    Hbone { source: SpiffeId, via: Vec<Hop> },
}

/// An HBONE server that a connection may go through, and the identity it must present.
struct Hop {
    address: SocketAddr,
    server: ServerIdentity,
}

impl<S: CertificateSource> Tunnel<S> {
    /// Forgets the identities (and their renewals and TLS configurations) of pods that are
    /// no longer enrolled here, whenever the configuration changes; the agent's own stays.
    fn prune_identities(&self) {
        let (identities, configs) = (self.identities.clone(), self.configs.clone());
        let (mut model, node, td, agent) = (
            self.model.clone(),
            self.node_name.clone(),
            self.trust_domain.clone(),
            self.agent_identity.clone(),
        );
        tokio::spawn(async move {
            loop {
                let keep: std::collections::HashSet<SpiffeId> = {
                    let model = model.borrow_and_update();
                    model
                        .enrolled_pods(&node)
                        .filter_map(|p| pod_identity(&td, p).ok())
                        .chain([agent.clone()])
                        .collect()
                };
                for (id, _) in identities.snapshot() {
                    if !keep.contains(&id) {
                        tracing::info!(%id, "forgetting the identity of a pod no longer here");
                        identities.forget(&id);
                        if let Ok(mut configs) = configs.lock() {
                            configs.retain(|(source, _), _| source != &id);
                        }
                    }
                }
                if model.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    fn route(&self, source: IpAddr, target: SocketAddr) -> io::Result<Route> {
        let model = self.model.borrow().clone();
        if let Some(route) = self.waypoint_route(&model, source, target)? {
            return Ok(route);
        }
        let Some(dest) = model.pod_by_ip(target.ip()) else {
            return Ok(Route::Direct(None));
        };
        let remote = dest
            .node_name
            .as_deref()
            .is_some_and(|n| n != self.node_name);
        if !model.in_mesh(dest) {
            return Ok(Route::Direct(None));
        }
        if !remote {
            // Same node: the agent is the enforcement point, with the client pod's identity
            // (its address is on this node, so it cannot be spoofed from elsewhere).
            let client = model
                .pod_by_ip(source)
                .map(|p| pod_identity(&self.trust_domain, p))
                .transpose()?;
            self.policy
                .check(&model, dest, target.port(), client.as_ref(), source)
                .map_err(|reason| io::Error::new(io::ErrorKind::PermissionDenied, reason))?;
            return Ok(Route::Direct(Some(crate::connections::Admitted {
                destination: target.ip(),
                port: target.port(),
                peer: client,
                source_ip: source,
                plaintext: false,
                epoch: model.epoch(),
            })));
        }
        let node_name = dest.node_name.as_deref().unwrap_or_default();
        let node_ip = model
            .nodes
            .get(node_name)
            .and_then(|n| n.internal_ip)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no address for node {node_name}"),
                )
            })?;
        let client = model.pod_by_ip(source).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no pod has the client address {source}"),
            )
        })?;
        Ok(Route::Hbone {
            source: pod_identity(&self.trust_domain, client)?,
            via: vec![Hop {
                address: SocketAddr::new(node_ip, hbone::PORT),
                // Every agent has this SPIFFE ID; its certificate also names its node's
                // address, which must be the one dialled.
                server: ServerIdentity::AtDialledAddress(self.agent_identity.clone()),
            }],
        })
    }

    /// Traffic bound to a waypoint (a Service's cluster IP, or a pod's own IP) goes to one
    /// of the waypoint's pods, whatever node it runs on; it does the rest. One client's
    /// connections go to the same pod while it takes them, and clients spread over the
    /// pods; the others follow in turn, for when it does not.
    fn waypoint_route(
        &self,
        model: &State,
        source: IpAddr,
        target: SocketAddr,
    ) -> io::Result<Option<Route>> {
        let resolved = model.resolve(source, target.ip());
        let Some(waypoint) = resolved.waypoint else {
            return Ok(None);
        };
        let not_found = |what: String| io::Error::new(io::ErrorKind::NotFound, what);
        let pods = model.waypoint_pods(waypoint);
        if pods.is_empty() {
            return Err(not_found(format!(
                "waypoint {}/{} has no ready pod",
                waypoint.namespace, waypoint.name
            )));
        }
        let first = source_hash(source) % pods.len();
        let via = (0..pods.len())
            .map(|i| pods[(first + i) % pods.len()])
            .filter_map(|pod| {
                Some(Hop {
                    address: SocketAddr::new(pod.ip?, hbone::PORT),
                    server: ServerIdentity::Exact(pod_identity(&self.trust_domain, pod).ok()?),
                })
            })
            .collect::<Vec<_>>();
        if via.is_empty() {
            return Err(not_found(format!(
                "no pod of waypoint {}/{} has an address",
                waypoint.namespace, waypoint.name
            )));
        }
        let client = resolved
            .source
            .map(|w| &w.pod)
            .ok_or_else(|| not_found(format!("no pod has the client address {source}")))?;
        Ok(Some(Route::Hbone {
            source: pod_identity(&self.trust_domain, client)?,
            via,
        }))
    }

    /// A tunnelled stream to `target` through the first hop of `via` that takes it, the
    /// reachable ones first (`Pool::reachable`): a hop whose connection is refused, fails,
    /// or is going away (GOAWAY, a refused stream) is passed over for the next. An answer
    /// that refuses the tunnel (policy, say) is final.
    async fn through(
        &self,
        id: &SpiffeId,
        via: &[Hop],
        target: SocketAddr,
        client: IpAddr,
    ) -> io::Result<hbone::H2Stream> {
        let (reachable, failing): (Vec<&Hop>, Vec<&Hop>) =
            via.iter().partition(|h| self.pool.reachable(h.address));
        let mut failure = None;
        for hop in reachable.into_iter().chain(failing) {
            let tls = self.tls_for(id, &hop.server).await?;
            let key = PoolKey {
                source: id.to_string(),
                destination: hop.address,
            };
            match self.pool.connect(&key, tls, target, client).await {
                Ok(stream) => return Ok(stream),
                Err(err @ hbone::HboneError::Refused { .. }) => return Err(err.into()),
                Err(err) => {
                    if via.len() > 1 {
                        tracing::info!(%err, "tunnel hop failed; trying the next");
                    }
                    failure = Some(err);
                }
            }
        }
        Err(failure.map_or_else(
            || io::Error::new(io::ErrorKind::NotFound, "no hop"),
            io::Error::from,
        ))
    }

    async fn tls_for(
        &self,
        id: &SpiffeId,
        server: &ServerIdentity,
    ) -> io::Result<Arc<rustls::ClientConfig>> {
        let key = (id.clone(), server.clone());
        if let Some(config) = self.configs.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(config);
        }
        let slot = self.identities.slot(id).await.map_err(io::Error::other)?;
        let config = client_config(slot, &self.trust, server.clone()).map_err(io::Error::other)?;
        if let Ok(mut configs) = self.configs.lock() {
            configs.insert(key, config.clone());
        }
        Ok(config)
    }
}

/// A cheap, stable spread of client addresses.
fn source_hash(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as usize,
        IpAddr::V6(v6) => u128::from(v6) as usize,
    }
}

impl<S: CertificateSource> Upstream for Tunnel<S> {
    fn sends_to_waypoints(&self) -> bool {
        true
    }

    async fn connect(
        &self,
        source: SocketAddr,
        target: SocketAddr,
    ) -> io::Result<(Opened, Security)> {
        match self.route(source.ip(), target)? {
            Route::Direct(None) => self.direct.connect(source, target).await,
            Route::Direct(Some(admitted)) => {
                // Registered before the dial, so that a policy change during it reaches it.
                let tracked = self
                    .connections
                    .track_at(admitted, &self.model.borrow(), &self.policy)
                    .map_err(|reason| io::Error::new(io::ErrorKind::ResourceBusy, reason))?;
                let (opened, security) = self.to_pods.connect(source, target).await?;
                Ok((Opened::Revocable(Box::new(opened), tracked), security))
            }
            Route::Hbone { source: id, via } => {
                let stream = self.through(&id, &via, target, source.ip()).await?;
                Ok((Opened::Tunnel(stream), Security::MutualTls))
            }
        }
    }
}

/// Sets up identities and the tunnel's two halves when a CA is configured: the HBONE server
/// on `--hbone-address` (with the agent's own identity) and the outbound `Tunnel`.
pub async fn start(
    settings: &crate::settings::AgentSettings,
    model: watch::Receiver<Arc<State>>,
    metrics: crate::metrics::Metrics,
    direct: crate::upstream::Egress,
    to_pods: DirectTcp,
    connections: crate::connections::Connections,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<Tunnel<weft_mesh::ca::CaSource>>> {
    use anyhow::Context;

    let t = &settings.tunnel;
    let Some(ca_address) = &t.ca_address else {
        return Ok(None);
    };
    let enrolment = weft_mesh::ca::Enrolment {
        ca: weft_mesh::ca::resolve_ca(ca_address)
            .await
            .map_err(anyhow::Error::msg)?,
        token_file: t
            .ca_token_file
            .clone()
            .context("--ca-address needs --ca-token-file")?,
        trust_bundle: t
            .trust_bundle
            .clone()
            .context("--ca-address needs --trust-bundle")?,
        ttl: std::time::Duration::from_secs(t.cert_ttl_seconds),
    };
    let agent_identity = SpiffeId::new(
        &t.trust_domain,
        &t.agent_namespace,
        &t.agent_service_account,
    )
    .context("the agent's identity")?;
    // The CA may take a moment to come up.
    let weft_mesh::ca::Enrolled {
        identities,
        trust,
        slot,
    } = enrolment
        .enrol(&agent_identity, std::time::Duration::from_secs(30))
        .await?;
    let server_tls =
        weft_mesh::identity::server_config(slot, &trust).context("building the tunnel's TLS")?;
    let listener = crate::handover::listen_shared(t.hbone_address, 1024)
        .with_context(|| format!("binding the tunnel listener {}", t.hbone_address))?;
    let inbound = Arc::new(crate::inbound::Inbound {
        model: model.clone(),
        node_name: settings.node_name.clone(),
        trust_domain: t.trust_domain.clone(),
        dial: to_pods.from,
        metrics: metrics.clone(),
        policy: crate::policy::L4Policy {
            root_namespace: t.root_namespace.clone(),
        },
        connections: connections.clone(),
        draining: stop.clone(),
    });
    tokio::spawn(hbone::serve(
        listener,
        server_tls,
        t.hbone(),
        inbound,
        async move {
            let _ = stop.changed().await;
        },
    ));
    tracing::info!(address = %t.hbone_address, identity = %agent_identity, "tunnel listening");
    let pool = Pool::new(t.hbone());
    metrics.register_pool(pool.clone());
    let held = identities.clone();
    metrics.register_expiry(Arc::new(move || {
        held.snapshot()
            .into_iter()
            .map(|(id, not_after)| (id.to_string(), not_after))
            .collect()
    }));
    let tunnel = Tunnel {
        pool,
        identities,
        trust,
        model,
        node_name: settings.node_name.clone(),
        trust_domain: t.trust_domain.clone(),
        agent_identity,
        to_pods,
        direct,
        policy: crate::policy::L4Policy {
            root_namespace: t.root_namespace.clone(),
        },
        connections,
        configs: Arc::new(Mutex::new(HashMap::new())),
    };
    tunnel.prune_identities();
    Ok(Some(tunnel))
}
