//! Waypoint binding: which traffic a source agent sends to a waypoint instead of straight to
//! the destination pod, and where that waypoint runs.
//!
//! The label [`USE_WAYPOINT_LABEL`] names a waypoint in the labelled object's namespace:
//! - on a Service, or on a namespace (for all its Services), traffic to the Service's
//!   cluster IP goes through the waypoint (Istio's `waypoint-for: service`, its default);
//! - on a ServiceAccount, or a Pod, traffic addressed to the pod's own IP does
//!   (`waypoint-for: workload`).
//!
//! A Service or Pod labelled `none` opts out of its namespace's waypoint. A waypoint named
//! `W` in namespace `N` is the Service `N/W`: its endpoints are the waypoint's pods, which
//! listen for HBONE on port 15008 and run as the service account of the pod.

use std::net::IpAddr;

use super::{Model, NONE, PodInfo, ServiceInfo, USE_WAYPOINT_LABEL};

/// A waypoint, by the namespace and name of its Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WaypointRef {
    pub namespace: String,
    pub name: String,
}

impl Model {
    /// The Service whose cluster IP is `ip`.
    pub fn service_by_ip(&self, ip: IpAddr) -> Option<&ServiceInfo> {
        self.services.values().find(|s| s.cluster_ip == Some(ip))
    }

    /// The waypoint for traffic to the Service's cluster IP.
    pub fn service_waypoint(&self, service: &ServiceInfo) -> Option<WaypointRef> {
        let own = service.labels.get(USE_WAYPOINT_LABEL);
        let label = match own {
            Some(v) => v,
            None => self
                .namespaces
                .get(&service.namespace)?
                .labels
                .get(USE_WAYPOINT_LABEL)?,
        };
        self.bound(&service.namespace, label)
            // A waypoint's own Service is never sent to a waypoint.
            .filter(|w| w.name != service.name)
    }

    /// The waypoint for traffic addressed to the pod's own IP.
    pub fn workload_waypoint(&self, pod: &PodInfo) -> Option<WaypointRef> {
        let label = match pod.labels.get(USE_WAYPOINT_LABEL) {
            Some(v) => v,
            None => self
                .service_accounts
                .get(&(pod.namespace.clone(), pod.service_account.clone()))?
                .labels
                .get(USE_WAYPOINT_LABEL)?,
        };
        self.bound(&pod.namespace, label)
    }

    fn bound(&self, namespace: &str, label: &str) -> Option<WaypointRef> {
        (label != NONE && !label.is_empty()).then(|| WaypointRef {
            namespace: namespace.to_string(),
            name: label.to_string(),
        })
    }

    /// The waypoint's pods that have an address.
    pub fn waypoint_pods<'a>(&'a self, waypoint: &WaypointRef) -> Vec<&'a PodInfo> {
        match self
            .services
            .get(&(waypoint.namespace.clone(), waypoint.name.clone()))
        {
            Some(service) => self.endpoints(service).collect(),
            None => Vec::new(),
        }
    }
}
