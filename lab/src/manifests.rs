//! The Kubernetes YAML that describes a lab: what `kubectl get -o yaml` would show of it.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{Map, Value, json};

use crate::{
    Pod,
    spec::{self, LabSpec},
};

fn labels(pairs: &[(String, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    )
}

pub fn render(spec: &LabSpec, pods: &BTreeMap<String, Pod>) -> Result<String> {
    let mut docs: Vec<Value> = Vec::new();
    // The agents' own namespace, and a Node and an agent Pod per node: the CA signs an
    // identity only for pods scheduled on the asking node, and the tunnel finds a node's
    // address from its Node object, as on a real cluster.
    docs.push(
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "weft-system" } }),
    );
    for node in 1..=spec.nodes {
        let name = spec::node_name(node);
        let ip = spec::node_ip(node).to_string();
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": name },
            "status": { "addresses": [{ "type": "InternalIP", "address": ip }] },
        }));
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": format!("weft-agent-{name}"),
                "namespace": "weft-system",
                "uid": format!("00000000-0000-4000-8000-{node:012}"),
                "labels": { "app": "weft-agent" },
            },
            "spec": {
                "nodeName": name,
                "hostNetwork": true,
                "serviceAccountName": "weft-agent",
                "containers": [{ "name": "agent", "image": "weft-agent" }],
            },
            "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }] },
        }));
    }
    for ns in &spec.namespaces {
        let mut pairs = ns.labels.clone();
        if ns.ambient {
            pairs.push(("weft.dev/dataplane-mode".into(), "ambient".into()));
        }
        let meta = json!({ "name": ns.name, "labels": labels(&pairs) });
        docs.push(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": meta }));
    }
    for pod_spec in &spec.pods {
        let Some(pod) = pods.get(&pod_spec.name) else {
            continue;
        };
        let mut container = json!({ "name": "app", "image": "weft-lab" });
        if let Some(port) = pod_spec.probe_ports.first() {
            container["readinessProbe"] = json!({ "tcpSocket": { "port": port } });
        }
        if let Some(port) = pod_spec.probe_ports.get(1) {
            container["livenessProbe"] = json!({ "tcpSocket": { "port": port } });
        }
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "uid": pod.uid,
                "labels": labels(&pod_spec.labels),
            },
            "spec": {
                "nodeName": spec::node_name(pod.node),
                "serviceAccountName": pod_spec.service_account,
                "containers": [container],
            },
            "status": { "phase": "Running", "podIP": pod.ip.to_string(), "podIPs": [{ "ip": pod.ip.to_string() }] },
        }));
    }
    for svc in &spec.services {
        let ports: Vec<Value> = svc
            .ports
            .iter()
            .map(|p| {
                let mut port = json!({ "name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": "TCP" });
                if let Some(app) = &p.app_protocol {
                    port["appProtocol"] = json!(app);
                }
                port
            })
            .collect();
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": svc.name, "namespace": svc.namespace, "labels": labels(&svc.labels) },
            "spec": { "clusterIP": svc.cluster_ip.to_string(), "selector": labels(&svc.selector), "ports": ports },
        }));
    }
    let mut out = String::from("# Written by the Weft lab: the cluster as Kubernetes objects.\n");
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc)?);
    }
    Ok(out)
}
