//! The fields of a traffic object that Weft accepts and does not act on, found in the raw
//! manifest so that `analyze` can say so (finding `WEFT010`).
//!
//! The wire types accept these fields so that Istio manifests load unchanged (`wire.rs`
//! documents why each is harmless to drop); this list is the other half of that promise:
//! a user who wrote one is told it has no effect here. Fields that only label things for
//! Envoy's statistics (`match[].name`, `statPrefix`) change nothing and are not listed.

use serde_yaml::Value;

/// A field path, with `[]` for "each element of a list", and why Weft does not act on it.
type Ignored = (&'static str, &'static str);

const VIRTUAL_SERVICE: &[Ignored] = &[(
    "spec.http[].retries.retryRemoteLocalities",
    "Weft has no localities",
)];

/// Under each `trafficPolicy` of a DestinationRule (top level and per subset).
const TRAFFIC_POLICY: &[Ignored] = &[
    (
        "loadBalancer.localityLbSetting",
        "Weft has no localities: traffic is not kept in or failed over between zones",
    ),
    (
        "loadBalancer.consistentHash.ringHash",
        "Weft hashes by rendezvous; ring parameters change nothing",
    ),
    (
        "loadBalancer.consistentHash.maglev",
        "Weft hashes by rendezvous; ring parameters change nothing",
    ),
    (
        "loadBalancer.consistentHash.minimumRingSize",
        "Weft hashes by rendezvous; ring parameters change nothing",
    ),
    (
        "connectionPool.tcp.tcpKeepalive",
        "keep-alive probes are not configured by Weft",
    ),
    (
        "connectionPool.http.http1MaxPendingRequests",
        "the waypoint speaks HTTP/2 upstream and queues no HTTP/1 requests",
    ),
    (
        "connectionPool.http.h2UpgradePolicy",
        "the waypoint always speaks HTTP/2 to gRPC and HTTP/2 ports",
    ),
    (
        "connectionPool.http.useClientProtocol",
        "the waypoint always speaks HTTP/2 to gRPC and HTTP/2 ports",
    ),
    (
        "outlierDetection.consecutiveLocalOriginFailures",
        "Weft counts every failure alike",
    ),
    (
        "outlierDetection.splitExternalLocalOriginErrors",
        "Weft counts every failure alike",
    ),
    (
        "outlierDetection.minHealthPercent",
        "ejection is bounded by maxEjectionPercent only",
    ),
];

/// The ignored fields present in a VirtualService manifest, with concrete indices.
pub(super) fn virtual_service(value: &Value) -> Vec<(String, &'static str)> {
    let mut found = find_all(value, VIRTUAL_SERVICE, "");
    // `gateways: [mesh]` is what Weft does anyway; any other gateway is not served.
    for path in present(value, "spec.gateways") {
        let only_mesh = value
            .get("spec")
            .and_then(|s| s.get("gateways"))
            .and_then(Value::as_sequence)
            .is_some_and(|g| g.iter().all(|g| g.as_str() == Some("mesh")));
        if !only_mesh {
            found.push((
                path,
                "Weft serves mesh traffic only: the routes also apply to traffic inside the mesh, and no gateway serves them",
            ));
        }
    }
    found
}

/// The ignored fields present in a DestinationRule manifest, with concrete indices.
pub(super) fn destination_rule(value: &Value) -> Vec<(String, &'static str)> {
    let mut found = find_all(
        value,
        &[(
            "spec.exportTo",
            "Weft has no per-namespace visibility of configuration: the object applies everywhere",
        )],
        "",
    );
    found.extend(find_all(value, TRAFFIC_POLICY, "spec.trafficPolicy."));
    found.extend(find_all(
        value,
        TRAFFIC_POLICY,
        "spec.subsets[].trafficPolicy.",
    ));
    // `localityLbSetting: {enabled: false}` asks for what Weft does.
    found.retain(|(path, _)| {
        !path.ends_with("localityLbSetting")
            || lookup(value, path)
                .and_then(|v| v.get("enabled"))
                .and_then(Value::as_bool)
                != Some(false)
    });
    found
}

fn find_all(value: &Value, table: &[Ignored], prefix: &str) -> Vec<(String, &'static str)> {
    table
        .iter()
        .flat_map(|(path, why)| {
            present(value, &format!("{prefix}{path}"))
                .into_iter()
                .map(move |p| (p, *why))
        })
        .collect()
}

/// The concrete paths (`spec.subsets[1].trafficPolicy...`) at which `pattern` is present.
fn present(value: &Value, pattern: &str) -> Vec<String> {
    let mut at = vec![(value, String::new())];
    for segment in pattern.split('.') {
        let (key, each) = match segment.strip_suffix("[]") {
            Some(key) => (key, true),
            None => (segment, false),
        };
        let mut next = Vec::new();
        for (node, path) in at {
            let Some(child) = node.get(key).filter(|v| !v.is_null()) else {
                continue;
            };
            let path = if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            };
            if each {
                for (i, item) in child.as_sequence().into_iter().flatten().enumerate() {
                    next.push((item, format!("{path}[{i}]")));
                }
            } else {
                next.push((child, path));
            }
        }
        at = next;
    }
    at.into_iter().map(|(_, path)| path).collect()
}

/// The value at a concrete path that [`present`] returned.
fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(value, |node, segment| match segment.split_once('[') {
            Some((key, index)) => node
                .get(key)?
                .get(index.trim_end_matches(']').parse::<usize>().ok()?),
            None => node.get(segment),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn finds_ignored_fields_with_their_indices() {
        let dr = yaml(
            "spec:\n  host: a\n  trafficPolicy:\n    loadBalancer:\n      localityLbSetting: {enabled: true}\n    connectionPool:\n      http: {h2UpgradePolicy: UPGRADE}\n  subsets:\n  - name: v1\n  - name: v2\n    trafficPolicy:\n      loadBalancer:\n        localityLbSetting: {enabled: false}\n      outlierDetection: {minHealthPercent: 50}\n",
        );
        let paths: Vec<String> = destination_rule(&dr).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "spec.trafficPolicy.loadBalancer.localityLbSetting",
                "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
                "spec.subsets[1].trafficPolicy.outlierDetection.minHealthPercent",
            ]
        );
    }

    #[test]
    fn gateways_other_than_mesh_are_reported() {
        let only_mesh = yaml("spec:\n  gateways: [mesh]\n  exportTo: ['.']\n");
        let paths: Vec<String> = virtual_service(&only_mesh)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert!(paths.is_empty(), "exportTo is acted on: {paths:?}");
        let gateway = yaml("spec:\n  gateways: [istio-system/gw, mesh]\n");
        assert_eq!(virtual_service(&gateway).len(), 1);
        assert!(virtual_service(&yaml("spec: {hosts: [a]}")).is_empty());
    }
}
