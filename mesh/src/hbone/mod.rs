//! HBONE: TCP streams tunnelled as HTTP/2 `CONNECT` requests over mutual TLS, on port 15008.
//!
//! This is the wire format of Istio's ambient mode, so a Weft agent and a ztunnel speak the
//! same tunnel. Each tunnelled connection is one HTTP/2 stream (RFC 9113 §8.5, CONNECT) whose
//! `:authority` is the original destination `ip:port`; the client's address travels in a
//! `Forwarded: for=` header (RFC 7239). Many streams share one TLS 1.3 connection (RFC 8446)
//! between a source identity and a destination node: `client` pools them, `server` accepts
//! them, and `stream` turns one HTTP/2 stream back into a byte stream with half-close.

mod client;
mod server;
mod stream;

use std::time::Duration;

pub use client::{Pool, PoolKey, PoolStats};
pub use server::{ConnectRequest, Opener, Refusal, forwarded_for, serve};
pub use stream::{Broken, H2Stream, Toward, Watch, splice, splice_watched};

/// The HBONE port.
pub const PORT: u16 = 15008;

/// The largest HTTP/2 frame each end accepts (SETTINGS_MAX_FRAME_SIZE, RFC 9113 §6.5.2):
/// above the 16 KiB default, so that bulk data costs fewer frames.
const MAX_FRAME: u32 = 256 * 1024;

/// Tunnel tuning, shared by both ends. The defaults favour throughput: a stream may have
/// several MiB in flight before the receiver must read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Flow-control window of each stream (HTTP/2 SETTINGS_INITIAL_WINDOW_SIZE).
    pub stream_window: u32,
    /// Flow-control window of each connection.
    pub connection_window: u32,
    /// Streams one pooled connection carries before the pool opens another.
    pub max_streams_per_connection: usize,
    /// Connections per (source identity, destination) that the pool opens before it starts
    /// to multiplex: parallel streams then spread over connections, and so over cores,
    /// rather than all funnelling through one TLS session's crypto.
    pub spread_connections: usize,
    /// A pooled connection with no streams closes after this long.
    pub idle_timeout: Duration,
    /// How long dialling a destination (TCP + TLS + HTTP/2 handshake) may take; on the
    /// server side, how long a peer may take to finish its TLS handshake and send the
    /// HTTP/2 preface.
    pub connect_timeout: Duration,
    /// Server side: streams one connection may have open at once (HTTP/2
    /// SETTINGS_MAX_CONCURRENT_STREAMS); more are refused with REFUSED_STREAM.
    pub max_concurrent_streams: u32,
    /// Server side: the largest header list a request may carry (HTTP/2
    /// SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_header_list_size: u32,
    /// Server side: connections one peer address may have open at once; more are closed
    /// as they arrive.
    pub max_connections_per_peer: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_streams_per_connection: 100,
            spread_connections: std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(2),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            // Ten times what a pooled client connection carries.
            max_concurrent_streams: 1000,
            max_header_list_size: 16 * 1024,
            // Each pod identity on a node has its own connections: room for hundreds.
            max_connections_per_peer: 1024,
        }
    }
}

/// The response header of a refused CONNECT that says why (Weft's; Istio sends none).
pub const REFUSAL_HEADER: &str = "weft-refusal";

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to {0}: {1}")]
    Connect(std::net::SocketAddr, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(std::net::SocketAddr, std::io::Error),
    #[error("HTTP/2 with {0}: {1}")]
    H2(std::net::SocketAddr, h2::Error),
    #[error("{0} did not negotiate h2 with ALPN")]
    NoAlpn(std::net::SocketAddr),
    #[error("{peer} refused the tunnel to {authority}: HTTP {status}{}", reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Refused {
        peer: std::net::SocketAddr,
        authority: std::net::SocketAddr,
        status: u16,
        /// What the refusing end said ([`REFUSAL_HEADER`]): for a policy refusal, the
        /// policy's verdict.
        reason: Option<String>,
    },
    #[error("timed out connecting to {0}")]
    Timeout(std::net::SocketAddr),
}

impl From<HboneError> for std::io::Error {
    fn from(err: HboneError) -> Self {
        let kind = match &err {
            HboneError::Refused {
                status: 401 | 403, ..
            } => std::io::ErrorKind::PermissionDenied,
            HboneError::Refused { .. } => std::io::ErrorKind::ConnectionRefused,
            HboneError::Timeout(_) => std::io::ErrorKind::TimedOut,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, err)
    }
}
