//! VirtualService (`networking.istio.io/v1`, and `v1beta1` and `v1alpha3`, which have the
//! same schema): the wire format and its validation into [`VirtualServiceInfo`].
//!
//! Written from the Istio API reference, "Virtual Service" (HTTPRoute, HTTPMatchRequest,
//! StringMatch, HTTPRouteDestination, HTTPRetry). Only HTTP routes that forward
//! (`route`) are implemented; every other action is rejected by name, because a user must
//! not believe a redirect or a fault injection is in force when it is not.

use serde_yaml::Value;

use super::wire::{
    DestinationWire, HttpMatchWire, HttpRouteWire, RetriesWire, RouteWire, StringMatchWire,
    VirtualServiceSpec, Wire, count, duration, not_supported, port, positive_duration, required,
};
use super::{
    HttpMatch, HttpRoute, MatchRegex, RetryOn, RetryPolicy, RouteDestination, StringMatch,
    TrafficMeta, VirtualServiceInfo,
};
use crate::config::error::InvalidObject;
use crate::config::parse::{identity, invalid, typed};

const KIND: &str = "VirtualService";

/// The highest weight of one destination, as Istio validates it.
const MAX_WEIGHT: i64 = 100;

/// Parses and validates one VirtualService document.
pub(crate) fn virtual_service_info(value: Value) -> Result<VirtualServiceInfo, InvalidObject> {
    let ignored = super::ignored::virtual_service(&value);
    let wire: Wire<VirtualServiceSpec> = typed(value)?;
    let (namespace, name) = identity(KIND, &wire.metadata, true)?;
    let namespace = namespace.unwrap_or_default();
    let meta = TrafficMeta {
        created: created(&wire.metadata),
        ignored,
    };
    let spec = wire.spec.unwrap_or_default();
    let mut info = convert(&namespace, &name, spec)
        .map_err(|reason| invalid(KIND, &namespace, &name, reason))?;
    info.meta = meta;
    Ok(info)
}

/// `metadata.creationTimestamp` in seconds, for precedence between objects of one host.
pub(super) fn created(
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<i64> {
    metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
}

fn convert(
    namespace: &str,
    name: &str,
    spec: VirtualServiceSpec,
) -> Result<VirtualServiceInfo, String> {
    if let Some(field) = spec.unsupported() {
        return Err(not_supported(&format!("spec.{field}")));
    }
    let hosts = spec.hosts.unwrap_or_default();
    if hosts.is_empty() {
        return Err("spec.hosts: at least one host is required".into());
    }
    if let Some(i) = hosts.iter().position(String::is_empty) {
        return Err(format!("spec.hosts[{i}]: must not be empty"));
    }
    let export_to = spec.export_to.unwrap_or_default();
    if let Some(i) = export_to
        .iter()
        .position(|to| to.is_empty() || to.contains(char::is_whitespace))
    {
        return Err(format!(
            "spec.exportTo[{i}]: {:?} is no namespace, \".\" or \"*\"",
            export_to[i]
        ));
    }
    let routes = spec.http.unwrap_or_default();
    if routes.is_empty() {
        return Err("spec.http: at least one route is required".into());
    }
    let http = routes
        .into_iter()
        .enumerate()
        .map(|(i, route)| http_route(route, &format!("spec.http[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(VirtualServiceInfo {
        namespace: namespace.to_string(),
        name: name.to_string(),
        hosts,
        http,
        export_to,
        meta: TrafficMeta::default(),
    })
}

fn http_route(route: HttpRouteWire, path: &str) -> Result<HttpRoute, String> {
    if let Some(field) = route.unsupported() {
        return Err(not_supported(&format!("{path}.{field}")));
    }
    let matches = route
        .matches
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(j, m)| http_match(m, &format!("{path}.match[{j}]")))
        .collect::<Result<_, _>>()?;
    let targets = route.route.unwrap_or_default();
    if targets.is_empty() {
        return Err(format!(
            "{path}.route: at least one destination is required (Weft supports no other action)"
        ));
    }
    let destinations = destinations(targets, &format!("{path}.route"))?;
    let timeout = route
        .timeout
        .map(|t| duration(&t, &format!("{path}.timeout")))
        .transpose()?;
    let retries = route
        .retries
        .map(|r| retry_policy(r, &format!("{path}.retries")))
        .transpose()?;
    Ok(HttpRoute {
        name: route.name.filter(|n| !n.is_empty()),
        matches,
        destinations,
        timeout,
        retries,
    })
}

fn http_match(m: HttpMatchWire, path: &str) -> Result<HttpMatch, String> {
    if let Some(field) = m.unsupported() {
        return Err(not_supported(&format!("{path}.{field}")));
    }
    let uri = m
        .uri
        .map(|u| string_match(u, &format!("{path}.uri"), false))
        .transpose()?;

    let mut headers = Vec::new();
    for (name, wanted) in m.headers.unwrap_or_default() {
        let field = format!("{path}.headers.{name}");
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(format!("{field}: {name:?} is not a valid header name"));
        }
        headers.push((lower, string_match(wanted, &field, true)?));
    }
    // Sorted so that equal matches compare equal, and so that names written twice in
    // different cases sit side by side.
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(pair) = headers.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!(
            "{path}.headers: {:?} is listed twice (header names are case-insensitive)",
            pair[0].0
        ));
    }

    let port = m
        .port
        .map(|p| port(p, &format!("{path}.port")))
        .transpose()?;
    Ok(HttpMatch { uri, headers, port })
}

/// `presence_if_empty`: whether `{}` means "present" (as it does for a header) rather
/// than being an error.
fn string_match(
    m: StringMatchWire,
    path: &str,
    presence_if_empty: bool,
) -> Result<StringMatch, String> {
    match (m.exact, m.prefix, m.regex) {
        (Some(exact), None, None) => Ok(StringMatch::Exact(exact)),
        (None, Some(prefix), None) => Ok(StringMatch::Prefix(prefix)),
        (None, None, Some(pattern)) => MatchRegex::new(&pattern)
            .map(StringMatch::Regex)
            .map_err(|e| format!("{path}.regex: invalid regex {pattern:?}: {}", one_line(&e))),
        (None, None, None) if presence_if_empty => Ok(StringMatch::Prefix(String::new())),
        (None, None, None) => Err(format!("{path}: one of exact, prefix, regex is required")),
        _ => Err(format!(
            "{path}: only one of exact, prefix, regex may be set"
        )),
    }
}

/// The regex crate explains a syntax error over several lines, pointing at the pattern;
/// the reason on its `error:` line is what fits in a one-line rejection.
fn one_line(err: &regex::Error) -> String {
    let text = err.to_string();
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("error: "))
        .next_back()
        .map(str::to_string)
        .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn destinations(targets: Vec<RouteWire>, path: &str) -> Result<Vec<RouteDestination>, String> {
    let sole = targets.len() == 1;
    let mut out = Vec::with_capacity(targets.len());
    for (k, target) in targets.into_iter().enumerate() {
        let path = format!("{path}[{k}]");
        if target.headers.is_some() {
            return Err(not_supported(&format!("{path}.headers")));
        }
        let destination = target
            .destination
            .ok_or_else(|| format!("{path}.destination: required"))?;
        let weight = match target.weight {
            Some(w) if (0..=MAX_WEIGHT).contains(&w) => w as u32,
            Some(w) => {
                return Err(format!(
                    "{path}.weight: invalid value {w} (must be 0..={MAX_WEIGHT})"
                ));
            }
            // Istio: a sole destination takes all the traffic; among several, an unset
            // weight is 0.
            None if sole => MAX_WEIGHT as u32,
            None => 0,
        };
        out.push(route_destination(
            destination,
            weight,
            &format!("{path}.destination"),
        )?);
    }
    if out.iter().all(|d| d.weight == 0) {
        return Err(format!(
            "{path}: every weight is 0, so no request could be routed (give a destination a weight)"
        ));
    }
    Ok(out)
}

fn route_destination(
    d: DestinationWire,
    weight: u32,
    path: &str,
) -> Result<RouteDestination, String> {
    let port = match d.port.and_then(|p| p.number) {
        Some(n) => Some(port(n, &format!("{path}.port.number"))?),
        None => None,
    };
    Ok(RouteDestination {
        host: required(d.host, &format!("{path}.host"))?,
        subset: d.subset.filter(|s| !s.is_empty()),
        port,
        weight,
    })
}

fn retry_policy(r: RetriesWire, path: &str) -> Result<RetryPolicy, String> {
    let attempts = match r.attempts {
        Some(a) => count(a, &format!("{path}.attempts"))?,
        // Istio: absent is 0, which disables retries.
        None => 0,
    };
    let per_try_timeout = r
        .per_try_timeout
        .map(|t| positive_duration(&t, &format!("{path}.perTryTimeout")))
        .transpose()?;
    let written = parse_retry_on(
        r.retry_on.as_deref().unwrap_or_default(),
        &format!("{path}.retryOn"),
    )?;
    let retry_on = if attempts > 0 && written == RetryOn::default() {
        RetryOn::default_conditions()
    } else {
        written
    };
    Ok(RetryPolicy {
        attempts,
        per_try_timeout,
        retry_on,
    })
}

/// The conditions Weft implements, by their Envoy names, for the error message.
const RETRY_CONDITIONS: &str = "5xx, gateway-error, reset, connect-failure, refused-stream, \
     retriable-status-codes, cancelled, deadline-exceeded, resource-exhausted, internal, \
     unavailable, or an HTTP status code";

/// `retryOn`: a comma-separated list of Envoy's retry conditions and status codes. Empty
/// entries are skipped, as Istio skips them. A status code implies
/// `retriable-status-codes`, as Istio adds it: a code alone would otherwise do nothing.
fn parse_retry_on(text: &str, path: &str) -> Result<RetryOn, String> {
    let mut on = RetryOn::default();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if entry.bytes().all(|b| b.is_ascii_digit()) {
            let code = entry
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| {
                    format!("{path}: invalid status code {entry:?} (must be 100..=599)")
                })?;
            if !on.status_codes.contains(&code) {
                on.status_codes.push(code);
            }
            on.retriable_status_codes = true;
            continue;
        }
        let flag = match entry {
            "5xx" => &mut on.http_5xx,
            "gateway-error" => &mut on.gateway_error,
            "reset" => &mut on.reset,
            "connect-failure" => &mut on.connect_failure,
            "refused-stream" => &mut on.refused_stream,
            "retriable-status-codes" => &mut on.retriable_status_codes,
            "cancelled" => &mut on.grpc_cancelled,
            "deadline-exceeded" => &mut on.grpc_deadline_exceeded,
            "resource-exhausted" => &mut on.grpc_resource_exhausted,
            "internal" => &mut on.grpc_internal,
            "unavailable" => &mut on.grpc_unavailable,
            // Envoy's, but not Weft's.
            "retriable-4xx"
            | "retriable-headers"
            | "envoy-ratelimited"
            | "reset-before-request"
            | "http3-post-connect-failure" => {
                return Err(format!(
                    "{path}: retry condition {entry:?} is not supported by Weft"
                ));
            }
            _ => {
                return Err(format!(
                    "{path}: unknown retry condition {entry:?} (known: {RETRY_CONDITIONS})"
                ));
            }
        };
        *flag = true;
    }
    Ok(on)
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
