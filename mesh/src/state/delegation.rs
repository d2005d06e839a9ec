//! Delegating L7 rules to the waypoint that can see them.
//!
//! A workload policy (a `selector`, or none: namespace- or mesh-wide) whose rules need L7
//! attributes (paths, methods, hosts, request principals or headers) cannot be evaluated
//! by the destination's node agent, which sees connections: there it fails closed, so an
//! ALLOW of that kind admits nothing, not even the waypoint. When a waypoint serves the
//! workloads it selects (the waypoint of a Service that selects them, or their own), the
//! policy is delegated to that waypoint:
//!
//! - the waypoint enforces it per call, for calls to those Services, against the original
//!   caller's principal, together with the policies attached to the waypoint itself;
//! - the destination agents leave it out of the L4 decision for connections whose peer is
//!   that waypoint (its pods' identities) to the pod ports it serves per call, and only
//!   for those: traffic that bypasses the waypoint, and TCP ports the waypoint carries at
//!   L4, still meet the L4 evaluation, which fails closed.
//!
//! A policy is delegated for a pod only when the waypoint checks it on every way it
//! reaches the pod: it must select every endpoint of each Service bound to the waypoint
//! that selects the pod (the waypoint decides before it picks an endpoint), and the pod
//! must not be bound to a workload waypoint (pod-addressed traffic is carried at L4).
//! Otherwise the policy stays at L4, fail-closed, and is reported.
//!
//! This is what the author of such a policy means. Istio ambient instead enforces it at the
//! node proxy and denies everything; Weft reports the delegation (finding WEFT034).

use std::collections::HashMap;
use std::sync::Arc;

use super::{CompiledService, Shard, Workload};
use crate::config::{AuthorizationPolicyInfo, Model, WaypointRef};
use crate::policy::{RootNamespace, scope_of};

type Key = (String, String);

/// The policies one waypoint enforces for one workload, and who that waypoint is.
#[derive(Debug, Clone, PartialEq)]
pub struct Delegation {
    pub waypoint: WaypointRef,
    /// The waypoint's pods' identities, as (namespace, service account).
    pub identities: Vec<(String, String)>,
    /// (namespace, name) of the delegated policies.
    pub policies: Vec<Key>,
    /// The pod ports the waypoint serves per call (the target ports of the gRPC and HTTP/2
    /// ports of its Services that select the pod): only connections to these are left to
    /// the waypoint.
    pub ports: Vec<u16>,
}

impl Delegation {
    /// Whether the peer (namespace, service account) is this waypoint.
    pub fn is_waypoint(&self, namespace: &str, service_account: &str) -> bool {
        self.identities
            .iter()
            .any(|(ns, sa)| ns == namespace && sa == service_account)
    }
}

/// The delegations of one namespace's pods and Services (a shard's).
#[derive(Debug, Default)]
pub(super) struct Delegated {
    /// By the pod's name.
    pub workloads: HashMap<String, Vec<Delegation>>,
    /// By the Service's name: the policies its waypoint evaluates per call.
    pub services: HashMap<String, Vec<Arc<AuthorizationPolicyInfo>>>,
    /// Policies delegated for these pods, with the waypoints they went to.
    pub to: Vec<(Key, Vec<WaypointRef>)>,
}

/// The workload policies that have L7 rules: those that may be delegated.
#[derive(Debug, Default)]
pub(super) struct Candidates {
    root: RootNamespace,
    by_namespace: HashMap<String, Vec<Arc<AuthorizationPolicyInfo>>>,
}

impl Candidates {
    pub fn of(model: &Model) -> Candidates {
        let mut out = Candidates::default();
        for policy in model.authorization_policies.values() {
            if policy.target_refs.is_empty() && policy.rules.iter().any(|r| r.needs_l7()) {
                out.by_namespace
                    .entry(policy.namespace.clone())
                    .or_default()
                    .push(Arc::new(policy.clone()));
            }
        }
        out
    }

    /// Every candidate, in (namespace, name) order.
    pub fn all(&self) -> impl Iterator<Item = &AuthorizationPolicyInfo> {
        let mut namespaces: Vec<&String> = self.by_namespace.keys().collect();
        namespaces.sort();
        namespaces
            .into_iter()
            .flat_map(|ns| self.by_namespace[ns].iter().map(|p| &**p))
    }

    /// Those that can select pods of `namespace`: its own and the root namespace's, in
    /// (namespace, name) order.
    fn for_namespace<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a Arc<AuthorizationPolicyInfo>> + 'a {
        let mut namespaces = vec![namespace, self.root.as_str()];
        namespaces.sort_unstable();
        namespaces.dedup();
        namespaces
            .into_iter()
            .flat_map(|ns| self.by_namespace.get(ns).into_iter().flatten())
    }
}

/// The delegations of one namespace's pods. `identities` gives a waypoint's identities
/// (see [`identities`]).
pub(super) fn compile(
    shard: &Shard,
    candidates: &Candidates,
    identities: impl Fn(&WaypointRef) -> Vec<(String, String)>,
) -> Delegated {
    let mut out = Delegated::default();
    let Some(namespace) = shard.workloads.values().next().map(|w| &w.pod.namespace) else {
        return out;
    };
    let mut pods: Vec<&Arc<Workload>> = shard.workloads.values().collect();
    pods.sort_by(|a, b| a.pod.name.cmp(&b.pod.name));
    for policy in candidates.for_namespace(namespace) {
        let key = (policy.namespace.clone(), policy.name.clone());
        let selected = |pod: &crate::config::PodInfo| {
            scope_of(
                &policy.namespace,
                policy.selector.as_ref(),
                &candidates.root,
                &crate::policy::Workload::from(pod),
            )
            .is_some()
        };
        // A Service takes the policy only if the policy selects every one of its
        // endpoints: the waypoint applies it to every call of the Service, before it picks
        // an endpoint.
        let delegable = |service: &CompiledService| {
            service.waypoint.is_some() && service.endpoints.iter().all(|w| selected(&w.pod))
        };
        let mut waypoints: Vec<WaypointRef> = Vec::new();
        for workload in &pods {
            let pod = &workload.pod;
            // Traffic to the pod's own address through a workload waypoint is carried at
            // L4 there: it must keep meeting the policy at the pod's agent.
            if !selected(pod) || workload.waypoint.is_some() {
                continue;
            }
            let bound: Vec<&Arc<CompiledService>> = shard
                .selecting
                .get(&pod.name)
                .into_iter()
                .flatten()
                .filter(|s| s.waypoint.is_some())
                .collect();
            let mut served: Vec<WaypointRef> =
                bound.iter().filter_map(|s| s.waypoint.clone()).collect();
            served.sort();
            served.dedup();
            for waypoint in served {
                let through: Vec<&&Arc<CompiledService>> = bound
                    .iter()
                    .filter(|s| s.waypoint.as_ref() == Some(&waypoint))
                    .collect();
                // Every way this waypoint reaches the pod must check the policy, or the
                // agent may not leave it out for the waypoint.
                if !through.iter().all(|s| delegable(s)) {
                    continue;
                }
                // Only the pod ports the waypoint serves per call (gRPC and HTTP/2); TCP
                // ports it carries at L4 keep the policy at the agent.
                let mut ports: Vec<u16> = through
                    .iter()
                    .flat_map(|s| s.service.ports.iter())
                    .filter(|p| p.protocol != crate::config::AppProtocol::Tcp)
                    .filter_map(|p| p.target_on(pod))
                    .collect();
                ports.sort_unstable();
                ports.dedup();
                if ports.is_empty() {
                    continue;
                }
                for service in &through {
                    let list = out
                        .services
                        .entry(service.service.name.clone())
                        .or_default();
                    if !list.iter().any(|p| Arc::ptr_eq(p, policy)) {
                        list.push(policy.clone());
                    }
                }
                let delegations = out.workloads.entry(pod.name.clone()).or_default();
                match delegations.iter_mut().find(|d| d.waypoint == waypoint) {
                    Some(d) => d.policies.push(key.clone()),
                    None => delegations.push(Delegation {
                        identities: identities(&waypoint),
                        waypoint: waypoint.clone(),
                        policies: vec![key.clone()],
                        ports,
                    }),
                }
                if !waypoints.contains(&waypoint) {
                    waypoints.push(waypoint);
                }
            }
        }
        if !waypoints.is_empty() {
            waypoints.sort();
            out.to.push((key, waypoints));
        }
    }
    out
}

/// The identities of a waypoint's pods: the service accounts of its Service's endpoints,
/// as (namespace, service account), sorted.
pub(super) fn identities(service: Option<&CompiledService>) -> Vec<(String, String)> {
    let mut ids: Vec<(String, String)> = service
        .into_iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|w| (w.pod.namespace.clone(), w.pod.service_account.clone()))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}
