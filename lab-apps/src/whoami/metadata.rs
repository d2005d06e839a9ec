//! The request headers a client sends, as its flags describe them.
//!
//! Headers are checked when the flags are parsed, so a key or value that HTTP/2 cannot carry
//! is a usage error at start and not a failure of every call. Only ASCII metadata is
//! supported: `-bin` keys would need base64 and no test needs them.

use std::str::FromStr;

use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("{0:?} is not KEY=VALUE")]
    NoEquals(String),
    #[error("{0:?} is not a valid header name (lowercase letters, digits, '-', '_', '.')")]
    Key(String),
    #[error("header {0:?}: binary (-bin) headers are not supported")]
    Binary(String),
    #[error("{0:?} is not a valid header value (visible ASCII)")]
    Value(String),
    #[error("{0:?} is not KEY=PREFIX:N with N at least 1")]
    Cycle(String),
}

fn key(text: &str) -> Result<AsciiMetadataKey, HeaderError> {
    if text.ends_with("-bin") {
        return Err(HeaderError::Binary(text.to_string()));
    }
    // Lowercase only: HTTP/2 forbids uppercase names, and silently folding them would
    // make a test's `X-Key` and the server's `x-key` look like different spellings.
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(HeaderError::Key(text.to_string()));
    }
    AsciiMetadataKey::from_str(text).map_err(|_| HeaderError::Key(text.to_string()))
}

fn value(text: &str) -> Result<AsciiMetadataValue, HeaderError> {
    AsciiMetadataValue::from_str(text).map_err(|_| HeaderError::Value(text.to_string()))
}

/// `--header K=V`: one header sent on every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: AsciiMetadataKey,
    pub value: AsciiMetadataValue,
}

impl FromStr for Header {
    type Err = HeaderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| HeaderError::NoEquals(s.to_string()))?;
        Ok(Self {
            key: key(k)?,
            value: value(v)?,
        })
    }
}

/// `--header-cycle K=PREFIX:N`: header K is `PREFIX0` .. `PREFIX{N-1}`, round-robin over
/// the calls, so a test can play N users whose calls a consistent hash should keep apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderCycle {
    pub key: AsciiMetadataKey,
    pub prefix: String,
    pub n: u64,
}

impl HeaderCycle {
    /// The value for call number `i` (from 0).
    pub fn value(&self, i: u64) -> String {
        format!("{}{}", self.prefix, i % self.n)
    }
}

impl FromStr for HeaderCycle {
    type Err = HeaderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (k, rest) = s
            .split_once('=')
            .ok_or_else(|| HeaderError::NoEquals(s.to_string()))?;
        let (prefix, n) = rest
            .rsplit_once(':')
            .ok_or_else(|| HeaderError::Cycle(s.to_string()))?;
        let n: u64 = n
            .parse()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| HeaderError::Cycle(s.to_string()))?;
        // Every value the cycle will send must be valid, and the longest is the last.
        value(&format!("{prefix}{}", n - 1))?;
        Ok(Self {
            key: key(k)?,
            prefix: prefix.to_string(),
            n,
        })
    }
}

/// Adds `headers` to `map`, replacing a header of the same name.
pub fn apply(map: &mut MetadataMap, headers: &[Header]) {
    for h in headers {
        map.insert(h.key.clone(), h.value.clone());
    }
}

/// Sets `key` to a value already known to be valid ASCII metadata; one that is not (which
/// the flag parsers rule out) is left unset rather than sent mangled.
pub fn set(map: &mut MetadataMap, key: &AsciiMetadataKey, text: &str) {
    if let Ok(v) = value(text) {
        map.insert(key.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parses() {
        let h: Header = "x-user=alice=1".parse().unwrap();
        assert_eq!(h.key.as_str(), "x-user");
        assert_eq!(h.value.to_str().unwrap(), "alice=1");
        let empty: Header = "x-empty=".parse().unwrap();
        assert_eq!(empty.value.to_str().unwrap(), "");
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(
            "x-user".parse::<Header>(),
            Err(HeaderError::NoEquals("x-user".into()))
        );
        assert!(matches!(
            "X-User=a".parse::<Header>(),
            Err(HeaderError::Key(_))
        ));
        assert!(matches!(
            "bad key=a".parse::<Header>(),
            Err(HeaderError::Key(_))
        ));
        assert!(matches!(
            "x-data-bin=a".parse::<Header>(),
            Err(HeaderError::Binary(_))
        ));
        assert!(matches!(
            "x-user=a\nb".parse::<Header>(),
            Err(HeaderError::Value(_))
        ));
    }

    #[test]
    fn cycle_parses_and_cycles() {
        let c: HeaderCycle = "x-user=user-:3".parse().unwrap();
        assert_eq!(c.key.as_str(), "x-user");
        let values: Vec<_> = (0..5).map(|i| c.value(i)).collect();
        assert_eq!(values, ["user-0", "user-1", "user-2", "user-0", "user-1"]);
        // The prefix may itself hold a colon: the count is after the last one.
        let c: HeaderCycle = "x-k=a:b:2".parse().unwrap();
        assert_eq!(c.value(1), "a:b1");
    }

    #[test]
    fn bad_cycles_are_refused() {
        for bad in ["x-user=u:0", "x-user=u", "x-user=u:x", "x-user"] {
            assert!(bad.parse::<HeaderCycle>().is_err(), "{bad}");
        }
    }
}
