use super::*;
use crate::config::parse::parse_documents;

fn state(yaml: &str) -> State {
    State::compile(crate::config::model_from_yaml(yaml).unwrap())
}

fn codes<'a>(state: &'a State, object: &str) -> Vec<&'a str> {
    state.findings_for(object).map(|f| f.code).collect()
}

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop, uid: u1, labels: {app: cart, version: v1}}
spec: {nodeName: n1}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-2, namespace: shop, uid: u2, labels: {app: cart, version: v2}}
spec: {nodeName: n1}
status: {podIP: 10.1.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: shop, uid: u3, labels: {app: cart}}
spec: {nodeName: n1, hostNetwork: true}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-1, namespace: shop, uid: u4, labels: {gateway: waypoint}}
spec: {nodeName: n1}
status: {podIP: 10.1.0.9}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.1, selector: {app: cart}, ports: [{name: grpc, port: 50051}]}
---
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: shop}
spec: {clusterIP: 10.96.0.9, selector: {gateway: waypoint}, ports: [{name: hbone, port: 15008}]}
"#;

#[test]
fn lookups_by_ip_vip_and_name() {
    let s = state(BASE);
    let pod = |ip: &str| s.pod_by_ip(ip.parse().unwrap()).map(|p| p.name.as_str());
    assert_eq!(pod("10.1.0.1"), Some("cart-1"));
    // A host-network pod owns no address: the node's is shared by everything on the host.
    assert_eq!(pod("10.0.0.1"), None);
    assert_eq!(pod("10.9.9.9"), None);
    let cart = s.service_by_ip("10.96.0.1".parse().unwrap()).unwrap();
    assert_eq!(cart.name, "cart");
    let endpoints: Vec<_> = s.endpoints(cart).map(|p| p.name.as_str()).collect();
    assert_eq!(endpoints, ["cart-1", "cart-2"]);
    let selecting: Vec<_> = s
        .services_selecting(s.pod_by_ip("10.1.0.2".parse().unwrap()).unwrap())
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(selecting, ["cart"]);
    assert_eq!(
        s.service_for_host("cart.shop.svc.cluster.local", "other")
            .map(|s| s.name.as_str()),
        Some("cart")
    );
    assert!(s.service_for_host("cart", "other").is_none());
    let w = s.workload("10.1.0.1".parse().unwrap()).unwrap();
    assert_eq!(w.name, "cart");
    assert!(w.in_mesh);
}

#[test]
fn istio_use_waypoint_binds_as_weft_does() {
    let s = state(BASE);
    let cart = s.service("shop", "cart").unwrap();
    let want = Some(WaypointRef {
        namespace: "shop".into(),
        name: "waypoint".into(),
    });
    assert_eq!(cart.waypoint, want);
    assert_eq!(
        s.waypoint_pods(want.as_ref().unwrap())[0].name,
        "waypoint-1"
    );

    // Weft's label wins over Istio's; `none` opts out in either spelling.
    let weft_wins = BASE.replace(
        "labels: {istio.io/use-waypoint: waypoint}",
        "labels: {istio.io/use-waypoint: waypoint, weft.dev/use-waypoint: none}",
    );
    assert_eq!(
        state(&weft_wins).service("shop", "cart").unwrap().waypoint,
        None
    );

    // A waypoint for workloads only is not bound to Service traffic, and that is said.
    let workload_only = BASE.replace(
        "metadata: {name: waypoint, namespace: shop}",
        "metadata: {name: waypoint, namespace: shop, labels: {istio.io/waypoint-for: workload}}",
    );
    let s = state(&workload_only);
    assert_eq!(s.service("shop", "cart").unwrap().waypoint, None);
    assert_eq!(codes(&s, "Service shop/cart"), ["WEFT032"]);

    // A binding to a waypoint that does not exist is reported.
    let missing = BASE.replace(
        "istio.io/use-waypoint: waypoint}",
        "istio.io/use-waypoint: nowhere}",
    );
    assert_eq!(codes(&state(&missing), "Service shop/cart"), ["WEFT033"]);
}

fn destination_rule(name: &str, created: Option<&str>, body: &str) -> String {
    let created = created
        .map(|c| format!(", creationTimestamp: \"{c}\""))
        .unwrap_or_default();
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: shop{created}}}\nspec:\n  host: cart\n{body}"
    )
}

#[test]
fn destination_rules_of_one_host_merge_as_istio_does() {
    let yaml = [
        BASE.to_string(),
        // The oldest by timestamp, though its name sorts last.
        destination_rule(
            "z-balance",
            Some("2026-01-01T00:00:00Z"),
            "  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}\n  subsets: [{name: v1, labels: {version: v1}}]\n",
        ),
        destination_rule(
            "a-versions",
            Some("2026-02-01T00:00:00Z"),
            "  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n  subsets: [{name: v1, labels: {version: other}}, {name: v2, labels: {version: v2}}]\n",
        ),
        // No timestamp: newer than any that has one.
        destination_rule(
            "b-pool",
            None,
            "  subsets: [{name: canary, labels: {track: canary}}]\n",
        ),
    ]
    .concat();
    let s = state(&yaml);
    let cart = s.service("shop", "cart").unwrap().service.clone();
    let merged = s.destination_rule_for(&cart).unwrap();
    assert_eq!(merged.name, "z-balance");
    assert_eq!(
        merged.traffic_policy.load_balancer,
        Some(crate::config::LoadBalancer::LeastRequest)
    );
    let subsets: Vec<_> = merged
        .subsets
        .iter()
        .map(|s| (s.name.as_str(), s.labels.values().next().unwrap().as_str()))
        .collect();
    assert_eq!(
        subsets,
        [("v1", "v1"), ("v2", "v2"), ("canary", "canary")],
        "united, and the older v1 wins"
    );
    let mut a = codes(&s, "DestinationRule shop/a-versions");
    a.sort();
    assert_eq!(a, ["WEFT021", "WEFT022"]);
    assert!(codes(&s, "DestinationRule shop/b-pool").is_empty());
    assert!(codes(&s, "Service shop/cart").contains(&"WEFT020"));

    // Rules of another namespace give way to the Service's own.
    let elsewhere = format!(
        "{yaml}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: far, namespace: other}}\nspec: {{host: cart.shop.svc.cluster.local}}\n"
    );
    let s = state(&elsewhere);
    assert_eq!(s.destination_rule_for(&cart).unwrap().name, "z-balance");
    assert_eq!(codes(&s, "DestinationRule other/far"), ["WEFT023"]);
}

fn virtual_service(name: &str, created: &str, subset: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: shop, creationTimestamp: \"{created}\"}}\nspec:\n  hosts: [cart]\n  http: [{{route: [{{destination: {{host: cart, subset: {subset}}}}}]}}]\n"
    )
}

#[test]
fn the_oldest_virtual_service_of_a_host_wins_and_the_others_are_reported() {
    let yaml = [
        BASE.to_string(),
        destination_rule(
            "versions",
            None,
            "  subsets: [{name: v1, labels: {version: v1}}]\n",
        ),
        virtual_service("a-new", "2026-03-01T00:00:00Z", "v1"),
        virtual_service("z-old", "2026-01-01T00:00:00Z", "v1"),
        virtual_service("m-typo", "2026-04-01T00:00:00Z", "v9"),
    ]
    .concat();
    let s = state(&yaml);
    let cart = s.service("shop", "cart").unwrap().service.clone();
    assert_eq!(s.virtual_service_for(&cart).unwrap().name, "z-old");
    assert_eq!(codes(&s, "VirtualService shop/a-new"), ["IST0109"]);
    assert!(codes(&s, "VirtualService shop/z-old").is_empty());
    // The unknown subset is an error even on a losing VirtualService.
    assert_eq!(
        codes(&s, "VirtualService shop/m-typo"),
        ["IST0101", "IST0109"]
    );
}

#[test]
fn l7_rules_without_a_waypoint_and_sidecar_namespaces_are_reported() {
    let yaml = format!(
        "{BASE}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: legacy, labels: {{istio-injection: enabled}}}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: paths, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: cart}}}}\n  rules: [{{to: [{{operation: {{paths: [/x]}}}}]}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: l4, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: cart}}}}\n  rules: [{{from: [{{source: {{namespaces: [shop]}}}}]}}]\n"
    );
    let s = state(&yaml);
    let paths: Vec<_> = s.findings_for("AuthorizationPolicy shop/paths").collect();
    assert_eq!(paths.len(), 1);
    assert_eq!(paths[0].code, "WEFT034", "delegated to the waypoint");
    assert!(paths[0].message.contains("shop/waypoint"), "{}", paths[0]);
    assert!(codes(&s, "AuthorizationPolicy shop/l4").is_empty());
    assert_eq!(codes(&s, "Namespace legacy"), ["WEFT040"]);
}

#[test]
fn every_compile_is_a_new_epoch() {
    let a = state(BASE);
    let b = state(BASE);
    assert!(b.epoch() > a.epoch());
    assert!(b == *a.model());
}

const L7_POLICY: &str = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: calls, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/gateway]}}]
    to: [{operation: {paths: [/cart.Cart/Get]}}]
"#;

#[test]
fn l7_workload_policies_are_delegated_to_the_waypoint_that_serves_them() {
    let s = state(&format!("{BASE}{L7_POLICY}"));
    let delegated = s.delegated_policies("shop", "cart");
    assert_eq!(delegated.len(), 1);
    assert_eq!(delegated[0].name, "calls");
    let cart = s.pod_by_ip("10.1.0.1".parse().unwrap()).unwrap();
    // The waypoint's pod runs as `default` in the lab's manifests here.
    let d = s.delegation_to(cart, "shop", "default").unwrap();
    assert_eq!(d.waypoint.name, "waypoint");
    assert_eq!(d.policies, [("shop".to_string(), "calls".to_string())]);
    assert_eq!(
        d.ports,
        [50051],
        "only the pod ports the waypoint serves per call"
    );
    assert!(s.delegation_to(cart, "shop", "gateway").is_none());
    assert_eq!(codes(&s, "AuthorizationPolicy shop/calls"), ["WEFT034"]);

    // Without a waypoint, nothing is delegated, and the fail-closed policy is an error.
    let unbound = format!("{BASE}{L7_POLICY}").replace("istio.io/use-waypoint: waypoint", "x: y");
    let s = state(&unbound);
    assert!(s.delegated_policies("shop", "cart").is_empty());
    assert!(
        s.delegation_to(
            s.pod_by_ip("10.1.0.1".parse().unwrap()).unwrap(),
            "shop",
            "default"
        )
        .is_none()
    );
    assert_eq!(codes(&s, "AuthorizationPolicy shop/calls"), ["WEFT031"]);

    // A policy that selects only some of a Service's endpoints is not delegated: the
    // waypoint decides before it picks an endpoint, so it stays (fail-closed) at L4.
    let partial = format!("{BASE}{L7_POLICY}").replace(
        "selector: {matchLabels: {app: cart}}",
        "selector: {matchLabels: {version: v1}}",
    );
    let s = state(&partial);
    assert!(s.delegated_policies("shop", "cart").is_empty());
    assert_eq!(codes(&s, "AuthorizationPolicy shop/calls"), ["WEFT031"]);
}

/// Everything a State answers, as sorted lines, so that two states can be compared.
fn digest(s: &State) -> Vec<String> {
    let mut out = Vec::new();
    for (ip, a) in s.addresses.iter() {
        match &a.owner {
            Owner::Workload(w) => out.push(format!(
                "ip {ip} {}/{} {} {} {:?} {:?}",
                w.pod.namespace, w.pod.name, w.name, w.in_mesh, w.waypoint, a.waypoint
            )),
            Owner::Service(c) => out.push(format!(
                "vip {ip} {}/{} {:?}",
                c.service.namespace, c.service.name, a.waypoint
            )),
        }
    }
    for (ns, shard) in &s.shards {
        for c in shard.services.values() {
            let endpoints: Vec<&str> = c.endpoints.iter().map(|w| w.pod.name.as_str()).collect();
            out.push(format!(
                "service {ns}/{} {endpoints:?} {:?} {:?} {:?}",
                c.service.name,
                c.waypoint,
                c.virtual_service.as_ref().map(|v| &v.name),
                c.destination_rule.as_ref().map(|d| &d.name)
            ));
        }
        for (pod, services) in &shard.selecting {
            let mut names: Vec<&str> = services.iter().map(|c| c.service.name.as_str()).collect();
            names.sort_unstable();
            out.push(format!("selecting {ns}/{pod} {names:?}"));
        }
        for (pod, delegations) in &shard.delegated.workloads {
            out.push(format!("delegation {ns}/{pod} {delegations:?}"));
        }
        for (service, policies) in &shard.delegated.services {
            let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
            out.push(format!("delegated {ns}/{service} {names:?}"));
        }
    }
    for f in &s.findings {
        out.push(format!("finding {} {} {}", f.code, f.object, f.message));
    }
    out.retain(|line| !line.ends_with("[]") || !line.starts_with("selecting"));
    out.sort();
    out
}

fn pod_object(yaml: &str) -> Object {
    match parse_documents(yaml).pop() {
        Some((_, Ok(Some(object)))) => object,
        other => panic!("not a pod: {other:?}"),
    }
}

use crate::config::Object;

#[test]
fn one_changed_pod_updates_to_what_a_full_compile_gives() {
    let base = state(&format!("{BASE}{L7_POLICY}"));
    assert!(!base.delegated_policies("shop", "cart").is_empty());
    let cases = [
        // A new endpoint of the bound Service.
        "apiVersion: v1\nkind: Pod\nmetadata: {name: cart-3, namespace: shop, uid: u5, labels: {app: cart, version: v1}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.1.0.3}\n",
        // An endpoint relabelled out of the Service, and so out of the policy's reach.
        "apiVersion: v1\nkind: Pod\nmetadata: {name: cart-2, namespace: shop, uid: u2, labels: {app: other}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.1.0.2}\n",
        // A new address.
        "apiVersion: v1\nkind: Pod\nmetadata: {name: cart-1, namespace: shop, uid: u1, labels: {app: cart, version: v1}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.1.0.7}\n",
        // Its own waypoint label (a workload waypoint), which ends the delegation for it.
        "apiVersion: v1\nkind: Pod\nmetadata: {name: cart-1, namespace: shop, uid: u1, labels: {app: cart, version: v1, istio.io/use-waypoint: waypoint}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.1.0.1}\n",
        // A waypoint pod under another identity: every delegation's identities change.
        "apiVersion: v1\nkind: Pod\nmetadata: {name: waypoint-1, namespace: shop, uid: u4, labels: {gateway: waypoint}}\nspec: {nodeName: n1, serviceAccountName: wp}\nstatus: {podIP: 10.1.0.9}\n",
        // A pod in a namespace that had none.
        "apiVersion: v1\nkind: Pod\nmetadata: {name: lone, namespace: elsewhere, uid: u9, labels: {app: cart}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.2.0.1}\n",
        // An address another pod holds.
        "apiVersion: v1\nkind: Pod\nmetadata: {name: clash, namespace: other, uid: u8}\nspec: {nodeName: n1}\nstatus: {podIP: 10.1.0.1}\n",
    ];
    for yaml in cases {
        let object = pod_object(yaml);
        let key = object.key();
        let mut model = base.model().clone();
        model.insert(object);
        let updated = base.update(model.clone(), std::slice::from_ref(&key));
        let compiled = State::compile(model);
        assert_eq!(digest(&updated), digest(&compiled), "after {key}");
        assert!(updated.epoch() > base.epoch());
    }
    // A pod removed.
    let key = pod_object(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: cart-1, namespace: shop, uid: u1}\nspec: {nodeName: n1}\nstatus: {podIP: 10.1.0.1}\n",
    )
    .key();
    let mut model = base.model().clone();
    assert!(model.remove(&key));
    let updated = base.update(model.clone(), std::slice::from_ref(&key));
    assert!(updated.workload("10.1.0.1".parse().unwrap()).is_none());
    assert_eq!(digest(&updated), digest(&State::compile(model)));
}

#[test]
fn only_the_changed_namespace_is_rebuilt() {
    let base = state(&format!(
        "{BASE}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: other, uid: u7}}\nspec: {{nodeName: n1}}\nstatus: {{podIP: 10.3.0.1}}\n"
    ));
    let object = pod_object(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: cart-3, namespace: shop, uid: u5, labels: {app: cart}}\nspec: {nodeName: n1}\nstatus: {podIP: 10.1.0.3}\n",
    );
    let key = object.key();
    let mut model = base.model().clone();
    model.insert(object);
    let updated = base.update(model, &[key]);
    assert!(Arc::ptr_eq(&base.shards["other"], &updated.shards["other"]));
    assert!(!Arc::ptr_eq(&base.shards["shop"], &updated.shards["shop"]));
    assert!(Arc::ptr_eq(&base.fixed, &updated.fixed));
    assert_eq!(
        updated.service("shop", "cart").unwrap().endpoints.len(),
        3,
        "cart-1, cart-2 and cart-3"
    );
}

#[test]
fn a_change_of_another_kind_recompiles() {
    let base = state(BASE);
    let object = pod_object("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n");
    let key = object.key();
    let mut model = base.model().clone();
    model.insert(object);
    let updated = base.update(model.clone(), &[key]);
    assert!(
        !updated
            .workload("10.1.0.1".parse().unwrap())
            .unwrap()
            .in_mesh
    );
    assert_eq!(digest(&updated), digest(&State::compile(model)));
}

#[test]
fn custom_policies_are_reported_as_failing_closed() {
    let s = state(&format!(
        "{BASE}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: ext, namespace: shop}}\nspec:\n  action: CUSTOM\n  provider: {{name: opa}}\n  rules: [{{from: [{{source: {{namespaces: [shop]}}}}]}}]\n"
    ));
    let found: Vec<_> = s.findings_for("AuthorizationPolicy shop/ext").collect();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].code, "WEFT035");
    assert_eq!(found[0].severity, Severity::Error);
    assert!(found[0].message.contains("\"opa\""), "{}", found[0]);
}

#[test]
fn a_route_of_another_namespace_routes_its_own_callers_only() {
    let vs = |ns: &str, name: &str, export: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [cart.shop.svc.cluster.local]\n{export}  http: [{{route: [{{destination: {{host: cart.shop.svc.cluster.local}}}}]}}]\n"
        )
    };
    let yaml = format!(
        "{BASE}{}{}{}",
        vs("shop", "producer", ""),
        vs("web", "consumer", ""),
        vs("evil", "takeover", "")
    );
    let s = state(&yaml);
    let cart = s.service("shop", "cart").unwrap().service.clone();
    let name = |caller: &str| s.route_for(&cart, caller).map(|v| v.name.clone());
    assert_eq!(name("shop").as_deref(), Some("producer"));
    assert_eq!(name("web").as_deref(), Some("consumer"), "its own callers");
    assert_eq!(name("evil").as_deref(), Some("takeover"));
    assert_eq!(
        name("other").as_deref(),
        Some("producer"),
        "a third namespace's route never applies"
    );
    assert_eq!(codes(&s, "VirtualService evil/takeover"), ["WEFT013"]);

    // Without a producer route, the takeover still reaches its own namespace only.
    let s = state(&format!("{BASE}{}", vs("evil", "takeover", "")));
    let cart = s.service("shop", "cart").unwrap().service.clone();
    assert!(s.route_for(&cart, "shop").is_none());
    assert!(s.route_for(&cart, "web").is_none());

    // exportTo: ['.'] keeps the producer route to the Service's own namespace.
    let s = state(&format!(
        "{BASE}{}",
        vs("shop", "producer", "  exportTo: ['.']\n")
    ));
    let cart = s.service("shop", "cart").unwrap().service.clone();
    assert!(s.route_for(&cart, "shop").is_some());
    assert!(s.route_for(&cart, "web").is_none());
}

#[test]
fn a_forwarded_address_is_believed_only_from_who_may_speak_for_it() {
    let s = state(BASE);
    let node: IpAddr = "10.0.0.1".parse().unwrap();
    let cart1: IpAddr = "10.1.0.1".parse().unwrap();
    let dest = s.pod_by_ip("10.1.0.2".parse().unwrap());
    // cart-1 runs as shop/default: that identity may forward its address.
    assert_eq!(
        s.client_address(dest, ("shop", "default"), node, Some(cart1)),
        cart1
    );
    // Another identity may not, nor may anyone forward an address that is no pod.
    assert_eq!(
        s.client_address(dest, ("shop", "evil"), node, Some(cart1)),
        node
    );
    assert_eq!(
        s.client_address(
            dest,
            ("shop", "evil"),
            node,
            Some("192.0.2.1".parse().unwrap())
        ),
        node
    );
    assert_eq!(s.client_address(dest, ("shop", "evil"), node, None), node);
}
