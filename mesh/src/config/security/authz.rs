//! AuthorizationPolicy (`security.istio.io/v1`, and `v1beta1`, which has the same schema):
//! the wire format and its validation into [`AuthorizationPolicyInfo`].
//!
//! Written from the Istio API reference, "Authorization Policy" and "Authorization Policy
//! Conditions". Validation rejects what Istio's own validation rejects and what Weft could
//! only guess at (an IP block that does not parse, a port out of range, an empty source).
//!
//! A field inside a `source` or an `operation` that this code does not know is not dropped:
//! dropping it would widen the rule, and a wider ALLOW rule lets in traffic the author
//! meant to keep out. It is kept by name in `unsupported`, and the evaluator fails closed
//! on it. The same goes for a `when` key outside Istio's conditions table.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_yaml::Value;

use super::wire::{Text, WorkloadSelector, enum_value, port, unknown_keys};
use super::{AuthorizationPolicyInfo, AuthzAction, Cidr, Condition, Operation, Rule, Source};
use super::{TargetRef, condition_keys};
use crate::config::error::InvalidObject;
use crate::config::parse::{identity, invalid, typed};

const KIND: &str = "AuthorizationPolicy";

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    metadata: ObjectMeta,
    spec: Option<Spec>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    selector: Option<WorkloadSelector>,
    /// Deprecated in favour of `targetRefs`, still accepted by Istio.
    target_ref: Option<TargetRefWire>,
    target_refs: Option<Vec<TargetRefWire>>,
    action: Option<String>,
    provider: Option<Provider>,
    rules: Option<Vec<RuleWire>>,
}

#[derive(Deserialize)]
struct TargetRefWire {
    group: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
}

#[derive(Deserialize)]
struct Provider {
    name: Option<String>,
}

#[derive(Deserialize)]
struct RuleWire {
    from: Option<Vec<FromWire>>,
    to: Option<Vec<ToWire>>,
    when: Option<Vec<ConditionWire>>,
}

#[derive(Deserialize)]
struct FromWire {
    source: Option<SourceWire>,
}

#[derive(Deserialize)]
struct ToWire {
    operation: Option<OperationWire>,
}

const SOURCE_FIELDS: &[&str] = &[
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SourceWire {
    principals: Option<Vec<String>>,
    not_principals: Option<Vec<String>>,
    request_principals: Option<Vec<String>>,
    not_request_principals: Option<Vec<String>>,
    namespaces: Option<Vec<String>>,
    not_namespaces: Option<Vec<String>>,
    ip_blocks: Option<Vec<String>>,
    not_ip_blocks: Option<Vec<String>>,
    remote_ip_blocks: Option<Vec<String>>,
    not_remote_ip_blocks: Option<Vec<String>>,
}

const OPERATION_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OperationWire {
    hosts: Option<Vec<String>>,
    not_hosts: Option<Vec<String>>,
    ports: Option<Vec<Text>>,
    not_ports: Option<Vec<Text>>,
    methods: Option<Vec<String>>,
    not_methods: Option<Vec<String>>,
    paths: Option<Vec<String>>,
    not_paths: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConditionWire {
    key: Option<String>,
    values: Option<Vec<Text>>,
    not_values: Option<Vec<Text>>,
}

/// Parses and validates one AuthorizationPolicy document.
pub(crate) fn authorization_policy_info(
    value: Value,
) -> Result<AuthorizationPolicyInfo, InvalidObject> {
    // The raw rules, to find the source and operation fields the typed form drops.
    let raw_rules = value.get("spec").and_then(|s| s.get("rules")).cloned();
    let wire: Wire = typed(value)?;
    let (namespace, name) = identity(KIND, &wire.metadata, true)?;
    let namespace = namespace.unwrap_or_default();
    let spec = wire.spec.unwrap_or_default();
    convert(&namespace, &name, spec, raw_rules.as_ref())
        .map_err(|reason| invalid(KIND, &namespace, &name, reason))
}

fn convert(
    namespace: &str,
    name: &str,
    spec: Spec,
    raw_rules: Option<&Value>,
) -> Result<AuthorizationPolicyInfo, String> {
    let action = enum_value(
        spec.action.as_deref(),
        &AuthzAction::ALL,
        AuthzAction::as_str,
    )
    .map_err(|e| format!("spec.action: {e}"))?;
    let provider = match (action, spec.provider) {
        (AuthzAction::Custom, provider) => Some(
            provider
                .and_then(|p| p.name)
                .filter(|n| !n.is_empty())
                .ok_or("spec.provider.name: required when spec.action is CUSTOM")?,
        ),
        (_, Some(_)) => return Err("spec.provider: only allowed when spec.action is CUSTOM".into()),
        (_, None) => None,
    };

    let selector = WorkloadSelector::labels(spec.selector, "spec.selector")?;
    let (refs, refs_field) = match (spec.target_ref, spec.target_refs) {
        (Some(_), Some(_)) => {
            return Err("spec.targetRef: cannot be set together with spec.targetRefs".into());
        }
        (Some(one), None) => (vec![one], "spec.targetRef"),
        (None, many) => (many.unwrap_or_default(), "spec.targetRefs"),
    };
    if selector.is_some() && !refs.is_empty() {
        return Err(format!(
            "{refs_field}: cannot be set together with spec.selector"
        ));
    }
    let mut target_refs = Vec::with_capacity(refs.len());
    for (i, r) in refs.into_iter().enumerate() {
        // The singular form has no index in its path.
        let field = if refs_field == "spec.targetRef" {
            refs_field.to_string()
        } else {
            format!("{refs_field}[{i}]")
        };
        target_refs.push(target_ref(namespace, r, &field)?);
    }

    let mut rules = Vec::new();
    for (i, rule) in spec.rules.unwrap_or_default().into_iter().enumerate() {
        let raw = raw_rules.and_then(|r| r.get(i));
        rules.push(convert_rule(rule, raw, &format!("spec.rules[{i}]"))?);
    }

    Ok(AuthorizationPolicyInfo {
        namespace: namespace.to_string(),
        name: name.to_string(),
        selector,
        target_refs,
        action,
        provider,
        rules,
    })
}

fn target_ref(namespace: &str, r: TargetRefWire, field: &str) -> Result<TargetRef, String> {
    let required = |v: Option<String>, sub: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{field}.{sub}: required"))
    };
    // Istio does not support a policy that targets another namespace's resources.
    if let Some(other) = r.namespace.as_deref().filter(|n| !n.is_empty())
        && other != namespace
    {
        return Err(format!(
            "{field}.namespace: {other:?} is not the policy's namespace (cross-namespace targets are not supported)"
        ));
    }
    Ok(TargetRef {
        group: r.group.unwrap_or_default(),
        kind: required(r.kind, "kind")?,
        name: required(r.name, "name")?,
    })
}

fn convert_rule(rule: RuleWire, raw: Option<&Value>, field: &str) -> Result<Rule, String> {
    let mut out = Rule::default();
    if let Some(from) = rule.from {
        if from.is_empty() {
            return Err(format!("{field}.from: must not be empty (omit it instead)"));
        }
        for (j, entry) in from.into_iter().enumerate() {
            let field = format!("{field}.from[{j}].source");
            let raw = raw
                .and_then(|r| r.get("from"))
                .and_then(|f| f.get(j))
                .and_then(|f| f.get("source"));
            let source = entry.source.ok_or_else(|| format!("{field}: required"))?;
            out.from.push(convert_source(
                source,
                unknown_keys(raw, SOURCE_FIELDS),
                &field,
            )?);
        }
    }
    if let Some(to) = rule.to {
        if to.is_empty() {
            return Err(format!("{field}.to: must not be empty (omit it instead)"));
        }
        for (j, entry) in to.into_iter().enumerate() {
            let field = format!("{field}.to[{j}].operation");
            let raw = raw
                .and_then(|r| r.get("to"))
                .and_then(|t| t.get(j))
                .and_then(|t| t.get("operation"));
            let operation = entry
                .operation
                .ok_or_else(|| format!("{field}: required"))?;
            out.to.push(convert_operation(
                operation,
                unknown_keys(raw, OPERATION_FIELDS),
                &field,
            )?);
        }
    }
    for (k, condition) in rule.when.unwrap_or_default().into_iter().enumerate() {
        out.when
            .push(convert_condition(condition, &format!("{field}.when[{k}]"))?);
    }
    Ok(out)
}

fn convert_source(s: SourceWire, unsupported: Vec<String>, field: &str) -> Result<Source, String> {
    let cidrs = |v: Option<Vec<String>>, sub: &str| -> Result<Vec<Cidr>, String> {
        v.unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, text)| {
                text.parse::<Cidr>()
                    .map_err(|e| format!("{field}.{sub}[{i}]: {e}"))
            })
            .collect()
    };
    let source = Source {
        principals: s.principals.unwrap_or_default(),
        not_principals: s.not_principals.unwrap_or_default(),
        request_principals: s.request_principals.unwrap_or_default(),
        not_request_principals: s.not_request_principals.unwrap_or_default(),
        namespaces: s.namespaces.unwrap_or_default(),
        not_namespaces: s.not_namespaces.unwrap_or_default(),
        ip_blocks: cidrs(s.ip_blocks, "ipBlocks")?,
        not_ip_blocks: cidrs(s.not_ip_blocks, "notIpBlocks")?,
        remote_ip_blocks: cidrs(s.remote_ip_blocks, "remoteIpBlocks")?,
        not_remote_ip_blocks: cidrs(s.not_remote_ip_blocks, "notRemoteIpBlocks")?,
        unsupported,
    };
    if source == Source::default() {
        return Err(format!("{field}: must not be empty"));
    }
    warn_unsupported(&source.unsupported, field);
    Ok(source)
}

fn convert_operation(
    o: OperationWire,
    unsupported: Vec<String>,
    field: &str,
) -> Result<Operation, String> {
    let ports = |v: Option<Vec<Text>>, sub: &str| -> Result<Vec<u16>, String> {
        v.unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, text)| port(&text.0).map_err(|e| format!("{field}.{sub}[{i}]: {e}")))
            .collect()
    };
    let operation = Operation {
        hosts: o.hosts.unwrap_or_default(),
        not_hosts: o.not_hosts.unwrap_or_default(),
        ports: ports(o.ports, "ports")?,
        not_ports: ports(o.not_ports, "notPorts")?,
        methods: o.methods.unwrap_or_default(),
        not_methods: o.not_methods.unwrap_or_default(),
        paths: o.paths.unwrap_or_default(),
        not_paths: o.not_paths.unwrap_or_default(),
        unsupported,
    };
    if operation == Operation::default() {
        return Err(format!("{field}: must not be empty"));
    }
    warn_unsupported(&operation.unsupported, field);
    Ok(operation)
}

/// Checks one condition value of a key whose values have a syntax (addresses, ports).
type ValueCheck = fn(&str) -> Result<(), String>;

fn convert_condition(c: ConditionWire, field: &str) -> Result<Condition, String> {
    let key = c
        .key
        .filter(|k| !k.is_empty())
        .ok_or_else(|| format!("{field}.key: required"))?;
    let values: Vec<String> = c
        .values
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.0)
        .collect();
    let not_values: Vec<String> = c
        .not_values
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.0)
        .collect();
    if values.is_empty() && not_values.is_empty() {
        return Err(format!(
            "{field}: at least one of values and notValues is required for key {key:?}"
        ));
    }
    let check: Option<ValueCheck> = match key.as_str() {
        condition_keys::SOURCE_IP | condition_keys::REMOTE_IP | condition_keys::DESTINATION_IP => {
            Some(|v| v.parse::<Cidr>().map(drop).map_err(|e| e.to_string()))
        }
        condition_keys::DESTINATION_PORT => Some(|v| port(v).map(drop)),
        _ => None,
    };
    if let Some(check) = check {
        for (sub, list) in [("values", &values), ("notValues", &not_values)] {
            for (i, v) in list.iter().enumerate() {
                check(v).map_err(|e| format!("{field}.{sub}[{i}]: {e}"))?;
            }
        }
    }
    if !condition_keys::known(&key) {
        tracing::warn!(
            field,
            key,
            "condition key is not in Istio's conditions table; it never matches in an ALLOW rule and always matches in a DENY rule"
        );
    }
    Ok(Condition {
        key,
        values,
        not_values,
    })
}

fn warn_unsupported(unsupported: &[String], field: &str) {
    if !unsupported.is_empty() {
        tracing::warn!(
            field,
            ?unsupported,
            "unknown fields are kept: a rule using them never matches in an ALLOW policy and always matches in a DENY policy"
        );
    }
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
