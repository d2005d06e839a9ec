//! The gRPC demo service `weft.demo.Whoami` (`proto/demo.proto`).
//!
//! Each server draws one UUID at start and answers every call with it, so a client that
//! counts the UUIDs in its replies sees how its calls were spread over the backends. One
//! client uses exactly one HTTP/2 connection: through an L4 balancer all its calls land on
//! one backend, through an L7 waypoint they spread.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use proto::whoami_client::WhoamiClient;
use proto::{WhoamiReply, WhoamiRequest};

/// Code generated from `proto/demo.proto`.
pub mod proto {
    tonic::include_proto!("weft.demo");
}

/// The server side: one identity for the life of the process.
#[derive(Debug, Clone)]
pub struct WhoamiService {
    uuid: String,
    pod: String,
}

impl WhoamiService {
    /// A service with a fresh random (v4) UUID.
    pub fn new(pod: String) -> Self {
        Self {
            uuid: uuid::Uuid::new_v4().to_string(),
            pod,
        }
    }

    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    pub fn pod(&self) -> &str {
        &self.pod
    }

    pub fn into_server(self) -> proto::whoami_server::WhoamiServer<Self> {
        proto::whoami_server::WhoamiServer::new(self)
    }
}

#[tonic::async_trait]
impl proto::whoami_server::Whoami for WhoamiService {
    async fn whoami(
        &self,
        _request: Request<WhoamiRequest>,
    ) -> Result<Response<WhoamiReply>, Status> {
        Ok(Response::new(WhoamiReply {
            uuid: self.uuid.clone(),
            pod: self.pod.clone(),
        }))
    }
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

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {url:?}: {source}")]
    Endpoint {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("connect to {url}: not connected within {limit:?}")]
    ConnectTimeout { url: String, limit: Duration },
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `http://IP:PORT`
    pub url: String,
    pub calls: u64,
    /// Calls in flight at a time.
    pub concurrency: usize,
    /// Sent as `WhoamiRequest.caller`.
    pub caller: String,
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientReport {
    pub calls: u64,
    pub ok: u64,
    pub errors: u64,
    pub by_uuid: BTreeMap<String, u64>,
    pub by_pod: BTreeMap<String, u64>,
    /// From connected to the last reply.
    pub seconds: f64,
}

impl ClientReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "calls": self.calls,
            "ok": self.ok,
            "errors": self.errors,
            "by_uuid": self.by_uuid,
            "by_pod": self.by_pod,
            "seconds": self.seconds,
        })
    }

    fn merge(&mut self, other: ClientReport) {
        self.ok += other.ok;
        self.errors += other.errors;
        for (k, v) in other.by_uuid {
            *self.by_uuid.entry(k).or_default() += v;
        }
        for (k, v) in other.by_pod {
            *self.by_pod.entry(k).or_default() += v;
        }
    }
}

/// How many failed calls are described on stderr; the rest are only counted.
const ERRORS_LOGGED: u64 = 5;

/// Connects one channel (one HTTP/2 connection) and makes `calls` unary calls over it,
/// `concurrency` at a time. Failed calls are counted, not fatal; only failing to connect is.
pub async fn run_client(cfg: &ClientConfig) -> Result<ClientReport, ClientError> {
    let endpoint = Endpoint::from_shared(cfg.url.clone())
        .map_err(|source| ClientError::Endpoint {
            url: cfg.url.clone(),
            source,
        })?
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.call_timeout)
        .tcp_nodelay(true);
    // connect_timeout covers the TCP handshake only; this bounds the HTTP/2 one too.
    let channel = tokio::time::timeout(cfg.connect_timeout, endpoint.connect())
        .await
        .map_err(|_| ClientError::ConnectTimeout {
            url: cfg.url.clone(),
            limit: cfg.connect_timeout,
        })?
        .map_err(|source| ClientError::Connect {
            url: cfg.url.clone(),
            source,
        })?;

    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..cfg.concurrency.max(1))
        .map(|_| {
            let client = WhoamiClient::new(channel.clone());
            let next = Arc::clone(&next);
            let cfg = cfg.clone();
            tokio::spawn(worker(client, next, cfg))
        })
        .collect();

    let mut report = ClientReport {
        calls: cfg.calls,
        ..ClientReport::default()
    };
    for w in workers {
        match w.await {
            Ok(part) => report.merge(part),
            // A worker cannot panic on a reply; if one did, its calls count as errors below.
            Err(e) => eprintln!("uuid-client: worker failed: {e}"),
        }
    }
    report.errors = report.calls - report.ok;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

async fn worker(
    mut client: WhoamiClient<Channel>,
    next: Arc<AtomicU64>,
    cfg: ClientConfig,
) -> ClientReport {
    let mut part = ClientReport::default();
    while next.fetch_add(1, Ordering::Relaxed) < cfg.calls {
        let request = WhoamiRequest {
            caller: cfg.caller.clone(),
        };
        // The channel's own timeout should fire first; this one also bounds a stuck buffer.
        let result = tokio::time::timeout(cfg.call_timeout, client.whoami(request)).await;
        match result {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                part.ok += 1;
                *part.by_uuid.entry(reply.uuid).or_default() += 1;
                *part.by_pod.entry(reply.pod).or_default() += 1;
            }
            Ok(Err(status)) => {
                part.errors += 1;
                if part.errors <= ERRORS_LOGGED {
                    eprintln!("uuid-client: call failed: {status}");
                }
            }
            Err(_) => {
                part.errors += 1;
                if part.errors <= ERRORS_LOGGED {
                    eprintln!("uuid-client: call timed out after {:?}", cfg.call_timeout);
                }
            }
        }
    }
    part
}
