//! Which traffic objects apply to a Service, with Istio's precedence between objects of one
//! host, settled once per compile.
//!
//! - **VirtualServices**: of those whose hosts name a Service, the oldest wins
//!   (`metadata.creationTimestamp`, then namespace/name); the others are reported with
//!   Istio's analyzer code IST0109. Istio does the same for sidecars and waypoints: it
//!   keeps one VirtualService per host (Istio docs, "Traffic Management Best Practices":
//!   "Split large virtual services and destination rules into multiple resources").
//! - **DestinationRules**: those of one host merge, as that same page describes: subsets are
//!   united; the top-level `trafficPolicy` is the oldest rule's; a subset name defined twice
//!   is a conflict, and the older definition wins. Rules in the Service's own namespace are
//!   used; when there are none, those of the namespace of the oldest rule.
//!
//! A rule without a timestamp (a manifest that was never applied to an API server) counts
//! as newer than any with one; among those, namespace/name decides.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::findings::{Finding, Severity};
use crate::config::{DestinationRuleInfo, Model, TrafficPolicy, VirtualServiceInfo, resolve_host};

type ServiceKey = (String, String);
/// The VirtualServices and the merged DestinationRule of one Service.
#[derive(Debug, Clone, Default)]
pub(super) struct ServiceTraffic {
    /// The producer route: the oldest VirtualService of the Service's own namespace.
    pub producer: Option<Arc<VirtualServiceInfo>>,
    /// Consumer routes: per other namespace, its oldest VirtualService for the Service,
    /// which routes that namespace's callers only. In namespace order.
    pub consumers: Vec<Arc<VirtualServiceInfo>>,
    pub destination_rule: Option<Arc<DestinationRuleInfo>>,
}

/// The traffic objects of each Service, and what was found on the way.
#[derive(Default)]
pub(super) struct Compiled {
    pub for_service: HashMap<ServiceKey, ServiceTraffic>,
    pub findings: Vec<Finding>,
}

/// Oldest first: creation time (none counts as newest), then namespace, then name.
fn age(created: Option<i64>, namespace: &str, name: &str) -> (i64, String, String) {
    (
        created.unwrap_or(i64::MAX),
        namespace.to_string(),
        name.to_string(),
    )
}

pub(super) fn compile(model: &Model) -> Compiled {
    let mut out = Compiled::default();

    let mut routes: BTreeMap<ServiceKey, Vec<&VirtualServiceInfo>> = BTreeMap::new();
    for vs in model.virtual_services.values() {
        for host in &vs.hosts {
            match resolve_host(host, &vs.namespace) {
                Some(key) if model.services.contains_key(&key) => {
                    let list = routes.entry(key).or_default();
                    if !list.iter().any(|v| std::ptr::eq(*v, vs)) {
                        list.push(vs);
                    }
                }
                _ => out.findings.push(Finding::new(
                    Severity::Warning,
                    "WEFT011",
                    format!("VirtualService {}/{}", vs.namespace, vs.name),
                    format!(
                        "host {host:?} names no Service Weft knows (only {{name}}, \
                         {{name}}.{{namespace}}[.svc[.cluster.local]] do): its routes apply to no traffic"
                    ),
                )),
            }
        }
    }
    // Istio ("Traffic Management Best Practices", "Cross-namespace configuration
    // sharing"): the Service's own namespace owns the route for all callers (the producer
    // route); a VirtualService in another namespace routes that namespace's callers only
    // (a consumer route). Within one namespace, the oldest wins.
    for (key, list) in routes {
        let mut by_namespace: BTreeMap<&str, Vec<&VirtualServiceInfo>> = BTreeMap::new();
        for vs in list {
            by_namespace
                .entry(vs.namespace.as_str())
                .or_default()
                .push(vs);
        }
        let traffic = out.for_service.entry(key.clone()).or_default();
        for (namespace, mut list) in by_namespace {
            list.sort_by_key(|vs| age(vs.meta.created, &vs.namespace, &vs.name));
            let winner = list[0];
            for loser in &list[1..] {
                out.findings.push(Finding::new(
                    Severity::Error,
                    "IST0109",
                    format!("VirtualService {}/{}", loser.namespace, loser.name),
                    format!(
                        "Service {}/{} is also routed by the older VirtualService {}/{}, which \
                         wins: this one's routes for it are not used",
                        key.0, key.1, winner.namespace, winner.name
                    ),
                ));
            }
            if namespace == key.0 {
                traffic.producer = Some(Arc::new(winner.clone()));
            } else {
                out.findings.push(Finding::new(
                    Severity::Info,
                    "WEFT013",
                    format!("VirtualService {}/{}", winner.namespace, winner.name),
                    format!(
                        "routes Service {}/{} of another namespace: a consumer route, for callers \
                         in namespace {namespace} only; the Service's own namespace routes the \
                         others",
                        key.0, key.1
                    ),
                ));
                traffic.consumers.push(Arc::new(winner.clone()));
            }
        }
    }

    let mut rules: BTreeMap<ServiceKey, Vec<&DestinationRuleInfo>> = BTreeMap::new();
    for dr in model.destination_rules.values() {
        match resolve_host(&dr.host, &dr.namespace) {
            Some(key) if model.services.contains_key(&key) => {
                rules.entry(key).or_default().push(dr)
            }
            _ => out.findings.push(Finding::new(
                Severity::Warning,
                "WEFT012",
                format!("DestinationRule {}/{}", dr.namespace, dr.name),
                format!(
                    "host {:?} names no Service Weft knows: the rule applies to no traffic",
                    dr.host
                ),
            )),
        }
    }
    for (key, mut list) in rules {
        list.sort_by_key(|dr| age(dr.meta.created, &dr.namespace, &dr.name));
        let namespace = if list.iter().any(|dr| dr.namespace == key.0) {
            key.0.clone()
        } else {
            list[0].namespace.clone()
        };
        let (used, unused): (Vec<_>, Vec<_>) =
            list.into_iter().partition(|dr| dr.namespace == namespace);
        for dr in unused {
            out.findings.push(Finding::new(
                Severity::Warning,
                "WEFT023",
                format!("DestinationRule {}/{}", dr.namespace, dr.name),
                format!(
                    "not used for Service {}/{}: the DestinationRules of namespace {namespace} apply to it",
                    key.0, key.1
                ),
            ));
        }
        let merged = merge(&key, &used, &mut out.findings);
        out.for_service.entry(key).or_default().destination_rule = Some(Arc::new(merged));
    }
    out
}

/// Merges the DestinationRules of one host, oldest first.
fn merge(
    service: &ServiceKey,
    rules: &[&DestinationRuleInfo],
    findings: &mut Vec<Finding>,
) -> DestinationRuleInfo {
    let first = rules[0];
    let mut merged = first.clone();
    let mut defined_by: HashMap<String, String> = first
        .subsets
        .iter()
        .map(|s| (s.name.clone(), first.name.clone()))
        .collect();
    for dr in &rules[1..] {
        let object = format!("DestinationRule {}/{}", dr.namespace, dr.name);
        if dr.traffic_policy != TrafficPolicy::default() {
            findings.push(Finding::new(
                Severity::Warning,
                "WEFT022",
                object.clone(),
                format!(
                    "its top-level trafficPolicy is not used: Service {}/{} takes it from its oldest \
                     DestinationRule, {}/{} (merged as Istio merges the rules of one host)",
                    service.0, service.1, first.namespace, first.name
                ),
            ));
        }
        if merged.retry_budget.is_none() {
            merged.retry_budget = dr.retry_budget.clone();
        }
        for subset in &dr.subsets {
            if let Some(older) = defined_by.get(&subset.name) {
                findings.push(Finding::new(
                    Severity::Warning,
                    "WEFT021",
                    object.clone(),
                    format!(
                        "subset {:?} is already defined by the older DestinationRule {}/{older}, \
                         whose definition is used",
                        subset.name, dr.namespace
                    ),
                ));
                continue;
            }
            defined_by.insert(subset.name.clone(), dr.name.clone());
            merged.subsets.push(subset.clone());
        }
    }
    if rules.len() > 1 {
        let names: Vec<String> = rules.iter().map(|d| d.name.clone()).collect();
        findings.push(Finding::new(
            Severity::Info,
            "WEFT020",
            format!("Service {}/{}", service.0, service.1),
            format!(
                "{} DestinationRules merged ({}): top-level trafficPolicy from {}, subsets [{}]",
                rules.len(),
                names.join(", "),
                first.name,
                merged
                    .subsets
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    merged
}
