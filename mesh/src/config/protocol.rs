//! Which L7 protocol a Service port carries, by Istio's convention (its "protocol
//! selection" documentation), so that Services already named for Istio work unchanged.

/// What the mesh knows about the bytes on a Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppProtocol {
    /// gRPC: the waypoint balances each call, not each connection.
    Grpc,
    /// HTTP/2 that is not declared gRPC: the waypoint balances each stream.
    Http2,
    /// Anything else: opaque bytes, L4 only.
    Tcp,
}

/// Detects the protocol of a Service port.
///
/// `appProtocol` decides when it names a protocol Istio knows: `grpc` is gRPC, `h2`,
/// `http2` and `kubernetes.io/h2c` are HTTP/2, and the L4 or HTTP/1 ones (`tcp`, `http`,
/// `tls`, ...) are TCP. An `appProtocol` Istio does not know falls back to the port name,
/// as it does in Istio. The name's part before the first `-` decides: `grpc`, `grpc-x`
/// (so `grpc-web` too, followed literally) are gRPC; `http2`, `http2-x` are HTTP/2.
/// Everything else, and a port with neither, is TCP. Comparisons ignore case.
pub fn detect_protocol(port_name: Option<&str>, app_protocol: Option<&str>) -> AppProtocol {
    if let Some(protocol) = app_protocol.and_then(from_app_protocol) {
        return protocol;
    }
    let prefix = port_name
        .map(|name| name.split('-').next().unwrap_or(name))
        .unwrap_or_default();
    if prefix.eq_ignore_ascii_case("grpc") {
        AppProtocol::Grpc
    } else if prefix.eq_ignore_ascii_case("http2") {
        AppProtocol::Http2
    } else {
        AppProtocol::Tcp
    }
}

fn from_app_protocol(app_protocol: &str) -> Option<AppProtocol> {
    let app_protocol = app_protocol.to_ascii_lowercase();
    match app_protocol.as_str() {
        "grpc" => Some(AppProtocol::Grpc),
        "h2" | "http2" | "kubernetes.io/h2c" => Some(AppProtocol::Http2),
        // Named protocols that are not HTTP/2: an explicit choice, so the name cannot
        // override it. Weft handles them at L4.
        "tcp" | "udp" | "tls" | "http" | "https" | "http/1.1" | "kubernetes.io/ws"
        | "kubernetes.io/wss" | "mongo" | "mysql" | "redis" => Some(AppProtocol::Tcp),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_table() {
        use AppProtocol::*;
        let table: &[(Option<&str>, Option<&str>, AppProtocol)] = &[
            (Some("grpc"), None, Grpc),
            (Some("grpc-api"), None, Grpc),
            // Istio's rule is a prefix before `-`, so grpc-web counts as gRPC.
            (Some("grpc-web"), None, Grpc),
            (Some("GRPC"), None, Grpc),
            (Some("grpcapi"), None, Tcp),
            (Some("api"), Some("grpc"), Grpc),
            (None, Some("grpc"), Grpc),
            (Some("http2"), None, Http2),
            (Some("http2-api"), None, Http2),
            (Some("api"), Some("h2"), Http2),
            (Some("api"), Some("kubernetes.io/h2c"), Http2),
            (Some("http"), None, Tcp),
            (Some("tcp-db"), None, Tcp),
            (Some("web"), None, Tcp),
            (None, None, Tcp),
            // A known appProtocol wins over the name ...
            (Some("grpc"), Some("tcp"), Tcp),
            (Some("http2"), Some("grpc"), Grpc),
            // ... an unknown one falls back to it.
            (Some("grpc"), Some("example.com/custom"), Grpc),
            (Some("web"), Some("example.com/custom"), Tcp),
        ];
        for (name, app, want) in table {
            assert_eq!(
                detect_protocol(*name, *app),
                *want,
                "name {name:?} appProtocol {app:?}"
            );
        }
    }
}
