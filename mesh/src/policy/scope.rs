//! Which policies apply to a workload, by Istio's rules for the root namespace and the
//! workload selector. Shared by AuthorizationPolicy and PeerAuthentication, which scope the
//! same way.
//!
//! From the Istio API reference ("Workload Selector", and the `selector` field of
//! AuthorizationPolicy and PeerAuthentication): a policy without a selector applies to every
//! workload of its namespace, or of the mesh when its namespace is the root namespace; a
//! selector picks the workloads of the policy's namespace whose labels include it, and in
//! the root namespace "additionally" those of every namespace.

use std::collections::BTreeMap;

use super::{RootNamespace, Workload};

/// How a policy reaches a workload, from the broadest to the narrowest. PeerAuthentication
/// lets a narrower scope override a broader one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// In the root namespace, without a selector.
    Mesh,
    /// In the workload's namespace, without a selector.
    Namespace,
    /// A selector that the workload's labels satisfy (in its namespace or the root one).
    Workload,
}

/// The scope at which a policy in `policy_namespace` with `selector` applies to `workload`,
/// or `None` if it does not apply. A policy in the root namespace without a selector is
/// [`Scope::Mesh`] even for a workload of the root namespace.
///
/// Only label selectors are considered here. A policy with `targetRefs` attaches to a
/// Gateway, waypoint or Service instead of to workloads; callers leave those out.
pub fn scope_of(
    policy_namespace: &str,
    selector: Option<&BTreeMap<String, String>>,
    root: &RootNamespace,
    workload: &Workload<'_>,
) -> Option<Scope> {
    let in_root = policy_namespace == root.as_str();
    let in_workload_ns = policy_namespace == workload.namespace;
    match selector {
        None if in_root => Some(Scope::Mesh),
        None if in_workload_ns => Some(Scope::Namespace),
        None => None,
        Some(labels) if (in_root || in_workload_ns) && selects(labels, workload.labels) => {
            Some(Scope::Workload)
        }
        Some(_) => None,
    }
}

/// An empty selector never reaches here from a manifest (the parser turns it into none);
/// if it does, it selects everything, as an empty label selector does.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    crate::config::labels_match(selector, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn root_namespace_selector_and_namespace() {
        let root = RootNamespace::default();
        let workload_labels = labels(&[("app", "cart"), ("version", "v1")]);
        let workload = Workload::new("shop", &workload_labels);
        let cart = labels(&[("app", "cart")]);
        let cart_v2 = labels(&[("app", "cart"), ("version", "v2")]);
        let web = labels(&[("app", "web")]);
        type Case<'a> = (&'a str, Option<&'a BTreeMap<String, String>>, Option<Scope>);
        let cases: &[Case<'_>] = &[
            ("istio-system", None, Some(Scope::Mesh)),
            ("shop", None, Some(Scope::Namespace)),
            ("other", None, None),
            ("shop", Some(&cart), Some(Scope::Workload)),
            ("shop", Some(&workload_labels), Some(Scope::Workload)),
            ("shop", Some(&cart_v2), None),
            ("shop", Some(&web), None),
            // The root namespace's selector reaches every namespace.
            ("istio-system", Some(&cart), Some(Scope::Workload)),
            ("istio-system", Some(&web), None),
            // Another namespace's selector does not.
            ("other", Some(&cart), None),
        ];
        for (ns, selector, want) in cases {
            assert_eq!(
                scope_of(ns, *selector, &root, &workload),
                *want,
                "{ns} {selector:?}"
            );
        }
    }

    #[test]
    fn custom_root_and_workload_in_the_root_namespace() {
        let root = RootNamespace::from("mesh-root");
        let no_labels = BTreeMap::new();
        let shop = Workload::new("shop", &no_labels);
        assert_eq!(scope_of("istio-system", None, &root, &shop), None);
        assert_eq!(scope_of("mesh-root", None, &root, &shop), Some(Scope::Mesh));
        let in_root = Workload::new("mesh-root", &no_labels);
        assert_eq!(
            scope_of("mesh-root", None, &root, &in_root),
            Some(Scope::Mesh)
        );
    }
}
