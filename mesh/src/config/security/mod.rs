//! Istio's security objects, `security.istio.io` AuthorizationPolicy and PeerAuthentication,
//! as validated model types.
//!
//! Users already write these objects for Istio, so Weft reads them as they are rather than
//! inventing its own. The model keeps what the policy says, checked once at parse time:
//! addresses are parsed CIDRs and ports are numbers, so the evaluator (`crate::policy`)
//! never meets a malformed value on the data path. What the rules *mean* (which policy
//! applies, which one wins) lives in `crate::policy`, not here.
//!
//! The field names and semantics follow the published Istio API reference for
//! `security.istio.io/v1`: "Authorization Policy", "Authorization Policy Conditions",
//! "PeerAuthentication" and "Workload Selector" (istio.io/latest/docs/reference/config/).
//!
//! Files:
//! - `cidr.rs`: IP blocks (`10.0.0.0/8`, a bare address, IPv6);
//! - `wire.rs`: the pieces both kinds share on the wire (selector, port numbers);
//! - `authz.rs`: AuthorizationPolicy, wire format to [`AuthorizationPolicyInfo`];
//! - `peer_authn.rs`: PeerAuthentication, wire format to [`PeerAuthenticationInfo`].

use std::collections::BTreeMap;
use std::fmt;

mod authz;
mod cidr;
mod peer_authn;
mod wire;

pub use cidr::{Cidr, InvalidCidr};

pub(crate) use authz::authorization_policy_info;
pub(crate) use peer_authn::peer_authentication_info;

/// The `when` keys of Istio's "Authorization Policy Conditions" table.
pub mod condition_keys {
    pub const SOURCE_IP: &str = "source.ip";
    pub const REMOTE_IP: &str = "remote.ip";
    pub const SOURCE_NAMESPACE: &str = "source.namespace";
    pub const SOURCE_PRINCIPAL: &str = "source.principal";
    pub const DESTINATION_IP: &str = "destination.ip";
    pub const DESTINATION_PORT: &str = "destination.port";
    pub const CONNECTION_SNI: &str = "connection.sni";
    pub const REQUEST_AUTH_PRINCIPAL: &str = "request.auth.principal";
    pub const REQUEST_AUTH_AUDIENCES: &str = "request.auth.audiences";
    pub const REQUEST_AUTH_PRESENTER: &str = "request.auth.presenter";

    /// The header name of a `request.headers[name]` key (lower-cased, as HTTP/2 sends
    /// header names, so that `request.headers[User-Agent]` finds `user-agent`).
    pub fn request_header(key: &str) -> Option<&str> {
        key.strip_prefix("request.headers[")
            .and_then(|rest| rest.strip_suffix(']'))
            .filter(|name| !name.is_empty())
    }

    /// Whether Istio's table has the key: one of the constants here, `request.headers[name]`,
    /// `request.auth.claims[name]`, or an `experimental.envoy.filters.` key.
    pub fn known(key: &str) -> bool {
        let bracketed = |prefix: &str| {
            key.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(']'))
                .is_some_and(|inner| !inner.is_empty())
        };
        [
            SOURCE_IP,
            REMOTE_IP,
            SOURCE_NAMESPACE,
            SOURCE_PRINCIPAL,
            DESTINATION_IP,
            DESTINATION_PORT,
            CONNECTION_SNI,
            REQUEST_AUTH_PRINCIPAL,
            REQUEST_AUTH_AUDIENCES,
            REQUEST_AUTH_PRESENTER,
        ]
        .contains(&key)
            || bracketed("request.headers[")
            || bracketed("request.auth.claims[")
            || key.starts_with("experimental.envoy.filters.")
    }
}

/// `spec.action` of an AuthorizationPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AuthzAction {
    /// Allow a request only if it matches a rule (the API's default).
    #[default]
    Allow,
    /// Deny a request if it matches any rule.
    Deny,
    /// Audit a request if it matches any rule; never changes the outcome.
    Audit,
    /// Hand the decision to an external authorizer (`spec.provider`).
    Custom,
}

impl AuthzAction {
    /// The spelling the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthzAction::Allow => "ALLOW",
            AuthzAction::Deny => "DENY",
            AuthzAction::Audit => "AUDIT",
            AuthzAction::Custom => "CUSTOM",
        }
    }

    pub(crate) const ALL: [AuthzAction; 4] = [
        AuthzAction::Allow,
        AuthzAction::Deny,
        AuthzAction::Audit,
        AuthzAction::Custom,
    ];
}

impl fmt::Display for AuthzAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `spec.targetRefs[]` (and the deprecated singular `spec.targetRef`): the policy applies
/// to a Gateway, waypoint or Service rather than to workloads picked by labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRef {
    /// API group; empty for the core group (a `Service`).
    pub group: String,
    pub kind: String,
    pub name: String,
}

impl TargetRef {
    /// Whether this reference, written in an object of `namespace`, names the waypoint
    /// `waypoint` (its Gateway, `(namespace, name)`) or the called Service `service`. The
    /// one attachment rule for every kind with `targetRefs` (AuthorizationPolicy,
    /// LocalRateLimit): references are namespace-local, as in the Gateway API's policy
    /// attachment (GEP-713), and the group must be the kind's own.
    pub fn attaches(
        &self,
        namespace: &str,
        waypoint: (&str, &str),
        service: Option<(&str, &str)>,
    ) -> bool {
        let gateway = self.kind == "Gateway"
            && matches!(self.group.as_str(), "gateway.networking.k8s.io" | "")
            && (namespace, self.name.as_str()) == waypoint;
        let called = self.kind == "Service"
            && matches!(self.group.as_str(), "" | "core")
            && service == Some((namespace, self.name.as_str()));
        gateway || called
    }
}

/// An AuthorizationPolicy, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationPolicyInfo {
    pub namespace: String,
    pub name: String,
    /// `spec.selector.matchLabels`. `None` when absent or empty: the policy is then
    /// namespace-wide, or mesh-wide in the root namespace.
    pub selector: Option<BTreeMap<String, String>>,
    /// Empty unless the policy targets a Gateway, waypoint or Service. Never set together
    /// with [`selector`](Self::selector): Istio rejects that, and so does the parser.
    pub target_refs: Vec<TargetRef>,
    pub action: AuthzAction,
    /// `spec.provider.name`, set exactly when the action is CUSTOM.
    pub provider: Option<String>,
    /// Empty when `spec.rules` is absent or `[]`: matches nothing. An ALLOW policy without
    /// rules therefore allows nothing.
    pub rules: Vec<Rule>,
}

/// One `spec.rules[]` entry. A request matches when every clause present matches; an empty
/// rule (`{}`) matches every request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rule {
    /// Matches when any entry matches. Empty: no `from` clause.
    pub from: Vec<Source>,
    /// Matches when any entry matches. Empty: no `to` clause.
    pub to: Vec<Operation>,
    /// Matches when every condition matches.
    pub when: Vec<Condition>,
}

impl Rule {
    /// Whether the rule names an attribute only an L7 proxy sees (a request's host, method,
    /// path, JWT principal or header), or one this version of Weft does not know. At a node
    /// agent such a rule cannot match (`crate::policy` evaluates it as unknown).
    pub fn needs_l7(&self) -> bool {
        let any = |fields: &[&Vec<String>]| fields.iter().any(|f| !f.is_empty());
        self.from.iter().any(|s| any(&s.l7_fields()))
            || self
                .to
                .iter()
                .any(|o| any(&o.l7_fields()) || !o.unsupported.is_empty())
            || self.when.iter().any(|c| c.key.starts_with("request."))
    }
}

impl Source {
    /// The fields only an L7 proxy can evaluate, with those Weft does not know.
    pub fn l7_fields(&self) -> [&Vec<String>; 3] {
        [
            &self.request_principals,
            &self.not_request_principals,
            &self.unsupported,
        ]
    }
}

impl Operation {
    /// The fields only an L7 proxy can evaluate: they describe a request.
    pub fn l7_fields(&self) -> [&Vec<String>; 6] {
        [
            &self.hosts,
            &self.not_hosts,
            &self.methods,
            &self.not_methods,
            &self.paths,
            &self.not_paths,
        ]
    }
}

/// `rules[].from[].source`. Every non-empty field must match; a `not_` field matches when
/// the attribute matches none of its entries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Source {
    /// Peer identities in Istio's form `<trust-domain>/ns/<namespace>/sa/<account>`.
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    /// JWT principals (`iss/sub`): only an L7 proxy can see them.
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub ip_blocks: Vec<Cidr>,
    pub not_ip_blocks: Vec<Cidr>,
    pub remote_ip_blocks: Vec<Cidr>,
    pub not_remote_ip_blocks: Vec<Cidr>,
    /// Fields of the source that this version of Weft does not know (a newer Istio API,
    /// say). They are kept by name so that the evaluator can fail closed on them instead of
    /// silently widening the rule.
    pub unsupported: Vec<String>,
}

/// `rules[].to[].operation`. Every non-empty field must match.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Operation {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
    /// As [`Source::unsupported`].
    pub unsupported: Vec<String>,
}

/// `rules[].when[]`: one attribute from Istio's conditions table.
///
/// The values are kept as written. The parser has checked that the values of `source.ip`,
/// `remote.ip` and `destination.ip` parse as [`Cidr`]s and those of `destination.port` as
/// ports, and that at least one of `values` and `not_values` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub key: String,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

/// `spec.mtls.mode` (and each `portLevelMtls` entry's mode) of a PeerAuthentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MtlsMode {
    /// Inherit from the broader scope: namespace, then mesh; PERMISSIVE when nothing says.
    #[default]
    Unset,
    /// Plaintext only; mTLS connections are not terminated.
    Disable,
    /// Both mTLS and plaintext are accepted.
    Permissive,
    /// Only mTLS is accepted.
    Strict,
}

impl MtlsMode {
    /// The spelling the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }

    pub(crate) const ALL: [MtlsMode; 4] = [
        MtlsMode::Unset,
        MtlsMode::Disable,
        MtlsMode::Permissive,
        MtlsMode::Strict,
    ];
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A PeerAuthentication, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerAuthenticationInfo {
    pub namespace: String,
    pub name: String,
    /// `spec.selector.matchLabels`; `None` when absent or empty (namespace-wide, or
    /// mesh-wide in the root namespace).
    pub selector: Option<BTreeMap<String, String>>,
    /// `spec.mtls.mode`; [`MtlsMode::Unset`] when `mtls` or `mode` is absent.
    pub mode: MtlsMode,
    /// `spec.portLevelMtls`, keyed by the workload's (container) port. Only ever non-empty
    /// together with a selector: Istio rejects port-level settings on namespace-wide and
    /// mesh-wide policies, and so does the parser.
    pub port_level: BTreeMap<u16, MtlsMode>,
}
