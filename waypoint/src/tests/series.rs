//! The waypoint's memory of Services and pods that are gone: their clusters and metric
//! series leave with them.

use super::Lab;

fn lines_with(text: &str, metric: &str, label: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with(metric) && l.contains(label))
        .count()
}

const CART: &str = "destination_workload=\"cart\"";

#[tokio::test]
async fn series_of_gone_pods_and_services_are_removed() {
    let lab = Lab::new("").await;
    for _ in 0..6 {
        assert!(lab.call().await.ok_from().is_some());
    }
    let text = lab.exported();
    // The three pods are one workload (`app: cart`), as Istio names it.
    assert_eq!(lines_with(&text, "istio_requests_total", CART), 1, "{text}");
    assert_eq!(
        lines_with(&text, "weft_waypoint_upstream_attempts_total", "10.1.0.1:"),
        1
    );

    // Pods a and b leave: their endpoints' series go; the workload's stay, as c is left.
    lab.configure_cluster(&["c"], true).await;
    let text = lab.exported();
    assert_eq!(
        lines_with(&text, "weft_waypoint_upstream_attempts_total", "10.1.0.1:"),
        0
    );
    assert_eq!(
        lines_with(&text, "weft_waypoint_upstream_attempts_total", "10.1.0.3:"),
        1
    );
    assert_eq!(lines_with(&text, "istio_requests_total", CART), 1, "{text}");
    assert_eq!(lab.call().await.ok_from(), Some("c"));

    // The workload's last pod leaves: its Istio series go, the Service's own stay.
    lab.configure_cluster(&[], true).await;
    let text = lab.exported();
    assert_eq!(lines_with(&text, "istio_", CART), 0, "{text}");
    assert_eq!(
        lines_with(&text, "weft_waypoint_requests_total", "shop/cart"),
        1,
        "{text}"
    );

    // The Service leaves: every series of it goes.
    assert_eq!(lab.call().await.grpc, Some(14), "no pod: UNAVAILABLE");
    lab.configure_cluster(&[], false).await;
    let text = lab.exported();
    assert_eq!(
        lines_with(&text, "istio_", "cart.shop.svc.cluster.local"),
        0,
        "{text}"
    );
    assert_eq!(
        lines_with(&text, "weft_waypoint_requests_total", "shop/cart"),
        0,
        "{text}"
    );
    assert_eq!(
        lines_with(&text, "weft_waypoint_upstream_attempts_total", "shop/cart"),
        0
    );
}
