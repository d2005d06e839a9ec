//! The connection pool's limits and the circuit breakers of a DestinationRule, and
//! outlier detection.

use std::{sync::atomic::Ordering, time::Duration};

use super::{Act, Lab, Options, destination_rule, to_c, virtual_service};

/// `http2MaxRequests`: a call past the limit gets RESOURCE_EXHAUSTED at once, flagged UO,
/// and the backend never sees it.
#[tokio::test]
async fn http2_max_requests_overflows_with_resource_exhausted() {
    let lab = Lab::new(&to_c("{connectionPool: {http: {http2MaxRequests: 1}}}", "")).await;
    let c = lab.backend("c");
    c.then(&[Act::Slow(Duration::from_millis(300))]);
    let (first, second) = lab.overlapping(Duration::from_millis(100)).await;
    assert_eq!(first.ok_from(), Some("c"), "{first:?}");
    assert_eq!(second.grpc, Some(8), "{second:?}");
    assert!(second.message.contains("http2MaxRequests"), "{second:?}");
    assert_eq!(c.calls(), 1);
    assert_eq!(lab.calls_flagged("UO"), 1);
    // The slot is free again.
    assert_eq!(lab.call().await.ok_from(), Some("c"));
}

/// `maxConcurrentStreams`: a second call while a connection has its one stream busy opens
/// a second connection; `maxRequestsPerConnection`: each call past it opens a new one.
#[tokio::test]
async fn stream_and_request_limits_per_connection() {
    let lab = Lab::new(&to_c(
        "{connectionPool: {http: {maxConcurrentStreams: 1}}}",
        "",
    ))
    .await;
    let c = lab.backend("c");
    c.then(&[Act::Slow(Duration::from_millis(300))]);
    let (first, second) = lab.overlapping(Duration::from_millis(100)).await;
    assert_eq!((first.ok_from(), second.ok_from()), (Some("c"), Some("c")));
    assert_eq!(c.connections.load(Ordering::SeqCst), 2);
    // Both connections are free now: no third.
    assert_eq!(lab.call().await.ok_from(), Some("c"));
    assert_eq!(c.connections.load(Ordering::SeqCst), 2);

    let lab = Lab::new(&to_c(
        "{connectionPool: {http: {maxRequestsPerConnection: 2}}}",
        "",
    ))
    .await;
    let c = lab.backend("c");
    for _ in 0..5 {
        assert_eq!(lab.call().await.ok_from(), Some("c"));
    }
    assert_eq!(c.connections.load(Ordering::SeqCst), 3, "2 + 2 + 1 calls");
    // Without the limit, one connection serves them all.
    let lab = Lab::new(&to_c("{}", "")).await;
    for _ in 0..5 {
        lab.call().await;
    }
    assert_eq!(lab.backend("c").connections.load(Ordering::SeqCst), 1);
}

/// At `tcp.maxConnections: 1`, calls share the one connection, and the backend's own
/// SETTINGS_MAX_CONCURRENT_STREAMS queues them in h2 instead of failing them.
#[tokio::test]
async fn the_backends_stream_limit_queues_calls_on_the_last_connection() {
    let lab = Lab::with(Options {
        yaml: &to_c("{connectionPool: {tcp: {maxConnections: 1}}}", ""),
        max_streams: Some(1),
        ..Options::default()
    })
    .await;
    let c = lab.backend("c");
    c.always(Act::Slow(Duration::from_millis(50)));
    let calls = futures::future::join_all((0..4).map(|_| lab.call())).await;
    assert!(calls.iter().all(|a| a.ok_from() == Some("c")), "{calls:?}");
    assert_eq!(c.connections.load(Ordering::SeqCst), 1);
    assert_eq!(c.most_in_flight.load(Ordering::SeqCst), 1);
}

/// `consecutiveGatewayErrors`: an endpoint that fails twice in a row is ejected, and the
/// others serve every call while it is out; `consecutive5xxErrors` likewise.
#[tokio::test]
async fn consecutive_errors_eject_an_endpoint() {
    for detection in ["consecutiveGatewayErrors: 2", "consecutive5xxErrors: 2"] {
        let yaml = destination_rule(&format!(
            "{{outlierDetection: {{{detection}, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 100}}}}"
        )) + &virtual_service(
            "[{route: [{destination: {host: cart}}], retries: {attempts: 0}}]",
        );
        let lab = Lab::new(&yaml).await;
        let a = lab.backend("a");
        a.always(Act::Grpc(14));
        let mut failed = 0;
        for _ in 0..12 {
            if lab.call().await.grpc == Some(14) {
                failed += 1;
            }
        }
        assert_eq!(
            a.calls(),
            2,
            "{detection}: ejected after its second failure"
        );
        assert_eq!(failed, 2, "{detection}");
        assert_eq!(lab.backend("b").calls() + lab.backend("c").calls(), 10);
        assert_eq!(
            lab.counted("weft_waypoint_outlier_ejections_total", "10.1.0.1:50051"),
            1,
            "{detection}"
        );
    }
    // An answer that is no gateway error (NOT_FOUND → 404) does not count against it.
    let yaml = destination_rule(
        "{outlierDetection: {consecutiveGatewayErrors: 2, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 100}}",
    ) + &virtual_service(
        "[{route: [{destination: {host: cart}}], retries: {attempts: 0}}]",
    );
    let lab = Lab::new(&yaml).await;
    lab.backend("a").always(Act::Grpc(5));
    for _ in 0..12 {
        lab.call().await;
    }
    assert_eq!(lab.backend("a").calls(), 4);
}

/// Two clusters that lead to pod c (the Service, and its subset v2) share their
/// connections to it, unless the rule sets `tcp.maxConnections`, a limit per cluster.
#[tokio::test]
async fn clusters_share_connections_to_a_pod_unless_they_limit_them() {
    let routes = virtual_service(
        "[{match: [{headers: {x-to: {exact: c}}}], route: [{destination: {host: cart, subset: v2}}]}, {route: [{destination: {host: cart}}]}]",
    );
    for (policy, connections) in [
        ("{}", 1),
        ("{connectionPool: {tcp: {maxConnections: 10}}}", 2),
    ] {
        let lab = Lab::new(&(destination_rule(policy) + &routes)).await;
        let mut from = Vec::new();
        for _ in 0..3 {
            from.extend(lab.call().await.ok_from().map(str::to_string));
        }
        assert!(from.iter().any(|b| b == "c"), "{from:?}");
        let subset = lab.call_with("/shop.Cart/Get", &[("x-to", "c")]).await;
        assert_eq!(subset.ok_from(), Some("c"));
        let c = lab.backend("c");
        assert_eq!(
            c.connections.load(Ordering::SeqCst),
            connections,
            "{policy}"
        );
    }
}
