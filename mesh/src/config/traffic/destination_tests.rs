//! DestinationRule parsing: one YAML fixture per case, most of them shaped like the
//! examples of Istio's traffic management documentation.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::TrafficMeta;
use crate::config::parse::parse_documents;
use crate::config::{
    ConnectionPool, DestinationRuleInfo, HashKey, LOAD_BALANCER_ANNOTATION, LoadBalancer, Object,
    OutlierDetection, RETRY_BUDGET_MIN_ANNOTATION, RETRY_BUDGET_PERCENT_ANNOTATION, RetryBudget,
    Subset, TrafficPolicy,
};

const HEADER: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: bookinfo}\n";

fn parse_text(text: &str) -> Result<DestinationRuleInfo, String> {
    let mut docs = parse_documents(text);
    assert_eq!(docs.len(), 1);
    match docs.remove(0).1 {
        Ok(Some(Object::DestinationRule(dr))) => Ok(dr),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e.to_string()),
    }
}

fn parse(spec: &str) -> Result<DestinationRuleInfo, String> {
    parse_text(&format!("{HEADER}{spec}"))
}

/// The error for `spec`, without the object's name in front.
fn error(spec: &str) -> String {
    let err = parse(spec).expect_err(spec);
    err.strip_prefix("DestinationRule bookinfo/reviews: ")
        .unwrap_or_else(|| panic!("{err}"))
        .to_string()
}

/// The top-level policy of a rule for `reviews` with `policy` (a YAML flow mapping).
fn policy(policy: &str) -> TrafficPolicy {
    let spec = format!("spec: {{host: reviews, trafficPolicy: {policy}}}\n");
    parse(&spec)
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
        .traffic_policy
}

fn policy_error(policy: &str) -> String {
    error(&format!(
        "spec: {{host: reviews, trafficPolicy: {policy}}}\n"
    ))
}

/// A rule for `reviews` with these annotations (a YAML flow mapping) and `policy`.
fn annotated(annotations: &str, policy: &str) -> Result<DestinationRuleInfo, String> {
    parse_text(&format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{name: reviews, namespace: bookinfo, annotations: {annotations}}}\n\
         spec: {{host: reviews, trafficPolicy: {policy}}}\n"
    ))
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn full_rule_with_subsets() {
    let dr = parse(
        r#"
spec:
  host: reviews.bookinfo.svc.cluster.local
  exportTo: ["."]
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
    loadBalancer:
      simple: LEAST_REQUEST
      localityLbSetting: {enabled: false}
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 30ms
        tcpKeepalive: {time: 7200s, interval: 75s}
      http:
        http1MaxPendingRequests: 1024
        http2MaxRequests: 1000
        maxRequestsPerConnection: 10
        maxConcurrentStreams: 100
        maxRetries: 3
        idleTimeout: 1h
        h2UpgradePolicy: UPGRADE
        useClientProtocol: true
    outlierDetection:
      consecutive5xxErrors: 7
      consecutiveGatewayErrors: 3
      interval: 5m
      baseEjectionTime: 15m
      maxEjectionPercent: 50
      consecutiveLocalOriginFailures: 5
      splitExternalLocalOriginErrors: true
      minHealthPercent: 50
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpHeaderName: X-User
          minimumRingSize: 1024
"#,
    )
    .unwrap();
    let want = DestinationRuleInfo {
        meta: TrafficMeta::default(),
        namespace: "bookinfo".into(),
        name: "reviews".into(),
        host: "reviews.bookinfo.svc.cluster.local".into(),
        traffic_policy: TrafficPolicy {
            load_balancer: Some(LoadBalancer::LeastRequest),
            connection_pool: ConnectionPool {
                max_connections: Some(100),
                connect_timeout: Some(Duration::from_millis(30)),
                http2_max_requests: Some(1000),
                max_requests_per_connection: Some(10),
                max_concurrent_streams: Some(100),
                max_retries: Some(3),
                idle_timeout: Some(Duration::from_secs(3_600)),
            },
            outlier_detection: Some(OutlierDetection {
                consecutive_5xx_errors: Some(7),
                consecutive_gateway_errors: Some(3),
                interval: Duration::from_secs(300),
                base_ejection_time: Duration::from_secs(900),
                max_ejection_percent: 50,
            }),
        },
        subsets: vec![
            Subset {
                name: "v1".into(),
                labels: labels(&[("version", "v1")]),
                traffic_policy: None,
            },
            Subset {
                name: "v2".into(),
                labels: labels(&[("version", "v2")]),
                traffic_policy: Some(TrafficPolicy {
                    load_balancer: Some(LoadBalancer::ConsistentHash(HashKey::Header(
                        "x-user".into(),
                    ))),
                    ..TrafficPolicy::default()
                }),
            },
        ],
        retry_budget: None,
    };
    let mut dr = dr;
    let ignored: Vec<&str> = dr.meta.ignored.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        ignored,
        [
            "spec.exportTo",
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive",
            "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests",
            "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
            "spec.trafficPolicy.connectionPool.http.useClientProtocol",
            "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
            "spec.trafficPolicy.outlierDetection.splitExternalLocalOriginErrors",
            "spec.trafficPolicy.outlierDetection.minHealthPercent",
            "spec.subsets[1].trafficPolicy.loadBalancer.consistentHash.minimumRingSize",
        ],
        "localityLbSetting {{enabled: false}} asks for what Weft does"
    );
    dr.meta = TrafficMeta::default();
    assert_eq!(dr, want);
}

#[test]
fn every_api_version_reads_the_same() {
    let spec = "spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}\n";
    let v1 = parse(spec).unwrap();
    for version in ["v1beta1", "v1alpha3"] {
        let text = HEADER.replace("/v1\n", &format!("/{version}\n")) + spec;
        assert_eq!(parse_text(&text).unwrap(), v1, "{version}");
    }
}

#[test]
fn defaults() {
    let dr = parse("spec: {host: reviews}\n").unwrap();
    assert_eq!(dr.traffic_policy, TrafficPolicy::default());
    assert!(dr.subsets.is_empty());
    assert_eq!(policy("{}"), TrafficPolicy::default());
    assert_eq!(policy("{loadBalancer: {}}"), TrafficPolicy::default());
    assert_eq!(
        policy("{loadBalancer: {simple: UNSPECIFIED}}"),
        TrafficPolicy::default()
    );
    // A subset without labels is every endpoint of the host.
    let dr = parse("spec: {host: reviews, subsets: [{name: all}]}\n").unwrap();
    assert_eq!(dr.subsets[0].labels, BTreeMap::new());
    // An empty outlierDetection turns ejection on with Istio's defaults.
    assert_eq!(
        policy("{outlierDetection: {}}").outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx_errors: None,
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        })
    );
    // Zeros: "not set" for pool limits; as written for ejection.
    let p = policy(
        "{connectionPool: {tcp: {maxConnections: 0}, http: {http2MaxRequests: 0, \
         maxRequestsPerConnection: 0, maxConcurrentStreams: 0, maxRetries: 0, idleTimeout: 0s}}, \
         outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 0, maxEjectionPercent: 0}}",
    );
    assert_eq!(
        p.connection_pool,
        ConnectionPool {
            idle_timeout: Some(Duration::ZERO),
            ..ConnectionPool::default()
        }
    );
    let od = p.outlier_detection.unwrap();
    assert_eq!(
        (
            od.consecutive_5xx_errors,
            od.consecutive_gateway_errors,
            od.max_ejection_percent
        ),
        (Some(0), Some(0), 0)
    );
}

#[test]
fn load_balancers() {
    for (simple, want) in [
        ("ROUND_ROBIN", LoadBalancer::RoundRobin),
        ("LEAST_REQUEST", LoadBalancer::LeastRequest),
        ("LEAST_CONN", LoadBalancer::LeastRequest),
        ("RANDOM", LoadBalancer::Random),
    ] {
        let p = policy(&format!("{{loadBalancer: {{simple: {simple}}}}}"));
        assert_eq!(p.load_balancer, Some(want), "{simple}");
    }
    let hash = |spec: &str| policy(&format!("{{loadBalancer: {{consistentHash: {spec}}}}}"));
    assert_eq!(
        hash("{useSourceIp: true, ringHash: {minimumRingSize: 1024}}").load_balancer,
        Some(LoadBalancer::ConsistentHash(HashKey::SourceIp))
    );
    assert_eq!(
        hash("{httpHeaderName: x-session, useSourceIp: false, maglev: {tableSize: 65537}}")
            .load_balancer,
        Some(LoadBalancer::ConsistentHash(HashKey::Header(
            "x-session".into()
        )))
    );
}

#[test]
fn weft_annotations() {
    // PEAK_EWMA replaces `simple`; the other names are `simple`'s.
    let dr = annotated(
        &format!("{{{LOAD_BALANCER_ANNOTATION}: PEAK_EWMA}}"),
        "{loadBalancer: {simple: ROUND_ROBIN}}",
    )
    .unwrap();
    assert_eq!(
        dr.traffic_policy.load_balancer,
        Some(LoadBalancer::PeakEwma)
    );
    assert_eq!(dr.retry_budget, None);
    let dr = annotated(&format!("{{{LOAD_BALANCER_ANNOTATION}: RANDOM}}"), "{}").unwrap();
    assert_eq!(dr.traffic_policy.load_balancer, Some(LoadBalancer::Random));

    let budget = |annotations: &str| annotated(annotations, "{}").unwrap().retry_budget;
    assert_eq!(
        budget(&format!(
            "{{{RETRY_BUDGET_PERCENT_ANNOTATION}: \"25.5\", {RETRY_BUDGET_MIN_ANNOTATION}: \"3\"}}"
        )),
        Some(RetryBudget {
            percent: 25.5,
            min_per_second: 3
        })
    );
    assert_eq!(
        budget(&format!("{{{RETRY_BUDGET_PERCENT_ANNOTATION}: \"50\"}}")),
        Some(RetryBudget {
            percent: 50.0,
            min_per_second: 10
        })
    );
    assert_eq!(
        budget(&format!("{{{RETRY_BUDGET_MIN_ANNOTATION}: \"0\"}}")),
        Some(RetryBudget {
            percent: 20.0,
            min_per_second: 0
        })
    );
    assert_eq!(budget("{other: x}"), None);
}

#[test]
fn invalid_annotations_name_the_annotation() {
    let err = |annotations: &str, policy: &str| {
        let e = annotated(annotations, policy).unwrap_err();
        e.strip_prefix("DestinationRule bookinfo/reviews: ")
            .unwrap_or_else(|| panic!("{e}"))
            .to_string()
    };
    assert_eq!(
        err(&format!("{{{LOAD_BALANCER_ANNOTATION}: FASTEST}}"), "{}"),
        "metadata.annotations[\"weft.dev/load-balancer\"]: invalid value \"FASTEST\" \
         (must be one of PEAK_EWMA, ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM)"
    );
    assert_eq!(
        err(
            &format!("{{{LOAD_BALANCER_ANNOTATION}: PEAK_EWMA}}"),
            "{loadBalancer: {consistentHash: {useSourceIp: true}}}"
        ),
        "metadata.annotations[\"weft.dev/load-balancer\"]: cannot be set together with \
         spec.trafficPolicy.loadBalancer.consistentHash"
    );
    for bad in ["\"twenty\"", "\"-1\"", "\"101\"", "\"NaN\"", "\"\""] {
        assert_eq!(
            err(
                &format!("{{{RETRY_BUDGET_PERCENT_ANNOTATION}: {bad}}}"),
                "{}"
            ),
            format!(
                "metadata.annotations[\"weft.dev/retry-budget-percent\"]: invalid value {bad} \
                 (must be a number 0..=100)"
            )
        );
    }
    for bad in ["\"1.5\"", "\"-1\"", "\"ten\""] {
        assert_eq!(
            err(&format!("{{{RETRY_BUDGET_MIN_ANNOTATION}: {bad}}}"), "{}"),
            format!(
                "metadata.annotations[\"weft.dev/retry-budget-min-per-second\"]: invalid value {bad} \
                 (must be a whole number, 0 or more)"
            )
        );
    }
}

#[test]
fn features_weft_does_not_implement_are_rejected_by_name() {
    for (policy, want) in [
        (
            "{portLevelSettings: [{port: {number: 80}}]}",
            "spec.trafficPolicy.portLevelSettings: not supported by Weft",
        ),
        (
            "{tunnel: {targetHost: x, targetPort: 1}}",
            "spec.trafficPolicy.tunnel: not supported by Weft",
        ),
        (
            "{proxyProtocol: {version: V1}}",
            "spec.trafficPolicy.proxyProtocol: not supported by Weft",
        ),
        (
            "{loadBalancer: {simple: PASSTHROUGH}}",
            "spec.trafficPolicy.loadBalancer.simple: \"PASSTHROUGH\" is not supported by Weft (the waypoint always picks an endpoint)",
        ),
        (
            "{loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 60s}}",
            "spec.trafficPolicy.loadBalancer.warmupDurationSecs: not supported by Weft",
        ),
        (
            "{loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}}}}",
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie: not supported by Weft",
        ),
        (
            "{loadBalancer: {consistentHash: {httpQueryParameterName: user}}}",
            "spec.trafficPolicy.loadBalancer.consistentHash.httpQueryParameterName: not supported by Weft",
        ),
        (
            "{connectionPool: {tcp: {maxConnectionDuration: 1h}}}",
            "spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration: not supported by Weft",
        ),
        (
            "{outlierDetection: {consecutiveErrors: 5}}",
            "spec.trafficPolicy.outlierDetection.consecutiveErrors: not supported by Weft; use consecutive5xxErrors or consecutiveGatewayErrors",
        ),
        (
            "{tls: {mode: SIMPLE}}",
            "spec.trafficPolicy.tls.mode: \"SIMPLE\" is not supported by Weft (traffic between workloads is always Istio mutual TLS; only ISTIO_MUTUAL is accepted)",
        ),
        (
            "{tls: {}}",
            "spec.trafficPolicy.tls.mode: \"DISABLE\" is not supported by Weft (traffic between workloads is always Istio mutual TLS; only ISTIO_MUTUAL is accepted)",
        ),
    ] {
        assert_eq!(policy_error(policy), want, "{policy}");
    }
    assert_eq!(
        error("spec: {host: reviews, workloadSelector: {matchLabels: {app: web}}}\n"),
        "spec.workloadSelector: not supported by Weft"
    );
    assert_eq!(
        error("spec: {host: reviews, subsets: [{name: v1, trafficPolicy: {tunnel: {}}}]}\n"),
        "spec.subsets[0].trafficPolicy.tunnel: not supported by Weft"
    );
}

#[test]
fn invalid_rules_name_the_field() {
    for (policy, want) in [
        (
            "{loadBalancer: {simple: FASTEST}}",
            "spec.trafficPolicy.loadBalancer.simple: invalid value \"FASTEST\" (must be one of UNSPECIFIED, ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM)",
        ),
        (
            "{loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}",
            "spec.trafficPolicy.loadBalancer: simple and consistentHash cannot both be set",
        ),
        (
            "{loadBalancer: {consistentHash: {}}}",
            "spec.trafficPolicy.loadBalancer.consistentHash: one of httpHeaderName, useSourceIp is required",
        ),
        (
            "{loadBalancer: {consistentHash: {useSourceIp: false}}}",
            "spec.trafficPolicy.loadBalancer.consistentHash: one of httpHeaderName, useSourceIp is required",
        ),
        (
            "{loadBalancer: {consistentHash: {httpHeaderName: x, useSourceIp: true}}}",
            "spec.trafficPolicy.loadBalancer.consistentHash: httpHeaderName and useSourceIp cannot both be set",
        ),
        (
            "{loadBalancer: {consistentHash: {httpHeaderName: \"x y\"}}}",
            "spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName: \"x y\" is not a valid header name",
        ),
        (
            "{connectionPool: {tcp: {maxConnections: -1}}}",
            "spec.trafficPolicy.connectionPool.tcp.maxConnections: invalid value -1 (must not be negative)",
        ),
        (
            "{connectionPool: {tcp: {connectTimeout: 0s}}}",
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout: invalid duration \"0s\" (must be at least 1ms)",
        ),
        (
            "{connectionPool: {http: {maxRetries: 4294967296}}}",
            "spec.trafficPolicy.connectionPool.http.maxRetries: invalid value 4294967296 (too large)",
        ),
        (
            "{connectionPool: {http: {idleTimeout: forever}}}",
            "spec.trafficPolicy.connectionPool.http.idleTimeout: invalid duration \"forever\" (expected a number followed by a unit: h, m, s, ms, us, ns)",
        ),
        (
            "{outlierDetection: {maxEjectionPercent: 101}}",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent: invalid value 101 (must be 0..=100)",
        ),
        (
            "{outlierDetection: {interval: 0s}}",
            "spec.trafficPolicy.outlierDetection.interval: invalid duration \"0s\" (must be at least 1ms)",
        ),
        (
            "{outlierDetection: {baseEjectionTime: 30}}",
            "spec.trafficPolicy.outlierDetection.baseEjectionTime: invalid type: integer `30`, expected a string",
        ),
        (
            "{outlierDetection: {consecutive5xxErrors: -2}}",
            "spec.trafficPolicy.outlierDetection.consecutive5xxErrors: invalid value -2 (must not be negative)",
        ),
    ] {
        assert_eq!(policy_error(policy), want, "{policy}");
    }
    for (spec, want) in [
        ("spec: {}\n", "spec.host: required"),
        ("", "spec.host: required"),
        ("spec: {host: \"\"}\n", "spec.host: required"),
        (
            "spec: {host: reviews, subsets: [{labels: {version: v1}}]}\n",
            "spec.subsets[0].name: required",
        ),
        (
            "spec: {host: reviews, subsets: [{name: v1}, {name: v1}]}\n",
            "spec.subsets[1].name: subset \"v1\" is defined twice",
        ),
        (
            "spec: {host: reviews, subsets: [{name: v1, labels: {\"\": x}}]}\n",
            "spec.subsets[0].labels: a label key must not be empty",
        ),
    ] {
        assert_eq!(error(spec), want, "{spec}");
    }
    let err = policy_error("{connectionPool: {http: {http2MaxRequest: 10}}}");
    assert!(
        err.starts_with(
            "spec.trafficPolicy.connectionPool.http.http2MaxRequest: unknown field `http2MaxRequest`"
        ),
        "{err}"
    );
}
