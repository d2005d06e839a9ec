//! The waypoint's Prometheus metrics (:15020), and the Envoy-style response flags each call
//! records (Envoy's access-log documentation names them): what went wrong, in two letters,
//! so that a dashboard can tell "no healthy upstream" from "timed out" at a glance.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use weft_mesh::state::State;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        histogram::Histogram,
    },
    registry::Registry,
};

/// The response flags of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    /// No healthy upstream.
    pub const UH: Flags = Flags(1);
    /// Upstream connection failure.
    pub const UF: Flags = Flags(1 << 1);
    /// Upstream overflow (a circuit breaker: `http2MaxRequests`).
    pub const UO: Flags = Flags(1 << 2);
    /// Upstream request timeout.
    pub const UT: Flags = Flags(1 << 3);
    /// The waypoint reset the upstream stream (the call's deadline passed mid-response).
    pub const LR: Flags = Flags(1 << 4);
    /// Upstream remote reset.
    pub const UR: Flags = Flags(1 << 5);
    /// Downstream connection termination: the client went away first.
    pub const DC: Flags = Flags(1 << 6);
    /// Retries exhausted: attempts, `maxRetries` or the retry budget.
    pub const URX: Flags = Flags(1 << 7);
    /// No route.
    pub const NR: Flags = Flags(1 << 8);
    /// Refused by a local rate limit.
    pub const RL: Flags = Flags(1 << 9);

    const NAMES: [(Flags, &'static str); 10] = [
        (Flags::UH, "UH"),
        (Flags::UF, "UF"),
        (Flags::UO, "UO"),
        (Flags::UT, "UT"),
        (Flags::LR, "LR"),
        (Flags::UR, "UR"),
        (Flags::DC, "DC"),
        (Flags::URX, "URX"),
        (Flags::NR, "NR"),
        (Flags::RL, "RL"),
    ];

    pub fn set(&mut self, flag: Flags) {
        self.0 |= flag.0;
    }

    pub fn contains(self, flag: Flags) -> bool {
        self.0 & flag.0 == flag.0
    }
}

impl std::fmt::Display for Flags {
    /// Comma-separated, or `-` for none, as in Envoy's access log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (flag, name) in Flags::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub destination_service: String,
    pub route: String,
    /// The gRPC status (`grpc-status`), or `-` for a call that is not gRPC.
    pub grpc_response_status: String,
    pub response_code: u16,
    pub response_flags: String,
}

/// The labels of Istio's standard request metrics (Istio's "Standard Metrics" reference),
/// as a waypoint reports them: the seeds' dashboards and alerts select on these.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IstioLabels {
    /// Always `waypoint`, as Istio's ambient waypoints report.
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    /// The Service's host name, `name.namespace.svc.cluster.local`.
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    /// `grpc` or `http`.
    pub request_protocol: &'static str,
    pub response_code: u16,
    /// The gRPC status as a number, or `-` for a call that is not gRPC.
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
}

/// Istio's default buckets for `istio_request_duration_milliseconds`.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's default buckets for the size histograms: 1 byte to 1 GB, by tens.
const SIZE_BUCKETS: [f64; 10] = [1.0, 10.0, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

#[derive(Clone, Copy)]
pub struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

pub type HistogramFamily = Family<IstioLabels, Histogram, Buckets>;
/// A counter per cluster.
pub type ClusterCounters = Family<ClusterLabels, Counter>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub cluster: String,
    pub endpoint: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub istio_requests: Family<IstioLabels, Counter>,
    pub istio_duration: HistogramFamily,
    pub istio_request_bytes: HistogramFamily,
    pub istio_response_bytes: HistogramFamily,
    /// Calls refused by an AuthorizationPolicy, by the policy that refused them (or
    /// `-` when no ALLOW policy matched).
    pub authz_denied: Family<PolicyLabels, Counter>,
    /// Calls AUDIT policies matched.
    pub authz_audited: Family<PolicyLabels, Counter>,
    /// Calls refused by a LocalRateLimit, by `namespace/name`.
    pub rate_limited: Family<PolicyLabels, Counter>,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter,
    pub attempts: Family<EndpointLabels, Counter>,
    pub retries: ClusterCounters,
    pub retries_refused: ClusterCounters,
    pub ejections: Family<EndpointLabels, Counter>,
    /// L4 connections ended because a new policy denies them.
    pub l4_closed_by_policy: Counter,
    /// The request series made, by Service, to remove those of Services and pods that
    /// are gone.
    pub series: Arc<Mutex<SeriesIndex>>,
    registry: Arc<Mutex<Registry>>,
}

/// The label sets of the request series, by the called Service (`namespace`, `name`): the
/// families cannot be walked, so the waypoint notes each label set when it makes it, to
/// remove the series of a Service that is gone, and those whose destination workload is
/// gone. Without it they would grow with every Service and pod that ever came and went.
#[derive(Default)]
pub struct SeriesIndex {
    by_service: HashMap<(String, String), Series>,
    /// The model the index was last tidied for.
    tidied: Option<Arc<State>>,
}

#[derive(Default)]
struct Series {
    requests: HashSet<RequestLabels>,
    istio: HashSet<IstioLabels>,
}

impl Metrics {
    pub fn new() -> Self {
        let histogram = |buckets: &'static [f64]| Family::new_with_constructor(Buckets(buckets));
        let metrics = Metrics {
            requests: Family::default(),
            istio_requests: Family::default(),
            istio_duration: histogram(&DURATION_BUCKETS),
            istio_request_bytes: histogram(&SIZE_BUCKETS),
            istio_response_bytes: histogram(&SIZE_BUCKETS),
            authz_denied: Family::default(),
            authz_audited: Family::default(),
            rate_limited: Family::default(),
            access_log_dropped: Counter::default(),
            attempts: Family::default(),
            retries: Family::default(),
            retries_refused: Family::default(),
            ejections: Family::default(),
            l4_closed_by_policy: Counter::default(),
            series: Arc::default(),
            registry: Arc::default(),
        };
        if let Ok(mut r) = metrics.registry.lock() {
            r.register(
                "istio_requests",
                "Requests handled by the waypoint (Istio's standard metric)",
                metrics.istio_requests.clone(),
            );
            r.register(
                "istio_request_duration_milliseconds",
                "Request duration at the waypoint, from the request headers to the end of the response",
                metrics.istio_duration.clone(),
            );
            r.register(
                "istio_request_bytes",
                "Request body sizes",
                metrics.istio_request_bytes.clone(),
            );
            r.register(
                "istio_response_bytes",
                "Response body sizes",
                metrics.istio_response_bytes.clone(),
            );
            r.register(
                "weft_waypoint_authz_denied",
                "Calls refused by an AuthorizationPolicy, by policy",
                metrics.authz_denied.clone(),
            );
            r.register(
                "weft_waypoint_authz_audited",
                "Calls an AUDIT AuthorizationPolicy matched, by policy",
                metrics.authz_audited.clone(),
            );
            r.register(
                "weft_waypoint_rate_limited",
                "Calls refused by a LocalRateLimit, by limit",
                metrics.rate_limited.clone(),
            );
            r.register(
                "weft_waypoint_l4_closed_by_policy",
                "L4 connections through the waypoint ended because a new policy denies them",
                metrics.l4_closed_by_policy.clone(),
            );
            r.register(
                "weft_waypoint_access_log_dropped",
                "Access log lines dropped because the writer fell behind",
                metrics.access_log_dropped.clone(),
            );
            r.register(
                "weft_waypoint_requests",
                "Calls handled, by service, route, status and response flags",
                metrics.requests.clone(),
            );
            r.register(
                "weft_waypoint_upstream_attempts",
                "Attempts sent to each endpoint (first tries and retries)",
                metrics.attempts.clone(),
            );
            r.register(
                "weft_waypoint_retries",
                "Retries sent",
                metrics.retries.clone(),
            );
            r.register(
                "weft_waypoint_retries_refused",
                "Retries not sent because maxRetries or the retry budget was used up",
                metrics.retries_refused.clone(),
            );
            r.register(
                "weft_waypoint_outlier_ejections",
                "Endpoints ejected by outlier detection",
                metrics.ejections.clone(),
            );
        }
        metrics
    }

    pub fn registry(&self) -> Arc<Mutex<Registry>> {
        self.registry.clone()
    }

    /// Counts a finished call in Weft's and Istio's request series of `service`.
    pub fn count_call(
        &self,
        service: &(String, String),
        request: &RequestLabels,
        istio: &IstioLabels,
        samples: [f64; 3],
    ) {
        // A hit counts at once; a label set not seen before is noted first.
        let new_request = self.requests.get(request).map(|c| c.inc()).is_none();
        let new_istio = self.istio_requests.get(istio).map(|c| c.inc()).is_none();
        if (new_request || new_istio)
            && let Ok(mut index) = self.series.lock()
        {
            let series = index.by_service.entry(service.clone()).or_default();
            if new_request {
                series.requests.insert(request.clone());
            }
            if new_istio {
                series.istio.insert(istio.clone());
            }
        }
        if new_request {
            self.requests.get_or_create(request).inc();
        }
        if new_istio {
            self.istio_requests.get_or_create(istio).inc();
        }
        let [duration_ms, request_bytes, response_bytes] = samples;
        self.istio_duration
            .get_or_create(istio)
            .observe(duration_ms);
        self.istio_request_bytes
            .get_or_create(istio)
            .observe(request_bytes);
        self.istio_response_bytes
            .get_or_create(istio)
            .observe(response_bytes);
    }

    /// Removes the request series of Services that `model` no longer has, and those whose
    /// destination workload is no pod of it.
    pub fn retain_series(&self, model: &Arc<State>) {
        let Ok(mut index) = self.series.lock() else {
            return;
        };
        if index.tidied.as_ref().is_some_and(|t| Arc::ptr_eq(t, model)) {
            return;
        }
        index.tidied = Some(model.clone());
        let workloads: HashSet<&str> = model
            .services
            .keys()
            .filter_map(|(namespace, name)| model.service(namespace, name))
            .flat_map(|s| s.endpoints.iter().map(|w| w.name.as_str()))
            .collect();
        index.by_service.retain(|(namespace, name), series| {
            let gone = model.service(namespace, name).is_none();
            if gone {
                for labels in &series.requests {
                    self.requests.remove(labels);
                }
            }
            series.istio.retain(|labels| {
                let stays = !gone
                    && (labels.destination_workload == "unknown"
                        || workloads.contains(labels.destination_workload.as_str()));
                if !stays {
                    self.istio_requests.remove(labels);
                    self.istio_duration.remove(labels);
                    self.istio_request_bytes.remove(labels);
                    self.istio_response_bytes.remove(labels);
                }
                stays
            });
            !gone
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_like_envoy() {
        let mut f = Flags::default();
        assert_eq!(f.to_string(), "-");
        f.set(Flags::UF);
        f.set(Flags::URX);
        assert_eq!(f.to_string(), "UF,URX");
        assert!(f.contains(Flags::UF) && !f.contains(Flags::UH));
    }
}
