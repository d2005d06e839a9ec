//! The gRPC demo service `weft.demo.Whoami` (`proto/demo.proto`).
//!
//! Each server draws one UUID at start and answers every call with it, so a client that
//! counts the UUIDs in its replies sees how its calls were spread over the backends. One
//! client uses exactly one HTTP/2 connection: through an L4 balancer all its calls land on
//! one backend, through an L7 waypoint they spread.
//!
//! The waypoint's own tests need more than a well-behaved unary call, so the service also
//! streams in every direction (`Echo`, `Upload`, `Download`), and a server can be told to
//! misbehave on purpose ([`faults`]): fail, stall, or answer trailers-only.
//!
//! - [`service`]: the server side.
//! - [`faults`]: which calls a misbehaving server fails or delays.
//! - [`client`]: `uuid-client`'s many unary calls over one connection, and its report.
//! - [`metadata`]: the request headers a client sends, as parsed from its flags.
//! - [`streams`]: `grpc-stream`'s checks of the streaming calls.

pub mod client;
pub mod faults;
pub mod metadata;
pub mod service;
pub mod streams;

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

pub use client::{ClientConfig, ClientReport, run_client};
pub use service::WhoamiService;

use crate::pattern::Pattern;

/// Code generated from `proto/demo.proto`.
pub mod proto {
    tonic::include_proto!("weft.demo");
}

/// The largest message either side encodes or decodes. tonic's default of 4 MiB would turn
/// away a 4 MiB payload, whose message is a few bytes longer; tests send exactly that.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The largest payload the server puts in one message (padding or a `Download` message):
/// the rest of [`MAX_MESSAGE`] is room for the other fields and the protobuf tags.
pub const MAX_PAYLOAD: usize = MAX_MESSAGE - 1024;

/// The payload of the message numbered `seq`: both ends derive it from the number, so the
/// receiver checks every byte without the sender keeping a copy.
pub fn payload(seq: u64, size: usize) -> Vec<u8> {
    let mut buf = vec![0u8; size];
    Pattern::new(seq).fill(&mut buf);
    buf
}

/// This host's name, for a pod that was not given one.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

/// How a status code is named in reports: tonic's names (`Unavailable`,
/// `DeadlineExceeded`), except success, which is `OK` as in the gRPC specification.
pub fn code_name(code: tonic::Code) -> String {
    match code {
        tonic::Code::Ok => "OK".to_string(),
        other => format!("{other:?}"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid endpoint {url:?}: {}", chain(source))]
    Endpoint {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("connect to {url}: {}", chain(source))]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("connect to {url}: not connected within {limit:?}")]
    Timeout { url: String, limit: Duration },
}

/// An error with its causes: tonic's transport error alone says only "transport error".
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Opens one channel, which is one HTTP/2 connection, and waits until it is up, so that a
/// missing server fails here and not as the first call's error.
///
/// The endpoint has no request timeout of its own: tonic would report one as `Cancelled`,
/// and each caller bounds its calls and names the outcome itself.
pub async fn connect(url: &str, limit: Duration) -> Result<Channel, ConnectError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|source| ConnectError::Endpoint {
            url: url.to_string(),
            source,
        })?
        .connect_timeout(limit)
        .tcp_nodelay(true);
    // connect_timeout covers the TCP handshake only; this bounds the HTTP/2 one too.
    tokio::time::timeout(limit, endpoint.connect())
        .await
        .map_err(|_| ConnectError::Timeout {
            url: url.to_string(),
            limit,
        })?
        .map_err(|source| ConnectError::Connect {
            url: url.to_string(),
            source,
        })
}

/// A client on `channel` that accepts and sends messages up to [`MAX_MESSAGE`].
pub fn client(channel: Channel) -> proto::whoami_client::WhoamiClient<Channel> {
    proto::whoami_client::WhoamiClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_depends_on_seq_and_is_repeatable() {
        assert_eq!(payload(3, 100), payload(3, 100));
        assert_ne!(payload(3, 100), payload(4, 100));
        assert_eq!(payload(3, 0), Vec::<u8>::new());
        assert_eq!(&payload(3, 100)[..10], &payload(3, 10)[..]);
    }

    #[test]
    fn code_names() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::Unavailable), "Unavailable");
        assert_eq!(code_name(tonic::Code::DeadlineExceeded), "DeadlineExceeded");
    }
}
