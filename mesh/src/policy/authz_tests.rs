//! L4 authorization: applicability and precedence, one set of YAML policies per case.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{Decision, DecisionReason, applicable_authorization_policies, authorize_l4};
use crate::policy::{Peer, PolicyRef, RootNamespace, Workload, model_from_yaml as model};

/// One AuthorizationPolicy document.
fn ap(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n---\n"
    )
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const WEB: &str = "cluster.local/ns/shop/sa/web";
const EVIL: &str = "cluster.local/ns/evil/sa/x";

fn decide(policies: &str, ns: &str, l: &[(&str, &str)], port: u16, src: &Peer) -> Decision {
    let model = model(policies);
    let l = labels(l);
    authorize_l4(
        &model,
        &RootNamespace::default(),
        &Workload::new(ns, &l),
        port,
        src,
    )
}

fn by(ns: &str, name: &str) -> PolicyRef {
    PolicyRef::new(ns, name)
}

fn allowed_by(ns: &str, name: &str) -> Outcome {
    (true, DecisionReason::AllowedBy(by(ns, name)))
}

fn denied_by(ns: &str, name: &str) -> Outcome {
    (false, DecisionReason::DeniedBy(by(ns, name)))
}

const NO_ALLOW_MATCHED: Outcome = (false, DecisionReason::NoAllowMatched);
const NO_ALLOW_POLICIES: Outcome = (true, DecisionReason::NoAllowPolicies);

/// What a case expects: allowed, and why.
type Outcome = (bool, DecisionReason);

/// One case: policies, workload namespace, workload labels, port, peer, outcome.
type Case<'a> = (
    String,
    &'a str,
    &'a [(&'a str, &'a str)],
    u16,
    Peer,
    Outcome,
);

/// Runs a table of cases.
fn table(cases: Vec<Case<'_>>) {
    for (i, (policies, ns, l, port, src, want)) in cases.into_iter().enumerate() {
        let d = decide(&policies, ns, l, port, &src);
        assert_eq!(
            (d.allowed, d.reason),
            want,
            "case {i}: {policies}workload {ns} {l:?} port {port} peer {src:?}"
        );
    }
}

#[test]
fn nothing_applies_means_allow() {
    let web = || Peer::authenticated(WEB, ip("10.0.0.1"));
    let deny_all = |ns: &str, spec: &str| ap(ns, "deny", spec);
    table(vec![
        (String::new(), "shop", &[], 80, web(), NO_ALLOW_POLICIES),
        // Policies elsewhere, or selecting other workloads, do not apply.
        (
            ap("other", "allow-nothing", "{}"),
            "shop",
            &[],
            80,
            web(),
            NO_ALLOW_POLICIES,
        ),
        (
            ap(
                "shop",
                "db-only",
                "{selector: {matchLabels: {app: db}}, action: DENY, rules: [{}]}",
            ),
            "shop",
            &[("app", "cart")],
            80,
            web(),
            NO_ALLOW_POLICIES,
        ),
        // A DENY policy that matches nothing leaves the default.
        (
            deny_all(
                "shop",
                "{action: DENY, rules: [{from: [{source: {namespaces: [evil]}}]}]}",
            ),
            "shop",
            &[],
            80,
            web(),
            NO_ALLOW_POLICIES,
        ),
        // DENY without rules matches nothing.
        (
            deny_all("shop", "{action: DENY}"),
            "shop",
            &[],
            80,
            web(),
            NO_ALLOW_POLICIES,
        ),
    ]);
}

#[test]
fn applicability_root_namespace_selector_and_target_refs() {
    let web = || Peer::authenticated(WEB, ip("10.0.0.1"));
    let deny = "action: DENY, rules: [{}]";
    table(vec![
        // Root namespace without a selector: every workload.
        (
            ap("istio-system", "mesh-deny", &format!("{{{deny}}}")),
            "shop",
            &[],
            80,
            web(),
            denied_by("istio-system", "mesh-deny"),
        ),
        // The workload's namespace without a selector.
        (
            ap("shop", "ns-deny", &format!("{{{deny}}}")),
            "shop",
            &[("app", "cart")],
            80,
            web(),
            denied_by("shop", "ns-deny"),
        ),
        // A selector that is a subset of the labels.
        (
            ap(
                "shop",
                "cart-deny",
                &format!("{{selector: {{matchLabels: {{app: cart}}}}, {deny}}}"),
            ),
            "shop",
            &[("app", "cart"), ("version", "v1")],
            80,
            web(),
            denied_by("shop", "cart-deny"),
        ),
        // A selector in the root namespace selects in every namespace.
        (
            ap(
                "istio-system",
                "cart-anywhere",
                &format!("{{selector: {{matchLabels: {{app: cart}}}}, {deny}}}"),
            ),
            "shop",
            &[("app", "cart")],
            80,
            web(),
            denied_by("istio-system", "cart-anywhere"),
        ),
        // A selector in another namespace does not.
        (
            ap(
                "other",
                "cart-elsewhere",
                &format!("{{selector: {{matchLabels: {{app: cart}}}}, {deny}}}"),
            ),
            "shop",
            &[("app", "cart")],
            80,
            web(),
            NO_ALLOW_POLICIES,
        ),
        // targetRefs attach to a waypoint or Service: the L4 evaluator skips them.
        (
            ap(
                "shop",
                "waypoint-deny",
                &format!(
                    "{{targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}], {deny}}}"
                ),
            ),
            "shop",
            &[],
            80,
            web(),
            NO_ALLOW_POLICIES,
        ),
        (
            ap(
                "shop",
                "svc-allow-nothing",
                "{targetRef: {kind: Service, name: cart}}",
            ),
            "shop",
            &[],
            80,
            web(),
            NO_ALLOW_POLICIES,
        ),
    ]);

    // A configured root namespace replaces istio-system.
    let model = model(&ap("mesh-root", "deny", &format!("{{{deny}}}")));
    let no_labels = BTreeMap::new();
    let dest = Workload::new("shop", &no_labels);
    let src = web();
    let custom = RootNamespace::from("mesh-root");
    assert!(!authorize_l4(&model, &custom, &dest, 80, &src).allowed);
    assert!(authorize_l4(&model, &RootNamespace::default(), &dest, 80, &src).allowed);
    let names: Vec<_> = applicable_authorization_policies(&model, &custom, &dest)
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["deny"]);
}

#[test]
fn precedence_deny_then_allow_then_default() {
    let web = || Peer::authenticated(WEB, ip("10.0.0.1"));
    let evil = || Peer::authenticated(EVIL, ip("10.0.0.2"));
    let allow_shop = ap(
        "shop",
        "allow-shop",
        "{rules: [{from: [{source: {namespaces: [shop]}}]}]}",
    );
    let deny_web_8080 = ap(
        "shop",
        "deny-web-8080",
        "{action: DENY, rules: [{from: [{source: {principals: [\"cluster.local/ns/shop/sa/web\"]}}], to: [{operation: {ports: [8080]}}]}]}",
    );
    table(vec![
        // ALLOW present: allowed iff a rule matches.
        (
            allow_shop.clone(),
            "shop",
            &[],
            80,
            web(),
            allowed_by("shop", "allow-shop"),
        ),
        (
            allow_shop.clone(),
            "shop",
            &[],
            80,
            evil(),
            NO_ALLOW_MATCHED,
        ),
        (
            allow_shop.clone(),
            "shop",
            &[],
            80,
            Peer::plaintext(ip("10.0.0.3")),
            NO_ALLOW_MATCHED,
        ),
        // DENY beats ALLOW.
        (
            format!("{allow_shop}{deny_web_8080}"),
            "shop",
            &[],
            8080,
            web(),
            denied_by("shop", "deny-web-8080"),
        ),
        (
            format!("{allow_shop}{deny_web_8080}"),
            "shop",
            &[],
            80,
            web(),
            allowed_by("shop", "allow-shop"),
        ),
        // A mesh-wide DENY beats a namespace ALLOW.
        (
            format!(
                "{allow_shop}{}",
                ap(
                    "istio-system",
                    "deny-plaintext",
                    "{action: DENY, rules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]}"
                )
            ),
            "shop",
            &[],
            80,
            Peer::plaintext(ip("10.0.0.3")),
            denied_by("istio-system", "deny-plaintext"),
        ),
        // ALLOW without rules allows nothing; `rules: [{}]` allows everything.
        (
            ap("shop", "allow-nothing", "{}"),
            "shop",
            &[],
            80,
            web(),
            NO_ALLOW_MATCHED,
        ),
        (
            ap("shop", "allow-nothing", "{action: ALLOW, rules: []}"),
            "shop",
            &[],
            80,
            web(),
            NO_ALLOW_MATCHED,
        ),
        (
            ap("shop", "allow-all", "{rules: [{}]}"),
            "shop",
            &[],
            80,
            evil(),
            allowed_by("shop", "allow-all"),
        ),
        // Several ALLOW policies: any one of them suffices.
        (
            format!(
                "{}{}",
                ap("shop", "allow-nothing", "{}"),
                ap(
                    "shop",
                    "allow-ip",
                    "{rules: [{from: [{source: {ipBlocks: [10.0.0.2]}}]}]}"
                )
            ),
            "shop",
            &[],
            80,
            evil(),
            allowed_by("shop", "allow-ip"),
        ),
        // With several matching DENY policies, the first in (namespace, name) order is named.
        (
            format!(
                "{}{}",
                ap("shop", "b-deny", "{action: DENY, rules: [{}]}"),
                ap("istio-system", "z-deny", "{action: DENY, rules: [{}]}")
            ),
            "shop",
            &[],
            80,
            web(),
            denied_by("istio-system", "z-deny"),
        ),
        // CUSTOM has no authorizer to ask: a matching rule denies (fail closed), before
        // any ALLOW.
        (
            format!(
                "{}{}",
                ap(
                    "shop",
                    "ext-authz",
                    "{action: CUSTOM, provider: {name: opa}, rules: [{}]}",
                ),
                ap("shop", "allow-all", "{action: ALLOW, rules: [{}]}")
            ),
            "shop",
            &[],
            80,
            web(),
            (
                false,
                DecisionReason::CustomWithoutAuthorizer(PolicyRef::new("shop", "ext-authz")),
            ),
        ),
        // One whose rules do not match leaves the decision to the others.
        (
            ap(
                "shop",
                "ext-authz",
                "{action: CUSTOM, provider: {name: opa}, rules: [{from: [{source: {namespaces: [evil]}}]}]}",
            ),
            "shop",
            &[],
            80,
            web(),
            NO_ALLOW_POLICIES,
        ),
        // One that needs L7 attributes matches at L4 (fail closed).
        (
            ap(
                "shop",
                "ext-authz",
                "{action: CUSTOM, provider: {name: opa}, rules: [{to: [{operation: {paths: [/admin]}}]}]}",
            ),
            "shop",
            &[],
            80,
            web(),
            (
                false,
                DecisionReason::CustomWithoutAuthorizer(PolicyRef::new("shop", "ext-authz")),
            ),
        ),
    ]);
}

#[test]
fn audit_never_changes_the_outcome() {
    let audit_all = ap("shop", "audit-all", "{action: AUDIT, rules: [{}]}");
    let audit_evil = ap(
        "shop",
        "audit-evil",
        "{action: AUDIT, rules: [{from: [{source: {namespaces: [evil]}}]}]}",
    );
    let audit_paths = ap(
        "istio-system",
        "audit-paths",
        "{action: AUDIT, rules: [{to: [{operation: {paths: [/admin]}}]}]}",
    );
    let policies = format!("{audit_all}{audit_evil}{audit_paths}");
    let web = Peer::authenticated(WEB, ip("10.0.0.1"));
    let d = decide(&policies, "shop", &[], 80, &web);
    assert_eq!(
        d,
        Decision {
            allowed: true,
            reason: DecisionReason::NoAllowPolicies,
            audited_by: vec![by("istio-system", "audit-paths"), by("shop", "audit-all")],
        }
    );
    let with_allow_nothing = format!("{policies}{}", ap("shop", "allow-nothing", "{}"));
    let d = decide(&with_allow_nothing, "shop", &[], 80, &web);
    assert_eq!((d.allowed, d.reason), NO_ALLOW_MATCHED);
    assert_eq!(d.audited_by.len(), 2);
}

#[test]
fn l7_attributes_fail_closed() {
    let web = || Peer::authenticated(WEB, ip("10.0.0.1"));
    let other = || Peer::authenticated("cluster.local/ns/shop/sa/other", ip("10.0.0.2"));
    table(vec![
        // ALLOW with an L7 attribute never matches at L4: the only ALLOW policy then denies.
        (
            ap(
                "shop",
                "allow-get",
                "{rules: [{to: [{operation: {methods: [GET]}}]}]}",
            ),
            "shop",
            &[],
            80,
            web(),
            NO_ALLOW_MATCHED,
        ),
        (
            ap(
                "shop",
                "allow-jwt",
                "{rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]}",
            ),
            "shop",
            &[],
            80,
            web(),
            NO_ALLOW_MATCHED,
        ),
        (
            ap(
                "shop",
                "allow-header",
                "{rules: [{when: [{key: \"request.headers[x-user]\", values: [admin]}]}]}",
            ),
            "shop",
            &[],
            80,
            web(),
            NO_ALLOW_MATCHED,
        ),
        // ... but an L4-only rule next to it still allows.
        (
            ap(
                "shop",
                "allow-mixed",
                "{rules: [{to: [{operation: {paths: [/a]}}]}, {from: [{source: {namespaces: [shop]}}]}]}",
            ),
            "shop",
            &[],
            80,
            web(),
            allowed_by("shop", "allow-mixed"),
        ),
        // DENY with an L7 attribute matches at L4: it denies.
        (
            ap(
                "shop",
                "deny-admin",
                "{action: DENY, rules: [{to: [{operation: {paths: [\"/admin/*\"]}}]}]}",
            ),
            "shop",
            &[],
            80,
            web(),
            denied_by("shop", "deny-admin"),
        ),
        (
            ap(
                "shop",
                "deny-not-get",
                "{action: DENY, rules: [{to: [{operation: {notMethods: [GET]}}]}]}",
            ),
            "shop",
            &[],
            80,
            web(),
            denied_by("shop", "deny-not-get"),
        ),
        (
            ap(
                "shop",
                "deny-host",
                "{action: DENY, rules: [{to: [{operation: {hosts: [a.example]}}]}]}",
            ),
            "shop",
            &[],
            80,
            web(),
            denied_by("shop", "deny-host"),
        ),
        // The L4 clauses of such a rule still narrow it: only `web` is denied, on 8080 only.
        (
            ap(
                "shop",
                "deny-web-post",
                "{action: DENY, rules: [{from: [{source: {principals: [\"cluster.local/ns/shop/sa/web\"]}}], to: [{operation: {ports: [8080], methods: [POST]}}]}]}",
            ),
            "shop",
            &[],
            8080,
            web(),
            denied_by("shop", "deny-web-post"),
        ),
        (
            ap(
                "shop",
                "deny-web-post",
                "{action: DENY, rules: [{from: [{source: {principals: [\"cluster.local/ns/shop/sa/web\"]}}], to: [{operation: {ports: [8080], methods: [POST]}}]}]}",
            ),
            "shop",
            &[],
            8080,
            other(),
            NO_ALLOW_POLICIES,
        ),
        (
            ap(
                "shop",
                "deny-web-post",
                "{action: DENY, rules: [{from: [{source: {principals: [\"cluster.local/ns/shop/sa/web\"]}}], to: [{operation: {ports: [8080], methods: [POST]}}]}]}",
            ),
            "shop",
            &[],
            80,
            web(),
            NO_ALLOW_POLICIES,
        ),
        // connection.sni is not visible to the agent: fails closed both ways.
        (
            ap(
                "shop",
                "deny-sni",
                "{action: DENY, rules: [{when: [{key: connection.sni, values: [a.example]}]}]}",
            ),
            "shop",
            &[],
            80,
            web(),
            denied_by("shop", "deny-sni"),
        ),
        (
            ap(
                "shop",
                "allow-sni",
                "{rules: [{when: [{key: connection.sni, values: [a.example]}]}]}",
            ),
            "shop",
            &[],
            80,
            web(),
            NO_ALLOW_MATCHED,
        ),
        // Unknown source fields (a newer Istio's) fail closed too.
        (
            ap(
                "shop",
                "allow-sa",
                "{rules: [{from: [{source: {serviceAccounts: [shop/web]}}]}]}",
            ),
            "shop",
            &[],
            80,
            web(),
            NO_ALLOW_MATCHED,
        ),
    ]);
}

#[test]
fn decision_reasons_display() {
    let cases = [
        (
            DecisionReason::DeniedBy(by("shop", "d")),
            "denied by DENY policy shop/d",
        ),
        (
            DecisionReason::AllowedBy(by("shop", "a")),
            "allowed by ALLOW policy shop/a",
        ),
        (DecisionReason::NoAllowMatched, "no ALLOW policy matched"),
        (DecisionReason::NoAllowPolicies, "no ALLOW policy applies"),
    ];
    for (reason, text) in cases {
        assert_eq!(reason.to_string(), text);
    }
}
