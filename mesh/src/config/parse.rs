//! One Kubernetes object in, one model entry or a clear error out.
//!
//! Every source goes through here, so a manifest means the same thing from a file as from
//! the API server. Objects are dispatched on (API group, kind); the version is not part of
//! the key, because the versions of the kinds Weft reads share one schema. Adding a kind is
//! one entry in [`KINDS`] and one parse function.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::error::InvalidObject;
use super::model::{
    NamespaceInfo, NodeInfo, Object, PodInfo, ServiceAccountInfo, ServiceInfo, ServicePortInfo,
    UnreadInfo,
};
use super::protocol::detect_protocol;
use super::ratelimit::local_rate_limit_info;
use super::security::{authorization_policy_info, peer_authentication_info};
use super::traffic::{destination_rule_info, virtual_service_info};

/// Turns one document (whose kind the table matched) into a model entry. `Ok(None)`: the
/// object is valid but has no place in the mesh (a finished pod, say).
type ParseFn = fn(Value) -> Result<Option<Object>, InvalidObject>;

struct KindEntry {
    /// API group: `""` for the core group (`apiVersion: v1`).
    group: &'static str,
    kind: &'static str,
    /// Namespaced kinds default `metadata.namespace` to `default`, as kubectl does.
    namespaced: bool,
    parse: ParseFn,
}

/// The kinds Weft reads. Any other kind is skipped, so that a directory can hold a whole
/// application's manifests (Deployments and all).
const KINDS: &[KindEntry] = &[
    KindEntry {
        group: "",
        kind: "Namespace",
        namespaced: false,
        parse: |v| Ok(Some(Object::Namespace(namespace_info(&typed(v)?)?))),
    },
    KindEntry {
        group: "",
        kind: "Node",
        namespaced: false,
        parse: |v| Ok(Some(Object::Node(node_info(&typed(v)?)?))),
    },
    KindEntry {
        group: "",
        kind: "Pod",
        namespaced: true,
        parse: |v| Ok(pod_info(&typed(v)?)?.map(Object::Pod)),
    },
    KindEntry {
        group: "",
        kind: "Service",
        namespaced: true,
        parse: |v| Ok(Some(Object::Service(service_info(&typed(v)?)?))),
    },
    KindEntry {
        group: "",
        kind: "ServiceAccount",
        namespaced: true,
        parse: |v| {
            Ok(Some(Object::ServiceAccount(service_account_info(&typed(
                v,
            )?)?)))
        },
    },
    KindEntry {
        group: "security.istio.io",
        kind: "AuthorizationPolicy",
        namespaced: true,
        parse: |v| {
            Ok(Some(Object::AuthorizationPolicy(
                authorization_policy_info(v)?,
            )))
        },
    },
    KindEntry {
        group: "security.istio.io",
        kind: "PeerAuthentication",
        namespaced: true,
        parse: |v| {
            Ok(Some(Object::PeerAuthentication(peer_authentication_info(
                v,
            )?)))
        },
    },
    KindEntry {
        group: "networking.istio.io",
        kind: "VirtualService",
        namespaced: true,
        parse: |v| Ok(Some(Object::VirtualService(virtual_service_info(v)?))),
    },
    KindEntry {
        group: "networking.istio.io",
        kind: "DestinationRule",
        namespaced: true,
        parse: |v| Ok(Some(Object::DestinationRule(destination_rule_info(v)?))),
    },
    KindEntry {
        group: "weft.dev",
        kind: "LocalRateLimit",
        namespaced: true,
        parse: |v| Ok(Some(Object::LocalRateLimit(local_rate_limit_info(v)?))),
    },
];

const DEFAULT_NAMESPACE: &str = "default";

/// The annotation the kubelet puts on a static pod's mirror in the API.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Parses one manifest document.
///
/// `Ok(None)` for an empty (null) document, for a kind Weft does not read, and for an
/// object that is valid but outside the mesh. A document that is not an object, has no
/// `apiVersion` or `kind`, or is a kind Weft reads but is invalid, is an error.
pub fn parse_value(mut value: Value) -> Result<Option<Object>, InvalidObject> {
    if value.is_null() {
        return Ok(None);
    }
    value
        .apply_merge()
        .map_err(|e| InvalidObject::new(None, format!("invalid merge key (<<): {e}")))?;
    if !value.is_mapping() {
        return Err(InvalidObject::new(
            None,
            "not a Kubernetes object (expected a mapping with apiVersion and kind)",
        ));
    }
    let api_version = required_str(&value, "apiVersion")?;
    let kind = required_str(&value, "kind")?;
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    let Some(entry) = KINDS.iter().find(|k| k.group == group && k.kind == kind) else {
        if let Some(unread) = unread(&value, api_version, group, kind) {
            return Ok(Some(Object::Unread(unread)));
        }
        tracing::debug!(api_version, kind, "ignoring a kind Weft does not read");
        return Ok(None);
    };

    let label = raw_label(entry, &value);
    // A manifest whose indentation was lost has `name`, `hosts`... beside `kind`.
    let flattened = value.get("name").is_some()
        && value
            .get("metadata")
            .is_none_or(|m| m.is_null() || m.get("name").is_none());
    (entry.parse)(value).map_err(|mut err| {
        err.object.get_or_insert(label);
        if flattened {
            err.reason.push_str(
                " (`name` is at the top level: the manifest looks flattened, with its \
                 indentation lost; fields of metadata and spec must be indented under them)",
            );
        }
        err
    })
}

/// Istio's API groups, and the kinds each serves (Istio API reference).
const ISTIO_GROUPS: &[(&str, &[&str])] = &[
    (
        "networking.istio.io",
        &[
            "VirtualService",
            "DestinationRule",
            "Gateway",
            "ServiceEntry",
            "Sidecar",
            "WorkloadEntry",
            "WorkloadGroup",
            "EnvoyFilter",
            "ProxyConfig",
        ],
    ),
    (
        "security.istio.io",
        &[
            "AuthorizationPolicy",
            "PeerAuthentication",
            "RequestAuthentication",
        ],
    ),
    ("telemetry.istio.io", &["Telemetry"]),
    ("extensions.istio.io", &["WasmPlugin"]),
    ("install.istio.io", &["IstioOperator"]),
];

/// Groups of service-mesh APIs besides Istio's whose objects users expect a mesh to act on.
fn mesh_group(group: &str) -> bool {
    group == "linkerd.io"
        || group.ends_with(".linkerd.io")
        || group.ends_with(".istio.io")
        || group == "gateway.networking.k8s.io"
}

/// An object of a mesh API group, or of a group that looks like a misspelt Istio group,
/// that Weft does not read: kept as [`UnreadInfo`] so that it is reported, not dropped.
fn unread(value: &Value, api_version: &str, group: &str, kind: &str) -> Option<UnreadInfo> {
    let meant = if ISTIO_GROUPS.iter().any(|(g, _)| *g == group) || mesh_group(group) {
        None
    } else if group.is_empty() || group.ends_with(".k8s.io") {
        return None;
    } else {
        // An Istio kind under another group, or a group that names Istio but is none of its.
        let by_kind = ISTIO_GROUPS
            .iter()
            .find(|(_, kinds)| kinds.contains(&kind))
            .map(|(g, _)| *g);
        let by_name = || {
            let first = group.split('.').next().unwrap_or_default();
            ISTIO_GROUPS
                .iter()
                .find(|(g, _)| group.contains("istio") && g.starts_with(first))
                .map(|(g, _)| *g)
        };
        Some(by_kind.or_else(by_name)?)
    };
    let metadata = value.get("metadata");
    let field = |name| {
        metadata
            .and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    Some(UnreadInfo {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        namespace: field("namespace"),
        name: field("name").unwrap_or_default(),
        meant,
    })
}

fn required_str<'v>(value: &'v Value, field: &str) -> Result<&'v str, InvalidObject> {
    match value.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        None | Some(Value::Null) => Err(InvalidObject::new(None, format!("{field}: required"))),
        Some(other) => Err(InvalidObject::new(
            None,
            format!(
                "{field}: expected a non-empty string, found {}",
                yaml_inline(other)
            ),
        )),
    }
}

/// Names the object from the raw document, so that even a document of the wrong shape is
/// reported as `Service default/foo` when it says that much.
fn raw_label(entry: &KindEntry, value: &Value) -> String {
    let metadata = value.get("metadata");
    let field = |name| metadata.and_then(|m| m.get(name)).and_then(Value::as_str);
    let namespace = entry.namespaced.then(|| {
        field("namespace")
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
    });
    label(entry.kind, namespace, field("name"))
}

fn label(kind: &str, namespace: Option<&str>, name: Option<&str>) -> String {
    match (namespace, name.filter(|n| !n.is_empty())) {
        (Some(namespace), Some(name)) => format!("{kind} {namespace}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        (Some(namespace), None) => format!("{kind} in namespace {namespace}"),
        (None, None) => kind.to_string(),
    }
}

fn yaml_inline(value: &Value) -> String {
    serde_yaml::to_string(value)
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// Deserializes into the typed object, naming the field that was wrong.
pub(crate) fn typed<T: DeserializeOwned>(value: Value) -> Result<T, InvalidObject> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let reason = if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        InvalidObject::new(None, reason)
    })
}

/// The identity fields every object has: (namespace for namespaced kinds, name).
pub(crate) fn identity(
    kind: &str,
    meta: &ObjectMeta,
    namespaced: bool,
) -> Result<(Option<String>, String), InvalidObject> {
    let namespace = namespaced.then(|| {
        meta.namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
    });
    let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
        return Err(InvalidObject::new(
            Some(label(kind, namespace.as_deref(), None)),
            "metadata.name: required",
        ));
    };
    Ok((namespace, name))
}

pub(crate) fn invalid(
    kind: &str,
    namespace: &str,
    name: &str,
    reason: impl Into<String>,
) -> InvalidObject {
    InvalidObject::new(Some(label(kind, Some(namespace), Some(name))), reason)
}

/// A Namespace, as the API source receives it.
pub fn namespace_info(ns: &Namespace) -> Result<NamespaceInfo, InvalidObject> {
    let (_, name) = identity("Namespace", &ns.metadata, false)?;
    Ok(NamespaceInfo {
        name,
        labels: ns.metadata.labels.clone().unwrap_or_default(),
    })
}

/// A ServiceAccount, as the API source receives it: only its labels matter to Weft.
pub fn service_account_info(account: &ServiceAccount) -> Result<ServiceAccountInfo, InvalidObject> {
    let (namespace, name) = identity("ServiceAccount", &account.metadata, true)?;
    Ok(ServiceAccountInfo {
        namespace: namespace.unwrap_or_default(),
        name,
        labels: account.metadata.labels.clone().unwrap_or_default(),
    })
}

/// A Node, as the API source receives it.
pub fn node_info(node: &k8s_openapi::api::core::v1::Node) -> Result<NodeInfo, InvalidObject> {
    let (_, name) = identity("Node", &node.metadata, false)?;
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    let internal =
        addresses.and_then(|a| a.iter().enumerate().find(|(_, a)| a.type_ == "InternalIP"));
    let internal_ip = match internal {
        Some((i, address)) => Some(address.address.parse().map_err(|_| {
            InvalidObject::new(
                Some(format!("Node {name}")),
                format!(
                    "status.addresses[{i}].address: invalid value {:?} (not an IP address)",
                    address.address
                ),
            )
        })?),
        None => None,
    };
    Ok(NodeInfo { name, internal_ip })
}

/// A Pod, as the API source receives it. `Ok(None)` for a pod that has finished (its
/// address may already be another pod's). Host-network pods are kept, marked.
///
/// A pod without `metadata.uid` is accepted (hand-written manifests rarely have one) and
/// kept, but never enrolled; see [`PodInfo::uid`].
pub fn pod_info(pod: &Pod) -> Result<Option<PodInfo>, InvalidObject> {
    let (namespace, name) = identity("Pod", &pod.metadata, true)?;
    let namespace = namespace.unwrap_or_default();
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();

    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    if let Some(phase) = status.and_then(|s| s.phase.as_deref())
        && matches!(phase, "Succeeded" | "Failed")
    {
        tracing::debug!(%namespace, %name, phase, "finished pod is outside the mesh");
        return Ok(None);
    }

    let ip_field = status.and_then(|s| {
        let pod_ip = s.pod_ip.as_deref().filter(|ip| !ip.is_empty());
        match pod_ip {
            Some(ip) => Some(("status.podIP", ip)),
            None => s
                .pod_ips
                .as_ref()
                .and_then(|ips| ips.first())
                .map(|first| ("status.podIPs[0].ip", first.ip.as_str())),
        }
    });
    let ip = match ip_field {
        Some((field, text)) => Some(text.parse::<IpAddr>().map_err(|_| {
            invalid(
                "Pod",
                &namespace,
                &name,
                format!("{field}: invalid value {text:?} (not an IP address)"),
            )
        })?),
        None => None,
    };

    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    // serviceAccount is the deprecated spelling the API server still honours.
    let named = spec
        .and_then(|s| non_empty(&s.service_account_name).or_else(|| non_empty(&s.service_account)));
    let service_account_unset = named.is_none();
    let service_account = named.unwrap_or_else(|| "default".to_string());
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION));

    let container_ports = spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| Some((p.name.clone()?, port_number(p.container_port)?)))
        .collect();
    let probe_ports = spec.map(probe_ports).unwrap_or_default();
    Ok(Some(PodInfo {
        container_ports,
        probe_ports,
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        node_name: spec.and_then(|s| non_empty(&s.node_name)),
        ip,
        service_account,
        service_account_unset,
        mirror,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        host_network,
        namespace,
        name,
    }))
}

/// The ports the kubelet reaches over the network to probe the pod's containers (and its
/// sidecar init containers): `httpGet`, `tcpSocket` and `grpc` probes, a named port resolved
/// among the same container's ports. A probe with `host` set goes elsewhere; an `exec` probe
/// runs inside the container.
fn probe_ports(spec: &k8s_openapi::api::core::v1::PodSpec) -> BTreeSet<u16> {
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let mut ports = BTreeSet::new();
    for container in containers {
        let named = |name: &str| {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .and_then(|p| port_number(p.container_port))
        };
        let resolve = |port: &IntOrString| match port {
            IntOrString::Int(n) => port_number(*n),
            IntOrString::String(name) => named(name),
        };
        let probes = [
            &container.liveness_probe,
            &container.readiness_probe,
            &container.startup_probe,
        ];
        for probe in probes.into_iter().flatten() {
            let local = |host: &Option<String>| host.as_deref().is_none_or(str::is_empty);
            let port = match (&probe.http_get, &probe.tcp_socket, &probe.grpc) {
                (Some(http), _, _) if local(&http.host) => resolve(&http.port),
                (_, Some(tcp), _) if local(&tcp.host) => resolve(&tcp.port),
                (_, _, Some(grpc)) => port_number(grpc.port),
                _ => None,
            };
            ports.extend(port);
        }
    }
    ports
}

/// A Service, as the API source receives it.
pub fn service_info(svc: &Service) -> Result<ServiceInfo, InvalidObject> {
    let (namespace, name) = identity("Service", &svc.metadata, true)?;
    let namespace = namespace.unwrap_or_default();
    let invalid = |reason: String| invalid("Service", &namespace, &name, reason);
    let spec = svc.spec.as_ref();

    let cluster_ip = match spec.and_then(|s| s.cluster_ip.as_deref()) {
        // "None" is how a headless Service is written.
        None | Some("") | Some("None") => None,
        Some(text) => Some(text.parse::<IpAddr>().map_err(|_| {
            invalid(format!(
                "spec.clusterIP: invalid value {text:?} (not an IP address)"
            ))
        })?),
    };

    let mut ports = Vec::new();
    for (i, port) in spec
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let number = port_number(port.port).ok_or_else(|| {
            invalid(format!(
                "spec.ports[{i}].port: invalid value {} (must be 1..=65535)",
                port.port
            ))
        })?;
        // Absent means the same as `port`; a string is a port name, unless it is a quoted
        // number, which is still a number.
        let target = match &port.target_port {
            None => Some(i64::from(port.port)),
            Some(IntOrString::Int(n)) => Some(i64::from(*n)),
            Some(IntOrString::String(s)) => s.parse::<i64>().ok(),
        };
        let target_port = target
            .map(|n| {
                port_number(n).ok_or_else(|| {
                    invalid(format!(
                        "spec.ports[{i}].targetPort: invalid value {n} (must be 1..=65535)"
                    ))
                })
            })
            .transpose()?;
        let l4 = port.protocol.as_deref().unwrap_or("TCP");
        if l4 != "TCP" {
            tracing::debug!(%namespace, %name, port = number, protocol = l4,
                "non-TCP service port is outside the mesh");
            continue;
        }
        let target_port_name = match &port.target_port {
            Some(IntOrString::String(s)) if target_port.is_none() && !s.is_empty() => {
                Some(s.clone())
            }
            _ => None,
        };
        ports.push(ServicePortInfo {
            name: port.name.clone().filter(|n| !n.is_empty()),
            port: number,
            target_port,
            target_port_name,
            protocol: detect_protocol(port.name.as_deref(), port.app_protocol.as_deref()),
        });
    }

    Ok(ServiceInfo {
        cluster_ip,
        selector: spec.and_then(|s| s.selector.clone()).unwrap_or_default(),
        ports,
        labels: svc.metadata.labels.clone().unwrap_or_default(),
        namespace,
        name,
    })
}

fn port_number(n: impl TryInto<u16>) -> Option<u16> {
    n.try_into().ok().filter(|p| *p != 0)
}

/// A model of every object in a multi-document YAML text (documents Weft does not read are
/// skipped), or the first invalid document, by number and reason. For tests and tools that
/// hold a whole configuration in one text.
pub fn model_from_yaml(text: &str) -> Result<super::Model, String> {
    let mut model = super::Model::default();
    for (i, parsed) in parse_documents(text) {
        match parsed {
            Ok(Some(object)) => {
                model.insert(object);
            }
            Ok(None) => {}
            Err(err) => return Err(format!("document {i}: {err}")),
        }
    }
    Ok(model)
}

/// Parses every document of a multi-document YAML text, as `kubectl apply -f` reads it.
/// Documents count from 1. A YAML syntax error ends the text: the parser cannot resume.
pub fn parse_documents(text: &str) -> Vec<(usize, Result<Option<Object>, InvalidObject>)> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(document) {
            // `kubectl get -o yaml` prints several objects as one `v1` List: its items are
            // documents of their own, whose errors name the item.
            Ok(value)
                if value.get("kind").and_then(Value::as_str) == Some("List")
                    && value.get("apiVersion").and_then(Value::as_str) == Some("v1") =>
            {
                let items = match value.get("items") {
                    Some(Value::Sequence(items)) => items.clone(),
                    _ => Vec::new(),
                };
                for (j, item) in items.into_iter().enumerate() {
                    let parsed = parse_value(item).map_err(|mut err| {
                        err.reason = format!("items[{j}]: {}", err.reason);
                        err
                    });
                    out.push((i + 1, parsed));
                }
            }
            Ok(value) => out.push((i + 1, parse_value(value))),
            Err(err) => {
                out.push((
                    i + 1,
                    Err(InvalidObject::new(None, format!("invalid YAML: {err}"))),
                ));
                break;
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
