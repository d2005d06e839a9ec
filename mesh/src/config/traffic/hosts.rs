//! Which Service a traffic object's `host` names, and so which VirtualServices and
//! DestinationRule apply to a Service.
//!
//! Istio resolves a short name in the namespace of the object that wrote it: `reviews` in
//! a VirtualService of namespace `bookinfo` is `reviews.bookinfo.svc.cluster.local`
//! (Istio API reference, "Virtual Service", `hosts`). Weft assumes the cluster domain
//! `cluster.local`. Wildcards and external hosts name no Service of the model, and apply
//! to none.

use super::{DestinationRuleInfo, VirtualServiceInfo};
use crate::config::{Model, ServiceInfo};

/// The cluster domain that fully qualified Service names end with.
const CLUSTER_DOMAIN: &str = "cluster.local";

/// `(namespace, name)` of the Service that `host` names, written in an object of
/// `namespace`; `None` for anything that cannot be a Service's name.
fn resolve<'a>(host: &'a str, namespace: &'a str) -> Option<(&'a str, &'a str)> {
    if host.is_empty() || host.contains('*') {
        return None;
    }
    let mut parts = host.splitn(3, '.');
    let name = parts.next()?;
    let Some(service_namespace) = parts.next() else {
        return Some((namespace, name));
    };
    match parts.next() {
        None => {}
        Some("svc") => {}
        Some(rest) if rest.strip_prefix("svc.") == Some(CLUSTER_DOMAIN) => {}
        Some(_) => return None,
    }
    (!name.is_empty() && !service_namespace.is_empty()).then_some((service_namespace, name))
}

impl Model {
    /// The Service a VirtualService or DestinationRule host names, resolved from
    /// `namespace`, the object's own: `name` is `(namespace, name)`; `name.ns`,
    /// `name.ns.svc` and `name.ns.svc.cluster.local` are `(ns, name)`. Anything else
    /// (wildcards, external hosts) is `None`.
    ///
    /// Kubernetes names are lower case, and DNS names are compared without case, so a
    /// host in capitals still names its Service.
    pub fn service_for_host(&self, host: &str, namespace: &str) -> Option<&ServiceInfo> {
        let host = host.to_ascii_lowercase();
        let (service_namespace, name) = resolve(&host, namespace)?;
        self.services
            .get(&(service_namespace.to_string(), name.to_string()))
    }

    /// The VirtualServices that apply to a Service: from any namespace, those with a host
    /// that resolves (in the VirtualService's own namespace) to it. In (namespace, name)
    /// order, so that every process sees them in the same order.
    pub fn virtual_services_for<'a>(
        &'a self,
        service: &'a ServiceInfo,
    ) -> impl Iterator<Item = &'a VirtualServiceInfo> + 'a {
        self.virtual_services.values().filter(move |vs| {
            vs.hosts
                .iter()
                .any(|host| names(service, host, &vs.namespace))
        })
    }

    /// The DestinationRule for a Service: one whose host resolves to it, preferring one in
    /// the Service's own namespace (as Istio prefers the Service's namespace to others),
    /// then the first by (namespace, name).
    pub fn destination_rule_for(&self, service: &ServiceInfo) -> Option<&DestinationRuleInfo> {
        let mut matching = self
            .destination_rules
            .values()
            .filter(|dr| names(service, &dr.host, &dr.namespace));
        let first = matching.next()?;
        if first.namespace == service.namespace {
            return Some(first);
        }
        matching
            .find(|dr| dr.namespace == service.namespace)
            .or(Some(first))
    }
}

/// Whether `host`, written in `namespace`, names `service`.
fn names(service: &ServiceInfo, host: &str, namespace: &str) -> bool {
    let host = host.to_ascii_lowercase();
    resolve(&host, namespace) == Some((service.namespace.as_str(), service.name.as_str()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{Object, TrafficPolicy};

    #[test]
    fn hosts_resolve_like_istio_short_names() {
        for (host, want) in [
            ("reviews", Some(("bookinfo", "reviews"))),
            ("reviews.prod", Some(("prod", "reviews"))),
            ("reviews.prod.svc", Some(("prod", "reviews"))),
            ("reviews.prod.svc.cluster.local", Some(("prod", "reviews"))),
            ("reviews.prod.svc.example.org", None),
            ("reviews.prod.other", None),
            ("reviews.prod.svc.cluster.local.extra", None),
            ("*.prod.svc.cluster.local", None),
            ("*", None),
            ("api.example.com", None),
            ("", None),
            (".prod", None),
            ("reviews.", None),
        ] {
            assert_eq!(resolve(host, "bookinfo"), want, "{host:?}");
        }
    }

    fn service(ns: &str, name: &str) -> ServiceInfo {
        ServiceInfo {
            namespace: ns.into(),
            name: name.into(),
            cluster_ip: None,
            selector: BTreeMap::new(),
            ports: vec![],
            labels: BTreeMap::new(),
        }
    }

    fn vs(ns: &str, name: &str, hosts: &[&str]) -> Object {
        Object::VirtualService(VirtualServiceInfo {
            namespace: ns.into(),
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            http: vec![],
        })
    }

    fn dr(ns: &str, name: &str, host: &str) -> Object {
        Object::DestinationRule(DestinationRuleInfo {
            namespace: ns.into(),
            name: name.into(),
            host: host.into(),
            traffic_policy: TrafficPolicy::default(),
            subsets: vec![],
            retry_budget: None,
        })
    }

    #[test]
    fn service_for_host_looks_the_service_up() {
        let mut m = Model::default();
        m.insert(Object::Service(service("prod", "reviews")));
        let found = |host, ns| m.service_for_host(host, ns).map(|s| s.name.as_str());
        assert_eq!(found("reviews", "prod"), Some("reviews"));
        assert_eq!(
            found("Reviews.Prod.svc.cluster.local", "other"),
            Some("reviews")
        );
        assert_eq!(found("reviews", "other"), None);
        assert_eq!(found("ratings.prod", "prod"), None);
    }

    #[test]
    fn virtual_services_from_any_namespace_in_order() {
        let mut m = Model::default();
        let reviews = service("prod", "reviews");
        m.insert(vs("prod", "b-short", &["reviews"]));
        m.insert(vs("prod", "a-other", &["ratings"]));
        m.insert(vs(
            "client",
            "fqdn",
            &["x.example.com", "reviews.prod.svc.cluster.local"],
        ));
        m.insert(vs("client", "short-elsewhere", &["reviews"]));
        m.insert(vs("prod", "wildcard", &["*"]));
        let names: Vec<_> = m
            .virtual_services_for(&reviews)
            .map(|v| (v.namespace.as_str(), v.name.as_str()))
            .collect();
        assert_eq!(names, [("client", "fqdn"), ("prod", "b-short")]);
    }

    #[test]
    fn destination_rule_prefers_the_services_namespace() {
        let mut m = Model::default();
        let reviews = service("prod", "reviews");
        assert!(m.destination_rule_for(&reviews).is_none());
        m.insert(dr("b-client", "z", "reviews.prod"));
        m.insert(dr("a-client", "y", "reviews.prod.svc.cluster.local"));
        m.insert(dr("prod", "other", "ratings"));
        let pick = |m: &Model| {
            m.destination_rule_for(&reviews)
                .map(|d| (d.namespace.clone(), d.name.clone()))
        };
        assert_eq!(pick(&m), Some(("a-client".into(), "y".into())));
        m.insert(dr("prod", "z-own", "reviews"));
        m.insert(dr("prod", "y-own", "reviews.prod.svc"));
        assert_eq!(pick(&m), Some(("prod".into(), "y-own".into())));
    }
}
