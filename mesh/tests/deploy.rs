//! Every manifest under deploy/ is what it claims to be: a built-in object parses as its
//! k8s-openapi type and loses no field on the way (a misspelt field would be dropped, so a
//! round trip that changes the document fails), and an Istio or Weft object is accepted by
//! Weft's own parser, the one both configuration sources use.

use std::path::{Path, PathBuf};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount},
    policy::v1::PodDisruptionBudget,
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

fn manifests(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            manifests(&path, out);
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".yaml") || n.ends_with(".yaml.example"))
        {
            out.push(path);
        }
    }
}

/// Drops what a round trip may legitimately add or lose: nulls, empty maps, and whether a
/// number was written as an integer or a float (JSONSchema's `maximum` is a float).
fn normalize(v: Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().map_or(Value::Null, Value::from),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, normalize(v)))
                .filter(|(_, v)| !v.is_null() && v != &Value::Object(Default::default()))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        other => other,
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what}: does not parse: {e}"));
    let back = normalize(serde_json::to_value(&typed).unwrap());
    let original = normalize(doc.clone());
    assert_eq!(back, original, "{what}: a field was not understood");
}

#[test]
fn every_manifest_under_deploy_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut files = Vec::new();
    manifests(&root, &mut files);
    assert!(files.len() >= 15, "deploy/ has {} manifests", files.len());
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let yaml: serde_yaml::Value = serde::Deserialize::deserialize(document).unwrap();
            if yaml.is_null() {
                continue;
            }
            let doc: Value = serde_json::to_value(&yaml).unwrap();
            let kind = doc["kind"].as_str().unwrap_or("").to_string();
            let group = doc["apiVersion"].as_str().unwrap_or("");
            let what = format!("{} document {} ({kind})", file.display(), i + 1);
            match (group, kind.as_str()) {
                ("v1", "Namespace") => round_trip::<Namespace>(&doc, &what),
                ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(&doc, &what),
                ("v1", "Service") => round_trip::<Service>(&doc, &what),
                ("v1", "ConfigMap") => round_trip::<ConfigMap>(&doc, &what),
                ("v1", "Secret") => round_trip::<Secret>(&doc, &what),
                ("apps/v1", "Deployment") => round_trip::<Deployment>(&doc, &what),
                ("apps/v1", "DaemonSet") => round_trip::<DaemonSet>(&doc, &what),
                ("policy/v1", "PodDisruptionBudget") => {
                    round_trip::<PodDisruptionBudget>(&doc, &what)
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    round_trip::<ClusterRole>(&doc, &what)
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    round_trip::<ClusterRoleBinding>(&doc, &what)
                }
                ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(&doc, &what),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                    round_trip::<RoleBinding>(&doc, &what)
                }
                ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                    round_trip::<CustomResourceDefinition>(&doc, &what)
                }
                ("monitoring.coreos.com/v1", "PrometheusRule") => {
                    let groups = doc["spec"]["groups"].as_array().expect(&what);
                    assert!(groups.iter().all(|g| {
                        g["rules"]
                            .as_array()
                            .is_some_and(|r| r.iter().all(|r| r["expr"].is_string()))
                    }));
                }
                (g, _)
                    if g.starts_with("networking.istio.io/")
                        || g.starts_with("security.istio.io/")
                        || g.starts_with("weft.dev/") =>
                {
                    match weft_mesh::config::parse_value(yaml.clone()) {
                        Ok(Some(_)) => {}
                        other => panic!("{what}: Weft does not accept it: {other:?}"),
                    }
                }
                _ => panic!("{what}: no check for apiVersion {group} kind {kind}"),
            }
            *kinds.entry(kind).or_default() += 1;
        }
    }
    for needed in [
        "DaemonSet",
        "Deployment",
        "ClusterRole",
        "CustomResourceDefinition",
        "VirtualService",
        "DestinationRule",
        "AuthorizationPolicy",
        "PeerAuthentication",
        "LocalRateLimit",
        "PrometheusRule",
    ] {
        assert!(
            kinds.contains_key(needed),
            "deploy/ has no {needed}: {kinds:?}"
        );
    }
}

/// The agent's rolling update is the hand-over the faults bench exercises: the new agent
/// surges beside the old one (which a declared hostPort would prevent), and the pod's grace
/// period outlasts the agent's drain.
#[test]
fn the_agent_daemonset_surges_and_outlasts_its_drain() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent/20-daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let ds: DaemonSet = serde_yaml::from_str(&text).unwrap();
    let spec = ds.spec.unwrap();
    let rolling = spec.update_strategy.unwrap().rolling_update.unwrap();
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    let pod = spec.template.spec.unwrap();
    let agent = &pod.containers[0];
    assert!(
        agent.ports.as_ref().is_none_or(Vec::is_empty),
        "a hostNetwork container's ports are hostPorts, which keep the surging agent off the node"
    );
    let env = |name: &str| {
        agent
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(env("WEFT_KEEP_DATAPATH_ON_EXIT").as_deref(), Some("true"));
    let drain: i64 = env("WEFT_DRAIN_SECONDS").unwrap().parse().unwrap();
    let grace = pod.termination_grace_period_seconds.unwrap();
    assert!(
        grace > drain,
        "terminationGracePeriodSeconds {grace} <= the drain {drain}"
    );
}
