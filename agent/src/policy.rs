//! L4 authorization at the agent: Istio's AuthorizationPolicy semantics (evaluated by
//! `weft_mesh::policy`) applied to each tunnelled or agent-carried connection at setup, and
//! the per-pod facts the eBPF programs need (may a pod be reached directly; its mTLS mode).

use std::net::IpAddr;

use weft_mesh::{
    config::{Model, MtlsMode, PodInfo},
    identity::SpiffeId,
    policy::{
        InboundModes, Peer, RootNamespace, Workload, applicable_authorization_policies,
        authorize_l4_among, inbound_modes, peer_authentication_mode,
    },
    state::State,
};

#[derive(Debug, Clone)]
pub struct L4Policy {
    pub root_namespace: String,
}

impl L4Policy {
    fn root(&self) -> RootNamespace {
        RootNamespace(self.root_namespace.clone())
    }

    /// Ok if `source` may connect to `dest:port`; otherwise the reason, naming the policy.
    /// The source's namespace comes from its certificate, never from its address.
    pub fn check(
        &self,
        model: &State,
        dest: &PodInfo,
        port: u16,
        source: Option<&SpiffeId>,
        source_ip: IpAddr,
    ) -> Result<(), String> {
        self.decide(model, dest, port, source, source_ip)
            .map_err(|(_, reason)| reason)
    }

    /// As [`check`](Self::check), with the refusing DENY policy (`namespace/name`) apart,
    /// when one refused.
    ///
    /// When the peer is the waypoint that serves `dest`, the workload policies delegated to
    /// it (their rules need L7: see `weft_mesh::state::Delegation`) are its to enforce, per
    /// call, and are left out here.
    pub fn decide(
        &self,
        model: &State,
        dest: &PodInfo,
        port: u16,
        source: Option<&SpiffeId>,
        source_ip: IpAddr,
    ) -> Result<(), (Option<String>, String)> {
        let peer = match source {
            Some(id) => Peer::authenticated(id.principal(), source_ip),
            None => Peer::plaintext(source_ip),
        };
        // A pod bound to a workload waypoint is reached through it: a connection from any
        // other identity bypasses the waypoint and its policies. (Kubelet probes never get
        // here: the gate and sk_lookup let them reach the container directly.)
        if let Some((waypoint, identities)) = model.bound_waypoint(dest) {
            let through = source.is_some_and(|id| {
                identities
                    .iter()
                    .any(|(ns, sa)| ns == id.namespace() && sa == id.service_account())
            });
            if !through {
                return Err((
                    Some(format!("waypoint {}/{}", waypoint.namespace, waypoint.name)),
                    format!(
                        "{} to {}/{}:{port} denied: the pod is bound to waypoint {}/{} and the \
                         connection did not come through it",
                        source.map_or_else(|| source_ip.to_string(), ToString::to_string),
                        dest.namespace,
                        dest.name,
                        waypoint.namespace,
                        waypoint.name
                    ),
                ));
            }
        }
        let delegated = source
            .and_then(|id| model.delegation_to(dest, id.namespace(), id.service_account()))
            .filter(|d| d.ports.contains(&port));
        let root = self.root();
        let decision = authorize_l4_among(
            model.workload_policies(root.as_str(), &dest.namespace),
            &root,
            &Workload::from(dest),
            port,
            &peer,
            |p| {
                delegated.is_some_and(|d| {
                    d.policies
                        .iter()
                        .any(|(ns, name)| *ns == p.namespace && *name == p.name)
                })
            },
        );
        if decision.allowed {
            return Ok(());
        }
        let by = decision.reason.denied_by().map(ToString::to_string);
        Err((
            by,
            format!(
                "{} to {}/{}:{port} denied: {}",
                source.map_or_else(|| source_ip.to_string(), ToString::to_string),
                dest.namespace,
                dest.name,
                decision.reason
            ),
        ))
    }

    /// Whether any AuthorizationPolicy or a workload waypoint governs the pod. Only
    /// ungoverned pods may be reached by same-node pods directly (spliced, not via the
    /// agent): the kernel fast path can neither evaluate policy nor send a connection
    /// through a waypoint, so governed pods take the agent's path.
    pub fn governs(&self, model: &State, pod: &PodInfo) -> bool {
        (model.in_mesh(pod) && model.workload_waypoint(pod).is_some())
            || applicable_authorization_policies(model, &self.root(), &Workload::from(pod))
                .next()
                .is_some()
    }

    /// The pod's PeerAuthentication modes, for the tc gate: the workload's, and each port a
    /// workload policy names.
    pub fn inbound_modes(&self, model: &Model, pod: &PodInfo) -> InboundModes {
        inbound_modes(model, &self.root(), &Workload::from(pod))
    }

    /// Whether plaintext may reach `port` of the pod (it is not STRICT).
    pub fn plaintext_allowed(&self, model: &Model, pod: &PodInfo, port: u16) -> bool {
        peer_authentication_mode(model, &self.root(), &Workload::from(pod), port)
            != MtlsMode::Strict
    }
}
