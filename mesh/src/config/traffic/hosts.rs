//! Which Service a traffic object's `host` names. Which objects then apply to a Service is
//! decided once, when the state is compiled (`crate::state`).
//!
//! Istio resolves a short name in the namespace of the object that wrote it: `reviews` in
//! a VirtualService of namespace `bookinfo` is `reviews.bookinfo.svc.cluster.local`
//! (Istio API reference, "Virtual Service", `hosts`). Weft assumes the cluster domain
//! `cluster.local`. Wildcards and external hosts name no Service of the model, and apply
//! to none.

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

/// `(namespace, name)` of the Service that a VirtualService or DestinationRule host names,
/// written in an object of `namespace`: `name` is `(namespace, name)`; `name.ns`,
/// `name.ns.svc` and `name.ns.svc.cluster.local` are `(ns, name)`. Anything else
/// (wildcards, external hosts) is `None`.
///
/// Kubernetes names are lower case, and DNS names are compared without case, so a host in
/// capitals still names its Service.
pub fn resolve_host(host: &str, namespace: &str) -> Option<(String, String)> {
    let host = host.to_ascii_lowercase();
    resolve(&host, namespace).map(|(ns, name)| (ns.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
