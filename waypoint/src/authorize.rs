//! Authorization at the waypoint: the AuthorizationPolicies attached to it (by
//! `targetRefs`, or selecting its own pod), for each call with its L7 attributes and for each
//! connection it carries at L4; and the workload policies delegated to it
//! (`weft_mesh::state::Delegation`) for the Service a call was routed to. Decisions are
//! `weft_mesh::policy`'s; this layer asks them with the waypoint's view of the call, and
//! counts and logs each verdict.

use std::net::IpAddr;

use http::request::Parts;
use weft_mesh::{
    policy::{
        Peer, Request as Attributes, RootNamespace, WaypointTarget, Workload,
        authorize_l4_at_waypoint, authorize_l7, authorize_l7_among,
    },
    state::State,
};

use crate::{
    called::Called,
    metrics::{Metrics, PolicyLabels},
};

/// This waypoint, as policies name it.
pub struct Waypoint {
    /// `spiffe://...`, as its certificate names it (the `By=` of `x-forwarded-client-cert`).
    pub identity: String,
    pub namespace: String,
    pub name: String,
    pub pod_ip: IpAddr,
    pub root: RootNamespace,
}

/// The waypoint's authorization layer.
pub struct Authorizer {
    pub waypoint: Waypoint,
    pub metrics: Metrics,
}

impl Authorizer {
    /// The AuthorizationPolicies attached to this waypoint, for one call. `Err` is the
    /// message the client gets (Envoy's "RBAC: access denied", with the reason).
    pub fn authorize(
        &self,
        model: &State,
        called: &Called,
        parts: &Parts,
        path: &str,
    ) -> Result<(), String> {
        if model.authorization_policies.is_empty() {
            return Ok(());
        }
        let at = self.target(model, Some((&called.service.0, &called.service.1)));
        // `hosts` match the Service the stream was opened for, never a name the client
        // chose for `:authority`.
        let attributes = Attributes {
            method: parts.method.as_str(),
            path,
            host: &called.host,
            headers: &parts.headers,
        };
        let decision = authorize_l7(model, &at, called.port, &called.source.peer, &attributes);
        self.verdict(decision, &called.source.principal, &called.label, path)
    }

    /// This waypoint as policies attach to it, for traffic to `service` (`None`: to a pod).
    fn target<'a>(
        &'a self,
        model: &'a State,
        service: Option<(&'a str, &'a str)>,
    ) -> WaypointTarget<'a> {
        static NO_LABELS: std::collections::BTreeMap<String, String> =
            std::collections::BTreeMap::new();
        WaypointTarget {
            waypoint: Workload {
                namespace: &self.waypoint.namespace,
                // Its own labels, for policies that select it.
                labels: model
                    .pod_by_ip(self.waypoint.pod_ip)
                    .map_or(&NO_LABELS, |pod| &pod.labels),
                ip: Some(self.waypoint.pod_ip),
            },
            name: &self.waypoint.name,
            service,
            root: &self.waypoint.root,
        }
    }

    /// The AuthorizationPolicies attached to this waypoint, for a connection it carries at
    /// L4: to a TCP port of `service`, or to a bound pod (`service` is `None`), addressed to
    /// `port`. Rules that need L7 attributes fail closed. `Err` names the policy.
    pub fn authorize_connection(
        &self,
        model: &State,
        service: Option<(&str, &str)>,
        port: u16,
        principal: &str,
        peer: &Peer,
    ) -> Result<(), String> {
        if model.authorization_policies.is_empty() {
            return Ok(());
        }
        let at = self.target(model, service);
        let decision = authorize_l4_at_waypoint(model, &at, port, peer);
        let what = match service {
            Some((namespace, name)) => format!("{namespace}/{name}:{port}"),
            None => format!("pod port {port}"),
        };
        self.verdict(decision, principal, &what, "")
    }

    /// The workload policies delegated to this waypoint (see `weft_mesh::state::Delegation`)
    /// for the Service a call was routed to, and for the one it was sent to when a
    /// VirtualService sends it elsewhere, decided with the pod port the call goes to.
    pub fn authorize_delegated(
        &self,
        model: &State,
        called: &Called,
        target: &weft_mesh::config::ServiceInfo,
        target_port: u16,
        parts: &Parts,
        path: &str,
    ) -> Result<(), String> {
        let mut policies: Vec<&weft_mesh::config::AuthorizationPolicyInfo> = model
            .delegated_policies(&called.service.0, &called.service.1)
            .iter()
            .chain(model.delegated_policies(&target.namespace, &target.name))
            .map(|p| &**p)
            .collect();
        if policies.is_empty() {
            return Ok(());
        }
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        policies.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        // As the workload's agent would see the port: the pod's (a named target port
        // falls back to the Service port).
        let port = target
            .ports
            .iter()
            .find(|p| p.port == target_port)
            .and_then(|p| p.target_port)
            .unwrap_or(target_port);
        let no_labels = std::collections::BTreeMap::new();
        let dest = Workload {
            namespace: &target.namespace,
            labels: &no_labels,
            ip: None,
        };
        let attributes = Attributes {
            method: parts.method.as_str(),
            path,
            host: &called.host,
            headers: &parts.headers,
        };
        let decision = authorize_l7_among(
            policies.into_iter(),
            &dest,
            port,
            &called.source.peer,
            &attributes,
        );
        self.verdict(decision, &called.source.principal, &called.label, path)
    }

    /// Counts and logs a decision; `Err` is the message a denied client gets.
    fn verdict(
        &self,
        decision: weft_mesh::policy::Decision,
        principal: &str,
        service: &str,
        path: &str,
    ) -> Result<(), String> {
        for policy in &decision.audited_by {
            self.metrics
                .authz_audited
                .get_or_create(&PolicyLabels {
                    policy: policy.to_string(),
                })
                .inc();
            tracing::info!(%policy, source = %principal, path, "AUDIT policy matched");
        }
        if decision.allowed {
            return Ok(());
        }
        let policy = decision
            .reason
            .denied_by()
            .map_or_else(|| "-".to_string(), ToString::to_string);
        self.metrics
            .authz_denied
            .get_or_create(&PolicyLabels { policy })
            .inc();
        tracing::info!(
            source = %principal,
            %service,
            path,
            reason = %decision.reason,
            "denied"
        );
        Err(format!("RBAC: access denied ({})", decision.reason))
    }
}
