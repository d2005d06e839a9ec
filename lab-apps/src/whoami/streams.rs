//! `grpc-stream`'s checks: one streaming call each, whose every message the client
//! verifies, so a proxy that reorders, drops, truncates or corrupts a stream fails.
//!
//! Payloads are derived from their sequence numbers ([`payload`]), so neither end keeps
//! what it sent: the outgoing stream is made lazily as tonic takes messages, and each
//! incoming one is compared with the payload its number implies.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Request, Status};

use super::metadata::{self, Header};
use super::proto::whoami_client::WhoamiClient;
use super::proto::{DownloadRequest, EchoMessage, StatsRequest};
use super::{ConnectError, code_name, payload};
use crate::digest::{sha256_hex, to_hex};

#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// `http://IP:PORT`
    pub url: String,
    pub connect_timeout: Duration,
    /// Limit on the whole call after connecting.
    pub timeout: Duration,
    /// Sent on the call.
    pub headers: Vec<Header>,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The call ended with `status`, after `received` messages of its answer (all of
    /// them intact and in order).
    #[error("{call}: {status} (after {received} messages)")]
    Status {
        call: &'static str,
        status: Status,
        received: u64,
    },
    #[error("{call}: not done within {limit:?}")]
    Timeout { call: &'static str, limit: Duration },
    /// The call succeeded but carried the wrong data.
    #[error("{call}: {detail}")]
    Check { call: &'static str, detail: String },
}

impl StreamError {
    /// The gRPC status the call ended with, if it ended with one.
    pub fn status(&self) -> Option<String> {
        match self {
            StreamError::Status { status, .. } => Some(code_name(status.code())),
            StreamError::Check { .. } => Some(code_name(tonic::Code::Ok)),
            StreamError::Connect(_) | StreamError::Timeout { .. } => None,
        }
    }

    /// `{"ok":false,"error":"..","status":"..","received":N}`; `status` is null when no status
    /// came, and `received` (messages before the status) when no status ended the call.
    pub fn to_json(&self) -> serde_json::Value {
        let received = match self {
            StreamError::Status { received, .. } => Some(*received),
            _ => None,
        };
        serde_json::json!({
            "ok": false,
            "error": self.to_string(),
            "status": self.status(),
            "received": received,
        })
    }
}

fn failed(call: &'static str) -> impl Fn(Status) -> StreamError {
    move |status| StreamError::Status {
        call,
        status,
        received: 0,
    }
}

fn check(call: &'static str, detail: String) -> StreamError {
    StreamError::Check { call, detail }
}

fn request<T>(message: T, headers: &[Header]) -> Request<T> {
    let mut request = Request::new(message);
    metadata::apply(request.metadata_mut(), headers);
    request
}

/// Connects, then runs `call` within the configured limit.
async fn within<T, F, Fut>(
    cfg: &StreamConfig,
    name: &'static str,
    call: F,
) -> Result<T, StreamError>
where
    F: FnOnce(WhoamiClient<Channel>) -> Fut,
    Fut: Future<Output = Result<T, StreamError>>,
{
    let client = super::client(super::connect(&cfg.url, cfg.connect_timeout).await?);
    tokio::time::timeout(cfg.timeout, call(client))
        .await
        .map_err(|_| StreamError::Timeout {
            call: name,
            limit: cfg.timeout,
        })?
}

/// Messages `0..count` of `size` bytes, made as they are taken.
fn numbered(count: u64, size: usize) -> impl futures::Stream<Item = EchoMessage> + Send {
    stream::iter(0..count).map(move |seq| EchoMessage {
        seq,
        payload: payload(seq, size),
    })
}

/// Reads a response stream that must be exactly messages `0..count` of `size` bytes, in
/// order. Returns the payload bytes read.
async fn expect_numbered(
    call: &'static str,
    inbound: &mut tonic::Streaming<EchoMessage>,
    count: u64,
    size: usize,
) -> Result<u64, StreamError> {
    let mut next = 0u64;
    let mut bytes = 0u64;
    let ended = |status, received| StreamError::Status {
        call,
        status,
        received,
    };
    while let Some(message) = inbound.message().await.map_err(|s| ended(s, next))? {
        if message.seq != next {
            return Err(check(
                call,
                format!(
                    "out of order: message {} came where {next} was due",
                    message.seq
                ),
            ));
        }
        if message.payload != payload(next, size) {
            return Err(check(
                call,
                format!(
                    "message {next}: payload differs ({} bytes, {size} sent)",
                    message.payload.len()
                ),
            ));
        }
        bytes += message.payload.len() as u64;
        next += 1;
    }
    if next != count {
        return Err(check(call, format!("{next} of {count} messages came")));
    }
    Ok(bytes)
}

/// One bidirectional `Echo` call: sends messages `0..count` while it reads the echoes.
pub async fn echo(
    cfg: &StreamConfig,
    count: u64,
    size: usize,
) -> Result<serde_json::Value, StreamError> {
    within(cfg, "echo", |mut client| async move {
        let start = Instant::now();
        let response = client
            .echo(request(numbered(count, size), &cfg.headers))
            .await
            .map_err(failed("echo"))?;
        let bytes = expect_numbered("echo", &mut response.into_inner(), count, size).await?;
        Ok(serde_json::json!({
            "ok": true,
            "messages": count,
            "in_order": true,
            "bytes": bytes,
            "seconds": start.elapsed().as_secs_f64(),
        }))
    })
    .await
}

/// One `Echo` call with one message of `bytes` bytes, compared by digest.
pub async fn big(cfg: &StreamConfig, bytes: usize) -> Result<serde_json::Value, StreamError> {
    let message = EchoMessage {
        seq: 0,
        payload: payload(0, bytes),
    };
    let sent = sha256_hex(&message.payload);
    within(cfg, "big", |mut client| async move {
        let start = Instant::now();
        let response = client
            .echo(request(stream::iter([message]), &cfg.headers))
            .await
            .map_err(failed("big"))?;
        let mut inbound = response.into_inner();
        let echoed = inbound
            .message()
            .await
            .map_err(failed("big"))?
            .ok_or_else(|| check("big", "the echo stream ended with no message".into()))?;
        let received = sha256_hex(&echoed.payload);
        if received != sent {
            return Err(check(
                "big",
                format!(
                    "echoed {} bytes with sha256 {received}, sent {bytes} with {sent}",
                    echoed.payload.len()
                ),
            ));
        }
        if inbound.message().await.map_err(failed("big"))?.is_some() {
            return Err(check("big", "more than one message came back".into()));
        }
        Ok(serde_json::json!({
            "ok": true,
            "bytes": bytes,
            "sha256": sent,
            "seconds": start.elapsed().as_secs_f64(),
        }))
    })
    .await
}

/// One client-streaming `Upload` call; the server's count and digest must match.
pub async fn upload(
    cfg: &StreamConfig,
    count: u64,
    size: usize,
) -> Result<serde_json::Value, StreamError> {
    let mut hasher = Sha256::new();
    for seq in 0..count {
        hasher.update(payload(seq, size));
    }
    let sent = to_hex(hasher);
    within(cfg, "upload", |mut client| async move {
        let start = Instant::now();
        let summary = client
            .upload(request(numbered(count, size), &cfg.headers))
            .await
            .map_err(failed("upload"))?
            .into_inner();
        if summary.count != count || summary.sha256 != sent {
            return Err(check(
                "upload",
                format!(
                    "server read {} messages with sha256 {}; sent {count} with {sent}",
                    summary.count, summary.sha256
                ),
            ));
        }
        Ok(serde_json::json!({
            "ok": true,
            "messages": count,
            "bytes": summary.bytes,
            "sha256": sent,
            "seconds": start.elapsed().as_secs_f64(),
        }))
    })
    .await
}

/// One server-streaming `Download` call of `count` messages of `size` bytes.
pub async fn download(
    cfg: &StreamConfig,
    count: u64,
    size: usize,
) -> Result<serde_json::Value, StreamError> {
    let size_field = u32::try_from(size).map_err(|_| {
        check(
            "download",
            format!("size {size} does not fit the request's u32"),
        )
    })?;
    within(cfg, "download", |mut client| async move {
        let start = Instant::now();
        let response = client
            .download(request(
                DownloadRequest {
                    count,
                    size: size_field,
                },
                &cfg.headers,
            ))
            .await
            .map_err(failed("download"))?;
        let bytes = expect_numbered("download", &mut response.into_inner(), count, size).await?;
        Ok(serde_json::json!({
            "ok": true,
            "messages": count,
            "in_order": true,
            "bytes": bytes,
            "seconds": start.elapsed().as_secs_f64(),
        }))
    })
    .await
}

/// The server's counts of the calls it received.
pub async fn stats(cfg: &StreamConfig) -> Result<serde_json::Value, StreamError> {
    within(cfg, "stats", |mut client| async move {
        let s = client
            .stats(request(StatsRequest {}, &cfg.headers))
            .await
            .map_err(failed("stats"))?
            .into_inner();
        Ok(serde_json::json!({
            "ok": true,
            "uuid": s.uuid,
            "pod": s.pod,
            "whoami": s.whoami,
            "echo": s.echo,
            "upload": s.upload,
            "download": s.download,
            "failed": s.failed,
        }))
    })
    .await
}
