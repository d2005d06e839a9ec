//! AuthorizationPolicy parsing: one YAML fixture per case.

use std::collections::BTreeMap;

use crate::config::parse::parse_documents;
use crate::config::{
    AuthorizationPolicyInfo, AuthzAction, Cidr, Condition, Object, Operation, Rule, Source,
    TargetRef,
};

const HEADER: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ap, namespace: shop}\n";

fn parse_text(text: &str) -> Result<AuthorizationPolicyInfo, String> {
    let mut docs = parse_documents(text);
    assert_eq!(docs.len(), 1);
    match docs.remove(0).1 {
        Ok(Some(Object::AuthorizationPolicy(ap))) => Ok(ap),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e.to_string()),
    }
}

fn parse(spec: &str) -> Result<AuthorizationPolicyInfo, String> {
    parse_text(&format!("{HEADER}{spec}"))
}

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|c| c.parse().unwrap()).collect()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn full_policy() {
    let ap = parse(
        r#"
spec:
  selector:
    matchLabels: {app: cart, version: v1}
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/web"]
        notNamespaces: ["dev*"]
        ipBlocks: ["10.0.0.0/8", "fd00::1"]
        notRemoteIpBlocks: ["192.168.1.1"]
    - source:
        requestPrincipals: ["*"]
    to:
    - operation:
        ports: [8080, "9090"]
        notPorts: ["15021"]
        methods: [GET]
        paths: ["/admin/*"]
    when:
    - key: destination.port
      values: [8080]
    - key: request.headers[x-user]
      notValues: ["guest"]
"#,
    )
    .unwrap();
    let want = AuthorizationPolicyInfo {
        namespace: "shop".into(),
        name: "ap".into(),
        selector: Some(BTreeMap::from([
            ("app".into(), "cart".into()),
            ("version".into(), "v1".into()),
        ])),
        target_refs: vec![],
        action: AuthzAction::Deny,
        provider: None,
        rules: vec![Rule {
            from: vec![
                Source {
                    principals: strings(&["cluster.local/ns/shop/sa/web"]),
                    not_namespaces: strings(&["dev*"]),
                    ip_blocks: cidrs(&["10.0.0.0/8", "fd00::1/128"]),
                    not_remote_ip_blocks: cidrs(&["192.168.1.1/32"]),
                    ..Source::default()
                },
                Source {
                    request_principals: strings(&["*"]),
                    ..Source::default()
                },
            ],
            to: vec![Operation {
                ports: vec![8080, 9090],
                not_ports: vec![15021],
                methods: strings(&["GET"]),
                paths: strings(&["/admin/*"]),
                ..Operation::default()
            }],
            when: vec![
                Condition {
                    key: "destination.port".into(),
                    values: strings(&["8080"]),
                    not_values: vec![],
                },
                Condition {
                    key: "request.headers[x-user]".into(),
                    values: vec![],
                    not_values: strings(&["guest"]),
                },
            ],
        }],
    };
    assert_eq!(ap, want);
}

#[test]
fn defaults_allow_nothing_and_allow_all() {
    // No rules (absent, null or empty): an ALLOW policy that matches nothing.
    for spec in [
        "",
        "spec: {}\n",
        "spec: {rules: []}\n",
        "spec: {rules: null}\n",
    ] {
        let ap = parse(spec).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
        assert_eq!(ap.action, AuthzAction::Allow, "{spec:?}");
        assert!(ap.rules.is_empty(), "{spec:?}");
        assert_eq!(ap.selector, None);
    }
    // One empty rule: matches every request.
    let ap = parse("spec: {action: ALLOW, rules: [{}]}\n").unwrap();
    assert_eq!(ap.rules, [Rule::default()]);
    // An empty selector is no selector.
    let ap = parse("spec: {selector: {matchLabels: {}}}\n").unwrap();
    assert_eq!(ap.selector, None);
    // `when: []` is no conditions.
    let ap = parse("spec: {rules: [{when: []}]}\n").unwrap();
    assert_eq!(ap.rules, [Rule::default()]);
}

#[test]
fn every_action() {
    for (text, action) in [
        ("ALLOW", AuthzAction::Allow),
        ("DENY", AuthzAction::Deny),
        ("AUDIT", AuthzAction::Audit),
    ] {
        let ap = parse(&format!("spec: {{action: {text}}}\n")).unwrap();
        assert_eq!((ap.action, ap.provider), (action, None));
    }
    let ap = parse("spec: {action: CUSTOM, provider: {name: opa}, rules: [{}]}\n").unwrap();
    assert_eq!(
        (ap.action, ap.provider.as_deref()),
        (AuthzAction::Custom, Some("opa"))
    );
}

#[test]
fn target_refs_plural_and_singular() {
    let ap = parse(
        r#"
spec:
  targetRefs:
  - {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}
  - {kind: Service, group: "", name: cart, namespace: shop}
"#,
    )
    .unwrap();
    assert_eq!(
        ap.target_refs,
        [
            TargetRef {
                group: "gateway.networking.k8s.io".into(),
                kind: "Gateway".into(),
                name: "waypoint".into(),
            },
            TargetRef {
                group: "".into(),
                kind: "Service".into(),
                name: "cart".into(),
            },
        ]
    );
    let ap = parse("spec: {targetRef: {kind: Service, name: cart}}\n").unwrap();
    assert_eq!(ap.target_refs.len(), 1);
}

#[test]
fn v1beta1_and_unknown_fields() {
    let text = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: ap, namespace: shop, annotations: {a: b}}
spec:
  futureTopLevel: {x: 1}
  rules:
  - futureRuleField: true
    from:
    - source:
        namespaces: [shop]
        serviceAccounts: [shop/web]
    to:
    - operation:
        ports: [80]
        futureMatcher: [x]
status: {foo: bar}
"#;
    let ap = parse_text(text).unwrap();
    assert_eq!(ap.rules[0].from[0].namespaces, ["shop"]);
    // Unknown matchers are kept by name so that the evaluator can fail closed on them.
    assert_eq!(ap.rules[0].from[0].unsupported, ["serviceAccounts"]);
    assert_eq!(ap.rules[0].to[0].unsupported, ["futureMatcher"]);
    // A source made only of unknown matchers is not empty.
    let ap = parse("spec: {rules: [{from: [{source: {serviceAccounts: [a/b]}}]}]}\n").unwrap();
    assert_eq!(ap.rules[0].from[0].unsupported, ["serviceAccounts"]);
    // A condition key outside Istio's table is kept (and fails closed when evaluated).
    let ap =
        parse("spec: {rules: [{when: [{key: source.serviceAccount, values: [x]}]}]}\n").unwrap();
    assert_eq!(ap.rules[0].when[0].key, "source.serviceAccount");
}

#[test]
fn errors_name_the_object_and_the_field() {
    let rule = |r: &str| format!("spec:\n  rules:\n  - {r}\n");
    let cases = [
        (
            "spec: {action: PERMIT}\n".to_string(),
            "spec.action: invalid value \"PERMIT\" (must be one of ALLOW, DENY, AUDIT, CUSTOM)",
        ),
        (
            "spec: {action: deny}\n".to_string(),
            "spec.action: invalid value \"deny\" (must be one of ALLOW, DENY, AUDIT, CUSTOM)",
        ),
        (
            rule("from: [{source: {ipBlocks: [10.0.0.0/8, 10.0.0/8]}}]"),
            "spec.rules[0].from[0].source.ipBlocks[1]: invalid CIDR \"10.0.0/8\"",
        ),
        (
            rule("from: [{source: {namespaces: [a]}}, {source: {notIpBlocks: [\"1.2.3.4/33\"]}}]"),
            "spec.rules[0].from[1].source.notIpBlocks[0]: invalid CIDR \"1.2.3.4/33\"",
        ),
        (
            rule("from: [{source: {remoteIpBlocks: [\"fd00::/200\"]}}]"),
            "spec.rules[0].from[0].source.remoteIpBlocks[0]: invalid CIDR \"fd00::/200\"",
        ),
        (
            rule("from: [{source: {notRemoteIpBlocks: [somehost]}}]"),
            "spec.rules[0].from[0].source.notRemoteIpBlocks[0]: invalid CIDR \"somehost\"",
        ),
        (
            rule("to: [{operation: {ports: [80, 0]}}]"),
            "spec.rules[0].to[0].operation.ports[1]: invalid port \"0\" (must be 1..=65535)",
        ),
        (
            rule("to: [{operation: {notPorts: [\"65536\"]}}]"),
            "spec.rules[0].to[0].operation.notPorts[0]: invalid port \"65536\" (must be 1..=65535)",
        ),
        (
            rule("to: [{operation: {ports: [http]}}]"),
            "spec.rules[0].to[0].operation.ports[0]: invalid port \"http\" (must be 1..=65535)",
        ),
        (
            rule("when: [{key: source.ip, values: [10.0.0.0/8, nope]}]"),
            "spec.rules[0].when[0].values[1]: invalid CIDR \"nope\"",
        ),
        (
            rule("when: [{key: destination.ip, notValues: [\"1.1.1\"]}]"),
            "spec.rules[0].when[0].notValues[0]: invalid CIDR \"1.1.1\"",
        ),
        (
            rule("when: [{key: destination.port, values: [70000]}]"),
            "spec.rules[0].when[0].values[0]: invalid port \"70000\" (must be 1..=65535)",
        ),
        (
            rule("when: [{values: [a]}]"),
            "spec.rules[0].when[0].key: required",
        ),
        (
            rule("when: [{key: source.namespace}]"),
            "spec.rules[0].when[0]: at least one of values and notValues is required for key \"source.namespace\"",
        ),
        (
            rule("from: []"),
            "spec.rules[0].from: must not be empty (omit it instead)",
        ),
        (
            rule("to: []"),
            "spec.rules[0].to: must not be empty (omit it instead)",
        ),
        (rule("from: [{}]"), "spec.rules[0].from[0].source: required"),
        (
            rule("from: [{source: {}}]"),
            "spec.rules[0].from[0].source: must not be empty",
        ),
        (
            rule("from: [{source: {principals: []}}]"),
            "spec.rules[0].from[0].source: must not be empty",
        ),
        (
            rule("to: [{operation: {}}]"),
            "spec.rules[0].to[0].operation: must not be empty",
        ),
        (
            "spec: {selector: {matchLabels: {a: b}}, targetRefs: [{kind: Service, name: s}]}\n"
                .to_string(),
            "spec.targetRefs: cannot be set together with spec.selector",
        ),
        (
            "spec: {targetRef: {kind: Service, name: s}, targetRefs: [{kind: Service, name: s}]}\n"
                .to_string(),
            "spec.targetRef: cannot be set together with spec.targetRefs",
        ),
        (
            "spec: {targetRefs: [{kind: Service, name: s}, {kind: Service}]}\n".to_string(),
            "spec.targetRefs[1].name: required",
        ),
        (
            "spec: {targetRef: {name: s}}\n".to_string(),
            "spec.targetRef.kind: required",
        ),
        (
            "spec: {targetRefs: [{kind: Service, name: s, namespace: other}]}\n".to_string(),
            "spec.targetRefs[0].namespace: \"other\" is not the policy's namespace (cross-namespace targets are not supported)",
        ),
        (
            "spec: {action: CUSTOM}\n".to_string(),
            "spec.provider.name: required when spec.action is CUSTOM",
        ),
        (
            "spec: {provider: {name: opa}}\n".to_string(),
            "spec.provider: only allowed when spec.action is CUSTOM",
        ),
        (
            "spec: {selector: {matchLabels: {\"\": x}}}\n".to_string(),
            "spec.selector.matchLabels: a label key must not be empty",
        ),
    ];
    for (spec, reason) in cases {
        assert_eq!(
            parse(&spec),
            Err(format!("AuthorizationPolicy shop/ap: {reason}")),
            "{spec}"
        );
    }

    // Type errors come from the deserializer, located by path.
    let wrong_type = parse("spec: {rules: [{from: [{source: {principals: a}}]}]}\n").unwrap_err();
    assert!(
        wrong_type.starts_with(
            "AuthorizationPolicy shop/ap: spec.rules[0].from[0].source.principals: invalid type"
        ),
        "{wrong_type}"
    );
    let wrong_type = parse("spec: {rules: [{to: [{operation: {ports: [[1]]}}]}]}\n").unwrap_err();
    assert!(
        wrong_type.contains("spec.rules[0].to[0].operation.ports[0]")
            && wrong_type.contains("a string or an integer"),
        "{wrong_type}"
    );
    // Missing name, in the default namespace.
    assert_eq!(
        parse_text("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {}\n"),
        Err("AuthorizationPolicy in namespace default: metadata.name: required".into())
    );
}
