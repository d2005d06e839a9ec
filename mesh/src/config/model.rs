//! The typed model: what the agent and the waypoint need of each object, and nothing of
//! the wire format. Sources build it; the data path only reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use super::protocol::AppProtocol;
use super::ratelimit::LocalRateLimitInfo;
use super::security::{AuthorizationPolicyInfo, PeerAuthenticationInfo};
use super::traffic::{DestinationRuleInfo, VirtualServiceInfo};
use super::{AMBIENT, AMBIENT_LABEL, ISTIO_AMBIENT_LABEL, NONE};

/// A namespace and its labels, which decide enrolment.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl NamespaceInfo {
    /// Whether the namespace is in the mesh: either dataplane-mode label is `ambient`.
    pub fn ambient(&self) -> bool {
        [AMBIENT_LABEL, ISTIO_AMBIENT_LABEL]
            .iter()
            .any(|label| self.labels.get(*label).is_some_and(|v| v == AMBIENT))
    }
}

/// A pod.
///
/// Pods that have finished (phase Succeeded or Failed) never reach the model: their address
/// may already belong to another pod. Host-network pods (such as the agent itself) are kept
/// for what they say about identities on a node, but they are never enrolled and never own
/// an address: theirs is the node's.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// Empty when the manifest has none. The agent finds the pod's cgroup by its uid, so a
    /// pod without one is kept (it can still be a Service backend) but never enrolled.
    pub uid: String,
    pub node_name: Option<String>,
    /// `status.podIP`, or the first of `status.podIPs` when only that is set.
    pub ip: Option<IpAddr>,
    /// `spec.serviceAccountName`, `default` when unset, as the API server defaults it.
    pub service_account: String,
    /// Whether the manifest names no service account. The API server names one for every
    /// pod it admits except mirror pods, so the CA signs no identity for such a pod.
    pub service_account_unset: bool,
    /// A mirror pod (annotation `kubernetes.io/config.mirror`): the kubelet's copy of a
    /// static pod, which the node itself defines. The CA signs no identity for one.
    pub mirror: bool,
    pub labels: BTreeMap<String, String>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// The containers' named TCP ports (`name` → `containerPort`), for Services whose
    /// `targetPort` is a name.
    pub container_ports: BTreeMap<String, u16>,
    /// The ports the kubelet probes over the network (`httpGet`, `tcpSocket` and `grpc`
    /// liveness, readiness and startup probes that leave `host` unset). The node's gate
    /// lets the node's own processes reach these ports of a STRICT pod, and nothing else.
    pub probe_ports: BTreeSet<u16>,
}

/// The workload a pod belongs to, as Istio's metrics name it: the `app.kubernetes.io/name`
/// or `app` label, else the pod's name without the suffixes a ReplicaSet adds.
pub fn workload_name(pod: &PodInfo) -> String {
    if let Some(name) = ["app.kubernetes.io/name", "app"]
        .iter()
        .find_map(|k| pod.labels.get(*k))
    {
        return name.clone();
    }
    // `web-5d8f7b9c4-x7k2p`: a Deployment's pods end in two generated parts.
    let parts: Vec<&str> = pod.name.rsplitn(3, '-').collect();
    match parts.as_slice() {
        [suffix, hash, base] if suffix.len() == 5 && hash.len() >= 8 => base.to_string(),
        _ => pod.name.clone(),
    }
}

impl PodInfo {
    /// Whether the pod opted out of its ambient namespace: a dataplane-mode label is `none`.
    pub fn opted_out(&self) -> bool {
        [AMBIENT_LABEL, ISTIO_AMBIENT_LABEL]
            .iter()
            .any(|label| self.labels.get(*label).is_some_and(|v| v == NONE))
    }
}

/// One TCP port of a Service. UDP and SCTP ports are left out: the mesh carries TCP only.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePortInfo {
    pub name: Option<String>,
    pub port: u16,
    /// The pod port. An absent `targetPort` means `port`, as the API server defaults it.
    /// `None` means a named target port, to be resolved against the pod's container ports.
    pub target_port: Option<u16>,
    /// The name of a named `targetPort`.
    pub target_port_name: Option<String>,
    pub protocol: AppProtocol,
}

impl ServicePortInfo {
    /// The port on `pod` this Service port sends to: the number, or the pod's container
    /// port of that name. `None` when the pod has no port of that name: as in Kubernetes,
    /// the pod is then no endpoint of this port.
    pub fn target_on(&self, pod: &PodInfo) -> Option<u16> {
        match (&self.target_port, &self.target_port_name) {
            (Some(port), _) => Some(*port),
            (None, Some(name)) => pod.container_ports.get(name).copied(),
            (None, None) => Some(self.port),
        }
    }
}

/// A Service: the name clients dial and the pods behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    /// `None` for headless (`clusterIP: None`) and ExternalName services.
    pub cluster_ip: Option<IpAddr>,
    /// Empty for a Service without a selector, which then selects no pod.
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePortInfo>,
    pub labels: BTreeMap<String, String>,
}

/// A ServiceAccount: its labels can bind a waypoint to the pods that run as it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceAccountInfo {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A Node: where the tunnel reaches the node's agent.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    /// The first `InternalIP` of `status.addresses`.
    pub internal_ip: Option<IpAddr>,
}

/// An object of a service-mesh API group that Weft does not read: an Istio or Linkerd kind
/// Weft does not implement (Telemetry, EnvoyFilter, ServiceProfile...), or a kind under a
/// group that looks like a misspelt Istio group (`networking.io`). It has no effect; it is
/// kept so that `analyze` and the logs can say so, instead of dropping it without a word.
#[derive(Debug, Clone, PartialEq)]
pub struct UnreadInfo {
    pub api_version: String,
    pub kind: String,
    /// `None` for an object without `metadata.namespace`: cluster-scoped, or meant for the
    /// namespace it is applied to.
    pub namespace: Option<String>,
    pub name: String,
    /// For a group that looks like a misspelling, the Istio group it was probably meant to be.
    pub meant: Option<&'static str>,
}

impl UnreadInfo {
    /// `Telemetry default/grpc-telemetry`.
    pub fn label(&self) -> String {
        let name = if self.name.is_empty() {
            "(unnamed)"
        } else {
            &self.name
        };
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{name}", self.kind),
            None => format!("{} {name}", self.kind),
        }
    }

    /// The model's key: kinds vary, so the kind is part of the name.
    fn key_name(&self) -> String {
        format!("{}/{}/{}", self.api_version, self.kind, self.name)
    }
}

/// One parsed object, as a source hands it to the model.
///
/// A new kind is a new variant here, a field in [`Model`] and an entry in the parse table.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(NamespaceInfo),
    Node(NodeInfo),
    Pod(PodInfo),
    Service(ServiceInfo),
    AuthorizationPolicy(AuthorizationPolicyInfo),
    PeerAuthentication(PeerAuthenticationInfo),
    ServiceAccount(ServiceAccountInfo),
    VirtualService(VirtualServiceInfo),
    DestinationRule(DestinationRuleInfo),
    LocalRateLimit(LocalRateLimitInfo),
    Unread(UnreadInfo),
}

/// What identifies an object: two objects with the same key are the same object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: &'static str,
    /// `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    /// `Service default/foo`, or `Namespace foo` for a cluster-scoped kind.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{} {}/{}", self.kind, namespace, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Namespace(ns) => ObjectKey {
                kind: "Namespace",
                namespace: None,
                name: ns.name.clone(),
            },
            Object::Node(node) => ObjectKey {
                kind: "Node",
                namespace: None,
                name: node.name.clone(),
            },
            Object::Pod(pod) => ObjectKey {
                kind: "Pod",
                namespace: Some(pod.namespace.clone()),
                name: pod.name.clone(),
            },
            Object::Service(svc) => ObjectKey {
                kind: "Service",
                namespace: Some(svc.namespace.clone()),
                name: svc.name.clone(),
            },
            Object::AuthorizationPolicy(policy) => ObjectKey {
                kind: "AuthorizationPolicy",
                namespace: Some(policy.namespace.clone()),
                name: policy.name.clone(),
            },
            Object::PeerAuthentication(policy) => ObjectKey {
                kind: "PeerAuthentication",
                namespace: Some(policy.namespace.clone()),
                name: policy.name.clone(),
            },
            Object::ServiceAccount(account) => ObjectKey {
                kind: "ServiceAccount",
                namespace: Some(account.namespace.clone()),
                name: account.name.clone(),
            },
            Object::VirtualService(vs) => ObjectKey {
                kind: "VirtualService",
                namespace: Some(vs.namespace.clone()),
                name: vs.name.clone(),
            },
            Object::DestinationRule(dr) => ObjectKey {
                kind: "DestinationRule",
                namespace: Some(dr.namespace.clone()),
                name: dr.name.clone(),
            },
            Object::LocalRateLimit(rl) => ObjectKey {
                kind: "LocalRateLimit",
                namespace: Some(rl.namespace.clone()),
                name: rl.name.clone(),
            },
            Object::Unread(unread) => ObjectKey {
                kind: UNREAD,
                namespace: unread.namespace.clone(),
                name: unread.key_name(),
            },
        }
    }
}

/// The maps of a [`Model`]: persistent, so that a copy is O(1) and shares what it does not
/// change.
pub type Map<K, V> = imbl::OrdMap<K, V>;

/// The whole configuration one process sees. Keyed by (namespace, name), or by name for
/// cluster-scoped kinds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    pub namespaces: Map<String, NamespaceInfo>,
    pub nodes: Map<String, NodeInfo>,
    pub pods: Map<(String, String), PodInfo>,
    pub services: Map<(String, String), ServiceInfo>,
    pub authorization_policies: Map<(String, String), AuthorizationPolicyInfo>,
    pub peer_authentications: Map<(String, String), PeerAuthenticationInfo>,
    pub service_accounts: Map<(String, String), ServiceAccountInfo>,
    pub virtual_services: Map<(String, String), VirtualServiceInfo>,
    pub destination_rules: Map<(String, String), DestinationRuleInfo>,
    pub local_rate_limits: Map<(String, String), LocalRateLimitInfo>,
    /// Objects of mesh API groups that Weft does not read, by (namespace or "", key name).
    pub unread: Map<(String, String), UnreadInfo>,
}

/// The [`ObjectKey`] kind of an [`UnreadInfo`].
const UNREAD: &str = "Unread";

impl Model {
    /// Adds or replaces an object. Returns whether an object with the same key was replaced.
    pub fn insert(&mut self, object: Object) -> bool {
        match object {
            Object::Namespace(ns) => self.namespaces.insert(ns.name.clone(), ns).is_some(),
            Object::Node(node) => self.nodes.insert(node.name.clone(), node).is_some(),
            Object::Pod(pod) => {
                let key = (pod.namespace.clone(), pod.name.clone());
                self.pods.insert(key, pod).is_some()
            }
            Object::Service(svc) => {
                let key = (svc.namespace.clone(), svc.name.clone());
                self.services.insert(key, svc).is_some()
            }
            Object::AuthorizationPolicy(policy) => {
                let key = (policy.namespace.clone(), policy.name.clone());
                self.authorization_policies.insert(key, policy).is_some()
            }
            Object::PeerAuthentication(policy) => {
                let key = (policy.namespace.clone(), policy.name.clone());
                self.peer_authentications.insert(key, policy).is_some()
            }
            Object::ServiceAccount(account) => {
                let key = (account.namespace.clone(), account.name.clone());
                self.service_accounts.insert(key, account).is_some()
            }
            Object::VirtualService(vs) => {
                let key = (vs.namespace.clone(), vs.name.clone());
                self.virtual_services.insert(key, vs).is_some()
            }
            Object::DestinationRule(dr) => {
                let key = (dr.namespace.clone(), dr.name.clone());
                self.destination_rules.insert(key, dr).is_some()
            }
            Object::LocalRateLimit(rl) => {
                let key = (rl.namespace.clone(), rl.name.clone());
                self.local_rate_limits.insert(key, rl).is_some()
            }
            Object::Unread(unread) => {
                let key = (
                    unread.namespace.clone().unwrap_or_default(),
                    unread.key_name(),
                );
                self.unread.insert(key, unread).is_some()
            }
        }
    }

    /// The object with `key`, if there is one.
    pub fn get(&self, key: &ObjectKey) -> Option<Object> {
        let namespaced = || (key.namespace.clone().unwrap_or_default(), key.name.clone());
        Some(match key.kind {
            "Namespace" => Object::Namespace(self.namespaces.get(&key.name)?.clone()),
            "Node" => Object::Node(self.nodes.get(&key.name)?.clone()),
            "Pod" => Object::Pod(self.pods.get(&namespaced())?.clone()),
            "Service" => Object::Service(self.services.get(&namespaced())?.clone()),
            "AuthorizationPolicy" => {
                Object::AuthorizationPolicy(self.authorization_policies.get(&namespaced())?.clone())
            }
            "PeerAuthentication" => {
                Object::PeerAuthentication(self.peer_authentications.get(&namespaced())?.clone())
            }
            "ServiceAccount" => {
                Object::ServiceAccount(self.service_accounts.get(&namespaced())?.clone())
            }
            "VirtualService" => {
                Object::VirtualService(self.virtual_services.get(&namespaced())?.clone())
            }
            "DestinationRule" => {
                Object::DestinationRule(self.destination_rules.get(&namespaced())?.clone())
            }
            "LocalRateLimit" => {
                Object::LocalRateLimit(self.local_rate_limits.get(&namespaced())?.clone())
            }
            UNREAD => Object::Unread(self.unread.get(&namespaced())?.clone()),
            _ => return None,
        })
    }

    /// Adds or replaces an object. Returns whether the model changed (false when the same
    /// version was already there), so that a source re-publishes only real changes.
    pub fn upsert(&mut self, object: Object) -> bool {
        if self.get(&object.key()).as_ref() == Some(&object) {
            return false;
        }
        self.insert(object);
        true
    }

    /// The keys of every object of `kind`.
    pub fn keys_of(&self, kind: &'static str) -> Vec<ObjectKey> {
        let cluster = |names: &mut dyn Iterator<Item = &String>| -> Vec<ObjectKey> {
            names
                .map(|name| ObjectKey {
                    kind,
                    namespace: None,
                    name: name.clone(),
                })
                .collect()
        };
        let namespaced = |keys: &mut dyn Iterator<Item = &(String, String)>| -> Vec<ObjectKey> {
            keys.map(|(namespace, name)| ObjectKey {
                kind,
                namespace: Some(namespace.clone()),
                name: name.clone(),
            })
            .collect()
        };
        match kind {
            "Namespace" => cluster(&mut self.namespaces.keys()),
            "Node" => cluster(&mut self.nodes.keys()),
            "Pod" => namespaced(&mut self.pods.keys()),
            "Service" => namespaced(&mut self.services.keys()),
            "AuthorizationPolicy" => namespaced(&mut self.authorization_policies.keys()),
            "PeerAuthentication" => namespaced(&mut self.peer_authentications.keys()),
            "ServiceAccount" => namespaced(&mut self.service_accounts.keys()),
            "VirtualService" => namespaced(&mut self.virtual_services.keys()),
            "DestinationRule" => namespaced(&mut self.destination_rules.keys()),
            "LocalRateLimit" => namespaced(&mut self.local_rate_limits.keys()),
            _ => Vec::new(),
        }
    }

    /// Removes an object. Returns whether it was there.
    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        let namespaced = || (key.namespace.clone().unwrap_or_default(), key.name.clone());
        match key.kind {
            "Namespace" => self.namespaces.remove(&key.name).is_some(),
            "Node" => self.nodes.remove(&key.name).is_some(),
            "Pod" => self.pods.remove(&namespaced()).is_some(),
            "Service" => self.services.remove(&namespaced()).is_some(),
            "AuthorizationPolicy" => self.authorization_policies.remove(&namespaced()).is_some(),
            "PeerAuthentication" => self.peer_authentications.remove(&namespaced()).is_some(),
            "ServiceAccount" => self.service_accounts.remove(&namespaced()).is_some(),
            "VirtualService" => self.virtual_services.remove(&namespaced()).is_some(),
            "DestinationRule" => self.destination_rules.remove(&namespaced()).is_some(),
            "LocalRateLimit" => self.local_rate_limits.remove(&namespaced()).is_some(),
            UNREAD => self.unread.remove(&namespaced()).is_some(),
            _ => false,
        }
    }

    /// Pods on `node` that the agent must capture: their namespace is ambient, they did not
    /// opt out, and they have a uid (the agent finds their cgroup by it).
    pub fn enrolled_pods<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.pods.values().filter(move |pod| {
            pod.node_name.as_deref() == Some(node)
                && !pod.uid.is_empty()
                && !pod.host_network
                && self.in_mesh(pod)
        })
    }

    /// Whether the pod is in the mesh: its namespace is ambient and it did not opt out.
    pub fn in_mesh(&self, pod: &PodInfo) -> bool {
        !pod.opted_out()
            && self
                .namespaces
                .get(&pod.namespace)
                .is_some_and(NamespaceInfo::ambient)
    }
}

impl ServiceInfo {
    /// Whether the Service selects the pod: same namespace, and every selector label matches.
    /// A Service with an empty selector selects nothing, as in Kubernetes.
    pub fn selects(&self, pod: &PodInfo) -> bool {
        self.namespace == pod.namespace
            && !self.selector.is_empty()
            && labels_match(&self.selector, &pod.labels)
    }
}

/// Whether every label of `selector` is among `labels` with the same value: the rule of a
/// Kubernetes `matchLabels`, for Service selectors, policy selectors and subsets alike. An
/// empty selector matches everything; callers for which it must match nothing (a Service
/// without a selector) say so themselves.
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn namespace(name: &str, l: &[(&str, &str)]) -> Object {
        Object::Namespace(NamespaceInfo {
            name: name.into(),
            labels: labels(l),
        })
    }

    fn pod(ns: &str, name: &str, node: &str, ip: &str, l: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            service_account_unset: false,
            mirror: false,
            container_ports: Default::default(),
            probe_ports: Default::default(),
            host_network: false,
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            node_name: Some(node.into()),
            ip: Some(ip.parse().unwrap()),
            service_account: "default".into(),
            labels: labels(l),
        }
    }

    #[test]
    fn ambient_by_either_label() {
        let ns = |l: &[(&str, &str)]| NamespaceInfo {
            name: "a".into(),
            labels: labels(l),
        };
        assert!(ns(&[(AMBIENT_LABEL, "ambient")]).ambient());
        assert!(ns(&[(ISTIO_AMBIENT_LABEL, "ambient")]).ambient());
        assert!(!ns(&[(AMBIENT_LABEL, "none")]).ambient());
        assert!(!ns(&[("other", "ambient")]).ambient());
        assert!(!ns(&[]).ambient());
    }

    #[test]
    fn pod_opt_out_by_either_label() {
        let p = |l: &[(&str, &str)]| pod("a", "p", "n1", "10.0.0.1", l);
        assert!(p(&[(AMBIENT_LABEL, "none")]).opted_out());
        assert!(p(&[(ISTIO_AMBIENT_LABEL, "none")]).opted_out());
        assert!(!p(&[(AMBIENT_LABEL, "ambient")]).opted_out());
        assert!(!p(&[]).opted_out());
    }

    #[test]
    fn enrolment_needs_node_namespace_uid_and_no_opt_out() {
        let mut m = Model::default();
        m.insert(namespace("mesh", &[(ISTIO_AMBIENT_LABEL, "ambient")]));
        m.insert(namespace("plain", &[]));
        m.insert(Object::Pod(pod("mesh", "in", "n1", "10.0.0.1", &[])));
        m.insert(Object::Pod(pod(
            "mesh",
            "other-node",
            "n2",
            "10.0.0.2",
            &[],
        )));
        m.insert(Object::Pod(pod(
            "plain",
            "not-ambient",
            "n1",
            "10.0.0.3",
            &[],
        )));
        m.insert(Object::Pod(pod(
            "absent",
            "no-namespace",
            "n1",
            "10.0.0.4",
            &[],
        )));
        m.insert(Object::Pod(pod(
            "mesh",
            "out",
            "n1",
            "10.0.0.5",
            &[(AMBIENT_LABEL, "none")],
        )));
        let mut no_uid = pod("mesh", "no-uid", "n1", "10.0.0.6", &[]);
        no_uid.uid.clear();
        m.insert(Object::Pod(no_uid));

        let names: Vec<_> = m.enrolled_pods("n1").map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["in"]);
    }

    #[test]
    fn security_policies_insert_and_remove_by_key() {
        use crate::config::{AuthzAction, MtlsMode};
        let mut m = Model::default();
        let ap = Object::AuthorizationPolicy(AuthorizationPolicyInfo {
            namespace: "shop".into(),
            name: "allow-nothing".into(),
            selector: None,
            target_refs: vec![],
            action: AuthzAction::Allow,
            provider: None,
            rules: vec![],
        });
        let pa = Object::PeerAuthentication(PeerAuthenticationInfo {
            namespace: "istio-system".into(),
            name: "default".into(),
            selector: None,
            mode: MtlsMode::Strict,
            port_level: BTreeMap::new(),
        });
        let (ap_key, pa_key) = (ap.key(), pa.key());
        assert_eq!(ap_key.to_string(), "AuthorizationPolicy shop/allow-nothing");
        assert_eq!(
            pa_key.to_string(),
            "PeerAuthentication istio-system/default"
        );
        assert!(!m.insert(ap.clone()));
        assert!(m.insert(ap));
        assert!(!m.insert(pa));
        assert_eq!(
            (m.authorization_policies.len(), m.peer_authentications.len()),
            (1, 1)
        );
        assert!(m.remove(&ap_key));
        assert!(m.remove(&pa_key));
        assert!(!m.remove(&pa_key));
        assert_eq!(m, Model::default());
    }

    #[test]
    fn traffic_objects_and_service_accounts_insert_and_remove_by_key() {
        use crate::config::TrafficPolicy;
        let mut m = Model::default();
        let objects = [
            Object::ServiceAccount(ServiceAccountInfo {
                namespace: "shop".into(),
                name: "cart".into(),
                labels: labels(&[("weft.dev/use-waypoint", "wp")]),
            }),
            Object::VirtualService(VirtualServiceInfo {
                namespace: "shop".into(),
                name: "cart".into(),
                hosts: vec!["cart".into()],
                http: vec![],
                export_to: vec![],
                meta: Default::default(),
            }),
            Object::DestinationRule(DestinationRuleInfo {
                namespace: "shop".into(),
                name: "cart".into(),
                host: "cart".into(),
                traffic_policy: TrafficPolicy::default(),
                subsets: vec![],
                retry_budget: None,
                meta: Default::default(),
            }),
        ];
        let keys: Vec<_> = objects.iter().map(|o| o.key().to_string()).collect();
        assert_eq!(
            keys,
            [
                "ServiceAccount shop/cart",
                "VirtualService shop/cart",
                "DestinationRule shop/cart"
            ]
        );
        for object in &objects {
            assert!(!m.insert(object.clone()));
            assert!(m.insert(object.clone()));
        }
        assert_eq!(
            (
                m.service_accounts.len(),
                m.virtual_services.len(),
                m.destination_rules.len()
            ),
            (1, 1, 1)
        );
        for object in &objects {
            assert!(m.remove(&object.key()));
            assert!(!m.remove(&object.key()));
        }
        assert_eq!(m, Model::default());
    }

    #[test]
    fn insert_reports_replacement_and_remove_by_key() {
        let mut m = Model::default();
        let p = Object::Pod(pod("a", "p", "n1", "10.0.0.1", &[]));
        let key = p.key();
        assert_eq!(key.to_string(), "Pod a/p");
        assert!(!m.insert(p.clone()));
        assert!(m.insert(p));
        assert!(m.remove(&key));
        assert!(m.pods.is_empty());
    }
}
