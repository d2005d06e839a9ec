//! The request path that routes and policies match, normalized so that one resource has
//! one spelling: `/admin`, `/./admin`, `//admin`, `/x/../admin` and `/%61dmin` are the
//! same request, and a DENY for `/admin` must catch every one of them.
//!
//! Following RFC 3986, in this order:
//! 1. the query is set aside (policies and routes match the path alone, as Envoy's
//!    `url_path` does; the query is forwarded unchanged);
//! 2. percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, and the hex
//!    digits of the other escapes upper-cased (§6.2.2.1, §6.2.2.2); an escaped `/` stays
//!    escaped, so it is never taken for a separator;
//! 3. runs of `/` are merged into one (Istio's `MERGE_SLASHES`);
//! 4. `.` and `..` segments are removed (§5.2.4, `remove_dot_segments`), never above the
//!    root.
//!
//! A path that is not origin-form (does not start with `/`), or has a `%` not followed by
//! two hex digits, is refused: no backend should see what policy could not read.

use std::fmt;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPath(String);

impl fmt::Display for BadPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadPath {}

/// A request target split as routes and policies read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    /// The normalized path, without the query.
    pub path: String,
    /// The query, without its `?`, as received.
    pub query: Option<String>,
}

impl NormalPath {
    /// Path and query, as forwarded upstream.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Normalizes a request target (`:path`). See the module documentation.
pub fn normalize(target: &str) -> Result<NormalPath, BadPath> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    if !path.starts_with('/') {
        return Err(BadPath(format!("path {target:?} is not origin-form")));
    }
    // 2. Escapes.
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(BadPath(format!(
                    "path {target:?} has a malformed percent-encoding"
                )));
            };
            let value = h * 16 + l;
            if unreserved(value) {
                decoded.push(value as char);
            } else {
                decoded.push_str(&format!("%{value:02X}"));
            }
            i += 3;
        } else {
            // Any other byte, including non-ASCII UTF-8, stays as it is.
            let next = path[i..]
                .char_indices()
                .nth(1)
                .map_or(path.len(), |(n, _)| i + n);
            decoded.push_str(&path[i..next]);
            i = next;
        }
    }
    // 3 and 4. Segments: empty ones (merged slashes) and `.` vanish, `..` pops.
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = parts.len().saturating_sub(1);
    let mut trailing = false;
    for (n, segment) in parts.iter().enumerate() {
        match *segment {
            "" => trailing = n == last,
            "." => trailing = n == last,
            ".." => {
                segments.pop();
                trailing = n == last;
            }
            s => {
                segments.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(NormalPath { path: out, query })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(target: &str) -> String {
        normalize(target).unwrap().path
    }

    #[test]
    fn one_resource_has_one_spelling() {
        for spelling in [
            "/admin",
            "/./admin",
            "//admin",
            "///admin",
            "/x/../admin",
            "/x/y/../../admin",
            "/../admin",
            "/%61dmin",
            "/%61%64%6D%69%6e",
            "/admin?debug=1",
        ] {
            assert_eq!(path(spelling), "/admin", "{spelling}");
        }
        assert_eq!(
            path("/users.v1.UserService/GetUser"),
            "/users.v1.UserService/GetUser"
        );
    }

    #[test]
    fn separators_and_other_escapes_stay_what_they_are() {
        assert_eq!(path("/a%2fb"), "/a%2Fb", "an escaped slash is no separator");
        assert_eq!(path("/a%2F..%2Fb"), "/a%2F..%2Fb");
        assert_eq!(path("/a/"), "/a/");
        assert_eq!(path("/a/."), "/a/");
        assert_eq!(path("/a/b/.."), "/a/");
        assert_eq!(path("/"), "/");
        assert_eq!(path("/.."), "/");
        assert_eq!(path("/caf\u{e9}"), "/caf\u{e9}");
        let n = normalize("/a//b?x=/../y").unwrap();
        assert_eq!(
            (n.path.as_str(), n.query.as_deref()),
            ("/a/b", Some("x=/../y"))
        );
        assert_eq!(n.path_and_query(), "/a/b?x=/../y");
    }

    #[test]
    fn unreadable_paths_are_refused() {
        for bad in ["admin", "*", "http://x/admin", "/a%2", "/a%zz", "/%"] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }
}
