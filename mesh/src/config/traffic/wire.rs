//! The serde shapes of VirtualService and DestinationRule, written from the Istio API
//! reference (the CRDs are not in k8s-openapi), and the checks their fields share.
//!
//! Every struct under `spec` denies unknown fields, so a misspelt or newer field is an
//! error that names it rather than a setting silently not applied. Fields Istio has and
//! Weft does not implement come in two sorts, both typed [`Skipped`] so that they are
//! recognised: those whose absence changes nothing Weft does are accepted and ignored
//! (named `_field`, each with the reason); the others are listed by `unsupported()` and
//! rejected as "not supported by Weft".
//!
//! Numbers are read as `i64` so that a negative one is reported as such, not as a type
//! error; the converters narrow them.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::duration::parse_duration;

/// A field that is recognised but not read: present or not is all that matters.
pub(super) type Skipped = Option<IgnoredAny>;

/// The envelope. Lenient on purpose: `apiVersion`, `kind` and a `status` copied from a
/// cluster are not Weft's to check.
#[derive(Deserialize)]
pub(super) struct Wire<S> {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<S>,
}

/// The wire name of the first of `fields` that is present.
fn first_present(fields: &[(&'static str, bool)]) -> Option<&'static str> {
    fields.iter().find(|(_, present)| *present).map(|(n, _)| *n)
}

/// Rejects a field Weft does not implement. `path` is the field's full path.
pub(super) fn not_supported(path: &str) -> String {
    format!("{path}: not supported by Weft")
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct VirtualServiceSpec {
    pub hosts: Option<Vec<String>>,
    /// Ignored: which gateways a VirtualService binds to is for Istio's gateways; Weft's
    /// waypoint applies it to the Services its hosts name.
    #[serde(rename = "gateways")]
    pub _gateways: Skipped,
    pub export_to: Option<Vec<String>>,
    pub http: Option<Vec<HttpRouteWire>>,
    pub tcp: Skipped,
    pub tls: Skipped,
}

impl VirtualServiceSpec {
    pub fn unsupported(&self) -> Option<&'static str> {
        first_present(&[("tcp", self.tcp.is_some()), ("tls", self.tls.is_some())])
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct HttpRouteWire {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matches: Option<Vec<HttpMatchWire>>,
    pub route: Option<Vec<RouteWire>>,
    pub timeout: Option<String>,
    pub retries: Option<RetriesWire>,
    pub redirect: Skipped,
    pub direct_response: Skipped,
    pub delegate: Skipped,
    pub rewrite: Skipped,
    pub fault: Skipped,
    pub mirror: Skipped,
    pub mirrors: Skipped,
    pub mirror_percentage: Skipped,
    /// The deprecated spelling of `mirrorPercentage`.
    pub mirror_percent: Skipped,
    pub cors_policy: Skipped,
    /// Header manipulation (`set`, `add`, `remove`), not header matching.
    pub headers: Skipped,
}

impl HttpRouteWire {
    pub fn unsupported(&self) -> Option<&'static str> {
        first_present(&[
            ("redirect", self.redirect.is_some()),
            ("directResponse", self.direct_response.is_some()),
            ("delegate", self.delegate.is_some()),
            ("rewrite", self.rewrite.is_some()),
            ("fault", self.fault.is_some()),
            ("mirror", self.mirror.is_some()),
            ("mirrors", self.mirrors.is_some()),
            ("mirrorPercentage", self.mirror_percentage.is_some()),
            ("mirrorPercent", self.mirror_percent.is_some()),
            ("corsPolicy", self.cors_policy.is_some()),
            ("headers", self.headers.is_some()),
        ])
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct HttpMatchWire {
    /// Ignored: a label for logs and metrics.
    #[serde(rename = "name")]
    pub _name: Skipped,
    pub uri: Option<StringMatchWire>,
    pub headers: Option<BTreeMap<String, StringMatchWire>>,
    pub port: Option<i64>,
    /// Ignored: names the statistics of the match.
    #[serde(rename = "statPrefix")]
    pub _stat_prefix: Skipped,
    pub scheme: Skipped,
    pub method: Skipped,
    pub authority: Skipped,
    pub query_params: Skipped,
    /// `false` is the default, and accepted.
    pub ignore_uri_case: Option<bool>,
    pub without_headers: Skipped,
    pub source_labels: Skipped,
    pub source_namespace: Skipped,
    pub gateways: Skipped,
}

impl HttpMatchWire {
    /// Dropping any of these would make the match wider than its author wrote it.
    pub fn unsupported(&self) -> Option<&'static str> {
        first_present(&[
            ("scheme", self.scheme.is_some()),
            ("method", self.method.is_some()),
            ("authority", self.authority.is_some()),
            ("queryParams", self.query_params.is_some()),
            ("ignoreUriCase", self.ignore_uri_case == Some(true)),
            ("withoutHeaders", self.without_headers.is_some()),
            ("sourceLabels", self.source_labels.is_some()),
            ("sourceNamespace", self.source_namespace.is_some()),
            ("gateways", self.gateways.is_some()),
        ])
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StringMatchWire {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteWire {
    pub destination: Option<DestinationWire>,
    pub weight: Option<i64>,
    /// Header manipulation per destination.
    pub headers: Skipped,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DestinationWire {
    pub host: Option<String>,
    pub subset: Option<String>,
    pub port: Option<PortSelectorWire>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PortSelectorWire {
    pub number: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RetriesWire {
    pub attempts: Option<i64>,
    pub per_try_timeout: Option<String>,
    pub retry_on: Option<String>,
    /// Ignored: Weft has no localities to prefer or avoid.
    #[serde(rename = "retryRemoteLocalities")]
    pub _retry_remote_localities: Skipped,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct DestinationRuleSpec {
    pub host: Option<String>,
    pub traffic_policy: Option<TrafficPolicyWire>,
    pub subsets: Option<Vec<SubsetWire>>,
    /// Ignored: Weft has no per-namespace visibility of configuration.
    #[serde(rename = "exportTo")]
    pub _export_to: Skipped,
    /// Dropping it would apply the rule to every client instead of the selected ones.
    pub workload_selector: Skipped,
}

impl DestinationRuleSpec {
    pub fn unsupported(&self) -> Option<&'static str> {
        first_present(&[("workloadSelector", self.workload_selector.is_some())])
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubsetWire {
    pub name: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "trafficPolicy")]
    pub traffic_policy: Option<TrafficPolicyWire>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct TrafficPolicyWire {
    pub load_balancer: Option<LoadBalancerWire>,
    pub connection_pool: Option<ConnectionPoolWire>,
    pub outlier_detection: Option<OutlierDetectionWire>,
    pub tls: Option<ClientTlsWire>,
    pub port_level_settings: Skipped,
    pub tunnel: Skipped,
    pub proxy_protocol: Skipped,
}

impl TrafficPolicyWire {
    pub fn unsupported(&self) -> Option<&'static str> {
        first_present(&[
            ("portLevelSettings", self.port_level_settings.is_some()),
            ("tunnel", self.tunnel.is_some()),
            ("proxyProtocol", self.proxy_protocol.is_some()),
        ])
    }
}

/// Only `mode` is read: see [`ISTIO_MUTUAL`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClientTlsWire {
    pub mode: Option<String>,
}

/// The one TLS mode Weft accepts, because it is what the mesh does anyway: many Istio
/// manifests carry it as boilerplate.
pub(super) const ISTIO_MUTUAL: &str = "ISTIO_MUTUAL";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LoadBalancerWire {
    pub simple: Option<String>,
    pub consistent_hash: Option<ConsistentHashWire>,
    /// Ignored: Weft has no localities to prefer or fail over between.
    #[serde(rename = "localityLbSetting")]
    pub _locality_lb_setting: Skipped,
    pub warmup_duration_secs: Skipped,
    pub warmup: Skipped,
}

impl LoadBalancerWire {
    pub fn unsupported(&self) -> Option<&'static str> {
        first_present(&[
            ("warmupDurationSecs", self.warmup_duration_secs.is_some()),
            ("warmup", self.warmup.is_some()),
        ])
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ConsistentHashWire {
    pub http_header_name: Option<String>,
    pub use_source_ip: Option<bool>,
    pub http_cookie: Skipped,
    pub http_query_parameter_name: Skipped,
    /// Ignored, as are `maglev` and `minimumRingSize`: which hash ring is used changes how
    /// keys spread, not that a key sticks to one endpoint.
    #[serde(rename = "ringHash")]
    pub _ring_hash: Skipped,
    #[serde(rename = "maglev")]
    pub _maglev: Skipped,
    #[serde(rename = "minimumRingSize")]
    pub _minimum_ring_size: Skipped,
}

impl ConsistentHashWire {
    pub fn unsupported(&self) -> Option<&'static str> {
        first_present(&[
            ("httpCookie", self.http_cookie.is_some()),
            (
                "httpQueryParameterName",
                self.http_query_parameter_name.is_some(),
            ),
        ])
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectionPoolWire {
    pub tcp: Option<TcpPoolWire>,
    pub http: Option<HttpPoolWire>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct TcpPoolWire {
    pub max_connections: Option<i64>,
    pub connect_timeout: Option<String>,
    /// Ignored: keep-alive probes change when a dead peer is noticed, not what is sent.
    #[serde(rename = "tcpKeepalive")]
    pub _tcp_keepalive: Skipped,
    pub max_connection_duration: Skipped,
    pub idle_timeout: Skipped,
}

impl TcpPoolWire {
    pub fn unsupported(&self) -> Option<&'static str> {
        first_present(&[
            (
                "maxConnectionDuration",
                self.max_connection_duration.is_some(),
            ),
            ("idleTimeout", self.idle_timeout.is_some()),
        ])
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct HttpPoolWire {
    /// Ignored: Weft's waypoint speaks HTTP/2 upstream, so there is no HTTP/1 queue.
    #[serde(rename = "http1MaxPendingRequests")]
    pub _http1_max_pending_requests: Skipped,
    #[serde(rename = "http2MaxRequests")]
    pub http2_max_requests: Option<i64>,
    pub max_requests_per_connection: Option<i64>,
    pub max_retries: Option<i64>,
    pub idle_timeout: Option<String>,
    /// Ignored, as is `useClientProtocol`: the protocol upstream is the waypoint's choice.
    #[serde(rename = "h2UpgradePolicy")]
    pub _h2_upgrade_policy: Skipped,
    #[serde(rename = "useClientProtocol")]
    pub _use_client_protocol: Skipped,
    pub max_concurrent_streams: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct OutlierDetectionWire {
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<i64>,
    pub consecutive_gateway_errors: Option<i64>,
    pub interval: Option<String>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_percent: Option<i64>,
    /// Ignored, as are `splitExternalLocalOriginErrors` and `minHealthPercent`: Weft counts
    /// every failure as the endpoint's, and never stops ejecting because few are healthy
    /// (`maxEjectionPercent` bounds ejection instead).
    #[serde(rename = "consecutiveLocalOriginFailures")]
    pub _consecutive_local_origin_failures: Skipped,
    #[serde(rename = "splitExternalLocalOriginErrors")]
    pub _split_external_local_origin_errors: Skipped,
    #[serde(rename = "minHealthPercent")]
    pub _min_health_percent: Skipped,
    /// Deprecated in Istio, with a meaning that changed between releases.
    pub consecutive_errors: Skipped,
}

/// A count: 0 and up, at most `u32::MAX`. `path` names the field.
pub(super) fn count(value: i64, path: &str) -> Result<u32, String> {
    if value < 0 {
        return Err(format!(
            "{path}: invalid value {value} (must not be negative)"
        ));
    }
    u32::try_from(value).map_err(|_| format!("{path}: invalid value {value} (too large)"))
}

/// A count where Istio reads 0 as "not set".
pub(super) fn limit(value: Option<i64>, path: &str) -> Result<Option<u32>, String> {
    match value {
        None => Ok(None),
        Some(v) => Ok(Some(count(v, path)?).filter(|n| *n != 0)),
    }
}

/// A port number 1..=65535.
pub(super) fn port(value: i64, path: &str) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{path}: invalid value {value} (must be 1..=65535)"))
}

/// A duration field; see [`parse_duration`].
pub(super) fn duration(text: &str, path: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| format!("{path}: {e}"))
}

/// A duration that Istio requires to be at least 1ms, as it does for timeouts that would
/// otherwise make every request fail.
pub(super) fn positive_duration(text: &str, path: &str) -> Result<Duration, String> {
    let d = duration(text, path)?;
    if d < Duration::from_millis(1) {
        return Err(format!(
            "{path}: invalid duration {text:?} (must be at least 1ms)"
        ));
    }
    Ok(d)
}

/// A string field that must be present and not empty.
pub(super) fn required(value: Option<String>, path: &str) -> Result<String, String> {
    value
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{path}: required"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_checked_with_the_field() {
        assert_eq!(count(0, "f"), Ok(0));
        assert_eq!(
            count(-1, "f"),
            Err("f: invalid value -1 (must not be negative)".into())
        );
        assert_eq!(
            count(1 << 32, "f"),
            Err("f: invalid value 4294967296 (too large)".into())
        );
        assert_eq!(limit(Some(0), "f"), Ok(None));
        assert_eq!(limit(Some(7), "f"), Ok(Some(7)));
        assert_eq!(port(65535, "p"), Ok(65535));
        for bad in [0, -1, 65536] {
            assert_eq!(
                port(bad, "p"),
                Err(format!("p: invalid value {bad} (must be 1..=65535)"))
            );
        }
    }

    #[test]
    fn durations_name_the_field() {
        assert_eq!(duration("2s", "t"), Ok(Duration::from_secs(2)));
        assert!(
            duration("2", "t")
                .unwrap_err()
                .starts_with("t: invalid duration \"2\"")
        );
        assert_eq!(
            positive_duration("0s", "t"),
            Err("t: invalid duration \"0s\" (must be at least 1ms)".into())
        );
        assert_eq!(positive_duration("1ms", "t"), Ok(Duration::from_millis(1)));
    }

    #[test]
    fn skipped_fields_are_recognised_whatever_their_shape() {
        let m: HttpMatchWire =
            serde_yaml::from_str("{name: a, method: {exact: GET}, statPrefix: x}").unwrap();
        assert_eq!(m.unsupported(), Some("method"));
        let m: HttpMatchWire = serde_yaml::from_str("{ignoreUriCase: false}").unwrap();
        assert_eq!(m.unsupported(), None);
        let Err(err) = serde_yaml::from_str::<HttpMatchWire>("{methods: [GET]}") else {
            panic!("an unknown field was accepted");
        };
        assert!(err.to_string().contains("unknown field `methods`"), "{err}");
    }
}
