//! Manifest parsing of the core kinds: one YAML fixture per case.

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
            container_ports: Default::default(),
            probe_ports: Default::default(),
            namespace: "shop".into(),
            name: "cart-1".into(),
            uid: "0b7c0e43-1111-2222-3333-444455556666".into(),
            node_name: Some("node-1".into()),
            ip: Some("10.1.0.5".parse().unwrap()),
            service_account: "cart".into(),
            service_account_unset: false,
            mirror: false,
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
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: foo}}\nspec:\n  ports: {ports}\n")
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
    assert!(self::objects("apiVersion: apps/v1\nkind: Deployment\nmetadata: {}\n").is_empty());
}

#[test]
fn service_accounts_keep_name_namespace_and_labels() {
    let objects = objects(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: cart\n  namespace: shop\n  labels: {weft.dev/use-waypoint: wp}\n  annotations: {a: b}\nautomountServiceAccountToken: false\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: bare}\n",
    );
    assert_eq!(
        objects,
        [
            Object::ServiceAccount(ServiceAccountInfo {
                namespace: "shop".into(),
                name: "cart".into(),
                labels: [("weft.dev/use-waypoint".to_string(), "wp".to_string())].into(),
            }),
            Object::ServiceAccount(ServiceAccountInfo {
                namespace: "default".into(),
                name: "bare".into(),
                labels: Default::default(),
            }),
        ]
    );
    assert_eq!(
        error("apiVersion: v1\nkind: ServiceAccount\nmetadata: {namespace: shop}\n"),
        "ServiceAccount in namespace shop: metadata.name: required"
    );
}

#[test]
fn traffic_kinds_by_group_and_default_namespace() {
    let objects = objects(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], http: [{route: [{destination: {host: r}}]}]}\n---\napiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: r}\n---\napiVersion: example.com/v1\nkind: VirtualService\nmetadata: {name: other}\n",
    );
    let keys: Vec<_> = objects.iter().map(|o| o.key().to_string()).collect();
    assert_eq!(
        keys,
        [
            "VirtualService default/r",
            "DestinationRule default/r",
            "Unread example.com/v1/VirtualService/other"
        ]
    );
    // An Istio kind under another group is kept as unread, with the group it was meant for.
    let Object::Unread(unread) = &objects[2] else {
        panic!("{:?}", objects[2]);
    };
    assert_eq!(unread.meant, Some("networking.istio.io"));
    // Kinds of other groups are none of the mesh's business.
    assert!(
        self::objects("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n").is_empty()
    );
    assert!(
        self::objects(
            "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: p}\n"
        )
        .is_empty()
    );
    // A wrong shape is still reported under the object's name.
    let err = error(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: x}\nspec: {hosts: r}\n",
    );
    assert!(
        err.starts_with("VirtualService x/r: spec.hosts: invalid type: string \"r\""),
        "{err}"
    );
}

#[test]
fn named_target_ports_resolve_against_each_pods_container_ports() {
    let found = objects(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop, uid: u1}
spec:
  containers:
  - name: app
    ports: [{name: grpc, containerPort: 9000}, {name: dns, containerPort: 53, protocol: UDP}]
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: shop, uid: u2}
spec: {containers: [{name: app}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: users, namespace: shop}
spec:
  clusterIP: 10.96.0.1
  ports: [{name: grpc-api, port: 50051, targetPort: grpc}, {name: plain, port: 80}, {name: num, port: 81, targetPort: "8081"}]
"#,
    );
    let pod = |name: &str| {
        found
            .iter()
            .find_map(|o| match o {
                Object::Pod(p) if p.name == name => Some(p.clone()),
                _ => None,
            })
            .unwrap()
    };
    let Some(Object::Service(service)) = found.iter().find(|o| matches!(o, Object::Service(_)))
    else {
        panic!("no service")
    };
    let (a, b) = (pod("a"), pod("b"));
    assert_eq!(a.container_ports.get("grpc"), Some(&9000));
    assert!(
        !a.container_ports.contains_key("dns"),
        "UDP ports are not the mesh's"
    );
    let [named, plain, number] = &service.ports[..] else {
        panic!("{:?}", service.ports)
    };
    assert_eq!(named.target_port_name.as_deref(), Some("grpc"));
    assert_eq!(named.target_on(&a), Some(9000));
    assert_eq!(
        named.target_on(&b),
        None,
        "a pod without the port is no endpoint"
    );
    assert_eq!(plain.target_on(&b), Some(80));
    assert_eq!(number.target_on(&b), Some(8081));
}

#[test]
fn a_v1_list_is_read_item_by_item() {
    let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: shop}
- apiVersion: v1
  kind: Service
  metadata: {name: users, namespace: shop}
  spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
"#;
    let found = objects(text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(matches!(&found[0], Object::Namespace(ns) if ns.name == "shop"));
    assert!(matches!(&found[1], Object::Service(svc) if svc.name == "users"));
    let bad = error(
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: x}, spec: {ports: [{port: 70000}]}}\n",
    );
    assert!(bad.contains("items[0]: spec.ports[0].port"), "{bad}");
}

#[test]
fn mirror_pods_and_unnamed_service_accounts_are_marked() {
    let objects = objects(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: etcd-n1, namespace: kube-system, annotations: {kubernetes.io/config.mirror: abc}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.1.0.5}\n",
    );
    let Object::Pod(pod) = &objects[0] else {
        panic!("{objects:?}")
    };
    assert!(pod.mirror);
    assert!(pod.service_account_unset);
    assert_eq!(
        pod.service_account, "default",
        "as the model reads it for policy"
    );
}

#[test]
fn network_probe_ports_are_read_from_every_container() {
    let objects = objects(
        r#"apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec:
  containers:
  - name: app
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {port: http, path: /ready}}
    livenessProbe: {tcpSocket: {port: 8081}}
    startupProbe: {exec: {command: ["true"]}}
  - name: rpc
    livenessProbe: {grpc: {port: 50051}}
    readinessProbe: {httpGet: {port: 9090, host: 10.0.0.1}}
  initContainers:
  - name: sidecar
    restartPolicy: Always
    ports: [{name: admin, containerPort: 15000}]
    readinessProbe: {httpGet: {port: admin}}
    livenessProbe: {httpGet: {port: http}}
"#,
    );
    let Object::Pod(pod) = &objects[0] else {
        panic!("{objects:?}")
    };
    // `exec` runs inside the container, a probe with `host` goes elsewhere, and a port name
    // resolves only among its own container's ports.
    assert_eq!(
        pod.probe_ports.iter().copied().collect::<Vec<_>>(),
        [8080, 8081, 15000, 50051]
    );
}
