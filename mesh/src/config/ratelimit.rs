//! `LocalRateLimit` (`weft.dev/v1alpha1`): Weft's own small CRD for the waypoint's local
//! rate limits, token buckets in the shape of Envoy's local rate limit filter
//! (`maxTokens`, `tokensPerFill`, `fillInterval`; Envoy's `token_bucket` documentation).
//! Istio has no API of its own for this (its users write an EnvoyFilter), so Weft keeps
//! the bucket's field names and nothing else of Envoy's.
//!
//! ```yaml
//! apiVersion: weft.dev/v1alpha1
//! kind: LocalRateLimit
//! metadata: {name: user-api, namespace: shop}
//! spec:
//!   targetRefs:                       # the waypoint, or a Service bound to it
//!   - {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}
//!   tokenBucket: {maxTokens: 1000, tokensPerFill: 100, fillInterval: 100ms}
//!   routes:                           # a bucket per VirtualService http route, by name
//!   - {name: canary, tokenBucket: {maxTokens: 50, tokensPerFill: 50, fillInterval: 1s}}
//!   methods:                          # a bucket per gRPC method (exact, prefix*, *suffix)
//!   - {path: /user.UserService/ListUsers, tokenBucket: {maxTokens: 10, tokensPerFill: 10, fillInterval: 1s}}
//! ```
//!
//! A call takes a token from every bucket that applies to it: the target's, its route's and
//! its method's. Each entry is one bucket, shared by every call it matches (a `path`
//! pattern that matches several methods gives them one bucket between them).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_yaml::Value;

use super::TargetRef;
use super::error::InvalidObject;
use super::parse::{identity, invalid, typed};
use super::traffic::parse_duration;

const KIND: &str = "LocalRateLimit";

/// The shortest `fillInterval` accepted, as Envoy's filter requires.
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// One token bucket: it starts full, and every `fill_interval` it gains `tokens_per_fill`
/// tokens, up to `max_tokens`. A call takes one token, or is refused if there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenBucket {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}

/// What a bucket of a [`LocalRateLimitInfo`] counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitScope {
    /// Every call to the target.
    Target,
    /// Calls routed by the VirtualService http route of this name.
    Route(String),
    /// Calls whose path matches this pattern (exact, `prefix*`, `*suffix`, `*`).
    Method(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LocalRateLimitInfo {
    pub namespace: String,
    pub name: String,
    /// Never empty: the waypoint's Gateway, or Services in the limit's namespace.
    pub target_refs: Vec<TargetRef>,
    /// Never empty.
    pub limits: Vec<(LimitScope, TokenBucket)>,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    metadata: ObjectMeta,
    spec: Option<Spec>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    target_refs: Option<Vec<TargetRefWire>>,
    token_bucket: Option<BucketWire>,
    routes: Option<Vec<RouteWire>>,
    methods: Option<Vec<MethodWire>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetRefWire {
    group: Option<String>,
    kind: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BucketWire {
    max_tokens: Option<u32>,
    tokens_per_fill: Option<u32>,
    fill_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RouteWire {
    name: Option<String>,
    token_bucket: Option<BucketWire>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MethodWire {
    path: Option<String>,
    token_bucket: Option<BucketWire>,
}

/// Parses and validates one LocalRateLimit document.
pub(crate) fn local_rate_limit_info(value: Value) -> Result<LocalRateLimitInfo, InvalidObject> {
    let wire: Wire = typed(value)?;
    let (namespace, name) = identity(KIND, &wire.metadata, true)?;
    let namespace = namespace.unwrap_or_default();
    convert(&namespace, &name, wire.spec.unwrap_or_default())
        .map_err(|reason| invalid(KIND, &namespace, &name, reason))
}

fn convert(namespace: &str, name: &str, spec: Spec) -> Result<LocalRateLimitInfo, String> {
    let refs = spec.target_refs.unwrap_or_default();
    if refs.is_empty() {
        return Err("spec.targetRefs: required (the waypoint's Gateway or a Service)".into());
    }
    let mut target_refs = Vec::new();
    for (i, r) in refs.into_iter().enumerate() {
        let field = format!("spec.targetRefs[{i}]");
        let kind = r.kind.filter(|k| !k.is_empty());
        let name = r
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("{field}.name: required"))?;
        let group = r.group.unwrap_or_default();
        let kind = match kind.as_deref() {
            Some("Gateway") if matches!(group.as_str(), "gateway.networking.k8s.io" | "") => {
                "Gateway"
            }
            Some("Service") if matches!(group.as_str(), "" | "core") => "Service",
            other => {
                return Err(format!(
                    "{field}: kind {other:?} in group {group:?} is not supported (Gateway or Service)"
                ));
            }
        };
        target_refs.push(TargetRef {
            group,
            kind: kind.to_string(),
            name,
        });
    }

    let mut limits = Vec::new();
    if let Some(b) = spec.token_bucket {
        limits.push((LimitScope::Target, bucket(b, "spec.tokenBucket")?));
    }
    for (i, r) in spec.routes.unwrap_or_default().into_iter().enumerate() {
        let field = format!("spec.routes[{i}]");
        let route = r
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("{field}.name: required"))?;
        let b = r
            .token_bucket
            .ok_or_else(|| format!("{field}.tokenBucket: required"))?;
        limits.push((
            LimitScope::Route(route),
            bucket(b, &format!("{field}.tokenBucket"))?,
        ));
    }
    for (i, m) in spec.methods.unwrap_or_default().into_iter().enumerate() {
        let field = format!("spec.methods[{i}]");
        let path = m
            .path
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("{field}.path: required"))?;
        if !(path.starts_with('/') || path.starts_with('*')) {
            return Err(format!(
                "{field}.path: {path:?} must be a path (\"/pkg.Service/Method\", a prefix ending in *, or *suffix)"
            ));
        }
        let b = m
            .token_bucket
            .ok_or_else(|| format!("{field}.tokenBucket: required"))?;
        limits.push((
            LimitScope::Method(path),
            bucket(b, &format!("{field}.tokenBucket"))?,
        ));
    }
    if limits.is_empty() {
        return Err("spec: at least one of tokenBucket, routes and methods is required".into());
    }
    Ok(LocalRateLimitInfo {
        namespace: namespace.to_string(),
        name: name.to_string(),
        target_refs,
        limits,
    })
}

fn bucket(b: BucketWire, field: &str) -> Result<TokenBucket, String> {
    let max_tokens = b
        .max_tokens
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{field}.maxTokens: required, and at least 1"))?;
    // Envoy's default is one token per fill.
    let tokens_per_fill = b.tokens_per_fill.unwrap_or(1);
    if tokens_per_fill == 0 {
        return Err(format!("{field}.tokensPerFill: must be at least 1"));
    }
    let text = b
        .fill_interval
        .ok_or_else(|| format!("{field}.fillInterval: required"))?;
    let fill_interval = parse_duration(&text).map_err(|e| format!("{field}.fillInterval: {e}"))?;
    if fill_interval < MIN_FILL_INTERVAL {
        return Err(format!(
            "{field}.fillInterval: {text:?} is shorter than {}ms",
            MIN_FILL_INTERVAL.as_millis()
        ));
    }
    Ok(TokenBucket {
        max_tokens,
        tokens_per_fill,
        fill_interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Object, parse_value};

    fn parse(spec: &str) -> Result<LocalRateLimitInfo, String> {
        let text = format!(
            "apiVersion: weft.dev/v1alpha1\nkind: LocalRateLimit\nmetadata: {{name: rl, namespace: shop}}\nspec: {spec}\n"
        );
        match parse_value(serde_yaml::from_str(&text).unwrap()) {
            Ok(Some(Object::LocalRateLimit(info))) => Ok(info),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn full_example() {
        let info = parse(
            r#"
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}, {kind: Service, name: users}]
  tokenBucket: {maxTokens: 1000, tokensPerFill: 100, fillInterval: 100ms}
  routes: [{name: canary, tokenBucket: {maxTokens: 50, tokensPerFill: 50, fillInterval: 1s}}]
  methods: [{path: /user.UserService/ListUsers, tokenBucket: {maxTokens: 10, fillInterval: 2s}}]
"#,
        )
        .unwrap();
        assert_eq!(info.target_refs.len(), 2);
        assert_eq!(info.target_refs[1].kind, "Service");
        assert_eq!(
            info.limits,
            vec![
                (
                    LimitScope::Target,
                    TokenBucket {
                        max_tokens: 1000,
                        tokens_per_fill: 100,
                        fill_interval: Duration::from_millis(100)
                    }
                ),
                (
                    LimitScope::Route("canary".into()),
                    TokenBucket {
                        max_tokens: 50,
                        tokens_per_fill: 50,
                        fill_interval: Duration::from_secs(1)
                    }
                ),
                (
                    LimitScope::Method("/user.UserService/ListUsers".into()),
                    TokenBucket {
                        max_tokens: 10,
                        tokens_per_fill: 1,
                        fill_interval: Duration::from_secs(2)
                    }
                ),
            ]
        );
    }

    #[test]
    fn rejections_name_the_field() {
        let gw = "targetRefs: [{kind: Gateway, name: waypoint}]";
        let cases = [
            (
                "{tokenBucket: {maxTokens: 1, fillInterval: 1s}}",
                "spec.targetRefs: required",
            ),
            (&format!("{{{gw}}}"), "at least one of tokenBucket"),
            (
                &format!("{{{gw}, tokenBucket: {{maxTokens: 0, fillInterval: 1s}}}}"),
                "spec.tokenBucket.maxTokens",
            ),
            (
                &format!("{{{gw}, tokenBucket: {{maxTokens: 5, fillInterval: 10ms}}}}"),
                "spec.tokenBucket.fillInterval: \"10ms\" is shorter than 50ms",
            ),
            (
                &format!("{{{gw}, tokenBucket: {{maxTokens: 5, fillInterval: soon}}}}"),
                "spec.tokenBucket.fillInterval: invalid duration",
            ),
            (
                &format!("{{{gw}, tokenBucket: {{maxTokens: 5, fillInterval: 1s, burst: 3}}}}"),
                "unknown field `burst`",
            ),
            (
                "{targetRefs: [{kind: Deployment, name: x}], tokenBucket: {maxTokens: 5, fillInterval: 1s}}",
                "spec.targetRefs[0]: kind Some(\"Deployment\")",
            ),
            (
                &format!(
                    "{{{gw}, methods: [{{path: GetUser, tokenBucket: {{maxTokens: 5, fillInterval: 1s}}}}]}}"
                ),
                "spec.methods[0].path",
            ),
            (
                &format!("{{{gw}, routes: [{{name: r}}]}}"),
                "spec.routes[0].tokenBucket: required",
            ),
        ];
        for (spec, want) in cases {
            let err = parse(spec).unwrap_err();
            assert!(err.contains(want), "{spec}: {err}");
            assert!(err.contains("LocalRateLimit shop/rl"), "{err}");
        }
    }
}
