//! AuthorizationPolicy at L4: may this connection reach this workload?
//!
//! The order is the one the Istio "Authorization Policy" reference gives: CUSTOM first, then
//! DENY, then ALLOW; AUDIT only records. At L4:
//!
//! 1. CUSTOM policies hand the decision to an external authorizer (`provider`). Weft has
//!    none, so a CUSTOM policy with a matching rule denies (fail closed), as the authorizer
//!    would have to be asked and cannot be; a rule that needs L7 attributes counts as
//!    matching here too. `analyze` reports every CUSTOM policy (WEFT035).
//! 2. If any applicable DENY policy has a matching rule, the connection is denied. A rule
//!    that needs L7 attributes counts as matching (fail closed; see `matching.rs`).
//! 3. If any ALLOW policy applies, the connection is allowed only if one of their rules
//!    definitely matches; a rule that needs L7 attributes does not. An ALLOW policy without
//!    rules matches nothing, so on its own it denies everything ("allow-nothing").
//! 4. Otherwise the connection is allowed.
//!
//! AUDIT policies never change the outcome; the ones with a matching rule are returned for
//! the log.
//!
//! Policies with `targetRefs` attach to a Gateway, waypoint or Service, not to workloads:
//! the agent skips them, and the waypoint that they target enforces them with
//! [`authorize_l7`], which sees the request as well, so that `paths`, `methods`, `hosts` and
//! `request.headers[...]` are decided rather than failing closed. CUSTOM fails closed there
//! too.

use std::fmt;

use crate::config::{AuthorizationPolicyInfo, AuthzAction, Model};

use super::matching::{L4, Match, Request};
use super::{Peer, PolicyRef, RootNamespace, Workload, scope_of};

/// The outcome of [`authorize_l4`], with what decided it, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: DecisionReason,
    /// AUDIT policies with a matching rule (or one that needs L7 attributes), in
    /// (namespace, name) order. They do not affect `allowed`.
    pub audited_by: Vec<PolicyRef>,
}

/// Why a connection was allowed or denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionReason {
    /// Denied: a rule of this DENY policy matched. With several, the first in (namespace,
    /// name) order is named.
    DeniedBy(PolicyRef),
    /// Denied: a rule of this CUSTOM policy matched, and Weft has no external authorizer to
    /// ask (fail closed).
    CustomWithoutAuthorizer(PolicyRef),
    /// Denied: ALLOW policies apply to the workload, and none has a matching rule.
    NoAllowMatched,
    /// Allowed: a rule of this ALLOW policy matched (the first in (namespace, name) order).
    AllowedBy(PolicyRef),
    /// Allowed: no DENY policy matched and no ALLOW policy applies to the workload.
    NoAllowPolicies,
}

impl DecisionReason {
    /// The policy that denied, if one did (rather than the absence of a matching ALLOW).
    pub fn denied_by(&self) -> Option<&PolicyRef> {
        match self {
            DecisionReason::DeniedBy(p) | DecisionReason::CustomWithoutAuthorizer(p) => Some(p),
            _ => None,
        }
    }
}

impl fmt::Display for DecisionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecisionReason::DeniedBy(p) => write!(f, "denied by DENY policy {p}"),
            DecisionReason::CustomWithoutAuthorizer(p) => write!(
                f,
                "denied by CUSTOM policy {p}: Weft has no external authorizer (fail closed)"
            ),
            DecisionReason::NoAllowMatched => f.write_str("no ALLOW policy matched"),
            DecisionReason::AllowedBy(p) => write!(f, "allowed by ALLOW policy {p}"),
            DecisionReason::NoAllowPolicies => f.write_str("no ALLOW policy applies"),
        }
    }
}

/// The AuthorizationPolicies that apply to `dest` by namespace and selector, whatever
/// their action, in (namespace, name) order. Those with `targetRefs` are left out: they
/// attach to a Gateway, waypoint or Service, not to the workload.
///
/// A linear scan of the model's policies: there are few of them, and an index would belong
/// with the Kubernetes API source.
pub fn applicable_authorization_policies<'a>(
    model: &'a Model,
    root: &'a RootNamespace,
    dest: &'a Workload<'a>,
) -> impl Iterator<Item = &'a AuthorizationPolicyInfo> + 'a {
    model.authorization_policies.values().filter(move |p| {
        p.target_refs.is_empty()
            && scope_of(&p.namespace, p.selector.as_ref(), root, dest).is_some()
    })
}

/// Decides whether `src` may open a connection to port `dest_port` of `dest`, by the
/// AuthorizationPolicies that apply to `dest` (see the module documentation for the order).
pub fn authorize_l4(
    model: &Model,
    root: &RootNamespace,
    dest: &Workload<'_>,
    dest_port: u16,
    src: &Peer,
) -> Decision {
    authorize_l4_among(
        model.authorization_policies.values(),
        root,
        dest,
        dest_port,
        src,
        |_| false,
    )
}

/// [`authorize_l4`] over `candidates` rather than every policy of the model (the compiled
/// state's policies of the workload's and the root namespace,
/// `crate::state::State::workload_policies`, so that a decision does not scan the mesh),
/// and without the policies `skip` names: those a waypoint enforces for this workload,
/// when the peer is that waypoint (`crate::state::Delegation`).
pub fn authorize_l4_among<'a>(
    candidates: impl Iterator<Item = &'a AuthorizationPolicyInfo>,
    root: &RootNamespace,
    dest: &Workload<'_>,
    dest_port: u16,
    src: &Peer,
    skip: impl Fn(&AuthorizationPolicyInfo) -> bool,
) -> Decision {
    let l4 = L4 {
        src,
        dest,
        dest_port,
        request: None,
    };
    let applicable = candidates.filter(|p| {
        p.target_refs.is_empty()
            && scope_of(&p.namespace, p.selector.as_ref(), root, dest).is_some()
            && !skip(p)
    });
    decide(applicable, &l4)
}

/// The waypoint a request passes through, and the Service it is addressed to.
#[derive(Debug, Clone, Copy)]
pub struct WaypointTarget<'a> {
    /// The waypoint's own workload: its namespace and pod labels (for `selector`).
    pub waypoint: Workload<'a>,
    /// The waypoint's name (its Gateway, for `targetRefs`).
    pub name: &'a str,
    /// The called Service's (namespace, name); `None` for a connection addressed to a pod
    /// (a workload bound to the waypoint), which no Service-attached policy covers.
    pub service: Option<(&'a str, &'a str)>,
    pub root: &'a RootNamespace,
}

/// Whether a policy attaches to the waypoint: by `targetRefs` naming the waypoint's Gateway
/// (in its namespace) or the called Service (in the Service's namespace), or by a `selector`
/// that picks the waypoint's own pods. Policies without either attach to workloads, and
/// the agents enforce them.
pub fn attaches_to_waypoint(policy: &AuthorizationPolicyInfo, at: &WaypointTarget<'_>) -> bool {
    if policy.target_refs.is_empty() {
        return policy.selector.is_some()
            && scope_of(
                &policy.namespace,
                policy.selector.as_ref(),
                at.root,
                &at.waypoint,
            )
            .is_some();
    }
    policy.target_refs.iter().any(|r| {
        r.attaches(
            &policy.namespace,
            (at.waypoint.namespace, at.name),
            at.service,
        )
    })
}

/// Decides whether a connection the waypoint carries at L4 may pass it (a TCP port of a
/// bound Service, or a connection addressed to a bound pod): the policies attached to the
/// waypoint ([`attaches_to_waypoint`]), with the connection's attributes only. Rules that
/// need L7 attributes fail closed, as at the node agents: a DENY of that kind matches, an
/// ALLOW does not. `dest_port` is the port the connection was addressed to.
pub fn authorize_l4_at_waypoint(
    model: &Model,
    at: &WaypointTarget<'_>,
    dest_port: u16,
    src: &Peer,
) -> Decision {
    let policies = model
        .authorization_policies
        .values()
        .filter(|p| attaches_to_waypoint(p, at));
    let l4 = L4 {
        src,
        dest: &at.waypoint,
        dest_port,
        request: None,
    };
    decide(policies, &l4)
}

/// Decides whether a request may pass the waypoint, by the AuthorizationPolicies that
/// attach to it ([`attaches_to_waypoint`]), in Istio's order: DENY, then ALLOW, with AUDIT
/// recorded. `dest_port` is the called Service port.
pub fn authorize_l7(
    model: &Model,
    at: &WaypointTarget<'_>,
    dest_port: u16,
    src: &Peer,
    request: &Request<'_>,
) -> Decision {
    let policies = model
        .authorization_policies
        .values()
        .filter(|p| attaches_to_waypoint(p, at));
    authorize_l7_among(policies, &at.waypoint, dest_port, src, request)
}

/// Decides a request by `policies` alone, in the same order: the workload policies
/// delegated to a waypoint for the Service a call goes to (`crate::state::Delegation`),
/// with `dest_port` the pod's port, as a workload policy means it.
pub fn authorize_l7_among<'a>(
    policies: impl Iterator<Item = &'a AuthorizationPolicyInfo>,
    dest: &Workload<'_>,
    dest_port: u16,
    src: &Peer,
    request: &Request<'_>,
) -> Decision {
    let l7 = L4 {
        src,
        dest,
        dest_port,
        request: Some(request),
    };
    decide(policies, &l7)
}

/// Istio's order over the applicable policies (see the module documentation).
fn decide<'a>(
    policies: impl Iterator<Item = &'a AuthorizationPolicyInfo>,
    attributes: &L4<'_>,
) -> Decision {
    // The best match over a policy's rules; no rules, no match.
    let best = |p: &AuthorizationPolicyInfo| {
        p.rules
            .iter()
            .map(|r| attributes.rule(r))
            .max()
            .unwrap_or(Match::No)
    };
    let policy_ref = |p: &AuthorizationPolicyInfo| PolicyRef::new(&p.namespace, &p.name);

    let mut denied_by = None;
    let mut custom_by = None;
    let mut allow_policies = 0usize;
    let mut allowed_by = None;
    let mut audited_by = Vec::new();
    for policy in policies {
        match policy.action {
            AuthzAction::Custom => {
                if custom_by.is_none() && best(policy) >= Match::Unknown {
                    custom_by = Some(policy_ref(policy));
                }
            }
            AuthzAction::Deny => {
                if denied_by.is_none() && best(policy) >= Match::Unknown {
                    denied_by = Some(policy_ref(policy));
                }
            }
            AuthzAction::Audit => {
                if best(policy) >= Match::Unknown {
                    audited_by.push(policy_ref(policy));
                }
            }
            AuthzAction::Allow => {
                allow_policies += 1;
                if allowed_by.is_none() && best(policy) == Match::Yes {
                    allowed_by = Some(policy_ref(policy));
                }
            }
        }
    }

    let (allowed, reason) = match (denied_by, allowed_by) {
        _ if custom_by.is_some() => (
            false,
            DecisionReason::CustomWithoutAuthorizer(custom_by.expect("checked")),
        ),
        (Some(deny), _) => (false, DecisionReason::DeniedBy(deny)),
        (None, Some(allow)) => (true, DecisionReason::AllowedBy(allow)),
        (None, None) if allow_policies > 0 => (false, DecisionReason::NoAllowMatched),
        (None, None) => (true, DecisionReason::NoAllowPolicies),
    };
    Decision {
        allowed,
        reason,
        audited_by,
    }
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "authz_l7_tests.rs"]
mod l7_tests;
