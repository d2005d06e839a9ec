//! `weft-agent waypoint generate`: the ServiceAccount, Deployment, Service and
//! PodDisruptionBudget of a waypoint, per namespace (the default) or per service account, as YAML to apply, in the
//! spirit of `istioctl waypoint generate`. The same objects are applied by `--apply` with
//! server-side apply.
//!
//! What makes the objects a waypoint for Weft (mesh/src/config/waypoint.rs): workloads
//! bind with the label `weft.dev/use-waypoint=<name>`, on their namespace or Service (for
//! Service traffic) or on their ServiceAccount (for traffic to the pods' own addresses),
//! and the waypoint is the Service `<name>` of that namespace, whose pods are its endpoints.
//! The pods opt out of capture (`weft.dev/dataplane-mode: none`): they speak HBONE
//! themselves.

use serde_json::{Value, json};

use crate::{
    config::{AMBIENT_LABEL, NONE, USE_WAYPOINT_LABEL},
    hbone,
};

/// What to generate.
#[derive(Debug, Clone)]
pub struct WaypointManifests {
    pub namespace: String,
    /// A waypoint for this service account's workloads only; `None`: the whole namespace.
    pub service_account: Option<String>,
    /// Defaults to `waypoint` for a namespace, `<account>-waypoint` for a service account.
    pub name: Option<String>,
    pub image: String,
    /// The CA, `host:port`.
    pub ca_address: String,
    pub trust_domain: String,
    /// Pods of the Deployment (two by default): the node agents balance over them and move
    /// a client off one that goes away.
    pub replicas: u32,
}

impl WaypointManifests {
    pub fn name(&self) -> String {
        match (&self.name, &self.service_account) {
            (Some(name), _) => name.clone(),
            (None, Some(account)) => format!("{account}-waypoint"),
            (None, None) => "waypoint".to_string(),
        }
    }

    /// How workloads bind to this waypoint, for the comment above the objects.
    pub fn binding(&self) -> String {
        let name = self.name();
        match &self.service_account {
            Some(account) => format!(
                "kubectl label serviceaccount {account} -n {} {USE_WAYPOINT_LABEL}={name}",
                self.namespace
            ),
            None => format!(
                "kubectl label namespace {} {USE_WAYPOINT_LABEL}={name}",
                self.namespace
            ),
        }
    }

    /// ServiceAccount, Deployment, Service, the PodDisruptionBudget that keeps all but one
    /// replica up through voluntary disruptions, and the ClusterRoleBinding that lets the
    /// waypoint read the cluster (to the ClusterRole `weft-waypoint` of deploy/waypoint/).
    ///
    /// The replicas spread over nodes where they can, and a rolling update starts a new pod
    /// before it stops an old one (which drains on SIGTERM).
    pub fn objects(&self) -> Vec<Value> {
        let (name, ns) = (self.name(), self.namespace.as_str());
        let labels = json!({
            "weft.dev/waypoint": name,
            "app.kubernetes.io/name": "weft-waypoint",
            "app.kubernetes.io/part-of": "weft",
        });
        let mut pod_labels = labels.clone();
        pod_labels[AMBIENT_LABEL] = NONE.into();
        let probe = |service: &str, period: u32, failures: u32| {
            json!({"grpc": {"port": 15021, "service": service},
                   "periodSeconds": period, "failureThreshold": failures})
        };
        let env = |name: &str, value: &str| json!({"name": name, "value": value});
        let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
        vec![
            json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
            }),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {
                    "replicas": self.replicas,
                    "selector": {"matchLabels": {"weft.dev/waypoint": name}},
                    "strategy": {"type": "RollingUpdate",
                                 "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                    "template": {
                        "metadata": {"labels": pod_labels},
                        "spec": {
                            "serviceAccountName": name,
                            "topologySpreadConstraints": [{
                                "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                "whenUnsatisfiable": "ScheduleAnyway",
                                "labelSelector": {"matchLabels": {"weft.dev/waypoint": name}},
                            }],
                            // Above the waypoint's drain (WEFT_DRAIN_SECONDS) after SIGTERM.
                            "terminationGracePeriodSeconds": 30,
                            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                                "seccompProfile": {"type": "RuntimeDefault"}},
                            "containers": [{
                                "name": "waypoint",
                                "image": self.image,
                                "command": ["weft-waypoint"],
                                "env": [
                                    env("WEFT_WAYPOINT_NAME", &name),
                                    env("WEFT_SERVICE_ACCOUNT", &name),
                                    field("POD_NAMESPACE", "metadata.namespace"),
                                    field("POD_IP", "status.podIP"),
                                    env("WEFT_KUBERNETES", "true"),
                                    env("WEFT_CA_ADDRESS", &self.ca_address),
                                    env("WEFT_CA_TOKEN_FILE", "/var/run/secrets/weft.dev/ca-token/token"),
                                    env("WEFT_TRUST_BUNDLE", "/etc/weft/trust/root-cert.pem"),
                                    env("WEFT_TRUST_DOMAIN", &self.trust_domain),
                                    env("WEFT_WORKER_THREADS", "2"),
                                    env("WEFT_DRAIN_SECONDS", "20"),
                                ],
                                "ports": [
                                    {"name": "hbone", "containerPort": hbone::PORT},
                                    {"name": "admin", "containerPort": 15000},
                                    {"name": "metrics", "containerPort": 15020},
                                    {"name": "health", "containerPort": 15021},
                                ],
                                "startupProbe": probe("", 2, 150),
                                "readinessProbe": probe("", 5, 2),
                                "livenessProbe": probe("weft-waypoint", 10, 3),
                                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                                              "limits": {"memory": "256Mi"}},
                                "securityContext": {"allowPrivilegeEscalation": false,
                                                    "readOnlyRootFilesystem": true,
                                                    "capabilities": {"drop": ["ALL"]}},
                                "volumeMounts": [
                                    {"name": "ca-token", "mountPath": "/var/run/secrets/weft.dev/ca-token", "readOnly": true},
                                    {"name": "trust-bundle", "mountPath": "/etc/weft/trust", "readOnly": true},
                                ],
                            }],
                            "volumes": [
                                {"name": "ca-token", "projected": {"sources": [{"serviceAccountToken":
                                    {"audience": "weft-ca", "expirationSeconds": 3600, "path": "token"}}]}},
                                {"name": "trust-bundle", "configMap": {"name": "weft-trust-bundle",
                                    "items": [{"key": "root-cert.pem", "path": "root-cert.pem"}]}},
                            ],
                        },
                    },
                },
            }),
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {
                    "selector": {"weft.dev/waypoint": name},
                    "ports": [{"name": "hbone", "port": hbone::PORT, "targetPort": hbone::PORT, "protocol": "TCP"}],
                },
            }),
            json!({
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {
                    "maxUnavailable": 1,
                    "selector": {"matchLabels": {"weft.dev/waypoint": name}},
                },
            }),
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": format!("weft-waypoint-{ns}-{name}"), "labels": labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "weft-waypoint"},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
            }),
        ]
    }

    /// The objects as one multi-document YAML text, with how to bind workloads on top.
    pub fn yaml(&self) -> String {
        let mut out = format!(
            "# Weft waypoint {}/{}. Bind workloads to it with:\n#   {}\n",
            self.namespace,
            self.name(),
            self.binding()
        );
        for object in self.objects() {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(&object).unwrap_or_default());
        }
        out
    }

    /// Applies the objects with server-side apply (field manager `weft-agent`), to the
    /// cluster the environment names (in-cluster account, or the kubeconfig).
    pub async fn apply(&self) -> Result<(), String> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("connecting to the Kubernetes API: {e}"))?;
        self.apply_with(client).await
    }

    pub async fn apply_with(&self, client: kube::Client) -> Result<(), String> {
        use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
        let params = PatchParams::apply("weft-agent").force();
        for object in self.objects() {
            let (group, version) = match object["apiVersion"].as_str().unwrap_or("").split_once('/')
            {
                Some((g, v)) => (g.to_string(), v.to_string()),
                None => (
                    String::new(),
                    object["apiVersion"].as_str().unwrap_or("").to_string(),
                ),
            };
            let kind = object["kind"].as_str().unwrap_or("").to_string();
            let plural = format!("{}s", kind.to_ascii_lowercase());
            let resource = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(&group, &version, &kind),
                &plural,
            );
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            api.patch(&name, &params, &Patch::Apply(&object))
                .await
                .map_err(|e| format!("applying {kind} {name}: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{
        apps::v1::Deployment,
        core::v1::{Service, ServiceAccount},
        policy::v1::PodDisruptionBudget,
        rbac::v1::ClusterRoleBinding,
    };

    use super::*;
    use crate::config::{DirSource, WaypointRef};

    fn spec(account: Option<&str>) -> WaypointManifests {
        WaypointManifests {
            namespace: "shop".into(),
            service_account: account.map(str::to_string),
            name: None,
            image: "weft:test".into(),
            ca_address: "weft-ca.weft-system.svc:15012".into(),
            trust_domain: "cluster.local".into(),
            replicas: 2,
        }
    }

    /// Every document parses as its Kubernetes type.
    fn parse_all(yaml: &str) -> (Deployment, Service, ServiceAccount, ClusterRoleBinding) {
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &serde_yaml::Value| !v.is_null())
            .collect();
        assert_eq!(docs.len(), 5, "{yaml}");
        let typed = |kind: &str| {
            docs.iter()
                .find(|d| d["kind"] == kind)
                .cloned()
                .unwrap_or_else(|| panic!("no {kind}"))
        };
        let budget: PodDisruptionBudget =
            serde_yaml::from_value(typed("PodDisruptionBudget")).unwrap();
        assert_eq!(
            budget.spec.unwrap().max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
        );
        (
            serde_yaml::from_value(typed("Deployment")).unwrap(),
            serde_yaml::from_value(typed("Service")).unwrap(),
            serde_yaml::from_value(typed("ServiceAccount")).unwrap(),
            serde_yaml::from_value(typed("ClusterRoleBinding")).unwrap(),
        )
    }

    #[test]
    fn namespace_waypoint_parses_and_round_trips_through_the_directory_source() {
        let generated = spec(None);
        let yaml = generated.yaml();
        let (deployment, service, account, binding) = parse_all(&yaml);
        assert_eq!(deployment.metadata.name.as_deref(), Some("waypoint"));
        let deployment = deployment.spec.unwrap();
        assert_eq!(deployment.replicas, Some(2), "two replicas by default");
        let rolling = deployment.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(
            (rolling.max_surge, rolling.max_unavailable),
            (
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)),
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
            )
        );
        let pod = deployment.template;
        let labels = pod.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["weft.dev/dataplane-mode"], "none");
        let pod_spec = pod.spec.unwrap();
        assert_eq!(pod_spec.service_account_name.as_deref(), Some("waypoint"));
        let probe = pod_spec.containers[0].readiness_probe.clone().unwrap();
        assert_eq!(probe.grpc.unwrap().port, 15021);
        assert_eq!(service.spec.unwrap().ports.unwrap()[0].port, 15008);
        assert_eq!(account.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(binding.subjects.unwrap()[0].name, "waypoint");
        assert!(yaml.contains("kubectl label namespace shop weft.dev/use-waypoint=waypoint"));

        // Through the directory source, beside a namespace bound to it and one of its pods.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("waypoint.yaml"), &yaml).unwrap();
        std::fs::write(
            dir.path().join("shop.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {weft.dev/dataplane-mode: ambient, weft.dev/use-waypoint: waypoint}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: users, namespace: shop}\nspec: {clusterIP: 10.96.0.5, selector: {app: users}, ports: [{name: grpc, port: 50051}]}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: waypoint-1, namespace: shop, uid: u1, labels: {weft.dev/waypoint: waypoint, weft.dev/dataplane-mode: none}}\nspec: {nodeName: n1, serviceAccountName: waypoint}\nstatus: {podIP: 10.200.1.9}\n",
        )
        .unwrap();
        let (model, errors) = DirSource::new(dir.path()).reload();
        assert!(errors.is_empty(), "{errors:?}");
        let model = crate::state::State::compile(model);
        let waypoint = WaypointRef {
            namespace: "shop".into(),
            name: "waypoint".into(),
        };
        let users = &model.services[&("shop".to_string(), "users".to_string())];
        assert_eq!(model.service_waypoint(users), Some(waypoint.clone()));
        let pods = model.waypoint_pods(&waypoint);
        assert_eq!(
            pods.len(),
            1,
            "the generated Service selects the waypoint's pods"
        );
        assert!(
            model
                .service_accounts
                .contains_key(&("shop".to_string(), "waypoint".to_string()))
        );
    }

    /// `--apply` sends each object as a server-side apply patch to its own resource path.
    #[tokio::test]
    async fn apply_sends_server_side_apply_patches() {
        use std::sync::{Arc, Mutex};

        use http_body_util::{BodyExt, Full};
        use hyper::{Request, body::Incoming};

        use crate::test_http::{kube_client, serve_http};

        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = seen.clone();
        let addr = serve_http(move |req: Request<Incoming>| {
            let recorder = recorder.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                recorder.lock().unwrap().push((
                    parts.method.to_string(),
                    parts.uri.to_string(),
                    parts.headers["content-type"].to_str().unwrap().to_string(),
                ));
                // Server-side apply answers with the object as applied.
                let mut r = hyper::Response::new(Full::new(body));
                r.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                r
            }
        })
        .await;
        let client = kube_client(addr);
        spec(None).apply_with(client).await.unwrap();
        let seen: Vec<(String, String, String)> = seen.lock().unwrap().clone();
        let paths: Vec<&str> = seen
            .iter()
            .map(|(_, uri, _)| uri.split('?').next().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "/api/v1/namespaces/shop/serviceaccounts/waypoint",
                "/apis/apps/v1/namespaces/shop/deployments/waypoint",
                "/api/v1/namespaces/shop/services/waypoint",
                "/apis/policy/v1/namespaces/shop/poddisruptionbudgets/waypoint",
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/weft-waypoint-shop-waypoint",
            ]
        );
        for (method, uri, content_type) in &seen {
            assert_eq!(method, "PATCH");
            assert!(
                uri.contains("fieldManager=weft-agent") && uri.contains("force=true"),
                "{uri}"
            );
            assert_eq!(content_type, "application/apply-patch+yaml");
        }
    }

    #[test]
    fn service_account_waypoint_is_named_for_it() {
        let generated = spec(Some("batch"));
        let (deployment, _, _, _) = parse_all(&generated.yaml());
        assert_eq!(deployment.metadata.name.as_deref(), Some("batch-waypoint"));
        assert!(generated.binding().contains(
            "kubectl label serviceaccount batch -n shop weft.dev/use-waypoint=batch-waypoint"
        ));
        let named = WaypointManifests {
            name: Some("edge".into()),
            ..spec(Some("batch"))
        };
        assert_eq!(named.name(), "edge");
    }
}
