//! AuthorizationPolicy at L4: may this connection reach this workload?
//!
//! The order is the one the Istio "Authorization Policy" reference gives: CUSTOM first, then
//! DENY, then ALLOW; AUDIT only records. At L4:
//!
//! 1. CUSTOM policies are skipped. They hand the decision to an external authorizer, which
//!    speaks HTTP; in ambient mode only a waypoint can call it.
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
//! the agent skips them, and the waypoint that they target enforces them.

use std::fmt;

use crate::config::{AuthorizationPolicyInfo, AuthzAction, Model};

use super::matching::{L4, Match};
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
    /// Denied: ALLOW policies apply to the workload, and none has a matching rule.
    NoAllowMatched,
    /// Allowed: a rule of this ALLOW policy matched (the first in (namespace, name) order).
    AllowedBy(PolicyRef),
    /// Allowed: no DENY policy matched and no ALLOW policy applies to the workload.
    NoAllowPolicies,
}

impl fmt::Display for DecisionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecisionReason::DeniedBy(p) => write!(f, "denied by DENY policy {p}"),
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
    let l4 = L4 {
        src,
        dest,
        dest_port,
    };
    // The best match over a policy's rules; no rules, no match.
    let best = |p: &AuthorizationPolicyInfo| {
        p.rules
            .iter()
            .map(|r| l4.rule(r))
            .max()
            .unwrap_or(Match::No)
    };
    let policy_ref = |p: &AuthorizationPolicyInfo| PolicyRef::new(&p.namespace, &p.name);

    let mut denied_by = None;
    let mut allow_policies = 0usize;
    let mut allowed_by = None;
    let mut audited_by = Vec::new();
    for policy in applicable_authorization_policies(model, root, dest) {
        match policy.action {
            AuthzAction::Custom => {}
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
