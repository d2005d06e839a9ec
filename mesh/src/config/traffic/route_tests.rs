//! VirtualService parsing: one YAML fixture per case, most of them shaped like the
//! examples of Istio's traffic management documentation.

use std::time::Duration;

use crate::config::TrafficMeta;
use crate::config::parse::parse_documents;
use crate::config::{
    HttpMatch, HttpRoute, MatchRegex, Object, RetryOn, RetryPolicy, RouteDestination, StringMatch,
    VirtualServiceInfo,
};

const HEADER: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: bookinfo}\n";

fn parse_text(text: &str) -> Result<VirtualServiceInfo, String> {
    let mut docs = parse_documents(text);
    assert_eq!(docs.len(), 1);
    match docs.remove(0).1 {
        Ok(Some(Object::VirtualService(vs))) => Ok(vs),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e.to_string()),
    }
}

fn parse(spec: &str) -> Result<VirtualServiceInfo, String> {
    parse_text(&format!("{HEADER}{spec}"))
}

/// The error for `spec`, without the object's name in front.
fn error(spec: &str) -> String {
    let err = parse(spec).expect_err(spec);
    err.strip_prefix("VirtualService bookinfo/reviews: ")
        .unwrap_or_else(|| panic!("{err}"))
        .to_string()
}

/// A spec with one route whose body is `route` (YAML flow mapping entries).
fn one_route(route: &str) -> String {
    format!("spec: {{hosts: [reviews], http: [{{{route}}}]}}\n")
}

/// As [`one_route`], forwarding to `reviews`.
fn forwarding(rest: &str) -> String {
    one_route(&format!(
        "route: [{{destination: {{host: reviews}}}}], {rest}"
    ))
}

fn to(host: &str, subset: Option<&str>, weight: u32) -> RouteDestination {
    RouteDestination {
        host: host.into(),
        subset: subset.map(str::to_string),
        port: None,
        weight,
    }
}

fn first_route(spec: &str) -> HttpRoute {
    parse(spec)
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
        .http
        .remove(0)
}

fn retries(retries: &str) -> Option<RetryPolicy> {
    first_route(&forwarding(&format!("retries: {retries}"))).retries
}

#[test]
fn canary_by_header_then_by_weight() {
    let vs = parse(
        r#"
spec:
  hosts:
  - reviews
  gateways: [mesh]
  exportTo: ["."]
  http:
  - name: canary-testers
    match:
    - headers:
        X-Canary:
          exact: "true"
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 90
    - destination:
        host: reviews
        subset: v2
      weight: 10
"#,
    )
    .unwrap();
    let want = VirtualServiceInfo {
        meta: TrafficMeta::default(),
        namespace: "bookinfo".into(),
        name: "reviews".into(),
        hosts: vec!["reviews".into()],
        export_to: vec![".".into()],
        http: vec![
            HttpRoute {
                name: Some("canary-testers".into()),
                matches: vec![HttpMatch {
                    uri: None,
                    headers: vec![("x-canary".into(), StringMatch::Exact("true".into()))],
                    port: None,
                }],
                destinations: vec![to("reviews", Some("v2"), 100)],
                timeout: None,
                retries: None,
            },
            HttpRoute {
                name: None,
                matches: vec![],
                destinations: vec![to("reviews", Some("v1"), 90), to("reviews", Some("v2"), 10)],
                timeout: None,
                retries: None,
            },
        ],
    };
    let mut vs = vs;
    let ignored: Vec<&str> = vs.meta.ignored.iter().map(|(p, _)| p.as_str()).collect();
    assert!(
        ignored.is_empty(),
        "gateways: [mesh] is what Weft does: {ignored:?}"
    );
    vs.meta = TrafficMeta::default();
    assert_eq!(vs, want);
}

#[test]
fn every_api_version_reads_the_same() {
    let spec = "spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}\n";
    let v1 = parse(spec).unwrap();
    for version in ["v1beta1", "v1alpha3"] {
        let text = HEADER.replace("/v1\n", &format!("/{version}\n")) + spec;
        assert_eq!(parse_text(&text).unwrap(), v1, "{version}");
    }
}

#[test]
fn timeouts_and_retries() {
    let route = first_route(
        r#"
spec:
  hosts: [ratings.prod.svc.cluster.local]
  http:
  - route:
    - destination:
        host: ratings.prod.svc.cluster.local
        subset: v1
        port:
          number: 9080
    timeout: 10s
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: unavailable,cancelled,5xx
"#,
    );
    assert_eq!(
        route.destinations,
        [RouteDestination {
            host: "ratings.prod.svc.cluster.local".into(),
            subset: Some("v1".into()),
            port: Some(9080),
            weight: 100,
        }]
    );
    assert_eq!(route.timeout, Some(Duration::from_secs(10)));
    assert_eq!(
        route.retries,
        Some(RetryPolicy {
            attempts: 3,
            per_try_timeout: Some(Duration::from_secs(2)),
            retry_on: RetryOn {
                grpc_unavailable: true,
                grpc_cancelled: true,
                http_5xx: true,
                ..RetryOn::default()
            },
        })
    );

    let timeout = |t: &str| first_route(&forwarding(&format!("timeout: {t}"))).timeout;
    assert_eq!(timeout("0s"), Some(Duration::ZERO));
    assert_eq!(timeout("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(timeout("1.5s"), Some(Duration::from_millis(1_500)));
    assert_eq!(first_route(&forwarding("name: x")).timeout, None);
}

#[test]
fn retry_defaults_belong_to_the_waypoint_unless_retries_is_written() {
    // Absent: left to the waypoint, not filled in with Istio's default here.
    assert_eq!(first_route(&forwarding("name: x")).retries, None);
    // Attempts without retryOn: Weft's default conditions.
    for written in [
        "{attempts: 2}",
        "{attempts: 2, retryOn: \"\"}",
        "{attempts: 2, retryOn: \" , \"}",
    ] {
        assert_eq!(
            retries(written),
            Some(RetryPolicy {
                attempts: 2,
                per_try_timeout: None,
                retry_on: RetryOn::default_conditions(),
            }),
            "{written}"
        );
    }
    // Zero attempts (or none written) disable retries, with nothing filled in.
    for written in ["{attempts: 0}", "{perTryTimeout: 1s}"] {
        let policy = retries(written).unwrap();
        assert_eq!(policy.attempts, 0, "{written}");
        assert_eq!(policy.retry_on, RetryOn::default(), "{written}");
    }
}

#[test]
fn retry_on_conditions_and_status_codes() {
    let on = |text: &str| {
        retries(&format!(
            "{{attempts: 1, retryOn: \"{text}\", retryRemoteLocalities: true}}"
        ))
        .unwrap()
        .retry_on
    };
    assert_eq!(
        on("503,retriable-status-codes"),
        RetryOn {
            retriable_status_codes: true,
            status_codes: vec![503],
            ..RetryOn::default()
        }
    );
    // A code alone implies retriable-status-codes; codes are kept once, in order.
    assert_eq!(
        on(" 504 , 503,504,"),
        RetryOn {
            retriable_status_codes: true,
            status_codes: vec![504, 503],
            ..RetryOn::default()
        }
    );
    let all = on(
        "5xx,gateway-error,reset,connect-failure,refused-stream,cancelled,\
                  deadline-exceeded,resource-exhausted,internal,unavailable",
    );
    assert_eq!(
        all,
        RetryOn {
            grpc_cancelled: true,
            grpc_deadline_exceeded: true,
            grpc_resource_exhausted: true,
            grpc_internal: true,
            grpc_unavailable: true,
            http_5xx: true,
            gateway_error: true,
            reset: true,
            connect_failure: true,
            refused_stream: true,
            retriable_status_codes: false,
            status_codes: vec![],
        }
    );
}

#[test]
fn matches_uri_headers_and_port() {
    let route = first_route(
        r#"
spec:
  hosts: [reviews]
  http:
  - match:
    - name: api
      uri: {prefix: /api/}
      port: 9080
      ignoreUriCase: false
      statPrefix: reviews-api
    - uri: {regex: "/v[0-9]+/.*"}
      headers:
        end-user: {exact: jason}
        X-Trace: {}
        Cookie: {regex: "^(.*?;)?(user=jason)(;.*)?$"}
    - {}
    route:
    - destination: {host: reviews}
"#,
    );
    let regex = |p: &str| StringMatch::Regex(MatchRegex::new(p).unwrap());
    assert_eq!(
        route.matches,
        [
            HttpMatch {
                uri: Some(StringMatch::Prefix("/api/".into())),
                headers: vec![],
                port: Some(9080),
            },
            HttpMatch {
                uri: Some(regex("/v[0-9]+/.*")),
                headers: vec![
                    ("cookie".into(), regex("^(.*?;)?(user=jason)(;.*)?$")),
                    ("end-user".into(), StringMatch::Exact("jason".into())),
                    // Istio's presence check.
                    ("x-trace".into(), StringMatch::Prefix(String::new())),
                ],
                port: None,
            },
            HttpMatch::default(),
        ]
    );
    let StringMatch::Regex(uri) = route.matches[1].uri.as_ref().unwrap() else {
        unreachable!()
    };
    assert!(uri.is_match("/v1/reviews"));
    assert!(!uri.is_match("/api/v1/reviews"));
    // `match: []` is no condition.
    assert!(first_route(&forwarding("match: []")).matches.is_empty());
}

#[test]
fn weights() {
    let weights = |route: &str| -> Vec<u32> {
        first_route(&one_route(&format!("route: {route}")))
            .destinations
            .iter()
            .map(|d| d.weight)
            .collect()
    };
    assert_eq!(weights("[{destination: {host: a}}]"), [100]);
    assert_eq!(weights("[{destination: {host: a}, weight: 40}]"), [40]);
    assert_eq!(
        weights("[{destination: {host: a}, weight: 75}, {destination: {host: b}}]"),
        [75, 0]
    );
    // Istio no longer requires a total of 100: weights are relative.
    assert_eq!(
        weights("[{destination: {host: a}, weight: 1}, {destination: {host: b}, weight: 1}]"),
        [1, 1]
    );
}

#[test]
fn features_weft_does_not_implement_are_rejected_by_name() {
    for (field, value) in [
        ("rewrite", "{uri: /v2}"),
        ("redirect", "{uri: /v2}"),
        (
            "fault",
            "{abort: {httpStatus: 500, percentage: {value: 10}}}",
        ),
        ("mirror", "{host: reviews, subset: v2}"),
        ("mirrors", "[{destination: {host: reviews}}]"),
        ("mirrorPercentage", "{value: 50}"),
        ("mirrorPercent", "50"),
        ("corsPolicy", "{allowOrigins: [{exact: a}]}"),
        ("headers", "{request: {set: {x-a: b}}}"),
    ] {
        assert_eq!(
            error(&forwarding(&format!("{field}: {value}"))),
            format!("spec.http[0].{field}: not supported by Weft"),
        );
    }
    assert_eq!(
        error(&one_route("directResponse: {status: 503}")),
        "spec.http[0].directResponse: not supported by Weft"
    );
    assert_eq!(
        error(&one_route("delegate: {name: reviews-v2, namespace: nsA}")),
        "spec.http[0].delegate: not supported by Weft"
    );
    for field in ["tcp", "tls"] {
        assert_eq!(
            error(&format!(
                "spec: {{hosts: [reviews], {field}: [{{route: [{{destination: {{host: reviews}}}}]}}]}}\n"
            )),
            format!("spec.{field}: not supported by Weft")
        );
    }
    for (field, value) in [
        ("method", "{exact: GET}"),
        ("authority", "{exact: reviews}"),
        ("scheme", "{exact: https}"),
        ("queryParams", "{v: {exact: \"2\"}}"),
        ("ignoreUriCase", "true"),
        ("withoutHeaders", "{x: {}}"),
        ("sourceLabels", "{app: web}"),
        ("sourceNamespace", "web"),
        ("gateways", "[mesh]"),
    ] {
        assert_eq!(
            error(&forwarding(&format!("match: [{{{field}: {value}}}]"))),
            format!("spec.http[0].match[0].{field}: not supported by Weft"),
        );
    }
    assert_eq!(
        error(&one_route(
            "route: [{destination: {host: a}, headers: {response: {remove: [x]}}}]"
        )),
        "spec.http[0].route[0].headers: not supported by Weft"
    );
}

#[test]
fn unknown_fields_are_errors_that_name_them() {
    let err = error(&forwarding("retryPolicy: {attempts: 3}"));
    assert!(
        err.starts_with(
            "spec.http[0].retryPolicy: unknown field `retryPolicy`, expected one of `name`, `match`"
        ),
        "{err}"
    );
    let err = error("spec: {hosts: [reviews], http: [], tpc: []}\n");
    assert!(err.starts_with("spec.tpc: unknown field `tpc`"), "{err}");
    let err = error(&forwarding("match: [{uri: {exacct: /}}]"));
    assert!(
        err.starts_with("spec.http[0].match[0].uri.exacct: unknown field `exacct`"),
        "{err}"
    );
    // The envelope is not Weft's to check.
    let text = format!("{HEADER}status: {{x: 1}}\n{}", forwarding("name: x"));
    assert!(parse_text(&text).is_ok());
}

#[test]
fn invalid_routes_name_the_field() {
    for (spec, want) in [
        (
            "spec: {}\n".to_string(),
            "spec.hosts: at least one host is required",
        ),
        ("".to_string(), "spec.hosts: at least one host is required"),
        (
            "spec: {hosts: [reviews, \"\"], http: []}\n".to_string(),
            "spec.hosts[1]: must not be empty",
        ),
        (
            "spec: {hosts: [reviews]}\n".to_string(),
            "spec.http: at least one route is required",
        ),
        (
            one_route("name: x"),
            "spec.http[0].route: at least one destination is required (Weft supports no other action)",
        ),
        (
            one_route("route: []"),
            "spec.http[0].route: at least one destination is required (Weft supports no other action)",
        ),
        (
            one_route("route: [{weight: 100}]"),
            "spec.http[0].route[0].destination: required",
        ),
        (
            one_route("route: [{destination: {subset: v1}}]"),
            "spec.http[0].route[0].destination.host: required",
        ),
        (
            one_route("route: [{destination: {host: a, port: {number: 0}}}]"),
            "spec.http[0].route[0].destination.port.number: invalid value 0 (must be 1..=65535)",
        ),
        (
            one_route("route: [{destination: {host: a}, weight: 101}]"),
            "spec.http[0].route[0].weight: invalid value 101 (must be 0..=100)",
        ),
        (
            one_route(
                "route: [{destination: {host: a}, weight: 50}, {destination: {host: b}, weight: -1}]",
            ),
            "spec.http[0].route[1].weight: invalid value -1 (must be 0..=100)",
        ),
        (
            one_route("route: [{destination: {host: a}, weight: 0}]"),
            "spec.http[0].route: every weight is 0, so no request could be routed (give a destination a weight)",
        ),
        (
            one_route("route: [{destination: {host: a}}, {destination: {host: b}}]"),
            "spec.http[0].route: every weight is 0, so no request could be routed (give a destination a weight)",
        ),
        (
            forwarding("match: [{port: 70000}]"),
            "spec.http[0].match[0].port: invalid value 70000 (must be 1..=65535)",
        ),
        (
            forwarding("match: [{uri: {}}]"),
            "spec.http[0].match[0].uri: one of exact, prefix, regex is required",
        ),
        (
            forwarding("match: [{uri: {exact: /a, prefix: /a}}]"),
            "spec.http[0].match[0].uri: only one of exact, prefix, regex may be set",
        ),
        (
            forwarding("match: [{headers: {x-a: {prefix: a, regex: b}}}]"),
            "spec.http[0].match[0].headers.x-a: only one of exact, prefix, regex may be set",
        ),
        (
            forwarding("match: [{uri: {regex: \"/(a\"}}]"),
            "spec.http[0].match[0].uri.regex: invalid regex \"/(a\": unclosed group",
        ),
        (
            forwarding("match: [{headers: {\"bad header\": {exact: a}}}]"),
            "spec.http[0].match[0].headers.bad header: \"bad header\" is not a valid header name",
        ),
        (
            forwarding("match: [{headers: {X-A: {exact: a}, x-a: {exact: b}}}]"),
            "spec.http[0].match[0].headers: \"x-a\" is listed twice (header names are case-insensitive)",
        ),
        (
            forwarding("timeout: \"5\""),
            "spec.http[0].timeout: invalid duration \"5\" (missing unit: write e.g. \"5s\" or \"500ms\"; units are h, m, s, ms, us, ns)",
        ),
        (
            forwarding("timeout: -1s"),
            "spec.http[0].timeout: invalid duration \"-1s\" (must not be negative)",
        ),
        (
            forwarding("retries: {attempts: -1}"),
            "spec.http[0].retries.attempts: invalid value -1 (must not be negative)",
        ),
        (
            forwarding("retries: {attempts: 2, perTryTimeout: 0s}"),
            "spec.http[0].retries.perTryTimeout: invalid duration \"0s\" (must be at least 1ms)",
        ),
        (
            forwarding("retries: {attempts: 2, perTryTimeout: soon}"),
            "spec.http[0].retries.perTryTimeout: invalid duration \"soon\" (expected a number followed by a unit: h, m, s, ms, us, ns)",
        ),
        (
            forwarding("retries: {attempts: 2, retryOn: \"5xx,retriable-4xx\"}"),
            "spec.http[0].retries.retryOn: retry condition \"retriable-4xx\" is not supported by Weft",
        ),
        (
            forwarding("retries: {attempts: 2, retryOn: \"600\"}"),
            "spec.http[0].retries.retryOn: invalid status code \"600\" (must be 100..=599)",
        ),
    ] {
        assert_eq!(error(&spec), want, "{spec}");
    }
    let err = error(&forwarding(
        "retries: {attempts: 2, retryOn: \"5xx,on-error\"}",
    ));
    assert!(
        err.starts_with("spec.http[0].retries.retryOn: unknown retry condition \"on-error\" (known: 5xx, gateway-error,"),
        "{err}"
    );
    let err = error(&forwarding("timeout: 10"));
    assert!(
        err.starts_with("spec.http[0].timeout: invalid type: integer `10`"),
        "{err}"
    );
}
