//! What AuthorizationPolicy and PeerAuthentication share on the wire: the workload
//! selector, port numbers that may be written as numbers or strings, and enum values.
//!
//! The CRDs are not in k8s-openapi, so their serde shapes are written here from the Istio
//! API reference. Unknown fields are ignored, never rejected: Istio adds fields, and a
//! manifest written for a newer Istio must still load.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Istio's WorkloadSelector ("Workload Selector" in the Istio API reference):
/// `selector: {matchLabels: {...}}`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WorkloadSelector {
    pub match_labels: Option<BTreeMap<String, String>>,
}

impl WorkloadSelector {
    /// The labels, or `None` when there are none. A selector without labels selects no
    /// narrower set than no selector at all, so both mean "the whole namespace", as they
    /// do in Istio. `field` is the selector's path, for the error.
    pub fn labels(
        selector: Option<WorkloadSelector>,
        field: &str,
    ) -> Result<Option<BTreeMap<String, String>>, String> {
        let labels = selector.and_then(|s| s.match_labels).unwrap_or_default();
        if labels.contains_key("") {
            return Err(format!(
                "{field}.matchLabels: a label key must not be empty"
            ));
        }
        Ok((!labels.is_empty()).then_some(labels))
    }
}

/// A scalar that Istio types as a string but that manifests often write as a number:
/// `ports: [8080]`, `values: [8080]`, and the keys of `portLevelMtls`. Kept as text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;

        impl Visitor<'_> for TextVisitor {
            type Value = Text;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }

        deserializer.deserialize_any(TextVisitor)
    }
}

/// A port number 1..=65535, written in decimal.
pub(super) fn port(text: &str) -> Result<u16, String> {
    let invalid = || format!("invalid port {text:?} (must be 1..=65535)");
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    text.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(invalid)
}

/// An enum value, spelled exactly as the API spells it. `None` (absent) and the empty
/// string both mean the API's default.
pub(super) fn enum_value<T: Copy + Default>(
    text: Option<&str>,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<T, String> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(T::default());
    };
    all.iter()
        .copied()
        .find(|v| name(*v) == text)
        .ok_or_else(|| {
            let names: Vec<_> = all.iter().map(|v| name(*v)).collect();
            format!(
                "invalid value {text:?} (must be one of {})",
                names.join(", ")
            )
        })
}

/// The keys of a mapping in the raw document that are not in `known`, for the fields a
/// typed deserialization would silently drop.
pub(super) fn unknown_keys(value: Option<&serde_yaml::Value>, known: &[&str]) -> Vec<String> {
    let Some(mapping) = value.and_then(serde_yaml::Value::as_mapping) else {
        return Vec::new();
    };
    mapping
        .keys()
        .map(|k| match k.as_str() {
            Some(s) => s.to_string(),
            None => serde_yaml::to_string(k)
                .map(|s| s.trim_end().to_string())
                .unwrap_or_default(),
        })
        .filter(|k| !known.contains(&k.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MtlsMode;

    #[test]
    fn ports_are_decimal_and_in_range() {
        assert_eq!(port("1"), Ok(1));
        assert_eq!(port("65535"), Ok(65535));
        for bad in ["0", "65536", "-1", "+80", "", "http", "80 "] {
            assert_eq!(
                port(bad),
                Err(format!("invalid port {bad:?} (must be 1..=65535)"))
            );
        }
    }

    #[test]
    fn enum_values_are_exact_and_absent_is_default() {
        let parse = |t| enum_value(t, &MtlsMode::ALL, MtlsMode::as_str);
        assert_eq!(parse(None), Ok(MtlsMode::Unset));
        assert_eq!(parse(Some("")), Ok(MtlsMode::Unset));
        assert_eq!(parse(Some("STRICT")), Ok(MtlsMode::Strict));
        assert_eq!(
            parse(Some("strict")),
            Err(
                "invalid value \"strict\" (must be one of UNSET, DISABLE, PERMISSIVE, STRICT)"
                    .into()
            )
        );
    }

    #[test]
    fn text_takes_strings_and_integers() {
        let v: Vec<Text> = serde_yaml::from_str("[8080, \"9090\", -1, abc]").unwrap();
        let v: Vec<_> = v.into_iter().map(|t| t.0).collect();
        assert_eq!(v, ["8080", "9090", "-1", "abc"]);
        let err = serde_yaml::from_str::<Vec<Text>>("[[1]]").unwrap_err();
        assert!(err.to_string().contains("a string or an integer"), "{err}");
    }
}
