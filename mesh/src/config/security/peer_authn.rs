//! PeerAuthentication (`security.istio.io/v1`, and `v1beta1`, which has the same schema):
//! the wire format and its validation into [`PeerAuthenticationInfo`].
//!
//! Written from the Istio API reference, "PeerAuthentication". The mode decides whether the
//! agent lets plaintext reach a pod, so a value Weft does not recognise is an error rather
//! than a guess.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_yaml::Value;

use super::wire::{Text, WorkloadSelector, enum_value, port};
use super::{MtlsMode, PeerAuthenticationInfo};
use crate::config::error::InvalidObject;
use crate::config::parse::{identity, invalid, typed};

const KIND: &str = "PeerAuthentication";

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
    mtls: Option<Mtls>,
    /// Keys are ports; YAML writes them as numbers or as strings.
    port_level_mtls: Option<BTreeMap<Text, Option<Mtls>>>,
}

#[derive(Deserialize)]
struct Mtls {
    mode: Option<String>,
}

/// Parses and validates one PeerAuthentication document.
pub(crate) fn peer_authentication_info(
    value: Value,
) -> Result<PeerAuthenticationInfo, InvalidObject> {
    let wire: Wire = typed(value)?;
    let (namespace, name) = identity(KIND, &wire.metadata, true)?;
    let namespace = namespace.unwrap_or_default();
    let spec = wire.spec.unwrap_or_default();
    convert(&namespace, &name, spec).map_err(|reason| invalid(KIND, &namespace, &name, reason))
}

fn parse_mode(mtls: Option<Mtls>, field: &str) -> Result<MtlsMode, String> {
    let text = mtls.and_then(|m| m.mode);
    enum_value(text.as_deref(), &MtlsMode::ALL, MtlsMode::as_str)
        .map_err(|e| format!("{field}.mode: {e}"))
}

fn convert(namespace: &str, name: &str, spec: Spec) -> Result<PeerAuthenticationInfo, String> {
    let selector = WorkloadSelector::labels(spec.selector, "spec.selector")?;
    let mode = parse_mode(spec.mtls, "spec.mtls")?;

    let entries = spec.port_level_mtls.unwrap_or_default();
    if !entries.is_empty() && selector.is_none() {
        return Err(
            "spec.portLevelMtls: requires spec.selector with matchLabels \
             (port-level mTLS is not allowed on a namespace-wide or mesh-wide policy)"
                .into(),
        );
    }
    let mut port_level = BTreeMap::new();
    for (key, mtls) in entries {
        let field = format!("spec.portLevelMtls.{}", key.0);
        let number = port(&key.0).map_err(|e| format!("{field}: {e}"))?;
        let mode = parse_mode(mtls, &field)?;
        if port_level.insert(number, mode).is_some() {
            return Err(format!("{field}: port {number} is listed twice"));
        }
    }

    Ok(PeerAuthenticationInfo {
        namespace: namespace.to_string(),
        name: name.to_string(),
        selector,
        mode,
        port_level,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse::parse_documents;
    use crate::config::{MtlsMode, Object, PeerAuthenticationInfo};

    fn parse(spec: &str) -> Result<PeerAuthenticationInfo, String> {
        let text = format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: pa, namespace: shop}}\n{spec}"
        );
        let mut docs = parse_documents(&text);
        assert_eq!(docs.len(), 1);
        match docs.remove(0).1 {
            Ok(Some(Object::PeerAuthentication(pa))) => Ok(pa),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn workload_policy_with_port_level_modes() {
        let pa = parse(
            r#"
spec:
  selector:
    matchLabels: {app: cart}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
    "9090": {mode: DISABLE}
    9091: {}
    9092:
"#,
        )
        .unwrap();
        assert_eq!(
            pa,
            PeerAuthenticationInfo {
                namespace: "shop".into(),
                name: "pa".into(),
                selector: Some([("app".to_string(), "cart".to_string())].into()),
                mode: MtlsMode::Strict,
                port_level: [
                    (8080, MtlsMode::Permissive),
                    (9090, MtlsMode::Disable),
                    (9091, MtlsMode::Unset),
                    (9092, MtlsMode::Unset),
                ]
                .into(),
            }
        );
    }

    #[test]
    fn absent_fields_mean_unset_and_namespace_wide() {
        for spec in [
            "",
            "spec:\n",
            "spec: {}\n",
            "spec: {mtls: {}}\n",
            "spec: {mtls: {mode: \"\"}, selector: {matchLabels: {}}}\n",
            "spec: {selector: {}}\n",
        ] {
            let pa = parse(spec).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
            assert_eq!((pa.mode, pa.selector), (MtlsMode::Unset, None), "{spec:?}");
        }
        for (text, mode) in [
            ("UNSET", MtlsMode::Unset),
            ("DISABLE", MtlsMode::Disable),
            ("PERMISSIVE", MtlsMode::Permissive),
            ("STRICT", MtlsMode::Strict),
        ] {
            assert_eq!(
                parse(&format!("spec: {{mtls: {{mode: {text}}}}}\n"))
                    .unwrap()
                    .mode,
                mode
            );
        }
    }

    #[test]
    fn v1beta1_and_unknown_fields_are_accepted() {
        let text = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\n\
                    metadata: {name: default, namespace: istio-system}\n\
                    spec: {mtls: {mode: STRICT, future: 1}, futureField: {a: b}}\n\
                    status: {validationMessages: []}\n";
        let docs = parse_documents(text);
        let Ok(Some(Object::PeerAuthentication(pa))) = &docs[0].1 else {
            panic!("{docs:?}")
        };
        assert_eq!(pa.mode, MtlsMode::Strict);
        assert_eq!(pa.namespace, "istio-system");
    }

    #[test]
    fn errors_name_the_object_and_the_field() {
        let cases = [
            (
                "spec: {mtls: {mode: STRICTER}}\n",
                "spec.mtls.mode: invalid value \"STRICTER\" (must be one of UNSET, DISABLE, PERMISSIVE, STRICT)",
            ),
            (
                "spec: {portLevelMtls: {8080: {mode: DISABLE}}}\n",
                "spec.portLevelMtls: requires spec.selector with matchLabels (port-level mTLS is not allowed on a namespace-wide or mesh-wide policy)",
            ),
            (
                "spec: {selector: {matchLabels: {}}, portLevelMtls: {8080: {mode: DISABLE}}}\n",
                "spec.portLevelMtls: requires spec.selector with matchLabels (port-level mTLS is not allowed on a namespace-wide or mesh-wide policy)",
            ),
            (
                "spec: {selector: {matchLabels: {a: b}}, portLevelMtls: {70000: {mode: DISABLE}}}\n",
                "spec.portLevelMtls.70000: invalid port \"70000\" (must be 1..=65535)",
            ),
            (
                "spec: {selector: {matchLabels: {a: b}}, portLevelMtls: {0: {mode: DISABLE}}}\n",
                "spec.portLevelMtls.0: invalid port \"0\" (must be 1..=65535)",
            ),
            (
                "spec: {selector: {matchLabels: {a: b}}, portLevelMtls: {http: {mode: DISABLE}}}\n",
                "spec.portLevelMtls.http: invalid port \"http\" (must be 1..=65535)",
            ),
            (
                "spec: {selector: {matchLabels: {a: b}}, portLevelMtls: {8080: {mode: OFF}}}\n",
                "spec.portLevelMtls.8080.mode: invalid value \"OFF\" (must be one of UNSET, DISABLE, PERMISSIVE, STRICT)",
            ),
            (
                "spec: {selector: {matchLabels: {a: b}}, portLevelMtls: {8080: {}, \"08080\": {}}}\n",
                "spec.portLevelMtls.8080: port 8080 is listed twice",
            ),
            (
                "spec: {selector: {matchLabels: {\"\": b}}}\n",
                "spec.selector.matchLabels: a label key must not be empty",
            ),
        ];
        for (spec, reason) in cases {
            assert_eq!(
                parse(spec),
                Err(format!("PeerAuthentication shop/pa: {reason}")),
                "{spec}"
            );
        }
        let wrong_type = parse("spec: {mtls: {mode: [STRICT]}}\n").unwrap_err();
        assert!(
            wrong_type.starts_with("PeerAuthentication shop/pa: spec.mtls.mode: invalid type"),
            "{wrong_type}"
        );
    }
}
