//! Istio's traffic objects, `networking.istio.io` VirtualService and DestinationRule, as
//! validated model types: how the waypoint routes, balances and retries a Service's
//! requests.
//!
//! Users already write these objects for Istio, so Weft reads them as they are. The model
//! keeps what Weft implements, checked once at parse time: durations are [`Duration`]s,
//! regexes are compiled, weights add up, so the waypoint never meets a malformed value on
//! the data path. Which object applies to which Service is answered by the `Model` methods
//! in `hosts.rs`; what a route *does* is the waypoint's business.
//!
//! Unlike `security/`, whose unknown fields are kept and evaluated fail-closed, a traffic
//! object has no fail-closed reading: a dropped match condition widens a route, a dropped
//! fault or mirror makes its author believe it is active. So every field under `spec` is
//! either implemented, explicitly accepted and ignored (documented where it is), or an
//! error naming the field; Istio features Weft does not implement say "not supported by
//! Weft".
//!
//! The field names and semantics follow the published Istio API reference for
//! `networking.istio.io/v1` ("Virtual Service", "Destination Rule"); `v1beta1` and
//! `v1alpha3` have the same schema.
//!
//! Files:
//! - `duration.rs`: protobuf-JSON and Go durations;
//! - `wire.rs`: the serde shapes of both kinds, strict about unknown fields;
//! - `route.rs`: VirtualService, wire format to [`VirtualServiceInfo`];
//! - `destination.rs`: DestinationRule and Weft's annotations, to [`DestinationRuleInfo`];
//! - `hosts.rs`: which Service a `host` names, and which objects apply to a Service.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

mod destination;
mod duration;
mod hosts;
mod ignored;
mod route;
mod wire;

pub use duration::parse_duration;
pub use hosts::resolve_host;

pub(crate) use destination::destination_rule_info;
pub(crate) use route::virtual_service_info;

/// DestinationRule annotation choosing the load balancer, overriding
/// `spec.trafficPolicy.loadBalancer.simple`. Takes `PEAK_EWMA`, which Istio does not have,
/// and the `simple` names `ROUND_ROBIN`, `LEAST_REQUEST` (or `LEAST_CONN`) and `RANDOM`.
pub const LOAD_BALANCER_ANNOTATION: &str = "weft.dev/load-balancer";
/// DestinationRule annotation: retries may add at most this percentage of the requests in
/// flight (see [`RetryBudget`]).
pub const RETRY_BUDGET_PERCENT_ANNOTATION: &str = "weft.dev/retry-budget-percent";
/// DestinationRule annotation: retries per second always allowed, whatever the budget.
pub const RETRY_BUDGET_MIN_ANNOTATION: &str = "weft.dev/retry-budget-min-per-second";

/// A VirtualService, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualServiceInfo {
    pub namespace: String,
    pub name: String,
    /// `spec.hosts`, as written; never empty. Which Services they name is decided by
    /// [`Model::service_for_host`](crate::config::Model::service_for_host).
    pub hosts: Vec<String>,
    /// `spec.http`, in order: the first route that matches a request takes it. Never empty.
    pub http: Vec<HttpRoute>,
    /// `spec.exportTo`: the namespaces whose callers it routes (`.` its own, `*` all).
    /// Empty when unset: all, as Istio's default. See [`exported_to`](Self::exported_to).
    pub export_to: Vec<String>,
    pub meta: TrafficMeta,
}

impl VirtualServiceInfo {
    /// Whether callers in `namespace` may be routed by it (`spec.exportTo`; Istio's
    /// "Traffic Management Best Practices", "Cross-namespace configuration sharing").
    pub fn exported_to(&self, namespace: &str) -> bool {
        self.export_to.is_empty()
            || self.export_to.iter().any(|to| match to.as_str() {
                "*" => true,
                "." => namespace == self.namespace,
                other => other == namespace,
            })
    }
}

/// What the compile step needs of a traffic object beyond its spec: its age, which decides
/// precedence between objects of one host, and the fields it carries that Weft accepts but
/// does not act on, which `analyze` reports.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrafficMeta {
    /// `metadata.creationTimestamp`, in seconds since the epoch; `None` when the manifest
    /// has none (a file that was never applied), which counts as newer than any that has.
    pub created: Option<i64>,
    /// Paths of fields present in the manifest that Weft accepts and ignores
    /// (`spec.trafficPolicy.loadBalancer.localityLbSetting`), each with why.
    pub ignored: Vec<(String, &'static str)>,
}

/// One `spec.http[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRoute {
    pub name: Option<String>,
    /// Empty: the route matches every request. Otherwise it matches when any entry does.
    pub matches: Vec<HttpMatch>,
    /// Never empty, and the weights add up to more than zero.
    pub destinations: Vec<RouteDestination>,
    /// `None`: not set. `Some(Duration::ZERO)` (`"0s"`): explicitly no timeout.
    pub timeout: Option<Duration>,
    /// `None` when `retries` is absent. Istio then applies its own default policy; that
    /// choice is the waypoint's, so the parser does not fill it in.
    pub retries: Option<RetryPolicy>,
}

/// One `http[].match[]` entry: every field present must match.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpMatch {
    /// The request's path, without its query string: Envoy matches `exact` and `regex`
    /// against that, and a `prefix` sees the same start either way.
    pub uri: Option<StringMatch>,
    /// Header names lower-cased, sorted, each at most once. A header that is absent from
    /// the request matches no [`StringMatch`]; Istio's presence check (`{}`) is written as
    /// `Prefix("")`, which any value of a present header matches.
    pub headers: Vec<(String, StringMatch)>,
    /// The Service port the request was sent to.
    pub port: Option<u16>,
}

/// Istio's StringMatch: exactly one of `exact`, `prefix` and `regex`.
#[derive(Debug, Clone, PartialEq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(MatchRegex),
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(exact) => value == exact,
            StringMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StringMatch::Regex(regex) => regex.is_match(value),
        }
    }
}

/// A compiled `regex` match. Istio's regexes are RE2 and must match the whole value, not a
/// part of it, so the pattern is anchored at both ends when compiled.
///
/// The syntax is the `regex` crate's, which is RE2's with one difference users may meet:
/// `\d`, `\w` and `\s` are Unicode classes here and ASCII in RE2. Values that are ASCII (as
/// paths and most headers are) match the same. With the `regex` features this crate
/// enables, case-insensitive patterns (`(?i)`) and Unicode scripts (`\p{Greek}`) are
/// rejected at parse time rather than approximated.
#[derive(Clone)]
pub struct MatchRegex(regex::Regex);

/// What [`MatchRegex::new`] wraps the user's pattern in: a non-capturing group, anchored.
const ANCHOR_START: &str = "^(?:";
const ANCHOR_END: &str = ")$";

impl MatchRegex {
    /// Compiles `pattern` to match whole values only.
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        // Checked alone first: a pattern that is valid on its own has balanced groups, so
        // wrapping it cannot close the anchoring group early (as `a)|(b` would).
        regex::Regex::new(pattern)?;
        regex::Regex::new(&format!("{ANCHOR_START}{pattern}{ANCHOR_END}")).map(MatchRegex)
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.0.is_match(value)
    }

    /// The pattern as the user wrote it, without the anchors.
    pub fn as_str(&self) -> &str {
        let anchored = self.0.as_str();
        &anchored[ANCHOR_START.len()..anchored.len() - ANCHOR_END.len()]
    }
}

impl PartialEq for MatchRegex {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for MatchRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MatchRegex").field(&self.as_str()).finish()
    }
}

/// One `http[].route[]` entry: where a share of the matching requests goes.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteDestination {
    /// `destination.host`, as written; resolve it with
    /// [`Model::service_for_host`](crate::config::Model::service_for_host) in the
    /// VirtualService's namespace.
    pub host: String,
    /// A subset of the host's DestinationRule.
    pub subset: Option<String>,
    /// `destination.port.number`; `None` means the port the request was sent to.
    pub port: Option<u16>,
    /// 0..=100, relative to the route's other destinations. A sole destination without a
    /// weight gets 100; among several, an unset weight is 0.
    pub weight: u32,
}

/// `http[].retries`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try; 0 disables retries.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    /// When `retryOn` is absent or empty and `attempts` is not 0, the default set (see
    /// [`RetryOn::default_conditions`]). With `attempts: 0`, whatever was written.
    pub retry_on: RetryOn,
}

/// `retries.retryOn`: the conditions (Envoy's `x-envoy-retry-on` and
/// `x-envoy-retry-grpc-on` names) under which a request is retried.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetryOn {
    /// gRPC status CANCELLED (`cancelled`).
    pub grpc_cancelled: bool,
    /// gRPC status DEADLINE_EXCEEDED (`deadline-exceeded`).
    pub grpc_deadline_exceeded: bool,
    /// gRPC status RESOURCE_EXHAUSTED (`resource-exhausted`).
    pub grpc_resource_exhausted: bool,
    /// gRPC status INTERNAL (`internal`).
    pub grpc_internal: bool,
    /// gRPC status UNAVAILABLE (`unavailable`).
    pub grpc_unavailable: bool,
    /// Any 5xx response, and a reset or timeout before a response (`5xx`).
    pub http_5xx: bool,
    /// 502, 503 or 504 (`gateway-error`).
    pub gateway_error: bool,
    /// The upstream did not respond: disconnect, reset or read timeout (`reset`).
    pub reset: bool,
    /// The connection to the upstream failed (`connect-failure`).
    pub connect_failure: bool,
    /// The upstream refused the HTTP/2 stream with REFUSED_STREAM (`refused-stream`).
    pub refused_stream: bool,
    /// A response status in [`status_codes`](Self::status_codes)
    /// (`retriable-status-codes`).
    pub retriable_status_codes: bool,
    /// The numeric entries of `retryOn`, in order, each once (`"503,retriable-status-codes"`).
    pub status_codes: Vec<u16>,
}

impl RetryOn {
    /// Istio's conditions for retries without `retryOn` (its default HTTP retry policy:
    /// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with
    /// 503 as the retriable status): failures where the request cannot have reached the
    /// application, or where a gRPC server said to try again.
    pub fn default_conditions() -> Self {
        RetryOn {
            connect_failure: true,
            refused_stream: true,
            grpc_unavailable: true,
            grpc_cancelled: true,
            retriable_status_codes: true,
            status_codes: vec![503],
            ..RetryOn::default()
        }
    }
}

impl RetryPolicy {
    /// Istio's retries for a route that sets none: 2 retries on [`RetryOn::default_conditions`].
    pub fn istio_default() -> Self {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryOn::default_conditions(),
        }
    }
}

/// A DestinationRule, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationRuleInfo {
    pub namespace: String,
    pub name: String,
    /// `spec.host`, as written.
    pub host: String,
    /// `spec.trafficPolicy`; the default (nothing set) when absent.
    pub traffic_policy: TrafficPolicy,
    /// Names unique.
    pub subsets: Vec<Subset>,
    /// Weft's extension, from [`RETRY_BUDGET_PERCENT_ANNOTATION`] and
    /// [`RETRY_BUDGET_MIN_ANNOTATION`]; `None` when neither is set.
    pub retry_budget: Option<RetryBudget>,
    pub meta: TrafficMeta,
}

/// One `spec.subsets[]` entry: the endpoints with these labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Overrides the rule's top-level policy for this subset.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// `trafficPolicy`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrafficPolicy {
    /// `None`: not set (`UNSPECIFIED` or absent); the waypoint picks.
    pub load_balancer: Option<LoadBalancer>,
    pub connection_pool: ConnectionPool,
    pub outlier_detection: Option<OutlierDetection>,
}

/// `loadBalancer.simple`, `loadBalancer.consistentHash`, or Weft's annotation.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadBalancer {
    RoundRobin,
    LeastRequest,
    Random,
    /// Weft's extension ([`LOAD_BALANCER_ANNOTATION`]): the endpoint with the lowest
    /// moving average of latency times load.
    PeakEwma,
    ConsistentHash(HashKey),
}

/// What a consistent hash load balancer hashes.
#[derive(Debug, Clone, PartialEq)]
pub enum HashKey {
    /// A request header, its name lower-cased.
    Header(String),
    /// The client's address.
    SourceIp,
}

/// `connectionPool`. A limit written as 0 is `None`: in Istio's API a 0 means "not set",
/// which is the default (unlimited, or Envoy's own).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnectionPool {
    /// `tcp.maxConnections`.
    pub max_connections: Option<u32>,
    /// `tcp.connectTimeout`; never zero.
    pub connect_timeout: Option<Duration>,
    /// `http.http2MaxRequests`: requests in flight to the destination.
    pub http2_max_requests: Option<u32>,
    /// `http.maxRequestsPerConnection`; 1 disables keep-alive.
    pub max_requests_per_connection: Option<u32>,
    /// `http.maxConcurrentStreams`: per HTTP/2 connection.
    pub max_concurrent_streams: Option<u32>,
    /// `http.maxRetries`: retries in flight to the destination.
    pub max_retries: Option<u32>,
    /// `http.idleTimeout`; `Some(Duration::ZERO)` (`"0s"`) disables it.
    pub idle_timeout: Option<Duration>,
}

/// `outlierDetection`: ejecting endpoints that keep failing.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    /// `None`: not set. `Some(0)`: ejection on 5xx explicitly disabled.
    pub consecutive_5xx_errors: Option<u32>,
    /// `None`: not set. `Some(0)`: ejection on 502/503/504 explicitly disabled.
    pub consecutive_gateway_errors: Option<u32>,
    /// How often endpoints are checked; 10s when not set; never zero.
    pub interval: Duration,
    /// The first ejection's length, growing with each further one; 30s when not set;
    /// never zero.
    pub base_ejection_time: Duration,
    /// 0..=100; 10 when not set.
    pub max_ejection_percent: u32,
}

impl OutlierDetection {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
}

/// Weft's retry budget for a destination: retries in flight may add at most `percent` of
/// the requests in flight, but `min_per_second` retries per second are always allowed, so
/// that a quiet service can still retry.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudget {
    /// 0.0..=100.0.
    pub percent: f64,
    pub min_per_second: u32,
}

impl RetryBudget {
    pub const DEFAULT_PERCENT: f64 = 20.0;
    pub const DEFAULT_MIN_PER_SECOND: u32 = 10;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_matches() {
        assert!(StringMatch::Exact("/a".into()).matches("/a"));
        assert!(!StringMatch::Exact("/a".into()).matches("/ab"));
        assert!(StringMatch::Prefix("/a".into()).matches("/ab"));
        assert!(!StringMatch::Prefix("/a".into()).matches("/b"));
        assert!(StringMatch::Prefix(String::new()).matches(""));
    }

    #[test]
    fn regexes_match_the_whole_value() {
        let re = MatchRegex::new("/api/v[0-9]+").unwrap();
        assert_eq!(re.as_str(), "/api/v[0-9]+");
        assert!(re.is_match("/api/v12"));
        assert!(!re.is_match("/api/v12/x"));
        assert!(!re.is_match("x/api/v1"));
        // An alternation stays inside the anchors.
        let re = MatchRegex::new("a|b").unwrap();
        assert!(re.is_match("b"));
        assert!(!re.is_match("ab"));
        assert!(StringMatch::Regex(MatchRegex::new(r"\d+").unwrap()).matches("42"));
    }

    #[test]
    fn regexes_compare_and_print_by_pattern() {
        let a = MatchRegex::new("a+").unwrap();
        assert_eq!(a, MatchRegex::new("a+").unwrap());
        assert_ne!(a, MatchRegex::new("a*").unwrap());
        assert_eq!(format!("{a:?}"), "MatchRegex(\"a+\")");
        assert!(MatchRegex::new("(").is_err());
        // Valid only once wrapped, and then not anchored as meant.
        assert!(MatchRegex::new("a)|(b").is_err());
    }
}
