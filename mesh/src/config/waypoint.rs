//! Waypoint binding: which traffic a source agent sends to a waypoint instead of straight to
//! the destination pod. The rule lives here; the compiled state (`crate::state`) applies it
//! once per object and answers the data path's lookups.
//!
//! The label [`USE_WAYPOINT_LABEL`], or Istio's [`ISTIO_USE_WAYPOINT_LABEL`] (Weft's wins
//! when both are set), names a waypoint in the labelled object's namespace:
//! - on a Service, or on a namespace (for all its Services), traffic to the Service's
//!   cluster IP goes through the waypoint (Istio's `waypoint-for: service`, its default);
//! - on a ServiceAccount, or a Pod, traffic addressed to the pod's own IP does
//!   (`waypoint-for: workload`).
//!
//! A Service or Pod labelled `none` opts out of its namespace's waypoint. A waypoint named
//! `W` in namespace `N` is the Service `N/W`: its endpoints are the waypoint's pods, which
//! listen for HBONE on port 15008 and run as the service account of the pod.
//!
//! Istio's [`WAYPOINT_FOR_LABEL`] on the waypoint's Service restricts what it serves
//! (Istio's "Configure waypoint proxies" page): `service`, `workload`, `all` or `none`. A
//! binding of a kind the waypoint is not for is not made (and `analyze` reports it). Without
//! the label a Weft waypoint serves both kinds, as it always has.

use super::{Model, NONE, PodInfo, ServiceInfo, USE_WAYPOINT_LABEL};
use std::collections::BTreeMap;

/// Istio's name for [`USE_WAYPOINT_LABEL`].
pub const ISTIO_USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// On a waypoint's Service: which traffic it serves (`service`, `workload`, `all`, `none`).
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";

/// A waypoint, by the namespace and name of its Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaypointRef {
    pub namespace: String,
    pub name: String,
}

/// The kind of traffic a binding sends to a waypoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficKind {
    /// To a Service's cluster IP.
    Service,
    /// To a pod's own IP.
    Workload,
}

/// The waypoint a use-waypoint label names, from either spelling; Weft's wins.
pub(crate) fn use_waypoint(labels: &BTreeMap<String, String>) -> Option<&String> {
    labels
        .get(USE_WAYPOINT_LABEL)
        .or_else(|| labels.get(ISTIO_USE_WAYPOINT_LABEL))
}

impl Model {
    /// The waypoint for traffic to the Service's cluster IP, by the rule above.
    pub(crate) fn bind_service_waypoint(&self, service: &ServiceInfo) -> Option<WaypointRef> {
        let label = match use_waypoint(&service.labels) {
            Some(v) => v,
            None => use_waypoint(&self.namespaces.get(&service.namespace)?.labels)?,
        };
        self.bound(&service.namespace, label, TrafficKind::Service)
            // A waypoint's own Service is never sent to a waypoint.
            .filter(|w| w.name != service.name)
    }

    /// The waypoint for traffic addressed to the pod's own IP, by the rule above.
    pub(crate) fn bind_workload_waypoint(&self, pod: &PodInfo) -> Option<WaypointRef> {
        let label = match use_waypoint(&pod.labels) {
            Some(v) => v,
            None => use_waypoint(
                &self
                    .service_accounts
                    .get(&(pod.namespace.clone(), pod.service_account.clone()))?
                    .labels,
            )?,
        };
        self.bound(&pod.namespace, label, TrafficKind::Workload)
    }

    fn bound(&self, namespace: &str, label: &str, kind: TrafficKind) -> Option<WaypointRef> {
        if label == NONE || label.is_empty() {
            return None;
        }
        let waypoint = WaypointRef {
            namespace: namespace.to_string(),
            name: label.to_string(),
        };
        self.waypoint_serves(&waypoint, kind).then_some(waypoint)
    }

    /// Whether the waypoint's [`WAYPOINT_FOR_LABEL`] lets it serve traffic of `kind`.
    pub(crate) fn waypoint_serves(&self, waypoint: &WaypointRef, kind: TrafficKind) -> bool {
        let serves = self
            .services
            .get(&(waypoint.namespace.clone(), waypoint.name.clone()))
            .and_then(|s| s.labels.get(WAYPOINT_FOR_LABEL));
        matches!(
            (serves.map(String::as_str), kind),
            (None | Some("all"), _)
                | (Some("service"), TrafficKind::Service)
                | (Some("workload"), TrafficKind::Workload)
        )
    }
}
