//! Routing: which cluster a call goes to, with which timeout and retry policy, from the
//! VirtualServices that name the called Service (Istio's `networking.istio.io/v1` HTTPRoute
//! semantics: the first route whose matches accept the request wins; a route splits its
//! calls over its destinations by weight). A Service without a VirtualService routes to
//! itself, with Istio's default retries.

use std::time::Duration;
use weft_mesh::state::State;

use http::HeaderMap;
use rand::Rng;
use weft_mesh::config::{HttpMatch, HttpRoute, RetryPolicy, ServiceInfo};

use crate::cluster::ClusterKey;

/// Where one call goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// `namespace/name` of the VirtualService and the route's name or index, for logs.
    pub route: String,
    pub cluster: ClusterKey,
    /// The route's timeout; `None` for none (unset, or `0s`).
    pub timeout: Option<Duration>,
    pub retries: RetryPolicy,
}

/// Why no route was found (Envoy's response flag `NR`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct NoRoute(pub String);

/// Routes a call to `service` on `port` with `path` and `headers`, from a caller in
/// namespace `caller` (which decides whose VirtualService applies: [`State::route_for`]).
pub fn route<'a>(
    model: &'a State,
    service: &'a ServiceInfo,
    caller: &str,
    port: u16,
    path: &str,
    headers: &HeaderMap,
) -> Result<(Decision, &'a ServiceInfo), NoRoute> {
    if let Some(vs) = model.route_for(service, caller) {
        for (index, route) in vs.http.iter().enumerate() {
            if !route.matches.is_empty()
                && !route
                    .matches
                    .iter()
                    .any(|m| matches(m, port, path, headers))
            {
                continue;
            }
            let name = format!(
                "{}/{}#{}",
                vs.namespace,
                vs.name,
                route.name.clone().unwrap_or_else(|| index.to_string())
            );
            return destination(model, &vs.namespace, route, service, port)
                .map(|(cluster, dest)| {
                    (
                        Decision {
                            route: name.clone(),
                            cluster,
                            timeout: route.timeout.filter(|t| !t.is_zero()),
                            retries: route
                                .retries
                                .clone()
                                .unwrap_or_else(RetryPolicy::istio_default),
                        },
                        dest,
                    )
                })
                .map_err(|e| NoRoute(format!("{name}: {e}")));
        }
        if !vs.http.is_empty() {
            return Err(NoRoute(format!(
                "no route of VirtualService {}/{} matches {path}",
                vs.namespace, vs.name
            )));
        }
    }
    Ok((
        Decision {
            route: "default".into(),
            cluster: ClusterKey {
                namespace: service.namespace.clone(),
                service: service.name.clone(),
                subset: None,
                port,
            },
            timeout: None,
            retries: RetryPolicy::istio_default(),
        },
        service,
    ))
}

fn matches(m: &HttpMatch, port: u16, path: &str, headers: &HeaderMap) -> bool {
    m.port.is_none_or(|p| p == port)
        && m.uri.as_ref().is_none_or(|u| u.matches(path))
        && m.headers.iter().all(|(name, want)| {
            headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| want.matches(v))
        })
}

/// Picks one of the route's destinations by weight, and resolves it to a cluster.
fn destination<'a>(
    model: &'a State,
    namespace: &str,
    route: &HttpRoute,
    called: &ServiceInfo,
    port: u16,
) -> Result<(ClusterKey, &'a ServiceInfo), String> {
    let total: u64 = route.destinations.iter().map(|d| u64::from(d.weight)).sum();
    let chosen = if total == 0 || route.destinations.len() == 1 {
        route.destinations.first()
    } else {
        let mut ticket = rand::rng().random_range(0..total);
        route.destinations.iter().find(|d| {
            if ticket < u64::from(d.weight) {
                true
            } else {
                ticket -= u64::from(d.weight);
                false
            }
        })
    }
    .ok_or("the route has no destination")?;
    let service = model
        .service_for_host(&chosen.host, namespace)
        .ok_or_else(|| format!("destination host {} is no known Service", chosen.host))?;
    let same = service.namespace == called.namespace && service.name == called.name;
    let port = match chosen.port {
        Some(p) => p,
        None if same || service.ports.iter().any(|p| p.port == port) => port,
        None if service.ports.len() == 1 => service.ports[0].port,
        None => return Err(format!("destination {} needs a port", chosen.host)),
    };
    Ok((
        ClusterKey {
            namespace: service.namespace.clone(),
            service: service.name.clone(),
            subset: chosen.subset.clone(),
            port,
        },
        service,
    ))
}
