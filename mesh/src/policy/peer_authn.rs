//! The effective PeerAuthentication mode of one port of a workload: whether the agent lets
//! plaintext reach it.
//!
//! From the Istio "PeerAuthentication" reference: a workload-scoped policy (one with a
//! selector) overrides the namespace-wide one, which overrides the mesh-wide one in the
//! root namespace. UNSET inherits from the next broader scope, and with nothing set anywhere
//! the mode is PERMISSIVE. A port-level setting of the workload-scoped policy overrides
//! that policy's mode for its port, and an UNSET port-level setting inherits the workload's
//! effective mode.
//!
//! Istio picks the oldest policy when several of one scope apply. The model has no creation
//! timestamps, so Weft picks the first by name, then by namespace, which is at least stable
//! and visible from the manifests.

use std::collections::BTreeMap;

use crate::config::{Model, MtlsMode, PeerAuthenticationInfo};

use super::{PolicyRef, RootNamespace, Scope, Workload, scope_of};

/// The effective mode, and the policy that set it (`None` when no policy did and the
/// default PERMISSIVE applies). Never [`MtlsMode::Unset`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveMtls {
    pub mode: MtlsMode,
    pub decided_by: Option<PolicyRef>,
}

/// The effective mTLS mode of `port` of `workload` (a port of the pod, as port-level
/// settings name the workload's port, not the Service's).
pub fn peer_authentication_mode(
    model: &Model,
    root: &RootNamespace,
    workload: &Workload<'_>,
    port: u16,
) -> MtlsMode {
    effective_peer_authentication(model, root, workload, port).mode
}

/// [`peer_authentication_mode`], with the policy that decided it, for logs.
pub fn effective_peer_authentication(
    model: &Model,
    root: &RootNamespace,
    workload: &Workload<'_>,
    port: u16,
) -> EffectiveMtls {
    resolve(applicable(model, root, workload), port)
}

/// The effective mode of `port` under the policies of each scope.
fn resolve(
    [mesh, namespace, selected]: [Option<&PeerAuthenticationInfo>; 3],
    port: u16,
) -> EffectiveMtls {
    let mut effective = EffectiveMtls {
        mode: MtlsMode::Permissive,
        decided_by: None,
    };
    let mut set = |mode: MtlsMode, policy: &PeerAuthenticationInfo| {
        if mode != MtlsMode::Unset {
            effective = EffectiveMtls {
                mode,
                decided_by: Some(PolicyRef::new(&policy.namespace, &policy.name)),
            };
        }
    };
    for policy in [mesh, namespace, selected].into_iter().flatten() {
        set(policy.mode, policy);
    }
    // Port-level settings count only on a workload-scoped policy; the parser rejects them
    // anywhere else, as Istio does.
    if let Some(policy) = selected
        && let Some(mode) = policy.port_level.get(&port)
    {
        set(*mode, policy);
    }
    effective
}

/// The modes the kernel enforces for a workload: its own, and each port whose workload-scoped
/// policy names it (port-level settings), with their effective modes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundModes {
    pub workload: MtlsMode,
    pub ports: BTreeMap<u16, MtlsMode>,
}

/// [`InboundModes`] of `workload`; never [`MtlsMode::Unset`].
pub fn inbound_modes(model: &Model, root: &RootNamespace, workload: &Workload<'_>) -> InboundModes {
    let policies = applicable(model, root, workload);
    let ports = policies[2]
        .into_iter()
        .flat_map(|policy| policy.port_level.keys())
        .map(|&port| (port, resolve(policies, port).mode))
        .collect();
    InboundModes {
        workload: resolve(policies, 0).mode,
        ports,
    }
}

/// The policy of each scope that applies to `workload`: mesh, namespace, workload.
fn applicable<'m>(
    model: &'m Model,
    root: &RootNamespace,
    workload: &Workload<'_>,
) -> [Option<&'m PeerAuthenticationInfo>; 3] {
    let mut mesh = None;
    let mut namespace = None;
    let mut selected = None;
    for policy in model.peer_authentications.values() {
        let slot = match scope_of(&policy.namespace, policy.selector.as_ref(), root, workload) {
            Some(Scope::Mesh) => &mut mesh,
            Some(Scope::Namespace) => &mut namespace,
            Some(Scope::Workload) => &mut selected,
            None => continue,
        };
        if slot.is_none_or(|kept: &PeerAuthenticationInfo| first_by_name(policy, kept)) {
            *slot = Some(policy);
        }
    }
    [mesh, namespace, selected]
}

fn first_by_name(a: &PeerAuthenticationInfo, b: &PeerAuthenticationInfo) -> bool {
    (&a.name, &a.namespace) < (&b.name, &b.namespace)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::policy::model_from_yaml as model;

    fn pa(namespace: &str, name: &str, spec: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n---\n"
        )
    }

    const CART: &str = "{matchLabels: {app: cart}}";

    fn effective(policies: &str, port: u16) -> (MtlsMode, Option<String>) {
        let model = model(policies);
        let labels: BTreeMap<String, String> = [("app".into(), "cart".into())].into();
        let workload = Workload::new("shop", &labels);
        let root = RootNamespace::default();
        let e = effective_peer_authentication(&model, &root, &workload, port);
        assert_eq!(
            peer_authentication_mode(&model, &root, &workload, port),
            e.mode
        );
        (e.mode, e.decided_by.map(|p| p.to_string()))
    }

    #[test]
    fn scopes_unset_inheritance_and_port_level() {
        use MtlsMode::{Disable, Permissive, Strict};
        let mesh_strict = pa("istio-system", "default", "{mtls: {mode: STRICT}}");
        let mesh_unset = pa("istio-system", "default", "{mtls: {mode: UNSET}}");
        let ns_permissive = pa("shop", "ns", "{mtls: {mode: PERMISSIVE}}");
        let ns_unset = pa("shop", "ns", "{}");
        let cart_disable = pa(
            "shop",
            "cart",
            &format!("{{selector: {CART}, mtls: {{mode: DISABLE}}}}"),
        );
        let cart_unset_ports = pa(
            "shop",
            "cart",
            &format!(
                "{{selector: {CART}, portLevelMtls: {{8080: {{mode: STRICT}}, 9090: {{mode: UNSET}}, 9091: {{mode: DISABLE}}}}}}"
            ),
        );
        let some = |s: &str| Some(s.to_string());
        let cases: Vec<(String, u16, (MtlsMode, Option<String>))> = vec![
            // Nothing at all: PERMISSIVE, by default.
            (String::new(), 80, (Permissive, None)),
            (mesh_unset.clone(), 80, (Permissive, None)),
            // Root namespace: mesh-wide.
            (
                mesh_strict.clone(),
                80,
                (Strict, some("istio-system/default")),
            ),
            // The namespace overrides the mesh; UNSET inherits it.
            (
                format!("{mesh_strict}{ns_permissive}"),
                80,
                (Permissive, some("shop/ns")),
            ),
            (
                format!("{mesh_strict}{ns_unset}"),
                80,
                (Strict, some("istio-system/default")),
            ),
            // The workload overrides the namespace.
            (
                format!("{mesh_strict}{ns_permissive}{cart_disable}"),
                80,
                (Disable, some("shop/cart")),
            ),
            // An UNSET workload policy inherits the namespace's mode, then the mesh's.
            (
                format!("{mesh_strict}{ns_permissive}{cart_unset_ports}"),
                80,
                (Permissive, some("shop/ns")),
            ),
            (
                format!("{mesh_strict}{ns_unset}{cart_unset_ports}"),
                80,
                (Strict, some("istio-system/default")),
            ),
            // Port level beats the workload's mode for that port only.
            (
                format!("{ns_permissive}{cart_unset_ports}"),
                8080,
                (Strict, some("shop/cart")),
            ),
            (
                format!("{mesh_strict}{cart_unset_ports}"),
                9091,
                (Disable, some("shop/cart")),
            ),
            // An UNSET port inherits the workload's effective mode.
            (
                format!("{mesh_strict}{ns_permissive}{cart_unset_ports}"),
                9090,
                (Permissive, some("shop/ns")),
            ),
        ];
        for (i, (policies, port, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                effective(&policies, port),
                want,
                "case {i}: {policies}port {port}"
            );
        }
    }

    #[test]
    fn inbound_modes_list_the_ports_a_workload_policy_names() {
        use MtlsMode::{Disable, Permissive, Strict};
        let labels: BTreeMap<String, String> = [("app".into(), "cart".into())].into();
        let workload = Workload::new("shop", &labels);
        let root = RootNamespace::default();
        let strict = model(&format!(
            "{}{}",
            pa("shop", "ns", "{mtls: {mode: STRICT}}"),
            pa(
                "shop",
                "cart",
                &format!(
                    "{{selector: {CART}, portLevelMtls: {{8080: {{mode: PERMISSIVE}}, 9090: {{mode: UNSET}}, 9091: {{mode: DISABLE}}}}}}"
                ),
            )
        ));
        let modes = inbound_modes(&strict, &root, &workload);
        assert_eq!(modes.workload, Strict);
        assert_eq!(
            modes.ports,
            [(8080, Permissive), (9090, Strict), (9091, Disable)].into()
        );
        // Port-level settings of a namespace policy do not exist; nothing selects: no ports.
        let permissive = model(&pa("shop", "ns", "{mtls: {mode: PERMISSIVE}}"));
        let modes = inbound_modes(&permissive, &root, &workload);
        assert_eq!((modes.workload, modes.ports.len()), (Permissive, 0));
    }

    #[test]
    fn applicability_and_ties() {
        use MtlsMode::{Disable, Permissive, Strict};
        let some = |s: &str| Some(s.to_string());
        let cases: Vec<(String, (MtlsMode, Option<String>))> = vec![
            // Another namespace, or a selector that does not match: no effect.
            (
                pa("other", "ns", "{mtls: {mode: STRICT}}"),
                (Permissive, None),
            ),
            (
                pa(
                    "shop",
                    "db",
                    "{selector: {matchLabels: {app: db}}, mtls: {mode: STRICT}}",
                ),
                (Permissive, None),
            ),
            // A root-namespace selector reaches the workload in its own namespace, and
            // counts as workload-scoped: it overrides the namespace.
            (
                format!(
                    "{}{}",
                    pa("shop", "ns", "{mtls: {mode: DISABLE}}"),
                    pa(
                        "istio-system",
                        "cart",
                        &format!("{{selector: {CART}, mtls: {{mode: STRICT}}}}")
                    )
                ),
                (Strict, some("istio-system/cart")),
            ),
            // Two of one scope: the first by name wins (no creation timestamps).
            (
                format!(
                    "{}{}",
                    pa("shop", "b", "{mtls: {mode: STRICT}}"),
                    pa("shop", "a", "{mtls: {mode: DISABLE}}")
                ),
                (Disable, some("shop/a")),
            ),
            // ... even if the first one is UNSET: it is chosen, then inherits.
            (
                format!(
                    "{}{}",
                    pa("shop", "b", "{mtls: {mode: STRICT}}"),
                    pa("shop", "a", "{}")
                ),
                (Permissive, None),
            ),
            // By name first, then by namespace, across the root and workload namespaces.
            (
                format!(
                    "{}{}",
                    pa(
                        "shop",
                        "x",
                        &format!("{{selector: {CART}, mtls: {{mode: DISABLE}}}}")
                    ),
                    pa(
                        "istio-system",
                        "x",
                        &format!("{{selector: {CART}, mtls: {{mode: STRICT}}}}")
                    )
                ),
                (Strict, some("istio-system/x")),
            ),
        ];
        for (i, (policies, want)) in cases.into_iter().enumerate() {
            assert_eq!(effective(&policies, 80), want, "case {i}: {policies}");
        }

        // A configured root namespace: istio-system is then an ordinary namespace.
        let model = model(&pa("istio-system", "default", "{mtls: {mode: STRICT}}"));
        let labels = BTreeMap::new();
        let workload = Workload::new("shop", &labels);
        let root = RootNamespace::from("mesh-root");
        assert_eq!(
            peer_authentication_mode(&model, &root, &workload, 80),
            Permissive
        );
    }
}
