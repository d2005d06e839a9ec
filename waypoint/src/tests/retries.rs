//! Retries: each `retryOn` condition retries what it names and nothing else, within
//! `attempts`, `maxRetries`, the budget, `perTryTimeout` and the call's deadline.

use std::{
    io::ErrorKind,
    time::{Duration, Instant},
};

use super::{Act, Lab, to_c};

/// Each gRPC condition retries its status, and only its status.
#[tokio::test]
async fn each_grpc_condition_retries_its_status_and_no_other() {
    let conditions = [
        ("cancelled", 1),
        ("deadline-exceeded", 4),
        ("resource-exhausted", 8),
        ("internal", 13),
        ("unavailable", 14),
    ];
    for (condition, code) in conditions {
        let lab = Lab::new(&to_c(
            "{}",
            &format!("retries: {{attempts: 2, retryOn: {condition}}}"),
        ))
        .await;
        let c = lab.backend("c");
        c.then(&[Act::Grpc(code)]);
        let answer = lab.call().await;
        assert_eq!(answer.ok_from(), Some("c"), "{condition}: {answer:?}");
        assert_eq!(c.calls(), 2, "{condition}: one retry");
        // Every other condition's status comes back as it is.
        for (_, other) in conditions.iter().filter(|(_, o)| *o != code) {
            let before = c.calls();
            c.then(&[Act::Grpc(*other)]);
            let answer = lab.call().await;
            assert_eq!(answer.grpc, Some(*other), "{condition} retried {other}");
            assert_eq!(c.calls(), before + 1, "{condition} retried {other}");
        }
    }
}

/// `5xx` retries an HTTP 5xx and a reset, not a gRPC error (which travels with HTTP 200);
/// `reset` retries a reset only; `connect-failure` a failed connection only.
#[tokio::test]
async fn http_reset_and_connect_conditions() {
    let lab = Lab::new(&to_c("{}", "retries: {attempts: 2, retryOn: 5xx}")).await;
    let c = lab.backend("c");
    c.then(&[Act::Http(503)]);
    assert_eq!(lab.call().await.ok_from(), Some("c"));
    c.then(&[Act::Reset]);
    assert_eq!(lab.call().await.ok_from(), Some("c"));
    c.then(&[Act::Grpc(14)]);
    assert_eq!(lab.call().await.grpc, Some(14), "5xx retried a gRPC status");
    assert_eq!(c.calls(), 5);

    let lab = Lab::new(&to_c("{}", "retries: {attempts: 2, retryOn: reset}")).await;
    let c = lab.backend("c");
    c.then(&[Act::Reset]);
    assert_eq!(lab.call().await.ok_from(), Some("c"));
    c.then(&[Act::Http(503)]);
    assert_eq!(lab.call().await.http, 503, "reset retried a 503");
    let lab2 = Lab::new(&to_c("{}", "retries: {attempts: 2, retryOn: reset}")).await;
    lab2.backend("c").refuse(ErrorKind::ConnectionRefused, 1);
    assert_eq!(
        lab2.call().await.grpc,
        Some(14),
        "reset retried a refused connection"
    );

    let lab = Lab::new(&to_c(
        "{}",
        "retries: {attempts: 2, retryOn: connect-failure}",
    ))
    .await;
    let c = lab.backend("c");
    c.refuse(ErrorKind::ConnectionRefused, 1);
    assert_eq!(lab.call().await.ok_from(), Some("c"));
    assert_eq!(c.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    c.then(&[Act::Reset]);
    assert_eq!(
        lab.call().await.grpc,
        Some(14),
        "connect-failure retried a reset"
    );
    assert_eq!(lab.calls_flagged("UR"), 1);
}

/// No `retries` on the route: Istio's default, 2 retries on connect-failure, refused-stream,
/// unavailable, cancelled and 503, and no other.
#[tokio::test]
async fn the_default_policy_retries_twice_on_its_conditions() {
    let lab = Lab::new(&to_c("{}", "")).await;
    let c = lab.backend("c");
    c.always(Act::Grpc(14));
    let answer = lab.call().await;
    assert_eq!(answer.grpc, Some(14));
    assert_eq!(c.calls(), 3, "the first try and two retries");
    assert_eq!(lab.calls_flagged("URX"), 1, "retries exhausted");
    c.always(Act::Ok);
    c.then(&[Act::Http(503), Act::Grpc(1)]);
    assert_eq!(lab.call().await.ok_from(), Some("c"));
    c.then(&[Act::Grpc(13)]);
    assert_eq!(
        lab.call().await.grpc,
        Some(13),
        "INTERNAL is not a default condition"
    );
}

/// `attempts: 0` never retries; a refusal by the node agent's policy is never retried.
#[tokio::test]
async fn no_retry_without_attempts_or_on_a_policy_refusal() {
    let lab = Lab::new(&to_c("{}", "retries: {attempts: 0}")).await;
    let c = lab.backend("c");
    c.then(&[Act::Grpc(14)]);
    assert_eq!(lab.call().await.grpc, Some(14));
    assert_eq!(c.calls(), 1);

    let lab = Lab::new(&to_c(
        "{}",
        "retries: {attempts: 3, retryOn: connect-failure}",
    ))
    .await;
    let c = lab.backend("c");
    c.refuse(ErrorKind::PermissionDenied, 5);
    let answer = lab.call().await;
    assert_eq!(answer.grpc, Some(7), "PERMISSION_DENIED: {answer:?}");
    assert!(answer.message.contains("node agent"), "{answer:?}");
    assert_eq!(lab.counted("weft_waypoint_retries_total", ""), 0);
}

/// An empty retry budget refuses the retry: the call ends with the failure, flagged URX,
/// and the refusal is counted. The default budget has room.
#[tokio::test]
async fn the_budget_refuses_retries_past_its_share() {
    let budgetless = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: cart, namespace: shop, annotations: {weft.dev/retry-budget-percent: \"0\", weft.dev/retry-budget-min-per-second: \"0\"}}\nspec: {host: cart, subsets: [{name: v2, labels: {version: v2}}]}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: cart, namespace: shop}\nspec: {hosts: [cart], http: [{route: [{destination: {host: cart, subset: v2}}]}]}\n";
    let lab = Lab::new(budgetless).await;
    let c = lab.backend("c");
    c.then(&[Act::Grpc(14)]);
    assert_eq!(lab.call().await.grpc, Some(14));
    assert_eq!(c.calls(), 1);
    assert_eq!(lab.calls_flagged("URX"), 1);
    assert_eq!(lab.counted("weft_waypoint_retries_refused_total", ""), 1);

    let lab = Lab::new(&to_c("{}", "")).await;
    lab.backend("c").then(&[Act::Grpc(14)]);
    assert_eq!(lab.call().await.ok_from(), Some("c"));
    assert_eq!(lab.counted("weft_waypoint_retries_total", ""), 1);
}

/// `maxRetries: 1`: while one call's retry is in flight, another call's retry is refused.
/// (`maxRetries: 0` is unset, as in Istio's proto3 API: no limit.)
#[tokio::test]
async fn max_retries_bounds_the_retries_in_flight() {
    let lab = Lab::new(&to_c("{connectionPool: {http: {maxRetries: 1}}}", "")).await;
    let c = lab.backend("c");
    c.then(&[
        Act::Grpc(14),
        Act::Slow(Duration::from_millis(400)),
        Act::Grpc(14),
    ]);
    let (first, second) = lab.overlapping(Duration::from_millis(150)).await;
    assert_eq!(first.ok_from(), Some("c"), "{first:?}");
    assert_eq!(second.grpc, Some(14), "{second:?}");
    assert_eq!(c.calls(), 3);
    assert_eq!(lab.calls_flagged("URX"), 1);
    assert_eq!(lab.counted("weft_waypoint_retries_refused_total", ""), 1);

    let lab = Lab::new(&to_c("{connectionPool: {http: {maxRetries: 0}}}", "")).await;
    lab.backend("c").then(&[Act::Grpc(14)]);
    assert_eq!(lab.call().await.ok_from(), Some("c"));
}

/// `perTryTimeout` ends a slow try and retries it; the route's `timeout` bounds the call
/// whatever the tries; a client's `grpc-timeout` below the route's wins, and the backend is
/// told what is left of it (and of nothing else).
#[tokio::test]
async fn per_try_timeout_route_timeout_and_grpc_timeout() {
    let lab = Lab::new(&to_c(
        "{}",
        "timeout: 2s, retries: {attempts: 2, perTryTimeout: 100ms, retryOn: deadline-exceeded}",
    ))
    .await;
    let c = lab.backend("c");
    c.then(&[Act::Slow(Duration::from_secs(1))]);
    let started = Instant::now();
    assert_eq!(lab.call().await.ok_from(), Some("c"));
    let took = started.elapsed();
    assert!(took < Duration::from_millis(900), "{took:?}");
    assert_eq!(c.calls(), 2);
    let sent = c.last_headers.lock().unwrap().clone().unwrap();
    assert!(
        sent.get("grpc-timeout").is_none(),
        "the route's timeout is the waypoint's own"
    );

    // The route timeout is shorter than the tries.
    let lab = Lab::new(&to_c(
        "{}",
        "timeout: 300ms, retries: {attempts: 5, perTryTimeout: 200ms, retryOn: deadline-exceeded}",
    ))
    .await;
    lab.backend("c").always(Act::Slow(Duration::from_secs(1)));
    let started = Instant::now();
    let answer = lab.call().await;
    let took = started.elapsed();
    assert_eq!(answer.grpc, Some(4), "{answer:?}");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(800),
        "{took:?}"
    );
    assert!(lab.calls_flagged("UT") + lab.calls_flagged("UT,URX") == 1);

    // The client's deadline is the shorter one.
    let lab = Lab::new(&to_c("{}", "timeout: 5s")).await;
    let c = lab.backend("c");
    c.always(Act::Slow(Duration::from_secs(1)));
    let started = Instant::now();
    let answer = lab
        .call_with("/shop.Cart/Get", &[("grpc-timeout", "200m")])
        .await;
    let took = started.elapsed();
    assert_eq!(answer.grpc, Some(4), "{answer:?}");
    assert!(took < Duration::from_millis(700), "{took:?}");
    let sent = c.last_headers.lock().unwrap().clone().unwrap();
    let left: u64 = sent["grpc-timeout"]
        .to_str()
        .unwrap()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .unwrap();
    let unit = sent["grpc-timeout"]
        .to_str()
        .unwrap()
        .chars()
        .last()
        .unwrap();
    let left = match unit {
        'm' => Duration::from_millis(left),
        'u' => Duration::from_micros(left),
        'n' => Duration::from_nanos(left),
        other => panic!("unit {other}"),
    };
    assert!(
        left < Duration::from_millis(200) && left > Duration::from_millis(100),
        "{left:?}"
    );
}
