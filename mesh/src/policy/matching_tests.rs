//! Rule matching at L4: one YAML rule per case, against peers and ports.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{L4, Match, value_matches};
use crate::config::{Object, Rule, parse_value};
use crate::policy::{Peer, Workload};

/// Parses `rule` (one `rules[]` entry in YAML flow style) through the real parser.
fn rule(rule: &str) -> Rule {
    let text = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: t}}\nspec: {{rules: [{rule}]}}\n"
    );
    let value: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    match parse_value(value) {
        Ok(Some(Object::AuthorizationPolicy(mut ap))) => ap.rules.remove(0),
        other => panic!("{rule}: {other:?}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const WEB: &str = "cluster.local/ns/shop/sa/web";

fn mtls(principal: &str, src_ip: &str) -> Peer {
    Peer::authenticated(principal, ip(src_ip))
}

fn plain(src_ip: &str) -> Peer {
    Peer::plaintext(ip(src_ip))
}

fn check(r: &Rule, src: &Peer, port: u16) -> Match {
    let labels = BTreeMap::new();
    let dest = Workload {
        namespace: "shop",
        labels: &labels,
        ip: Some(ip("10.1.0.9")),
    };
    L4 {
        src,
        dest: &dest,
        dest_port: port,
        request: None,
    }
    .rule(r)
}

/// Runs a table of (rule, peer, port, expected).
fn table(cases: &[(&str, Peer, u16, Match)]) {
    for (r, src, port, want) in cases {
        assert_eq!(
            check(&rule(r), src, *port),
            *want,
            "rule {r} peer {src:?} port {port}"
        );
    }
}

use Match::{No, Unknown, Yes};

#[test]
fn value_matching_exact_prefix_suffix_presence() {
    let cases = [
        ("abc", "abc", true),
        ("abc", "abcd", false),
        ("abc*", "abc", true),
        ("abc*", "abcd", true),
        ("abc*", "xabc", false),
        ("*abc", "abc", true),
        ("*abc", "xabc", true),
        ("*abc", "abcx", false),
        ("*", "anything", true),
        ("*", "", false),
        ("", "", true),
        ("ABC", "abc", false),
    ];
    for (pattern, value, want) in cases {
        assert_eq!(value_matches(pattern, value), want, "{pattern} ~ {value}");
    }
}

#[test]
fn principals_and_not_principals() {
    table(&[
        (
            "{from: [{source: {principals: [\"cluster.local/ns/shop/sa/web\"]}}]}",
            mtls(WEB, "10.0.0.1"),
            80,
            Yes,
        ),
        (
            "{from: [{source: {principals: [\"cluster.local/ns/shop/sa/web\"]}}]}",
            mtls("spiffe://cluster.local/ns/shop/sa/web", "10.0.0.1"),
            80,
            Yes,
        ),
        (
            "{from: [{source: {principals: [\"cluster.local/ns/shop/sa/db\"]}}]}",
            mtls(WEB, "10.0.0.1"),
            80,
            No,
        ),
        (
            "{from: [{source: {principals: [\"cluster.local/ns/shop/*\"]}}]}",
            mtls(WEB, "10.0.0.1"),
            80,
            Yes,
        ),
        (
            "{from: [{source: {principals: [\"*/sa/web\"]}}]}",
            mtls(WEB, "10.0.0.1"),
            80,
            Yes,
        ),
        (
            "{from: [{source: {principals: [\"*\"]}}]}",
            mtls(WEB, "10.0.0.1"),
            80,
            Yes,
        ),
        // A plaintext peer has no principal: no positive list matches it, not even `*`.
        (
            "{from: [{source: {principals: [\"*\"]}}]}",
            plain("10.0.0.1"),
            80,
            No,
        ),
        (
            "{from: [{source: {principals: [\"cluster.local/ns/shop/sa/web\"]}}]}",
            plain("10.0.0.1"),
            80,
            No,
        ),
        // ... and every negative list holds for it, so `notPrincipals: ["*"]` picks out
        // exactly the plaintext peers (Istio's documented way to deny them).
        (
            "{from: [{source: {notPrincipals: [\"*\"]}}]}",
            plain("10.0.0.1"),
            80,
            Yes,
        ),
        (
            "{from: [{source: {notPrincipals: [\"*\"]}}]}",
            mtls(WEB, "10.0.0.1"),
            80,
            No,
        ),
        (
            "{from: [{source: {notPrincipals: [\"cluster.local/ns/shop/sa/web\"]}}]}",
            mtls(WEB, "10.0.0.1"),
            80,
            No,
        ),
        (
            "{from: [{source: {notPrincipals: [\"cluster.local/ns/shop/sa/db\"]}}]}",
            mtls(WEB, "10.0.0.1"),
            80,
            Yes,
        ),
        // Both lists: in the first, not in the second.
        (
            "{from: [{source: {principals: [\"cluster.local/*\"], notPrincipals: [\"*/sa/web\"]}}]}",
            mtls(WEB, "10.0.0.1"),
            80,
            No,
        ),
        (
            "{from: [{source: {principals: [\"cluster.local/*\"], notPrincipals: [\"*/sa/db\"]}}]}",
            mtls(WEB, "10.0.0.1"),
            80,
            Yes,
        ),
    ]);
}

#[test]
fn namespaces_and_not_namespaces() {
    let other = "cluster.local/ns/other/sa/x";
    table(&[
        (
            "{from: [{source: {namespaces: [shop]}}]}",
            mtls(WEB, "10.0.0.1"),
            80,
            Yes,
        ),
        (
            "{from: [{source: {namespaces: [shop]}}]}",
            mtls(other, "10.0.0.1"),
            80,
            No,
        ),
        (
            "{from: [{source: {namespaces: [\"sh*\"]}}]}",
            mtls(WEB, "10.0.0.1"),
            80,
            Yes,
        ),
        (
            "{from: [{source: {namespaces: [\"*op\"]}}]}",
            mtls(WEB, "10.0.0.1"),
            80,
            Yes,
        ),
        (
            "{from: [{source: {namespaces: [\"*\"]}}]}",
            plain("10.0.0.1"),
            80,
            No,
        ),
        (
            "{from: [{source: {notNamespaces: [shop]}}]}",
            mtls(other, "10.0.0.1"),
            80,
            Yes,
        ),
        (
            "{from: [{source: {notNamespaces: [shop]}}]}",
            mtls(WEB, "10.0.0.1"),
            80,
            No,
        ),
        (
            "{from: [{source: {notNamespaces: [shop]}}]}",
            plain("10.0.0.1"),
            80,
            Yes,
        ),
    ]);
}

#[test]
fn ip_blocks_v4_v6_and_remote() {
    table(&[
        (
            "{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}",
            plain("10.2.3.4"),
            80,
            Yes,
        ),
        (
            "{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}",
            plain("192.168.0.1"),
            80,
            No,
        ),
        (
            "{from: [{source: {ipBlocks: [192.168.0.1]}}]}",
            plain("192.168.0.1"),
            80,
            Yes,
        ),
        (
            "{from: [{source: {ipBlocks: [192.168.0.1]}}]}",
            plain("192.168.0.2"),
            80,
            No,
        ),
        (
            "{from: [{source: {ipBlocks: [\"fd00::/16\"]}}]}",
            plain("fd00::5"),
            80,
            Yes,
        ),
        (
            "{from: [{source: {ipBlocks: [\"fd00::/16\"]}}]}",
            plain("10.0.0.1"),
            80,
            No,
        ),
        (
            "{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}",
            plain("::ffff:10.0.0.1"),
            80,
            Yes,
        ),
        (
            "{from: [{source: {notIpBlocks: [10.0.0.0/8]}}]}",
            plain("10.0.0.1"),
            80,
            No,
        ),
        (
            "{from: [{source: {notIpBlocks: [10.0.0.0/8]}}]}",
            plain("11.0.0.1"),
            80,
            Yes,
        ),
        (
            "{from: [{source: {ipBlocks: [10.0.0.0/8], notIpBlocks: [10.9.0.0/16]}}]}",
            plain("10.9.0.1"),
            80,
            No,
        ),
        (
            "{from: [{source: {remoteIpBlocks: [10.0.0.0/8]}}]}",
            plain("10.0.0.1"),
            80,
            Yes,
        ),
        (
            "{from: [{source: {notRemoteIpBlocks: [10.0.0.0/8]}}]}",
            plain("10.0.0.1"),
            80,
            No,
        ),
    ]);
}

#[test]
fn ports_and_not_ports() {
    table(&[
        (
            "{to: [{operation: {ports: [8080, 9090]}}]}",
            plain("10.0.0.1"),
            9090,
            Yes,
        ),
        (
            "{to: [{operation: {ports: [8080]}}]}",
            plain("10.0.0.1"),
            80,
            No,
        ),
        (
            "{to: [{operation: {notPorts: [8080]}}]}",
            plain("10.0.0.1"),
            8080,
            No,
        ),
        (
            "{to: [{operation: {notPorts: [8080]}}]}",
            plain("10.0.0.1"),
            80,
            Yes,
        ),
        // `to` matches when any operation does.
        (
            "{to: [{operation: {ports: [1]}}, {operation: {ports: [80]}}]}",
            plain("10.0.0.1"),
            80,
            Yes,
        ),
    ]);
}

#[test]
fn l7_attributes_are_unknown_and_l4_clauses_still_decide() {
    let peer = || mtls(WEB, "10.0.0.1");
    let mut cases = Vec::new();
    for field in [
        "hosts: [a.example]",
        "notHosts: [a.example]",
        "methods: [GET]",
        "notMethods: [GET]",
        "paths: [/admin]",
        "notPaths: [/admin]",
        "futureMatcher: [x]",
    ] {
        cases.push((
            format!("{{to: [{{operation: {{{field}}}}}]}}"),
            peer(),
            80,
            Unknown,
        ));
        // The port decides first when it rules the operation out.
        cases.push((
            format!("{{to: [{{operation: {{ports: [8080], {field}}}}}]}}"),
            peer(),
            80,
            No,
        ));
        cases.push((
            format!("{{to: [{{operation: {{ports: [80], {field}}}}}]}}"),
            peer(),
            80,
            Unknown,
        ));
    }
    for field in [
        "requestPrincipals: [\"*\"]",
        "notRequestPrincipals: [\"*\"]",
        "serviceAccounts: [shop/web]",
    ] {
        cases.push((
            format!("{{from: [{{source: {{{field}}}}}]}}"),
            peer(),
            80,
            Unknown,
        ));
        cases.push((
            format!("{{from: [{{source: {{namespaces: [other], {field}}}}}]}}"),
            peer(),
            80,
            No,
        ));
    }
    // OR over sources: a definite match wins over an unknown one.
    cases.push((
        "{from: [{source: {requestPrincipals: [\"*\"]}}, {source: {namespaces: [shop]}}]}".into(),
        peer(),
        80,
        Yes,
    ));
    for (r, src, port, want) in cases {
        assert_eq!(check(&rule(&r), &src, port), want, "rule {r}");
    }
}

#[test]
fn conditions() {
    let web = || mtls(WEB, "10.0.0.1");
    table(&[
        (
            "{when: [{key: source.ip, values: [10.0.0.0/24]}]}",
            web(),
            80,
            Yes,
        ),
        (
            "{when: [{key: source.ip, notValues: [10.0.0.0/24]}]}",
            web(),
            80,
            No,
        ),
        (
            "{when: [{key: remote.ip, values: [10.0.0.1]}]}",
            web(),
            80,
            Yes,
        ),
        (
            "{when: [{key: destination.ip, values: [10.1.0.0/16]}]}",
            web(),
            80,
            Yes,
        ),
        (
            "{when: [{key: destination.ip, values: [10.2.0.0/16]}]}",
            web(),
            80,
            No,
        ),
        (
            "{when: [{key: destination.port, values: [80, 443]}]}",
            web(),
            443,
            Yes,
        ),
        (
            "{when: [{key: destination.port, notValues: [\"80\"]}]}",
            web(),
            80,
            No,
        ),
        (
            "{when: [{key: source.namespace, values: [\"sh*\"]}]}",
            web(),
            80,
            Yes,
        ),
        (
            "{when: [{key: source.namespace, values: [shop]}]}",
            plain("10.0.0.1"),
            80,
            No,
        ),
        (
            "{when: [{key: source.principal, values: [\"cluster.local/ns/shop/sa/web\"]}]}",
            web(),
            80,
            Yes,
        ),
        (
            "{when: [{key: source.principal, notValues: [\"*\"]}]}",
            plain("10.0.0.1"),
            80,
            Yes,
        ),
        // Values and notValues together.
        (
            "{when: [{key: source.ip, values: [10.0.0.0/8], notValues: [10.0.0.1]}]}",
            web(),
            80,
            No,
        ),
        // Conditions that the agent cannot see.
        (
            "{when: [{key: \"request.headers[x-user]\", values: [a]}]}",
            web(),
            80,
            Unknown,
        ),
        (
            "{when: [{key: \"request.auth.claims[iss]\", values: [a]}]}",
            web(),
            80,
            Unknown,
        ),
        (
            "{when: [{key: connection.sni, values: [a.example]}]}",
            web(),
            80,
            Unknown,
        ),
        (
            "{when: [{key: not.in.the.table, values: [a]}]}",
            web(),
            80,
            Unknown,
        ),
        // All conditions must hold: a definite No beats an Unknown.
        (
            "{when: [{key: \"request.headers[x]\", values: [a]}, {key: destination.port, values: [1]}]}",
            web(),
            80,
            No,
        ),
    ]);

    // Without the destination address, destination.ip cannot be decided.
    let r = rule("{when: [{key: destination.ip, values: [10.1.0.0/16]}]}");
    let labels = BTreeMap::new();
    let dest = Workload::new("shop", &labels);
    let src = web();
    let l4 = L4 {
        src: &src,
        dest: &dest,
        dest_port: 80,
        request: None,
    };
    assert_eq!(l4.rule(&r), Unknown);
}

#[test]
fn rule_clauses_combine() {
    let web = || mtls(WEB, "10.0.0.1");
    table(&[
        ("{}", plain("10.0.0.1"), 80, Yes),
        (
            "{from: [{source: {namespaces: [shop]}}], to: [{operation: {ports: [80]}}]}",
            web(),
            80,
            Yes,
        ),
        (
            "{from: [{source: {namespaces: [shop]}}], to: [{operation: {ports: [80]}}]}",
            web(),
            81,
            No,
        ),
        (
            "{from: [{source: {namespaces: [other]}}], to: [{operation: {ports: [80]}}]}",
            web(),
            80,
            No,
        ),
        (
            "{from: [{source: {namespaces: [shop]}}], when: [{key: source.ip, values: [11.0.0.0/8]}]}",
            web(),
            80,
            No,
        ),
        // Within a source, every field must match.
        (
            "{from: [{source: {namespaces: [shop], ipBlocks: [11.0.0.0/8]}}]}",
            web(),
            80,
            No,
        ),
    ]);
}
