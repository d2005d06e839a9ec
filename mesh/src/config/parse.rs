//! One Kubernetes object in, one model entry or a clear error out.
//!
//! Every source goes through here, so a manifest means the same thing from a file as from
//! the API server. Objects are dispatched on (API group, kind); the version is not part of
//! the key, because the versions of the kinds Weft reads share one schema. Adding a kind is
//! one entry in [`KINDS`] and one parse function.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::error::InvalidObject;
use super::model::{NamespaceInfo, NodeInfo, Object, PodInfo, ServiceInfo, ServicePortInfo};
use super::protocol::detect_protocol;
use super::security::{authorization_policy_info, peer_authentication_info};

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
];

const DEFAULT_NAMESPACE: &str = "default";

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
        tracing::debug!(api_version, kind, "ignoring a kind Weft does not read");
        return Ok(None);
    };

    let label = raw_label(entry, &value);
    (entry.parse)(value).map_err(|mut err| {
        err.object.get_or_insert(label);
        err
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
    let service_account = spec
        .and_then(|s| non_empty(&s.service_account_name).or_else(|| non_empty(&s.service_account)))
        .unwrap_or_else(|| "default".to_string());

    Ok(Some(PodInfo {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        node_name: spec.and_then(|s| non_empty(&s.node_name)),
        ip,
        service_account,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        host_network,
        namespace,
        name,
    }))
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
        ports.push(ServicePortInfo {
            name: port.name.clone().filter(|n| !n.is_empty()),
            port: number,
            target_port,
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

/// Parses every document of a multi-document YAML text, as `kubectl apply -f` reads it.
/// Documents count from 1. A YAML syntax error ends the text: the parser cannot resume.
pub(crate) fn parse_documents(text: &str) -> Vec<(usize, Result<Option<Object>, InvalidObject>)> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(document) {
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
mod tests {
    use super::*;
    use crate::config::AppProtocol;

    fn objects(text: &str) -> Vec<Object> {
        parse_documents(text)
            .into_iter()
            .filter_map(|(n, r)| r.unwrap_or_else(|e| panic!("document {n}: {e}")))
            .collect()
    }

    fn error(text: &str) -> String {
        let errors: Vec<_> = parse_documents(text)
            .into_iter()
            .filter_map(|(_, r)| r.err())
            .collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors[0].to_string()
    }

    #[test]
    fn multi_document_namespace_pod_service() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient}
---
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
apiVersion: v1
kind: Pod
metadata:
  name: cart-1
  namespace: shop
  uid: 0b7c0e43-1111-2222-3333-444455556666
  labels: {app: cart}
spec:
  nodeName: node-1
  serviceAccountName: cart
  containers: [{name: app, image: cart}]
status:
  podIP: 10.1.0.5
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: cart}
  ports:
  - {name: grpc-api, port: 50051}
  - {name: metrics, port: 9090, targetPort: 19090}
  - {name: web, port: 80, targetPort: http, appProtocol: kubernetes.io/h2c}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Pod
metadata: {name: bare}
"#;
        let objects = objects(text);
        assert_eq!(objects.len(), 4);
        let Object::Namespace(ns) = &objects[0] else {
            panic!("{objects:?}")
        };
        assert_eq!(ns.name, "shop");
        assert!(ns.ambient());

        let Object::Pod(pod) = &objects[1] else {
            panic!("{objects:?}")
        };
        assert_eq!(
            *pod,
            PodInfo {
                namespace: "shop".into(),
                name: "cart-1".into(),
                uid: "0b7c0e43-1111-2222-3333-444455556666".into(),
                node_name: Some("node-1".into()),
                ip: Some("10.1.0.5".parse().unwrap()),
                service_account: "cart".into(),
                labels: [("app".to_string(), "cart".to_string())].into(),
                host_network: false,
            }
        );

        let Object::Service(svc) = &objects[2] else {
            panic!("{objects:?}")
        };
        assert_eq!(svc.cluster_ip, Some("10.96.0.10".parse().unwrap()));
        assert_eq!(svc.selector.get("app").map(String::as_str), Some("cart"));
        let ports: Vec<_> = svc
            .ports
            .iter()
            .map(|p| (p.port, p.target_port, p.protocol.clone()))
            .collect();
        assert_eq!(
            ports,
            [
                (50051, Some(50051), AppProtocol::Grpc),
                (9090, Some(19090), AppProtocol::Tcp),
                (80, None, AppProtocol::Http2),
            ]
        );

        let Object::Pod(bare) = &objects[3] else {
            panic!("{objects:?}")
        };
        assert_eq!(bare.namespace, "default");
        assert_eq!(bare.service_account, "default");
        assert_eq!(
            (bare.uid.as_str(), bare.ip, &bare.node_name),
            ("", None, &None)
        );
    }

    #[test]
    fn headless_service_and_pods_outside_the_mesh() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: db}
spec: {clusterIP: None}
---
apiVersion: v1
kind: Pod
metadata: {name: node-exporter}
spec: {hostNetwork: true, containers: []}
status: {podIP: 192.168.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: job-done}
status: {phase: Succeeded, podIP: 10.1.0.9}
---
apiVersion: v1
kind: Pod
metadata: {name: dual}
status: {podIPs: [{ip: "fd00::5"}, {ip: 10.1.0.6}]}
"#;
        let objects = objects(text);
        assert_eq!(objects.len(), 3, "{objects:?}");
        let Object::Service(svc) = &objects[0] else {
            panic!("{objects:?}")
        };
        assert_eq!(svc.cluster_ip, None);
        // Kept, for the identities on its node, but marked: its address is the node's.
        let Object::Pod(host) = &objects[1] else {
            panic!("{objects:?}")
        };
        assert!(host.host_network);
        let Object::Pod(pod) = &objects[2] else {
            panic!("{objects:?}")
        };
        assert_eq!(pod.ip, Some("fd00::5".parse().unwrap()));
    }

    #[test]
    fn nodes_give_their_internal_address() {
        let objects = objects(
            "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nstatus:\n  addresses:\n  - {type: Hostname, address: node-1}\n  - {type: InternalIP, address: 10.99.0.1}\n",
        );
        let Object::Node(node) = &objects[0] else {
            panic!("{objects:?}")
        };
        assert_eq!(
            (node.name.as_str(), node.internal_ip),
            ("node-1", Some("10.99.0.1".parse().unwrap()))
        );
        let bad = parse_value(
            serde_yaml::from_str("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nstatus: {addresses: [{type: InternalIP, address: nope}]}").unwrap(),
        );
        let err = bad.unwrap_err().to_string();
        assert!(err.contains("status.addresses[0].address"), "{err}");
    }

    #[test]
    fn errors_name_the_object_and_the_field() {
        let service = |ports: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: foo}}\nspec:\n  ports: {ports}\n"
            )
        };
        assert_eq!(
            error(&service("[{port: 70000}]")),
            "Service default/foo: spec.ports[0].port: invalid value 70000 (must be 1..=65535)"
        );
        assert_eq!(
            error(&service("[{port: 80}, {port: 81, targetPort: 0}]")),
            "Service default/foo: spec.ports[1].targetPort: invalid value 0 (must be 1..=65535)"
        );
        assert_eq!(
            error(&service("[{name: x}]")),
            "Service default/foo: spec.ports[0].port: invalid value 0 (must be 1..=65535)"
        );
        let wrong_type = error(&service("[{port: eighty}]"));
        assert!(
            wrong_type.starts_with("Service default/foo: spec.ports[0].port: invalid type"),
            "{wrong_type}"
        );
        assert_eq!(
            error(
                "apiVersion: v1\nkind: Service\nmetadata: {name: foo, namespace: x}\nspec: {clusterIP: 1.2.3}\n"
            ),
            "Service x/foo: spec.clusterIP: invalid value \"1.2.3\" (not an IP address)"
        );
        assert_eq!(
            error("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: nope}\n"),
            "Pod default/p: status.podIP: invalid value \"nope\" (not an IP address)"
        );
        assert_eq!(
            error("apiVersion: v1\nkind: Pod\nmetadata: {namespace: shop}\n"),
            "Pod in namespace shop: metadata.name: required"
        );
        assert_eq!(
            error("apiVersion: v1\nmetadata: {name: p}\n"),
            "kind: required"
        );
        assert_eq!(error("kind: Pod\n"), "apiVersion: required");
        assert_eq!(
            error("just a string\n"),
            "not a Kubernetes object (expected a mapping with apiVersion and kind)"
        );
        let syntax = error("apiVersion: v1\nkind: Pod\nmetadata: {name: [\n");
        assert!(syntax.starts_with("invalid YAML: "), "{syntax}");
    }

    #[test]
    fn empty_documents_and_unknown_kinds_are_skipped() {
        assert!(objects("").is_empty());
        assert!(objects("---\n---\n# only a comment\n").is_empty());
        assert!(
            objects("apiVersion: networking.k8s.io/v1\nkind: Service\nmetadata: {name: x}\n")
                .is_empty()
        );
        assert!(objects("apiVersion: apps/v1\nkind: Deployment\nmetadata: {}\n").is_empty());
    }
}
