//! Findings: every case where the configuration does not do what it says, with a stable
//! code. Istio's analyzer code where Istio has one (IST0101 ReferencedResourceNotFound,
//! IST0109 ConflictingMeshGatewayVirtualServiceHosts), `WEFT0xx` otherwise:
//!
//! | code | severity | what |
//! |---|---|---|
//! | WEFT001 | warning | a kind of a mesh API group (Istio, Linkerd, Gateway API) that Weft does not read |
//! | WEFT002 | error | a group that looks like a misspelt Istio group (`networking.io`) |
//! | WEFT010 | warning | a field Weft accepts but does not act on (`localityLbSetting`, `gateways`) |
//! | WEFT011 | warning | a VirtualService host that names no Service |
//! | WEFT013 | info | a VirtualService for a Service of another namespace: it routes its own namespace's callers only |
//! | WEFT012 | warning | a DestinationRule host that names no Service |
//! | IST0101 | error | a VirtualService destination host or subset that resolves to nothing |
//! | IST0109 | error | a second VirtualService for a Service: the oldest wins |
//! | WEFT020 | info | DestinationRules of one Service merged |
//! | WEFT021 | warning | a subset defined twice among them: the older wins |
//! | WEFT022 | warning | a later rule's top-level trafficPolicy, not used |
//! | WEFT023 | warning | rules of another namespace than the ones used |
//! | WEFT030 | warning | a VirtualService or DestinationRule for a Service with no waypoint |
//! | WEFT031 | error | an AuthorizationPolicy with L7 rules enforced at L4, where they fail closed |
//! | WEFT034 | info | an AuthorizationPolicy with L7 rules delegated to the waypoint that serves its workloads |
//! | WEFT032 | warning | a use-waypoint label for traffic the waypoint is not for (`istio.io/waypoint-for`) |
//! | WEFT033 | warning | a use-waypoint label naming a waypoint that has no Service |
//! | WEFT035 | error | a CUSTOM AuthorizationPolicy: no external authorizer, so what its rules match is denied |
//! | WEFT040 | warning | a namespace set up for sidecar injection but not for ambient |
//!
//! The findings come from the same compile step that the data path reads, so they cannot
//! disagree with it.

use std::collections::BTreeMap;
use std::fmt;

use super::State;
use crate::config::{
    AuthzAction, Model, NONE, PodInfo, ServiceInfo, TrafficKind, TrafficPolicy, WaypointRef,
    use_waypoint,
};

/// How much a finding matters. `analyze` exits non-zero when there is an [`Error`].
///
/// [`Error`]: Severity::Error
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The configuration does something other than what it says, or nothing at all.
    Error,
    /// Part of it has no effect, or an effect the author may not expect.
    Warning,
    /// What Weft made of it, for the record.
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One finding: its code, the object it is about (`VirtualService default/canary`) and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Finding {
    pub severity: Severity,
    pub code: &'static str,
    pub object: String,
    pub message: String,
}

impl Finding {
    pub fn new(
        severity: Severity,
        code: &'static str,
        object: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            severity,
            code,
            object: object.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Finding {
    /// `error [IST0109] VirtualService default/b: ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}] {}: {}",
            self.severity.as_str(),
            self.code,
            self.object,
            self.message
        )
    }
}

/// The findings that need the compiled indexes (traffic precedence is found in
/// `traffic.rs`, where it is decided).
pub(super) fn analyze(state: &State) -> Vec<Finding> {
    let mut out = Vec::new();
    unread(state, &mut out);
    ignored_fields(state, &mut out);
    destinations(state, &mut out);
    without_waypoint(state, &mut out);
    waypoint_labels(state, &mut out);
    sidecar_namespaces(state, &mut out);
    custom_policies(state, &mut out);
    out
}

/// CUSTOM hands the decision to an external authorizer, which Weft does not have: what
/// the rules match is denied instead (fail closed, `policy/authz.rs`).
fn custom_policies(state: &State, out: &mut Vec<Finding>) {
    for policy in state.model.authorization_policies.values() {
        if policy.action != AuthzAction::Custom {
            continue;
        }
        out.push(Finding::new(
            Severity::Error,
            "WEFT035",
            format!("AuthorizationPolicy {}/{}", policy.namespace, policy.name),
            format!(
                "action CUSTOM asks the external authorizer {:?}, and Weft has none: every \
                 request or connection its rules match is denied (fail closed)",
                policy.provider.as_deref().unwrap_or("")
            ),
        ));
    }
}

fn unread(state: &State, out: &mut Vec<Finding>) {
    for object in state.model.unread.values() {
        out.push(match object.meant {
            Some(meant) => Finding::new(
                Severity::Error,
                "WEFT002",
                object.label(),
                format!(
                    "apiVersion {} is no API group Weft or Istio has; did you mean {meant}? \
                     The object is not read",
                    object.api_version
                ),
            ),
            None => Finding::new(
                Severity::Warning,
                "WEFT001",
                object.label(),
                format!(
                    "Weft does not read {} objects ({}): it has no effect",
                    object.kind, object.api_version
                ),
            ),
        });
    }
}

fn ignored_fields(state: &State, out: &mut Vec<Finding>) {
    let vs = state.model.virtual_services.values().map(|v| {
        (
            format!("VirtualService {}/{}", v.namespace, v.name),
            &v.meta.ignored,
        )
    });
    let dr = state.model.destination_rules.values().map(|d| {
        (
            format!("DestinationRule {}/{}", d.namespace, d.name),
            &d.meta.ignored,
        )
    });
    for (object, ignored) in vs.chain(dr) {
        for (path, why) in ignored {
            out.push(Finding::new(
                Severity::Warning,
                "WEFT010",
                object.clone(),
                format!("{path} is accepted but not acted on: {why}"),
            ));
        }
    }
}

/// Every destination of every VirtualService names a Service, and its subset exists.
fn destinations(state: &State, out: &mut Vec<Finding>) {
    for vs in state.model.virtual_services.values() {
        let object = format!("VirtualService {}/{}", vs.namespace, vs.name);
        for (r, route) in vs.http.iter().enumerate() {
            for (d, dest) in route.destinations.iter().enumerate() {
                let at = format!("spec.http[{r}].route[{d}].destination");
                let Some(service) = state.service_for_host(&dest.host, &vs.namespace) else {
                    out.push(Finding::new(
                        Severity::Error,
                        "IST0101",
                        object.clone(),
                        format!(
                            "{at}.host {:?} names no Service: calls routed there fail (no route)",
                            dest.host
                        ),
                    ));
                    continue;
                };
                let Some(subset) = &dest.subset else { continue };
                let known = state
                    .destination_rule_for(service)
                    .is_some_and(|dr| dr.subsets.iter().any(|s| &s.name == subset));
                if !known {
                    out.push(Finding::new(
                        Severity::Error,
                        "IST0101",
                        object.clone(),
                        format!(
                            "{at}.subset {subset:?} is defined by no DestinationRule of Service \
                             {}/{}: calls routed there fail (no healthy upstream)",
                            service.namespace, service.name
                        ),
                    ));
                }
            }
        }
    }
}

fn waypoint_hint() -> String {
    format!(
        "label the Service or its namespace {}=<waypoint> or {}=<waypoint>",
        crate::config::USE_WAYPOINT_LABEL,
        crate::config::ISTIO_USE_WAYPOINT_LABEL
    )
}

/// Routes and balancing are the waypoint's: without one they do nothing.
fn without_waypoint(state: &State, out: &mut Vec<Finding>) {
    for compiled in state.compiled_services() {
        if compiled.waypoint.is_some() {
            continue;
        }
        let service = &compiled.service;
        for vs in compiled
            .virtual_service
            .iter()
            .chain(&compiled.consumer_routes)
        {
            out.push(Finding::new(
                Severity::Warning,
                "WEFT030",
                format!("VirtualService {}/{}", vs.namespace, vs.name),
                format!(
                    "routes Service {}/{}, which no waypoint serves: its traffic is carried at L4 \
                     and the routes have no effect ({})",
                    service.namespace,
                    service.name,
                    waypoint_hint()
                ),
            ));
        }
        if let Some(dr) = &compiled.destination_rule
            && (dr.traffic_policy != TrafficPolicy::default() || !dr.subsets.is_empty())
        {
            out.push(Finding::new(
                Severity::Warning,
                "WEFT030",
                format!("DestinationRule {}/{}", dr.namespace, dr.name),
                format!(
                    "applies to Service {}/{}, which no waypoint serves: its traffic is balanced \
                     per connection at L4 and the rule has no effect ({})",
                    service.namespace,
                    service.name,
                    waypoint_hint()
                ),
            ));
        }
    }
}

/// A workload policy whose rules need L7 attributes: delegated to the waypoints that serve
/// its workloads, or, where none does, left to the destination's node agent, which sees
/// connections, not requests, so that its L7 rules never match there.
pub(super) fn delegations(state: &State) -> Vec<Finding> {
    let mut out = Vec::new();
    let label = |(ns, name): &(String, String)| format!("AuthorizationPolicy {ns}/{name}");
    // Each policy's waypoints, over every namespace's pods.
    let mut to: BTreeMap<&(String, String), Vec<&WaypointRef>> = BTreeMap::new();
    for (key, waypoints) in state.shards.values().flat_map(|s| s.delegated.to.iter()) {
        to.entry(key).or_default().extend(waypoints);
    }
    for policy in state.fixed.l7_policies.all() {
        let key = (policy.namespace.clone(), policy.name.clone());
        if to.contains_key(&key) {
            continue;
        }
        let effect = match policy.action {
            AuthzAction::Allow => {
                "such an ALLOW rule matches no connection, so the policy admits nothing"
            }
            AuthzAction::Deny => "such a DENY rule matches every connection (fail closed)",
            _ => "such rules cannot be evaluated there",
        };
        out.push(Finding::new(
            Severity::Error,
            "WEFT031",
            label(&key),
            format!(
                "its rules need L7 attributes (paths, methods, hosts, request principals or \
                 headers) and no waypoint serves the workloads it selects, so their node agents \
                 enforce it at L4, where {effect} ({})",
                waypoint_hint()
            ),
        ));
    }
    for (key, mut waypoints) in to {
        waypoints.sort();
        waypoints.dedup();
        let names: Vec<String> = waypoints
            .iter()
            .map(|w| format!("{}/{}", w.namespace, w.name))
            .collect();
        out.push(Finding::new(
            Severity::Info,
            "WEFT034",
            label(key),
            format!(
                "its rules need L7 attributes: enforced per call by waypoint {}, for the \
                 Services it serves, against the caller's identity; the workloads' node agents \
                 admit that waypoint for it, and still refuse at L4 what bypasses the waypoint",
                names.join(", ")
            ),
        ));
    }
    out
}

/// Use-waypoint labels that bind nothing.
fn waypoint_labels(state: &State, out: &mut Vec<Finding>) {
    let model = &state.model;
    for ns in model.namespaces.values() {
        let label = || format!("Namespace {}", ns.name);
        check_waypoint_label(
            model,
            out,
            &label,
            &ns.name,
            &ns.labels,
            TrafficKind::Service,
        );
    }
    for svc in model.services.values().filter(|s| !is_waypoint(state, s)) {
        let label = || format!("Service {}/{}", svc.namespace, svc.name);
        check_waypoint_label(
            model,
            out,
            &label,
            &svc.namespace,
            &svc.labels,
            TrafficKind::Service,
        );
    }
    for sa in model.service_accounts.values() {
        let label = || format!("ServiceAccount {}/{}", sa.namespace, sa.name);
        check_waypoint_label(
            model,
            out,
            &label,
            &sa.namespace,
            &sa.labels,
            TrafficKind::Workload,
        );
    }
}

/// The findings about pods (their use-waypoint labels), kept with their namespace's shard.
pub(super) fn pods<'a>(model: &Model, pods: impl Iterator<Item = &'a PodInfo>) -> Vec<Finding> {
    let mut out = Vec::new();
    for pod in pods {
        let label = || format!("Pod {}/{}", pod.namespace, pod.name);
        check_waypoint_label(
            model,
            &mut out,
            &label,
            &pod.namespace,
            &pod.labels,
            TrafficKind::Workload,
        );
    }
    out
}

/// A use-waypoint label on an object of `namespace` that binds nothing.
fn check_waypoint_label(
    model: &Model,
    out: &mut Vec<Finding>,
    object: &dyn Fn() -> String,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    kind: TrafficKind,
) {
    let Some(name) = use_waypoint(labels) else {
        return;
    };
    if name == NONE || name.is_empty() {
        return;
    }
    // Formatted only for an object that has a finding: most objects have no label.
    let object = object();
    let waypoint = WaypointRef {
        namespace: namespace.to_string(),
        name: name.clone(),
    };
    if !model
        .services
        .contains_key(&(namespace.to_string(), name.clone()))
    {
        out.push(Finding::new(
            Severity::Warning,
            "WEFT033",
            object,
            format!(
                "names waypoint {namespace}/{name}, which has no Service: traffic bound to it \
                 fails until the waypoint exists"
            ),
        ));
    } else if !model.waypoint_serves(&waypoint, kind) {
        out.push(Finding::new(
            Severity::Warning,
            "WEFT032",
            object,
            format!(
                "names waypoint {namespace}/{name}, whose {} label says it does not serve {} \
                 traffic: the binding is not made",
                crate::config::WAYPOINT_FOR_LABEL,
                match kind {
                    TrafficKind::Service => "Service",
                    TrafficKind::Workload => "workload",
                }
            ),
        ));
    }
}

/// A waypoint's own Service, which a namespace label never binds.
fn is_waypoint(state: &State, service: &ServiceInfo) -> bool {
    use_waypoint(&service.labels).is_none()
        && state
            .model
            .namespaces
            .get(&service.namespace)
            .and_then(|ns| use_waypoint(&ns.labels))
            .is_some_and(|w| *w == service.name)
}

fn sidecar_namespaces(state: &State, out: &mut Vec<Finding>) {
    for ns in state.model.namespaces.values() {
        let sidecar = ns
            .labels
            .get("istio-injection")
            .is_some_and(|v| v == "enabled")
            || ns.labels.contains_key("istio.io/rev")
            || ns
                .labels
                .get("linkerd.io/inject")
                .is_some_and(|v| v == "enabled");
        if sidecar && !ns.ambient() {
            out.push(Finding::new(
                Severity::Warning,
                "WEFT040",
                format!("Namespace {}", ns.name),
                format!(
                    "is labelled for sidecar injection, which Weft does not do, and not for the \
                     ambient mesh: its pods are not in the mesh (label it {}={})",
                    crate::config::AMBIENT_LABEL,
                    crate::config::AMBIENT
                ),
            ));
        }
    }
}
