//! Each response flag, on the call that should raise it, with the status its client sees.

use std::{io::ErrorKind, time::Duration};

use http_body_util::BodyExt;

use super::{Act, Lab, destination_rule, to_c, virtual_service};

/// UF: the connection failed (UNAVAILABLE); with retries used up, UF,URX.
#[tokio::test]
async fn uf_a_failed_connection() {
    let lab = Lab::new(&to_c("{}", "retries: {attempts: 0}")).await;
    lab.backend("c").refuse(ErrorKind::ConnectionRefused, 1);
    let answer = lab.call().await;
    assert_eq!(answer.grpc, Some(14), "{answer:?}");
    assert!(answer.message.contains("connect"), "{answer:?}");
    assert_eq!(lab.calls_flagged("UF"), 1);

    let lab = Lab::new(&to_c("{}", "")).await;
    lab.backend("c").refuse(ErrorKind::ConnectionRefused, 3);
    assert_eq!(lab.call().await.grpc, Some(14));
    assert_eq!(lab.calls_flagged("UF,URX"), 1);
}

/// UT: no answer within the route's timeout (DEADLINE_EXCEEDED).
#[tokio::test]
async fn ut_no_answer_in_time() {
    let lab = Lab::new(&to_c("{}", "timeout: 100ms")).await;
    lab.backend("c").then(&[Act::Slow(Duration::from_secs(2))]);
    let answer = lab.call().await;
    assert_eq!(answer.grpc, Some(4), "{answer:?}");
    assert_eq!(lab.calls_flagged("UT"), 1);
}

/// LR (with UT): the deadline passed while the answer streamed; the client gets
/// DEADLINE_EXCEEDED in the trailers, after the message that had come.
#[tokio::test]
async fn lr_the_deadline_passed_mid_answer() {
    let lab = Lab::new(&to_c("{}", "timeout: 200ms")).await;
    lab.backend("c").then(&[Act::HeadersThenStall]);
    let answer = lab.call().await;
    assert_eq!(answer.grpc, Some(4), "{answer:?}");
    assert_eq!(
        answer.served_by.as_deref(),
        Some("c"),
        "the first message arrived"
    );
    assert_eq!(lab.calls_flagged("UT,LR"), 1);
}

/// UR: the backend reset the stream (UNAVAILABLE).
#[tokio::test]
async fn ur_the_backend_reset_the_stream() {
    let lab = Lab::new(&to_c("{}", "retries: {attempts: 0}")).await;
    lab.backend("c").then(&[Act::Reset]);
    let answer = lab.call().await;
    assert_eq!(answer.grpc, Some(14), "{answer:?}");
    assert!(answer.message.contains("reset"), "{answer:?}");
    assert_eq!(lab.calls_flagged("UR"), 1);
}

/// UR after the response headers: the call is not retried, the message that came is kept.
#[tokio::test]
async fn ur_a_reset_after_the_headers_is_not_retried() {
    let lab = Lab::new(&to_c("{}", "retries: {attempts: 2, retryOn: reset}")).await;
    let c = lab.backend("c");
    c.then(&[Act::HeadersThenReset]);
    let answer = lab.call().await;
    // UNAVAILABLE in the trailers, not a reset stream (which clients read as UNKNOWN).
    assert!(!answer.broken, "{answer:?}");
    assert_eq!(answer.grpc, Some(14), "{answer:?}");
    assert!(
        answer.message.contains("after the response began"),
        "{answer:?}"
    );
    assert_eq!(
        answer.served_by.as_deref(),
        Some("c"),
        "the message that came is kept"
    );
    assert_eq!(c.calls(), 1);
    assert_eq!(lab.calls_flagged("UR"), 1);
}

/// DC: the client went away before the answer ended.
#[tokio::test]
async fn dc_the_client_left() {
    let lab = Lab::new(&to_c("{}", "")).await;
    lab.backend("c").then(&[Act::HeadersThenStall]);
    let response = lab.open("/shop.Cart/Get").await;
    let mut body = response.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert!(first.is_data());
    drop(body);
    for _ in 0..100 {
        if lab.calls_flagged("DC") == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no DC call counted:\n{}", lab.exported());
}

/// URX: the retries were used up (the last answer goes to the client).
#[tokio::test]
async fn urx_retries_used_up() {
    let lab = Lab::new(&to_c("{}", "retries: {attempts: 1, retryOn: unavailable}")).await;
    lab.backend("c").always(Act::Grpc(14));
    assert_eq!(lab.call().await.grpc, Some(14));
    assert_eq!(lab.backend("c").calls(), 2);
    assert_eq!(lab.calls_flagged("URX"), 1);
}

/// UH: the cluster has no healthy endpoint (a subset no pod matches).
#[tokio::test]
async fn uh_no_healthy_upstream() {
    let lab = Lab::new(
        &(destination_rule("{}")
            + &virtual_service("[{route: [{destination: {host: cart, subset: v3}}]}]")),
    )
    .await;
    let answer = lab.call().await;
    assert_eq!(answer.grpc, Some(14), "{answer:?}");
    assert!(answer.message.contains("no healthy upstream"), "{answer:?}");
    assert_eq!(lab.calls_flagged("UH"), 1);
}

/// NR: no route of the VirtualService matches (UNIMPLEMENTED).
#[tokio::test]
async fn nr_no_route() {
    let lab = Lab::new(&virtual_service(
        "[{match: [{uri: {prefix: /shop.Cart/Check}}], route: [{destination: {host: cart}}]}]",
    ))
    .await;
    let answer = lab.call().await;
    assert_eq!(answer.grpc, Some(12), "{answer:?}");
    assert_eq!(lab.calls_flagged("NR"), 1);
    assert_eq!(lab.backend("a").calls() + lab.backend("b").calls(), 0);
}

/// RL: a LocalRateLimit's bucket is empty (RESOURCE_EXHAUSTED, `x-local-rate-limit`).
#[tokio::test]
async fn rl_rate_limited() {
    let lab = Lab::new(
        "apiVersion: weft.dev/v1alpha1\nkind: LocalRateLimit\nmetadata: {name: cart, namespace: shop}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: cart}]\n  tokenBucket: {maxTokens: 2, tokensPerFill: 1, fillInterval: 1h}\n",
    )
    .await;
    assert!(lab.call().await.ok_from().is_some());
    assert!(lab.call().await.ok_from().is_some());
    let answer = lab.call().await;
    assert_eq!(answer.grpc, Some(8), "{answer:?}");
    assert_eq!(answer.headers["x-local-rate-limit"], "true");
    assert_eq!(lab.calls_flagged("RL"), 1);
    assert_eq!(
        lab.counted("weft_waypoint_rate_limited_total", "shop/cart"),
        1
    );
}

/// A new configuration reaches the next call on a live client connection.
#[tokio::test]
async fn a_new_configuration_reaches_the_next_call() {
    let lab = Lab::new("").await;
    assert!(lab.call().await.ok_from().is_some());
    lab.configure(
        &(destination_rule("{}")
            + &virtual_service("[{route: [{destination: {host: cart, subset: v3}}]}]")),
    )
    .await;
    assert_eq!(lab.call().await.grpc, Some(14));
    lab.configure("").await;
    assert!(lab.call().await.ok_from().is_some());
}
