//! L7 authorization at a waypoint: which policies attach, and each request attribute.

use std::collections::BTreeMap;

use http::HeaderMap;

use super::{DecisionReason, WaypointTarget, authorize_l7};
use crate::policy::{Peer, PolicyRef, Request, RootNamespace, Workload, model_from_yaml as model};

const GATEWAY: &str = "cluster.local/ns/shop/sa/api-gateway";
const OTHER: &str = "cluster.local/ns/shop/sa/batch";

/// The policy of the seeds' user service, attached to waypoint `waypoint` of `shop`: only
/// the API gateway may call GetUser and ListUsers; anyone may ask for health.
const SEED: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: user-service-authz, namespace: shop}
spec:
  targetRefs:
  - {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/api-gateway"]
    to:
    - operation:
        methods: ["POST"]
        paths: ["/user.UserService/GetUser", "/user.UserService/ListUsers"]
  - to:
    - operation:
        paths: ["/grpc.health.v1.Health/*"]
"#;

struct Call<'a> {
    principal: &'a str,
    method: &'a str,
    path: &'a str,
    host: &'a str,
    headers: HeaderMap,
    service: (&'a str, &'a str),
}

fn call<'a>(principal: &'a str, path: &'a str) -> Call<'a> {
    Call {
        principal,
        method: "POST",
        path,
        host: "user-service.shop.svc.cluster.local:50051",
        headers: HeaderMap::new(),
        service: ("shop", "user-service"),
    }
}

fn decide(policies: &str, c: &Call<'_>) -> (bool, DecisionReason, Vec<PolicyRef>) {
    let model = model(policies);
    let labels: BTreeMap<String, String> =
        [("weft.dev/waypoint".to_string(), "waypoint".to_string())].into();
    let root = RootNamespace::default();
    let at = WaypointTarget {
        waypoint: Workload::new("shop", &labels),
        name: "waypoint",
        service: Some(c.service),
        root: &root,
    };
    let request = Request {
        method: c.method,
        path: c.path,
        host: c.host,
        headers: &c.headers,
    };
    let peer = Peer::authenticated(c.principal, "10.200.1.5".parse().unwrap());
    let d = authorize_l7(&model, &at, 50051, &peer, &request);
    (d.allowed, d.reason, d.audited_by)
}

fn by(name: &str) -> PolicyRef {
    PolicyRef {
        namespace: "shop".into(),
        name: name.into(),
    }
}

#[test]
fn seed_policy_admits_the_gateway_and_health_checks_only() {
    let cases = [
        (GATEWAY, "/user.UserService/GetUser", true),
        (GATEWAY, "/user.UserService/ListUsers", true),
        (GATEWAY, "/user.UserService/DeleteUser", false),
        (OTHER, "/user.UserService/GetUser", false),
        (OTHER, "/user.UserService/ListUsers", false),
        (OTHER, "/grpc.health.v1.Health/Check", true),
        (OTHER, "/grpc.health.v1.Health/Watch", true),
        (OTHER, "/grpc.health.v1.HealthX/Check", false),
        // The query string is not part of the path that is matched.
        (GATEWAY, "/user.UserService/GetUser?x=1", true),
    ];
    for (principal, path, allowed) in cases {
        let (got, reason, _) = decide(SEED, &call(principal, path));
        assert_eq!(got, allowed, "{principal} {path}: {reason}");
        let expected = if allowed {
            DecisionReason::AllowedBy(by("user-service-authz"))
        } else {
            DecisionReason::NoAllowMatched
        };
        assert_eq!(reason, expected, "{principal} {path}");
    }
    let mut get = call(GATEWAY, "/user.UserService/GetUser");
    get.method = "GET";
    assert!(!decide(SEED, &get).0, "methods: [POST] refuses GET");
}

#[test]
fn deny_wins_and_audit_only_records() {
    let policies = format!(
        "{SEED}---\n{}",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-list, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: user-service}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["*/ListUsers"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-gets, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: AUDIT
  rules:
  - to: [{operation: {paths: ["/user.UserService/Get*"]}}]
"#
    );
    let (allowed, reason, _) = decide(&policies, &call(GATEWAY, "/user.UserService/ListUsers"));
    assert!(!allowed);
    assert_eq!(reason, DecisionReason::DeniedBy(by("no-list")));
    let (allowed, reason, audited) = decide(&policies, &call(GATEWAY, "/user.UserService/GetUser"));
    assert!(allowed, "AUDIT does not block: {reason}");
    assert_eq!(audited, vec![by("audit-gets")]);
    // The DENY targets user-service only: another Service bound to the waypoint is not
    // affected by it.
    let mut other = call(GATEWAY, "/user.UserService/ListUsers");
    other.service = ("shop", "orders");
    assert!(decide(&policies, &other).0);
}

#[test]
fn only_policies_attached_to_this_waypoint_apply() {
    let policies = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-waypoint, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: elsewhere}]
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: workloads, namespace: shop}
spec:
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-namespace, namespace: billing}
spec:
  targetRefs: [{kind: Service, name: user-service}]
  action: DENY
  rules: [{}]
"#;
    let (allowed, reason, _) = decide(policies, &call(OTHER, "/x/Y"));
    assert!(allowed, "{reason}");
    assert_eq!(reason, DecisionReason::NoAllowPolicies);

    let by_selector = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-selector, namespace: shop}
spec:
  selector: {matchLabels: {weft.dev/waypoint: waypoint}}
  action: DENY
  rules: [{from: [{source: {notNamespaces: ["shop"]}}]}]
"#;
    assert!(decide(by_selector, &call(OTHER, "/x/Y")).0);
    let outsider = call("cluster.local/ns/evil/sa/x", "/x/Y");
    assert_eq!(
        decide(by_selector, &outsider).1,
        DecisionReason::DeniedBy(by("by-selector"))
    );
}

#[test]
fn hosts_headers_and_principal_conditions() {
    let policies = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: fine-grained, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, name: waypoint}]
  rules:
  - to: [{operation: {hosts: ["User-Service.shop.svc.cluster.local*"], notMethods: ["DELETE"]}}]
    when:
    - key: request.headers[X-Tenant]
      values: ["acme", "blue-*"]
    - key: source.principal
      notValues: ["*/sa/batch"]
"#;
    let with = |principal, tenant: Option<&str>, host| {
        let mut c = call(principal, "/user.UserService/GetUser");
        c.host = host;
        if let Some(t) = tenant {
            c.headers.insert("x-tenant", t.parse().unwrap());
        }
        decide(policies, &c).0
    };
    let host = "user-service.shop.svc.cluster.local:50051";
    assert!(with(GATEWAY, Some("acme"), host));
    assert!(with(GATEWAY, Some("blue-7"), host));
    assert!(!with(GATEWAY, Some("red"), host), "header value");
    assert!(!with(GATEWAY, None, host), "absent header");
    assert!(
        !with(OTHER, Some("acme"), host),
        "source.principal notValues"
    );
    assert!(!with(GATEWAY, Some("acme"), "orders.shop:50051"), "host");
}

#[test]
fn request_principals_fail_closed_at_the_waypoint_too() {
    let policies = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, name: waypoint}]
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
"#;
    assert!(!decide(policies, &call(GATEWAY, "/a/B")).0);
}
