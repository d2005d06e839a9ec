//! The SPIFFE ID of a Kubernetes workload, parsed strictly.
//!
//! The rules are those of the SPIFFE ID specification (spiffe/spiffe, `standards/SPIFFE-ID.md`):
//! scheme `spiffe`, a trust domain of lowercase letters, digits, `.`, `-` and `_`, no port,
//! user info, query or fragment, and path segments of letters, digits, `.`, `-` and `_`
//! that are neither empty nor `.`/`..`, with no percent-encoding. On top of that, Weft
//! (like Istio) only uses one path shape: `/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
/// The SPIFFE ID specification caps a whole ID at 2048 bytes and a trust domain at 255.
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
///
/// Every value of this type is valid: the fields are private and both constructors check
/// them, so `to_string()` always parses back to an equal value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a Weft SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SPIFFE ID {input:?}: {reason}")]
pub struct SpiffeIdError {
    pub input: String,
    pub reason: &'static str,
}

impl SpiffeId {
    /// Builds an ID from its parts, checking each as the parser would.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, SpiffeIdError> {
        let id = SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        let fail = |reason| SpiffeIdError {
            input: format!(
                "{SCHEME}{}/ns/{}/sa/{}",
                id.trust_domain, id.namespace, id.service_account
            ),
            reason,
        };
        check_trust_domain(&id.trust_domain).map_err(fail)?;
        check_segment(&id.namespace).map_err(fail)?;
        check_segment(&id.service_account).map_err(fail)?;
        if id.to_string().len() > MAX_ID_LEN {
            return Err(fail("longer than 2048 bytes"));
        }
        Ok(id)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// Istio's principal form, `<td>/ns/<ns>/sa/<sa>`: the ID without its scheme, as
    /// AuthorizationPolicy `principals` are written.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| SpiffeIdError {
            input: input.to_owned(),
            reason,
        };
        if input.len() > MAX_ID_LEN {
            return Err(fail("longer than 2048 bytes"));
        }
        // The scheme is compared exactly: the specification requires lowercase `spiffe`.
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or_else(|| fail("scheme is not spiffe://"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| fail("no path: expected /ns/<namespace>/sa/<service-account>"))?;
        check_trust_domain(trust_domain).map_err(fail)?;
        let segments: Vec<&str> = path.split('/').collect();
        let [ns_key, namespace, sa_key, service_account] = segments.as_slice() else {
            return Err(fail("path is not /ns/<namespace>/sa/<service-account>"));
        };
        if *ns_key != "ns" || *sa_key != "sa" {
            return Err(fail("path is not /ns/<namespace>/sa/<service-account>"));
        }
        check_segment(namespace).map_err(fail)?;
        check_segment(service_account).map_err(fail)?;
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            namespace: (*namespace).to_owned(),
            service_account: (*service_account).to_owned(),
        })
    }
}

/// A trust domain: the SPIFFE ID specification's character set, which also rules out a
/// port (`:`), user info (`@`), a query (`?`) and a fragment (`#`).
pub(crate) fn check_trust_domain(td: &str) -> Result<(), &'static str> {
    if td.is_empty() {
        return Err("empty trust domain");
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err("trust domain longer than 255 bytes");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Err("trust domain may hold only a-z, 0-9, '.', '-' and '_'");
    }
    Ok(())
}

/// One path segment, under the SPIFFE ID specification's rules.
fn check_segment(segment: &str) -> Result<(), &'static str> {
    if segment.is_empty() {
        return Err("empty path segment");
    }
    if segment == "." || segment == ".." {
        return Err("path segment is '.' or '..'");
    }
    if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err("path segment may hold only letters, digits, '.', '-' and '_'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_displays_and_round_trips() {
        let text = "spiffe://cluster.local/ns/default/sa/frontend";
        let id: SpiffeId = text.parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "frontend");
        assert_eq!(id.to_string(), text);
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/frontend");
        assert_eq!(
            SpiffeId::new("cluster.local", "default", "frontend").unwrap(),
            id
        );
        let dotted: SpiffeId = "spiffe://td_1/ns/ns-1/sa/sa.with.dots".parse().unwrap();
        assert_eq!(dotted.to_string().parse::<SpiffeId>().unwrap(), dotted);
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "spiffe://",
            "SPIFFE://td/ns/a/sa/b",
            "https://td/ns/a/sa/b",
            "spiffe:/td/ns/a/sa/b",
            "spiffe://td",
            "spiffe://td/",
            "spiffe:///ns/a/sa/b",
            "spiffe://TD/ns/a/sa/b",
            "spiffe://td:443/ns/a/sa/b",
            "spiffe://user@td/ns/a/sa/b",
            "spiffe://td/ns/a/sa/b/",
            "spiffe://td/ns/a/sa/b/extra",
            "spiffe://td/ns/a/sa",
            "spiffe://td/ns//sa/b",
            "spiffe://td/ns/a/sa/",
            "spiffe://td/namespace/a/sa/b",
            "spiffe://td/ns/a/serviceaccount/b",
            "spiffe://td/ns/../sa/b",
            "spiffe://td/ns/a/sa/.",
            "spiffe://td/ns/a%20b/sa/b",
            "spiffe://td/ns/a/sa/b?x=1",
            "spiffe://td/ns/a/sa/b#frag",
            "spiffe://td/ns/a b/sa/b",
            " spiffe://td/ns/a/sa/b",
        ] {
            let err = bad.parse::<SpiffeId>().unwrap_err();
            assert_eq!(err.input, bad);
        }
        let long = format!("spiffe://td/ns/{}/sa/b", "a".repeat(2100));
        assert!(long.parse::<SpiffeId>().is_err());
    }

    #[test]
    fn new_checks_its_parts() {
        assert!(SpiffeId::new("Cluster.local", "a", "b").is_err());
        assert!(SpiffeId::new("td", "a/b", "c").is_err());
        assert!(SpiffeId::new("td", "a", "").is_err());
        assert!(SpiffeId::new("", "a", "b").is_err());
        assert!(SpiffeId::new("td", "..", "b").is_err());
    }
}
