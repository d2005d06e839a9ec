//! The waypoint's Prometheus metrics (:15020), and the Envoy-style response flags each call
//! records (Envoy's access-log documentation names them): what went wrong, in two letters,
//! so that a dashboard can tell "no healthy upstream" from "timed out" at a glance.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
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

    const NAMES: [(Flags, &'static str); 9] = [
        (Flags::UH, "UH"),
        (Flags::UF, "UF"),
        (Flags::UO, "UO"),
        (Flags::UT, "UT"),
        (Flags::LR, "LR"),
        (Flags::UR, "UR"),
        (Flags::DC, "DC"),
        (Flags::URX, "URX"),
        (Flags::NR, "NR"),
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub cluster: String,
    pub endpoint: String,
}

#[derive(Clone, Default)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub attempts: Family<EndpointLabels, Counter>,
    pub retries: Family<ClusterLabels, Counter>,
    pub retries_refused: Family<ClusterLabels, Counter>,
    pub ejections: Family<EndpointLabels, Counter>,
    registry: Arc<Mutex<Registry>>,
}

impl Metrics {
    pub fn new() -> Self {
        let metrics = Metrics::default();
        if let Ok(mut r) = metrics.registry.lock() {
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
