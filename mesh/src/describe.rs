//! `weft-agent describe pod|service NAME -n NS`: what the mesh makes of one workload, in
//! the spirit of `istioctl x describe`: whether it is enrolled, its identity, the waypoint
//! its traffic goes through, the policies that apply to it, and each port's detected
//! protocol. It reads the same model the agent and the waypoint act on, so what it says is
//! what they do.

use std::fmt::Write;

use crate::config::{AppProtocol, PodInfo, ServiceInfo, ServicePortInfo};
use crate::policy::{
    RootNamespace, WaypointTarget, Workload, applicable_authorization_policies,
    attaches_to_waypoint, effective_peer_authentication,
};
use crate::state::State;

fn protocol(port: &ServicePortInfo) -> &'static str {
    match port.protocol {
        AppProtocol::Grpc => "gRPC (L7 at a waypoint: each call balanced)",
        AppProtocol::Http2 => "HTTP/2 (L7 at a waypoint: each stream balanced)",
        AppProtocol::Tcp => "TCP (L4 only)",
    }
}

fn ports(out: &mut String, service: &ServiceInfo) {
    for port in &service.ports {
        let _ = writeln!(
            out,
            "    port {} ({}): {}",
            port.port,
            port.name.as_deref().unwrap_or("unnamed"),
            protocol(port)
        );
    }
}

/// Describes a pod, or says why there is nothing to describe.
pub fn describe_pod(
    model: &State,
    namespace: &str,
    name: &str,
    trust_domain: &str,
    root: &RootNamespace,
) -> Result<String, String> {
    let pod = model
        .pods
        .get(&(namespace.to_string(), name.to_string()))
        .ok_or_else(|| format!("no pod {namespace}/{name}"))?;
    let mut out = String::new();
    let _ = writeln!(out, "Pod: {namespace}/{name}");
    let _ = writeln!(
        out,
        "  Node: {}, IP: {}",
        pod.node_name.as_deref().unwrap_or("(not scheduled)"),
        pod.ip.map_or("(none)".to_string(), |ip| ip.to_string())
    );
    let _ = writeln!(out, "  Enrolled: {}", enrolment(model, pod));
    let _ = writeln!(
        out,
        "  Identity: spiffe://{trust_domain}/ns/{namespace}/sa/{}",
        pod.service_account
    );
    let _ = writeln!(
        out,
        "  Waypoint for traffic to the pod's own address: {}",
        model
            .workload_waypoint(pod)
            .map_or("none (L4 only)".to_string(), |w| format!(
                "{}/{}",
                w.namespace, w.name
            ))
    );
    let workload = Workload::from(pod);
    let mtls = effective_peer_authentication(model, root, &workload, 0);
    let _ = writeln!(
        out,
        "  PeerAuthentication: {:?}{}",
        mtls.mode,
        mtls.decided_by
            .map_or(" (no policy: PERMISSIVE)".to_string(), |p| format!(
                " (by {p})"
            ))
    );
    let modes = crate::policy::inbound_modes(model, root, &workload);
    if !modes.ports.is_empty() {
        let ports: Vec<String> = modes
            .ports
            .iter()
            .map(|(port, mode)| format!("{port}: {mode:?}"))
            .collect();
        let _ = writeln!(out, "  Port-level mTLS: {}", ports.join(", "));
    }
    let policies: Vec<String> = applicable_authorization_policies(model, root, &workload)
        .map(|p| format!("{}/{} ({})", p.namespace, p.name, p.action.as_str()))
        .collect();
    let _ = writeln!(
        out,
        "  AuthorizationPolicies enforced by its node agent (L4): {}",
        if policies.is_empty() {
            "none (everything allowed)".to_string()
        } else {
            policies.join(", ")
        }
    );
    let services: Vec<&ServiceInfo> = model.services_selecting(pod).collect();
    if services.is_empty() {
        let _ = writeln!(out, "  Services: none select this pod");
    }
    for service in services {
        let _ = writeln!(out, "  Service {}/{}:", service.namespace, service.name);
        ports(&mut out, service);
    }
    Ok(out)
}

fn enrolment(model: &State, pod: &PodInfo) -> String {
    if pod.host_network {
        return "no: the pod uses the host's network".into();
    }
    if pod.opted_out() {
        return "no: the pod opted out (dataplane-mode: none)".into();
    }
    if !model.in_mesh(pod) {
        return format!(
            "no: namespace {} is not labelled weft.dev/dataplane-mode=ambient",
            pod.namespace
        );
    }
    if pod.uid.is_empty() {
        return "no: the pod has no uid yet".into();
    }
    "yes (its node agent captures its traffic)".into()
}

/// Describes a Service, or says why there is nothing to describe.
pub fn describe_service(
    model: &State,
    namespace: &str,
    name: &str,
    root: &RootNamespace,
) -> Result<String, String> {
    let service = model
        .services
        .get(&(namespace.to_string(), name.to_string()))
        .ok_or_else(|| format!("no service {namespace}/{name}"))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Service: {namespace}/{name} ({}.{namespace}.svc.cluster.local, {})",
        name,
        service
            .cluster_ip
            .map_or("no cluster IP".to_string(), |ip| ip.to_string())
    );
    ports(&mut out, service);
    let endpoints: Vec<String> = model
        .endpoints(service)
        .map(|p| {
            format!(
                "{} ({}{})",
                p.name,
                p.ip.map_or("no IP".to_string(), |ip| ip.to_string()),
                if model.in_mesh(p) {
                    ", in the mesh"
                } else {
                    ", outside the mesh"
                }
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "  Endpoints: {}",
        if endpoints.is_empty() {
            "none".to_string()
        } else {
            endpoints.join(", ")
        }
    );
    match model.service_waypoint(service) {
        Some(w) => {
            let _ = writeln!(out, "  Waypoint: {}/{}", w.namespace, w.name);
            let no_labels = Default::default();
            let labels = model
                .waypoint_pods(&w)
                .first()
                .map_or(&no_labels, |p| &p.labels);
            let at = WaypointTarget {
                waypoint: Workload::new(&w.namespace, labels),
                name: &w.name,
                service: Some((namespace, name)),
                root,
            };
            let policies: Vec<String> = model
                .authorization_policies
                .values()
                .filter(|p| attaches_to_waypoint(p, &at))
                .map(|p| format!("{}/{} ({})", p.namespace, p.name, p.action.as_str()))
                .chain(model.delegated_policies(namespace, name).iter().map(|p| {
                    format!(
                        "{}/{} ({}, delegated: its selector picks this Service's pods)",
                        p.namespace,
                        p.name,
                        p.action.as_str()
                    )
                }))
                .collect();
            let _ = writeln!(
                out,
                "  AuthorizationPolicies at the waypoint (L7): {}",
                if policies.is_empty() {
                    "none (everything allowed)".to_string()
                } else {
                    policies.join(", ")
                }
            );
            let compiled = model.service(&service.namespace, &service.name);
            let routes: Vec<String> = compiled
                .and_then(|c| c.virtual_service.as_ref())
                .map(|vs| format!("{}/{}", vs.namespace, vs.name))
                .into_iter()
                .chain(compiled.into_iter().flat_map(|c| {
                    c.consumer_routes.iter().map(|vs| {
                        format!(
                            "{}/{} (for callers in {} only)",
                            vs.namespace, vs.name, vs.namespace
                        )
                    })
                }))
                .collect();
            let rule = model
                .destination_rule_for(service)
                .map_or("none".to_string(), merged_rule);
            let limits: Vec<String> = model
                .local_rate_limits
                .values()
                .filter(|l| {
                    l.target_refs.iter().any(|r| {
                        r.attaches(
                            &l.namespace,
                            (&w.namespace, &w.name),
                            Some((namespace, name)),
                        )
                    })
                })
                .map(|l| format!("{}/{}", l.namespace, l.name))
                .collect();
            let _ = writeln!(
                out,
                "  VirtualServices: {}\n  DestinationRule: {rule}\n  LocalRateLimits: {}",
                if routes.is_empty() {
                    "none".into()
                } else {
                    routes.join(", ")
                },
                if limits.is_empty() {
                    "none".into()
                } else {
                    limits.join(", ")
                }
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  Waypoint: none: L4 only (label the Service or its namespace weft.dev/use-waypoint=<name> for L7)"
            );
        }
    }
    findings(&mut out, model, service);
    Ok(out)
}

/// The merged DestinationRule, as the waypoint applies it.
fn merged_rule(dr: &crate::config::DestinationRuleInfo) -> String {
    let policy = &dr.traffic_policy;
    let subsets: Vec<&str> = dr.subsets.iter().map(|s| s.name.as_str()).collect();
    format!(
        "{}/{} (merged: load balancer {}, subsets [{}], outlier detection {}, connection pool {})",
        dr.namespace,
        dr.name,
        policy
            .load_balancer
            .as_ref()
            .map_or("default".to_string(), |lb| format!("{lb:?}")),
        subsets.join(", "),
        if policy.outlier_detection.is_some() {
            "on"
        } else {
            "off"
        },
        if policy.connection_pool == Default::default() {
            "default"
        } else {
            "set"
        },
    )
}

/// The findings about the Service and the objects that apply to it.
fn findings(out: &mut String, model: &State, service: &ServiceInfo) {
    let mut objects = vec![format!("Service {}/{}", service.namespace, service.name)];
    if let Some(compiled) = model.service(&service.namespace, &service.name) {
        for vs in compiled
            .virtual_service
            .iter()
            .chain(&compiled.consumer_routes)
        {
            objects.push(format!("VirtualService {}/{}", vs.namespace, vs.name));
        }
    }
    for dr in model.destination_rules.values() {
        if crate::config::resolve_host(&dr.host, &dr.namespace)
            == Some((service.namespace.clone(), service.name.clone()))
        {
            objects.push(format!("DestinationRule {}/{}", dr.namespace, dr.name));
        }
    }
    let found: Vec<String> = objects
        .iter()
        .flat_map(|o| model.findings_for(o))
        .map(|f| format!("    {f}"))
        .collect();
    if !found.is_empty() {
        let _ = writeln!(out, "  Findings:\n{}", found.join("\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.dev/dataplane-mode: ambient, weft.dev/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Pod
metadata: {name: users-1, namespace: shop, uid: u1, labels: {app: users}}
spec: {nodeName: n1, serviceAccountName: users}
status: {podIP: 10.200.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: shop, uid: u2, labels: {weft.dev/dataplane-mode: none}}
spec: {nodeName: n1}
status: {podIP: 10.200.1.6}
---
apiVersion: v1
kind: Service
metadata: {name: users, namespace: shop}
spec:
  clusterIP: 10.96.0.5
  selector: {app: users}
  ports: [{name: grpc-api, port: 50051}, {name: metrics, port: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: shop}
spec: {clusterIP: 10.96.0.6, selector: {weft.dev/waypoint: waypoint}, ports: [{name: hbone, port: 15008}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: users-metrics, namespace: shop}
spec:
  selector: {matchLabels: {app: users}}
  mtls: {mode: STRICT}
  portLevelMtls: {9090: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: users-authz, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: users}]
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/api-gateway"]}}]}]
"#;

    fn model() -> State {
        let mut model = crate::config::Model::default();
        for document in serde_yaml::Deserializer::from_str(CLUSTER) {
            let value: serde_yaml::Value = serde::Deserialize::deserialize(document).unwrap();
            if let Some(object) = crate::config::parse_value(value).unwrap() {
                model.insert(object);
            }
        }
        State::compile(model)
    }

    #[test]
    fn a_pod_enrolment_identity_waypoint_policies_and_ports() {
        let root = RootNamespace::default();
        let text = describe_pod(&model(), "shop", "users-1", "cluster.local", &root).unwrap();
        for want in [
            "Enrolled: yes",
            "Identity: spiffe://cluster.local/ns/shop/sa/users",
            "PeerAuthentication: Strict (by shop/users-metrics)",
            "Port-level mTLS: 9090: Permissive",
            "Service shop/users:",
            "port 50051 (grpc-api): gRPC",
            "port 9090 (metrics): TCP (L4 only)",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        let legacy = describe_pod(&model(), "shop", "legacy", "cluster.local", &root).unwrap();
        assert!(
            legacy.contains("Enrolled: no: the pod opted out"),
            "{legacy}"
        );
        assert_eq!(
            describe_pod(&model(), "shop", "nope", "cluster.local", &root).unwrap_err(),
            "no pod shop/nope"
        );
    }

    #[test]
    fn a_service_waypoint_and_its_l7_policies() {
        let root = RootNamespace::default();
        let text = describe_service(&model(), "shop", "users", &root).unwrap();
        for want in [
            "users.shop.svc.cluster.local, 10.96.0.5",
            "Endpoints: users-1 (10.200.1.5, in the mesh)",
            "Waypoint: shop/waypoint",
            "AuthorizationPolicies at the waypoint (L7): shop/users-authz (ALLOW)",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        let waypoint = describe_service(&model(), "shop", "waypoint", &root).unwrap();
        assert!(waypoint.contains("Waypoint: none"), "{waypoint}");
    }
}
