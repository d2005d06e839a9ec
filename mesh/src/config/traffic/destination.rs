//! DestinationRule (`networking.istio.io/v1`, and `v1beta1` and `v1alpha3`, which have the
//! same schema): the wire format and its validation into [`DestinationRuleInfo`], with
//! Weft's annotations for what Istio's API cannot say (a peak-EWMA balancer, a retry
//! budget).
//!
//! Written from the Istio API reference, "Destination Rule" (TrafficPolicy, Subset,
//! LoadBalancerSettings, ConnectionPoolSettings, OutlierDetection, ClientTLSSettings).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_yaml::Value;

use super::wire::{
    ConnectionPoolWire, ConsistentHashWire, DestinationRuleSpec, ISTIO_MUTUAL, LoadBalancerWire,
    OutlierDetectionWire, SubsetWire, TrafficPolicyWire, Wire, count, duration, limit,
    not_supported, positive_duration, required,
};
use super::{
    ConnectionPool, DestinationRuleInfo, HashKey, LOAD_BALANCER_ANNOTATION, LoadBalancer,
    OutlierDetection, RETRY_BUDGET_MIN_ANNOTATION, RETRY_BUDGET_PERCENT_ANNOTATION, RetryBudget,
    Subset, TrafficMeta, TrafficPolicy,
};
use crate::config::error::InvalidObject;
use crate::config::parse::{identity, invalid, typed};

const KIND: &str = "DestinationRule";

/// Parses and validates one DestinationRule document.
pub(crate) fn destination_rule_info(value: Value) -> Result<DestinationRuleInfo, InvalidObject> {
    let ignored = super::ignored::destination_rule(&value);
    let wire: Wire<DestinationRuleSpec> = typed(value)?;
    let (namespace, name) = identity(KIND, &wire.metadata, true)?;
    let namespace = namespace.unwrap_or_default();
    let meta = TrafficMeta {
        created: super::route::created(&wire.metadata),
        ignored,
    };
    let annotations = wire.metadata.annotations.unwrap_or_default();
    let spec = wire.spec.unwrap_or_default();
    let mut info = convert(&namespace, &name, spec, &annotations)
        .map_err(|reason| invalid(KIND, &namespace, &name, reason))?;
    info.meta = meta;
    Ok(info)
}

fn convert(
    namespace: &str,
    name: &str,
    spec: DestinationRuleSpec,
    annotations: &BTreeMap<String, String>,
) -> Result<DestinationRuleInfo, String> {
    if let Some(field) = spec.unsupported() {
        return Err(not_supported(&format!("spec.{field}")));
    }
    let host = required(spec.host, "spec.host")?;
    let mut traffic_policy = match spec.traffic_policy {
        Some(p) => traffic_policy(p, "spec.trafficPolicy")?,
        None => TrafficPolicy::default(),
    };
    if let Some(balancer) = load_balancer_annotation(annotations)? {
        // Replacing a hash would silently end the affinity its author asked for.
        if matches!(
            traffic_policy.load_balancer,
            Some(LoadBalancer::ConsistentHash(_))
        ) {
            return Err(format!(
                "{}: cannot be set together with spec.trafficPolicy.loadBalancer.consistentHash",
                annotation_path(LOAD_BALANCER_ANNOTATION)
            ));
        }
        traffic_policy.load_balancer = Some(balancer);
    }

    let mut names = BTreeSet::new();
    let mut subsets = Vec::new();
    for (i, wire) in spec.subsets.unwrap_or_default().into_iter().enumerate() {
        let subset = subset(wire, &format!("spec.subsets[{i}]"))?;
        if !names.insert(subset.name.clone()) {
            return Err(format!(
                "spec.subsets[{i}].name: subset {:?} is defined twice",
                subset.name
            ));
        }
        subsets.push(subset);
    }

    Ok(DestinationRuleInfo {
        namespace: namespace.to_string(),
        name: name.to_string(),
        host,
        traffic_policy,
        subsets,
        retry_budget: retry_budget(annotations)?,
        meta: TrafficMeta::default(),
    })
}

fn subset(wire: SubsetWire, path: &str) -> Result<Subset, String> {
    let name = required(wire.name, &format!("{path}.name"))?;
    let labels = wire.labels.unwrap_or_default();
    if labels.contains_key("") {
        return Err(format!("{path}.labels: a label key must not be empty"));
    }
    let traffic_policy = wire
        .traffic_policy
        .map(|p| traffic_policy(p, &format!("{path}.trafficPolicy")))
        .transpose()?;
    Ok(Subset {
        name,
        labels,
        traffic_policy,
    })
}

fn traffic_policy(p: TrafficPolicyWire, path: &str) -> Result<TrafficPolicy, String> {
    if let Some(field) = p.unsupported() {
        return Err(not_supported(&format!("{path}.{field}")));
    }
    if let Some(tls) = p.tls {
        // ClientTLSSettings' mode defaults to DISABLE.
        let mode = tls.mode.unwrap_or_else(|| "DISABLE".to_string());
        if mode != ISTIO_MUTUAL {
            return Err(format!(
                "{path}.tls.mode: {mode:?} is not supported by Weft \
                 (traffic between workloads is always Istio mutual TLS; only {ISTIO_MUTUAL} is accepted)"
            ));
        }
    }
    let load_balancer = match p.load_balancer {
        Some(lb) => load_balancer(lb, &format!("{path}.loadBalancer"))?,
        None => None,
    };
    let connection_pool = match p.connection_pool {
        Some(cp) => connection_pool(cp, &format!("{path}.connectionPool"))?,
        None => ConnectionPool::default(),
    };
    let outlier_detection = p
        .outlier_detection
        .map(|od| outlier_detection(od, &format!("{path}.outlierDetection")))
        .transpose()?;
    Ok(TrafficPolicy {
        load_balancer,
        connection_pool,
        outlier_detection,
    })
}

fn load_balancer(lb: LoadBalancerWire, path: &str) -> Result<Option<LoadBalancer>, String> {
    if let Some(field) = lb.unsupported() {
        return Err(not_supported(&format!("{path}.{field}")));
    }
    match (lb.simple.filter(|s| !s.is_empty()), lb.consistent_hash) {
        (Some(_), Some(_)) => Err(format!(
            "{path}: simple and consistentHash cannot both be set"
        )),
        (Some(name), None) => simple(&name).map_err(|e| format!("{path}.simple: {e}")),
        (None, Some(hash)) => Ok(Some(LoadBalancer::ConsistentHash(consistent_hash(
            hash,
            &format!("{path}.consistentHash"),
        )?))),
        (None, None) => Ok(None),
    }
}

/// The `simple` names Weft implements; `UNSPECIFIED` is `None`.
const SIMPLE_NAMES: &str = "UNSPECIFIED, ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM";

fn simple(name: &str) -> Result<Option<LoadBalancer>, String> {
    match name {
        "UNSPECIFIED" => Ok(None),
        "ROUND_ROBIN" => Ok(Some(LoadBalancer::RoundRobin)),
        // LEAST_CONN is Istio's deprecated name for LEAST_REQUEST.
        "LEAST_REQUEST" | "LEAST_CONN" => Ok(Some(LoadBalancer::LeastRequest)),
        "RANDOM" => Ok(Some(LoadBalancer::Random)),
        "PASSTHROUGH" => Err(format!(
            "{name:?} is not supported by Weft (the waypoint always picks an endpoint)"
        )),
        _ => Err(format!(
            "invalid value {name:?} (must be one of {SIMPLE_NAMES})"
        )),
    }
}

fn consistent_hash(hash: ConsistentHashWire, path: &str) -> Result<HashKey, String> {
    if let Some(field) = hash.unsupported() {
        return Err(not_supported(&format!("{path}.{field}")));
    }
    let header = hash.http_header_name.filter(|h| !h.is_empty());
    match (header, hash.use_source_ip.unwrap_or(false)) {
        (Some(_), true) => Err(format!(
            "{path}: httpHeaderName and useSourceIp cannot both be set"
        )),
        (Some(name), false) => {
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                return Err(format!(
                    "{path}.httpHeaderName: {name:?} is not a valid header name"
                ));
            }
            Ok(HashKey::Header(lower))
        }
        (None, true) => Ok(HashKey::SourceIp),
        (None, false) => Err(format!(
            "{path}: one of httpHeaderName, useSourceIp is required"
        )),
    }
}

fn connection_pool(cp: ConnectionPoolWire, path: &str) -> Result<ConnectionPool, String> {
    let mut pool = ConnectionPool::default();
    if let Some(tcp) = cp.tcp {
        let path = format!("{path}.tcp");
        if let Some(field) = tcp.unsupported() {
            return Err(not_supported(&format!("{path}.{field}")));
        }
        pool.max_connections = limit(tcp.max_connections, &format!("{path}.maxConnections"))?;
        pool.connect_timeout = tcp
            .connect_timeout
            .map(|t| positive_duration(&t, &format!("{path}.connectTimeout")))
            .transpose()?;
    }
    if let Some(http) = cp.http {
        let path = format!("{path}.http");
        pool.http2_max_requests =
            limit(http.http2_max_requests, &format!("{path}.http2MaxRequests"))?;
        pool.max_requests_per_connection = limit(
            http.max_requests_per_connection,
            &format!("{path}.maxRequestsPerConnection"),
        )?;
        pool.max_concurrent_streams = limit(
            http.max_concurrent_streams,
            &format!("{path}.maxConcurrentStreams"),
        )?;
        pool.max_retries = limit(http.max_retries, &format!("{path}.maxRetries"))?;
        pool.idle_timeout = http
            .idle_timeout
            .map(|t| duration(&t, &format!("{path}.idleTimeout")))
            .transpose()?;
    }
    Ok(pool)
}

/// `maxEjectionPercent: 0` is taken as written (no ejection), although Istio's API cannot
/// tell it from unset: reading a 0 as "eject up to 10%" would do what its author ruled out.
fn outlier_detection(od: OutlierDetectionWire, path: &str) -> Result<OutlierDetection, String> {
    if od.consecutive_errors.is_some() {
        return Err(format!(
            "{}; use consecutive5xxErrors or consecutiveGatewayErrors",
            not_supported(&format!("{path}.consecutiveErrors"))
        ));
    }
    let errors =
        |v: Option<i64>, field: &str| v.map(|n| count(n, &format!("{path}.{field}"))).transpose();
    let interval = |v: Option<String>, field: &str, default: Duration| match v {
        Some(t) => positive_duration(&t, &format!("{path}.{field}")),
        None => Ok(default),
    };
    let max_ejection_percent = match od.max_ejection_percent {
        Some(p) if (0..=100).contains(&p) => p as u32,
        Some(p) => {
            return Err(format!(
                "{path}.maxEjectionPercent: invalid value {p} (must be 0..=100)"
            ));
        }
        None => OutlierDetection::DEFAULT_MAX_EJECTION_PERCENT,
    };
    Ok(OutlierDetection {
        consecutive_5xx_errors: errors(od.consecutive_5xx_errors, "consecutive5xxErrors")?,
        consecutive_gateway_errors: errors(
            od.consecutive_gateway_errors,
            "consecutiveGatewayErrors",
        )?,
        interval: interval(od.interval, "interval", OutlierDetection::DEFAULT_INTERVAL)?,
        base_ejection_time: interval(
            od.base_ejection_time,
            "baseEjectionTime",
            OutlierDetection::DEFAULT_BASE_EJECTION_TIME,
        )?,
        max_ejection_percent,
    })
}

/// How an error names an annotation: its key has dots and a slash, so it is quoted.
fn annotation_path(key: &str) -> String {
    format!("metadata.annotations[{key:?}]")
}

fn load_balancer_annotation(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<LoadBalancer>, String> {
    let Some(value) = annotations.get(LOAD_BALANCER_ANNOTATION) else {
        return Ok(None);
    };
    let balancer = match value.trim() {
        "PEAK_EWMA" => LoadBalancer::PeakEwma,
        "ROUND_ROBIN" => LoadBalancer::RoundRobin,
        "LEAST_REQUEST" | "LEAST_CONN" => LoadBalancer::LeastRequest,
        "RANDOM" => LoadBalancer::Random,
        _ => {
            return Err(format!(
                "{}: invalid value {value:?} (must be one of PEAK_EWMA, ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM)",
                annotation_path(LOAD_BALANCER_ANNOTATION)
            ));
        }
    };
    Ok(Some(balancer))
}

/// Either annotation alone sets a budget; the other part takes its default.
fn retry_budget(annotations: &BTreeMap<String, String>) -> Result<Option<RetryBudget>, String> {
    let percent = annotations.get(RETRY_BUDGET_PERCENT_ANNOTATION);
    let min = annotations.get(RETRY_BUDGET_MIN_ANNOTATION);
    if percent.is_none() && min.is_none() {
        return Ok(None);
    }
    let percent = match percent {
        Some(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|p| (0.0..=100.0).contains(p))
            .ok_or_else(|| {
                format!(
                    "{}: invalid value {text:?} (must be a number 0..=100)",
                    annotation_path(RETRY_BUDGET_PERCENT_ANNOTATION)
                )
            })?,
        None => RetryBudget::DEFAULT_PERCENT,
    };
    let min_per_second = match min {
        Some(text) => text.trim().parse::<u32>().map_err(|_| {
            format!(
                "{}: invalid value {text:?} (must be a whole number, 0 or more)",
                annotation_path(RETRY_BUDGET_MIN_ANNOTATION)
            )
        })?,
        None => RetryBudget::DEFAULT_MIN_PER_SECOND,
    };
    Ok(Some(RetryBudget {
        percent,
        min_per_second,
    }))
}

#[cfg(test)]
#[path = "destination_tests.rs"]
mod tests;
