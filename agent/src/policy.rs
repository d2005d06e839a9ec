//! L4 authorization at the agent: Istio's AuthorizationPolicy semantics (evaluated by
//! `weft_mesh::policy`) applied to each tunnelled or agent-carried connection at setup, and
//! the per-pod facts the eBPF programs need (may a pod be reached directly; its mTLS mode).

use std::net::IpAddr;

use weft_mesh::{
    config::{Model, MtlsMode, PodInfo},
    identity::SpiffeId,
    policy::{
        InboundModes, Peer, RootNamespace, Workload, applicable_authorization_policies,
        authorize_l4, inbound_modes, peer_authentication_mode,
    },
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
        model: &Model,
        dest: &PodInfo,
        port: u16,
        source: Option<&SpiffeId>,
        source_ip: IpAddr,
    ) -> Result<(), String> {
        let peer = match source {
            Some(id) => Peer::authenticated(id.principal(), source_ip),
            None => Peer::plaintext(source_ip),
        };
        let decision = authorize_l4(model, &self.root(), &Workload::from(dest), port, &peer);
        if decision.allowed {
            Ok(())
        } else {
            Err(format!(
                "{} to {}/{}:{port} denied: {}",
                source.map_or_else(|| source_ip.to_string(), ToString::to_string),
                dest.namespace,
                dest.name,
                decision.reason
            ))
        }
    }

    /// Whether any AuthorizationPolicy governs the pod. Only ungoverned pods may be reached
    /// by same-node pods directly (spliced, not via the agent): the kernel fast path cannot
    /// evaluate policy, so governed pods take the agent's path, where `check` runs.
    pub fn governs(&self, model: &Model, pod: &PodInfo) -> bool {
        applicable_authorization_policies(model, &self.root(), &Workload::from(pod))
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
