//! Istio's security policies, evaluated: which PeerAuthentication mode a workload's port is
//! in, and whether an AuthorizationPolicy lets a connection through at L4.
//!
//! Users bring the AuthorizationPolicy and PeerAuthentication objects they already wrote
//! for Istio, so the semantics here are Istio's, written from its published API reference
//! ("Authorization Policy", "Authorization Policy Conditions", "PeerAuthentication",
//! "Workload Selector") and its ambient documentation on L4 policy in ztunnel. Where the
//! reference leaves a choice open, the function that makes it says so.
//!
//! Everything here is a pure function of the [`Model`](crate::config::Model) and the
//! connection, so that the agent (L4) and later the waypoint (L7) share one reading of the
//! policies, and the tests need no sockets.
//!
//! Files:
//! - `scope.rs`: which policies apply to a workload (root namespace, namespace, selector);
//! - `matching.rs`: one rule against one connection, with fail-closed L7 attributes;
//! - `authz.rs`: AuthorizationPolicy at L4: CUSTOM, DENY, ALLOW, AUDIT, in Istio's order;
//! - `peer_authn.rs`: the effective mTLS mode of a workload's port.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::config::PodInfo;

mod authz;
mod matching;
pub mod path;
mod peer_authn;
mod scope;

pub use authz::{
    Decision, DecisionReason, WaypointTarget, applicable_authorization_policies,
    attaches_to_waypoint, authorize_l4, authorize_l4_among, authorize_l4_at_waypoint, authorize_l7,
    authorize_l7_among,
};
pub use matching::{Request, value_matches};
pub use peer_authn::{
    EffectiveMtls, InboundModes, effective_peer_authentication, inbound_modes,
    peer_authentication_mode,
};
pub use scope::{Scope, scope_of};

/// Istio's default mesh root namespace.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// The mesh's root namespace (Istio's `rootNamespace` mesh setting). A policy there without
/// a selector applies to every workload in the mesh; with a selector, to the workloads of
/// every namespace that it selects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RootNamespace(pub String);

impl RootNamespace {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RootNamespace {
    fn default() -> Self {
        RootNamespace(DEFAULT_ROOT_NAMESPACE.to_string())
    }
}

impl From<&str> for RootNamespace {
    fn from(name: &str) -> Self {
        RootNamespace(name.to_string())
    }
}

impl From<String> for RootNamespace {
    fn from(name: String) -> Self {
        RootNamespace(name)
    }
}

/// The workload a policy protects: the destination of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// The address the connection was made to, for the `destination.ip` condition. When it
    /// is `None`, a rule that tests `destination.ip` cannot be decided, and fails closed.
    pub ip: Option<IpAddr>,
}

impl<'a> Workload<'a> {
    pub fn new(namespace: &'a str, labels: &'a BTreeMap<String, String>) -> Self {
        Workload {
            namespace,
            labels,
            ip: None,
        }
    }
}

impl<'a> From<&'a PodInfo> for Workload<'a> {
    fn from(pod: &'a PodInfo) -> Self {
        Workload {
            namespace: &pod.namespace,
            labels: &pod.labels,
            ip: pod.ip,
        }
    }
}

/// The client end of a connection, as the destination's agent knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The identity the peer proved with its certificate, in Istio's principal form
    /// `<trust-domain>/ns/<namespace>/sa/<account>`; a leading `spiffe://` is tolerated.
    /// `None` for a plaintext peer.
    pub principal: Option<String>,
    /// The namespace of that identity. It must come from the certificate, never from the
    /// peer's address: an address proves nothing, and Istio derives `namespaces` from the
    /// certificate too. `None` for a plaintext peer.
    pub namespace: Option<String>,
    pub ip: IpAddr,
}

impl Peer {
    /// A peer without a certificate.
    pub fn plaintext(ip: IpAddr) -> Self {
        Peer {
            principal: None,
            namespace: None,
            ip,
        }
    }

    /// A peer that proved `principal`; the namespace is read from the principal's
    /// `/ns/<namespace>/sa/` part (none if it does not have Istio's form).
    pub fn authenticated(principal: impl Into<String>, ip: IpAddr) -> Self {
        let principal = principal.into();
        let namespace = principal_namespace(&principal).map(str::to_string);
        Peer {
            principal: Some(principal),
            namespace,
            ip,
        }
    }
}

/// `<td>/ns/<namespace>/sa/<account>`, optionally behind `spiffe://`, to `<namespace>`.
fn principal_namespace(principal: &str) -> Option<&str> {
    let bare = principal.strip_prefix("spiffe://").unwrap_or(principal);
    let mut parts = bare.split('/');
    let (_, ns_tag, namespace, sa_tag, account) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let well_formed = ns_tag == "ns"
        && sa_tag == "sa"
        && !namespace.is_empty()
        && !account.is_empty()
        && parts.next().is_none();
    well_formed.then_some(namespace)
}

/// Names a policy in logs and metrics: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

impl PolicyRef {
    fn new(namespace: &str, name: &str) -> Self {
        PolicyRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A model holding the objects of a multi-document YAML text, for the tests.
#[cfg(test)]
fn model_from_yaml(text: &str) -> crate::config::Model {
    crate::config::model_from_yaml(text).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_namespace_comes_from_the_principal() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let cases = [
            ("cluster.local/ns/shop/sa/web", Some("shop")),
            ("spiffe://cluster.local/ns/shop/sa/web", Some("shop")),
            ("cluster.local/ns//sa/web", None),
            ("cluster.local/ns/shop/sa/", None),
            ("cluster.local/ns/shop/sa/web/extra", None),
            ("cluster.local/namespace/shop/sa/web", None),
            ("shop", None),
        ];
        for (principal, namespace) in cases {
            let peer = Peer::authenticated(principal, ip);
            assert_eq!(peer.namespace.as_deref(), namespace, "{principal}");
            assert_eq!(peer.principal.as_deref(), Some(principal));
        }
        assert_eq!(
            Peer::plaintext(ip),
            Peer {
                principal: None,
                namespace: None,
                ip
            }
        );
    }

    #[test]
    fn root_namespace_defaults_to_istio_system() {
        assert_eq!(RootNamespace::default().as_str(), "istio-system");
        assert_eq!(RootNamespace::from("mesh-root").as_str(), "mesh-root");
        assert_eq!(
            PolicyRef::new("shop", "deny-all").to_string(),
            "shop/deny-all"
        );
    }
}
