//! What the waypoint makes of a client's request before routes and policies read it, so
//! that neither the client's choice of spelling nor headers it made up decide anything:
//!
//! - `Host`, when present, must name what `:authority` names (RFC 9113, section 8.3.1: a
//!   request where they differ is malformed);
//! - the path is normalized (`weft_mesh::policy::path`) and forwarded in that form, so the
//!   backend serves what policy saw;
//! - `x-envoy-*` headers are removed: they steer Envoy proxies (timeouts, retries, upstream
//!   choice) and only a proxy may set them, as Envoy does for untrusted clients;
//! - `x-forwarded-client-cert` is replaced by the identities this hop proved: the
//!   waypoint's (`By=`) and the client's (`URI=`), the form Istio's sidecars set
//!   (Envoy's `SANITIZE_SET`);
//! - `x-forwarded-for` gets the client's address appended (Envoy's behaviour for the edge
//!   of a trust domain); nothing in Weft reads it.

use std::net::IpAddr;

use http::{HeaderValue, Uri, header, request::Parts, uri::PathAndQuery};
use weft_mesh::policy::path::{NormalPath, normalize};

const XFCC: &str = "x-forwarded-client-cert";
const XFF: &str = "x-forwarded-for";

/// Who is on either side of this hop, as their certificates proved.
pub struct Hop<'a> {
    /// The client's address (as `State::client_address` believes it).
    pub client_ip: IpAddr,
    /// `spiffe://...` of the client and of this waypoint.
    pub client: &'a str,
    pub waypoint: &'a str,
}

/// Cleans `parts` in place (see the module documentation) and returns the normalized path.
/// `Err` says why the request is malformed; it must not be forwarded.
pub fn sanitize(parts: &mut Parts, hop: &Hop<'_>) -> Result<NormalPath, String> {
    if let (Some(host), Some(authority)) = (parts.headers.get(header::HOST), parts.uri.authority())
        && !host
            .to_str()
            .is_ok_and(|h| h.eq_ignore_ascii_case(authority.as_str()))
    {
        return Err(format!(
            "the Host header {host:?} differs from :authority {:?} (RFC 9113, section 8.3.1)",
            authority.as_str()
        ));
    }
    let target = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let normal = normalize(target).map_err(|e| e.to_string())?;
    if normal.path_and_query() != target {
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query = Some(
            PathAndQuery::try_from(normal.path_and_query())
                .map_err(|e| format!("normalized path: {e}"))?,
        );
        parts.uri = Uri::from_parts(uri).map_err(|e| format!("normalized path: {e}"))?;
    }

    let envoy: Vec<header::HeaderName> = parts
        .headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-envoy-"))
        .cloned()
        .collect();
    for name in envoy {
        parts.headers.remove(name);
    }

    parts.headers.remove(XFCC);
    if let Ok(value) = HeaderValue::try_from(format!("By={};URI={}", hop.waypoint, hop.client)) {
        parts.headers.insert(XFCC, value);
    }

    let forwarded = match parts.headers.get(XFF).and_then(|v| v.to_str().ok()) {
        Some(chain) if !chain.trim().is_empty() => format!("{chain}, {}", hop.client_ip),
        _ => hop.client_ip.to_string(),
    };
    parts.headers.remove(XFF);
    if let Ok(value) = HeaderValue::try_from(forwarded) {
        parts.headers.insert(XFF, value);
    }
    Ok(normal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut request = http::Request::builder().uri(uri);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.body(()).unwrap().into_parts().0
    }

    const HOP: Hop<'static> = Hop {
        client_ip: IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, 5)),
        client: "spiffe://cluster.local/ns/app/sa/client",
        waypoint: "spiffe://cluster.local/ns/app/sa/wp",
    };

    #[test]
    fn a_host_that_differs_from_the_authority_is_malformed() {
        let mut p = parts("http://svc.app:50051/a", &[("host", "other.app:50051")]);
        assert!(sanitize(&mut p, &HOP).unwrap_err().contains("RFC 9113"));
        let mut p = parts("http://svc.app:50051/a", &[("host", "SVC.app:50051")]);
        assert!(sanitize(&mut p, &HOP).is_ok(), "case does not matter");
        let mut p = parts("/a", &[("host", "anything")]);
        assert!(
            sanitize(&mut p, &HOP).is_ok(),
            "no :authority to differ from"
        );
    }

    #[test]
    fn the_path_is_forwarded_normalized_with_its_query() {
        let mut p = parts("http://svc.app/x/..//%61dmin?q=1", &[]);
        let normal = sanitize(&mut p, &HOP).unwrap();
        assert_eq!(normal.path, "/admin");
        assert_eq!(p.uri.path_and_query().unwrap().as_str(), "/admin?q=1");
        assert_eq!(p.uri.authority().unwrap().as_str(), "svc.app");
        let mut p = parts("http://svc.app/a%zz", &[]);
        assert!(sanitize(&mut p, &HOP).is_err());
    }

    #[test]
    fn client_made_proxy_headers_do_not_pass() {
        let mut p = parts(
            "http://svc.app/a",
            &[
                ("x-envoy-upstream-rq-timeout-ms", "1"),
                ("x-envoy-original-dst-host", "10.0.0.1:22"),
                (
                    "x-forwarded-client-cert",
                    "By=spiffe://evil;URI=spiffe://admin",
                ),
                ("x-forwarded-for", "192.0.2.7"),
                ("x-kept", "yes"),
            ],
        );
        sanitize(&mut p, &HOP).unwrap();
        assert!(
            p.headers
                .keys()
                .all(|k| !k.as_str().starts_with("x-envoy-"))
        );
        assert_eq!(
            p.headers[XFCC],
            "By=spiffe://cluster.local/ns/app/sa/wp;URI=spiffe://cluster.local/ns/app/sa/client"
        );
        assert_eq!(p.headers[XFF], "192.0.2.7, 10.1.0.5");
        assert_eq!(p.headers["x-kept"], "yes");
        let mut p = parts("http://svc.app/a", &[]);
        sanitize(&mut p, &HOP).unwrap();
        assert_eq!(p.headers[XFF], "10.1.0.5");
    }
}
