//! The balancers, and the route matches that choose a cluster.

use std::{collections::HashMap, time::Duration};

use super::{Act, Lab, Options, destination_rule, virtual_service};

fn spread(lab: &Lab) -> [usize; 3] {
    ["a", "b", "c"].map(|name| lab.backend(name).calls())
}

/// Round robin (the default): every endpoint in turn, one call each.
#[tokio::test]
async fn round_robin_takes_each_endpoint_in_turn() {
    let lab = Lab::new("").await;
    let mut order = Vec::new();
    for _ in 0..30 {
        order.push(lab.call().await.ok_from().unwrap().to_string());
    }
    assert_eq!(spread(&lab), [10, 10, 10]);
    assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");
}

/// RANDOM: spread over all, and not in turn.
#[tokio::test]
async fn random_spreads_calls_out_of_turn() {
    let lab = Lab::new(&destination_rule("{loadBalancer: {simple: RANDOM}}")).await;
    let mut order = Vec::new();
    for _ in 0..300 {
        order.push(lab.call().await.ok_from().unwrap().to_string());
    }
    let counts = spread(&lab);
    assert!(counts.iter().all(|n| (50..=150).contains(n)), "{counts:?}");
    assert!(order.windows(2).any(|w| w[0] == w[1]), "in turn: {order:?}");
}

/// LEAST_REQUEST: a slow endpoint, with calls piling up on it, gets fewer new ones.
#[tokio::test]
async fn least_request_avoids_the_endpoint_with_calls_waiting() {
    let lab = Lab::new(&destination_rule("{loadBalancer: {simple: LEAST_REQUEST}}")).await;
    lab.backend("a")
        .always(Act::Slow(Duration::from_millis(200)));
    // Six callers, ten calls each.
    futures::future::join_all((0..6).map(|_| async {
        for _ in 0..10 {
            assert!(lab.call().await.ok_from().is_some());
        }
    }))
    .await;
    let [a, b, c] = spread(&lab);
    assert_eq!(a + b + c, 60);
    // Round robin would give it 20.
    assert!(a <= 10, "{:?}", [a, b, c]);
}

/// `consistentHash.useSourceIp`: each client address sticks to one endpoint, and the
/// addresses spread over more than one; `httpHeaderName` does the same by header.
#[tokio::test]
async fn consistent_hash_sticks_by_source_address_or_header() {
    let yaml = destination_rule("{loadBalancer: {consistentHash: {useSourceIp: true}}}");
    let mut chosen = HashMap::new();
    for i in 1..=12u8 {
        let lab = Lab::with(Options {
            yaml: &yaml,
            client_ip: format!("10.2.0.{i}").parse().unwrap(),
            ..Options::default()
        })
        .await;
        let first = lab.call().await.ok_from().unwrap().to_string();
        for _ in 0..5 {
            assert_eq!(lab.call().await.ok_from(), Some(first.as_str()));
        }
        *chosen.entry(first).or_insert(0) += 1;
    }
    assert!(chosen.len() > 1, "{chosen:?}");

    let lab = Lab::new(&destination_rule(
        "{loadBalancer: {consistentHash: {httpHeaderName: x-user}}}",
    ))
    .await;
    let mut by_user = HashMap::new();
    for round in 0..3 {
        for user in ["ann", "bob", "cy", "dee", "eve", "fay"] {
            let served = lab.call_with("/shop.Cart/Get", &[("x-user", user)]).await;
            let served = served.ok_from().unwrap().to_string();
            let first = by_user.entry(user).or_insert_with(|| served.clone());
            assert_eq!(*first, served, "{user}, round {round}");
        }
    }
    let distinct: std::collections::HashSet<_> = by_user.values().collect();
    assert!(distinct.len() > 1, "{by_user:?}");
}

/// A route's `port` and `uri.prefix` matches choose its destination; the first route that
/// matches wins.
#[tokio::test]
async fn port_and_uri_prefix_matches_choose_the_route() {
    let routes = destination_rule("{}")
        + &virtual_service(
            "[{name: admin, match: [{port: 50052}], route: [{destination: {host: cart, subset: v2}}]}, {name: checkout, match: [{uri: {prefix: /shop.Cart/Check}}], route: [{destination: {host: cart, subset: v2}}]}, {name: rest, route: [{destination: {host: cart, subset: v1}}]}]",
        );
    let lab = Lab::new(&routes).await;
    for _ in 0..4 {
        let answer = lab.call().await;
        assert!(matches!(answer.ok_from(), Some("a" | "b")), "{answer:?}");
        let answer = lab.call_with("/shop.Cart/Checkout", &[]).await;
        assert_eq!(answer.ok_from(), Some("c"), "{answer:?}");
    }
    assert_eq!(
        lab.counted(
            "weft_waypoint_requests_total",
            "route=\"shop/cart#checkout\""
        ),
        4
    );
    let admin = Lab::with(Options {
        yaml: &routes,
        port: 50052,
        ..Options::default()
    })
    .await;
    for _ in 0..4 {
        assert_eq!(admin.call().await.ok_from(), Some("c"));
    }
}
