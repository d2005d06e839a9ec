//! Calls around a failing backend: a retry goes to an endpoint no earlier try went to, and
//! a pod whose connection failed is left out of the picks at once (passive health, with no
//! DestinationRule), so that a dead backend costs its clients nothing.

use std::{io, sync::atomic::Ordering};

use super::{Act, Lab, destination_rule, virtual_service};

/// A backend that is down (every dial refused), with no DestinationRule and no
/// VirtualService: Istio's default retry policy sends the call that found it down to
/// another, and the next calls do not try it again while its back-off lasts.
#[tokio::test]
async fn a_dead_backend_costs_its_clients_nothing() {
    let lab = Lab::new("").await;
    let a = lab.backend("a");
    a.refuse(io::ErrorKind::ConnectionRefused, 1000);
    let mut served = Vec::new();
    for _ in 0..30 {
        let answer = lab.call().await;
        served.push(answer.ok_from().map(str::to_string));
    }
    assert!(
        served
            .iter()
            .all(|s| s.as_deref().is_some_and(|b| b != "a")),
        "{served:?}"
    );
    assert_eq!(
        a.refused.load(Ordering::SeqCst),
        1,
        "a was tried once, then left out"
    );
    let (b, c) = (lab.backend("b").calls(), lab.backend("c").calls());
    assert!(
        b >= 10 && c >= 10,
        "the others share its calls: b {b}, c {c}"
    );
}

/// Each retry goes to an endpoint that no earlier try of the call went to: with a and b
/// answering UNAVAILABLE and two retries, every call ends on c. RANDOM, so that the order
/// of the tries is not round robin's: avoiding only the last try's endpoint would send about
/// a third of the calls' last tries back to a or b.
#[tokio::test]
async fn a_retry_goes_to_an_endpoint_not_tried_before() {
    let lab = Lab::new(
        &(destination_rule("{loadBalancer: {simple: RANDOM}}")
            + &virtual_service(
                "[{route: [{destination: {host: cart}}], retries: {attempts: 2, retryOn: unavailable}}]",
            )),
    )
    .await;
    for name in ["a", "b"] {
        lab.backend(name).always(Act::Grpc(14));
    }
    for _ in 0..30 {
        let answer = lab.call().await;
        assert_eq!(answer.ok_from(), Some("c"), "{answer:?}");
    }
    // An UNAVAILABLE answer is no connection failure: a and b stay in the picks.
    assert!(lab.backend("a").calls() >= 5 && lab.backend("b").calls() >= 5);
}
