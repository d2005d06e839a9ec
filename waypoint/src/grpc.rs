//! The parts of gRPC's HTTP/2 mapping the waypoint must read and write itself
//! (grpc/grpc `doc/PROTOCOL-HTTP2.md` and `doc/statuscodes.md`): the status of a call, in
//! the headers of a trailers-only response or in the trailers; the `grpc-timeout` deadline;
//! and the trailers-only responses the waypoint answers with when it cannot reach a backend.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// The gRPC status codes the waypoint acts on (`doc/statuscodes.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Unavailable = 14,
}

pub const STATUS: &str = "grpc-status";
pub const MESSAGE: &str = "grpc-message";
pub const TIMEOUT: &str = "grpc-timeout";

/// Whether a request is a gRPC call: `content-type: application/grpc` or `application/grpc+...`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "application/grpc" || v.starts_with("application/grpc+"))
}

/// The `grpc-status` in a header block, if there is a valid one.
pub fn status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Reads `grpc-timeout`: at most 8 ASCII digits and a unit, `H M S m u n`.
pub fn parse_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(TIMEOUT)?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Writes a `grpc-timeout` value: the finest unit whose count fits in 8 digits.
pub fn format_timeout(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    // Rounded up, so that the backend never gets more time than is left; the rounded count
    // must fit in 8 digits.
    let (n, unit) = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
    ]
    .into_iter()
    .map(|(per, unit)| (nanos.div_ceil(per), unit))
    .find(|(n, _)| *n <= MAX)
    .unwrap_or(((nanos / 60_000_000_000).min(MAX), "M"));
    HeaderValue::from_str(&format!("{n}{unit}")).unwrap_or(HeaderValue::from_static("1S"))
}

/// A trailers-only gRPC response: HTTP 200 whose one header block carries the status.
pub fn trailers_only<B>(code: Code, message: &str, body: B) -> Response<B> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    insert_status(headers, code, message);
    response
}

/// Adds `grpc-status` and a percent-encoded `grpc-message` to a header block.
pub fn insert_status(headers: &mut HeaderMap, code: Code, message: &str) {
    headers.insert(STATUS, HeaderValue::from(code as u16));
    if let Ok(value) = HeaderValue::from_str(&weft_mesh::refusal::percent_encode(message)) {
        headers.insert(MESSAGE, value);
    }
}

/// The HTTP status an error of the waypoint's own is answered with, for plain HTTP/2.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_FOUND,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// How a gRPC status counts for outlier detection and `5xx` retries, as an HTTP status:
/// the mapping gRPC's `doc/http-grpc-status-mapping.md` implies in reverse, for the codes
/// that mean the server failed rather than the caller.
pub fn as_http_status(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,           // CANCELLED: the client's doing
        4 => 504,           // DEADLINE_EXCEEDED
        8 => 429,           // RESOURCE_EXHAUSTED
        14 => 503,          // UNAVAILABLE
        2 | 13 | 15 => 500, // UNKNOWN, INTERNAL, DATA_LOSS
        12 => 501,          // UNIMPLEMENTED
        _ => 400,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TIMEOUT, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn reads_grpc_timeout() {
        assert_eq!(
            parse_timeout(&with_timeout("1S")),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            parse_timeout(&with_timeout("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_timeout(&with_timeout("2H")),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            parse_timeout(&with_timeout("10u")),
            Some(Duration::from_micros(10))
        );
        assert_eq!(parse_timeout(&with_timeout("S")), None);
        assert_eq!(parse_timeout(&with_timeout("123456789S")), None);
        assert_eq!(parse_timeout(&with_timeout("1x")), None);
        assert_eq!(parse_timeout(&with_timeout("-1S")), None);
    }

    #[test]
    fn writes_grpc_timeout_that_reads_back() {
        for d in [
            Duration::from_millis(1),
            Duration::from_millis(1500),
            Duration::from_secs(300),
            Duration::from_nanos(17),
            Duration::from_nanos(99_999_999_999),
        ] {
            let v = format_timeout(d);
            let back = parse_timeout(&with_timeout(v.to_str().unwrap())).unwrap();
            assert!(
                back >= d && back - d < Duration::from_millis(1),
                "{d:?} -> {v:?}"
            );
        }
    }

    #[test]
    fn trailers_only_response_carries_status() {
        let r = trailers_only(Code::Unavailable, "no healthy upstream: 100%", ());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(status(r.headers()), Some(14));
        assert_eq!(r.headers()[MESSAGE], "no healthy upstream: 100%25");
    }

    #[test]
    fn grpc_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web"),
        );
        assert!(!is_grpc(&h));
    }
}
