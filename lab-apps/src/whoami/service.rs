//! The server side of `weft.demo.Whoami`: one identity for the life of the process, the
//! streaming calls, the faults it was told to show, and a count of what it received.
//!
//! The streams are never collected: `Echo` hands the request stream back as the response,
//! so a message is read only when the previous one could be sent, and HTTP/2 flow control
//! carries the backpressure to the client through whatever proxy is in between.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::stream::{self, BoxStream, StreamExt};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, Streaming};

use super::faults::{FaultConfig, Faults};
use super::proto::whoami_server::{Whoami, WhoamiServer};
use super::proto::{
    DownloadRequest, EchoMessage, EchoSummary, StatsReply, StatsRequest, WhoamiReply, WhoamiRequest,
};
use super::{MAX_MESSAGE, MAX_PAYLOAD, payload};
use crate::digest::to_hex;

/// Calls received, per method.
#[derive(Debug, Default)]
struct Counters {
    whoami: AtomicU64,
    echo: AtomicU64,
    upload: AtomicU64,
    download: AtomicU64,
    failed: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, Clone)]
pub struct WhoamiService {
    uuid: String,
    pod: String,
    faults: Arc<Faults>,
    counters: Arc<Counters>,
}

impl WhoamiService {
    /// A well-behaved service with a fresh random (v4) UUID.
    pub fn new(pod: String) -> Self {
        Self::with_faults(pod, FaultConfig::default())
    }

    /// A service that misbehaves as `faults` says.
    pub fn with_faults(pod: String, faults: FaultConfig) -> Self {
        Self {
            uuid: uuid::Uuid::new_v4().to_string(),
            pod,
            faults: Arc::new(Faults::new(faults)),
            counters: Arc::default(),
        }
    }

    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// The tonic service, accepting and sending messages up to [`MAX_MESSAGE`].
    pub fn into_server(self) -> WhoamiServer<Self> {
        WhoamiServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// Counts a call the faults failed on purpose, and passes its status on.
    fn failed(&self, status: Status) -> Status {
        bump(&self.counters.failed);
        status
    }

    /// The fault every method honours.
    fn check_fail_first<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match self.faults.fail_first(request.metadata()) {
            Some(status) => Err(self.failed(status)),
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Whoami for WhoamiService {
    async fn whoami(
        &self,
        request: Request<WhoamiRequest>,
    ) -> Result<Response<WhoamiReply>, Status> {
        bump(&self.counters.whoami);
        let plan = self
            .faults
            .whoami(request.metadata())
            .map_err(|status| self.failed(status))?;
        let reply_bytes = request.get_ref().reply_bytes as usize;
        if reply_bytes > MAX_PAYLOAD {
            return Err(Status::invalid_argument(format!(
                "reply_bytes {reply_bytes} is over the limit of {MAX_PAYLOAD}"
            )));
        }
        if !plan.delay.is_zero() {
            tokio::time::sleep(plan.delay).await;
        }
        if let Some(status) = plan.fail {
            return Err(self.failed(status));
        }
        Ok(Response::new(WhoamiReply {
            uuid: self.uuid.clone(),
            pod: self.pod.clone(),
            padding: vec![0; reply_bytes],
        }))
    }

    type EchoStream = BoxStream<'static, Result<EchoMessage, Status>>;

    async fn echo(
        &self,
        request: Request<Streaming<EchoMessage>>,
    ) -> Result<Response<Self::EchoStream>, Status> {
        bump(&self.counters.echo);
        self.check_fail_first(&request)?;
        // A request stream that ends in an error ends the response with that status.
        Ok(Response::new(request.into_inner().boxed()))
    }

    async fn upload(
        &self,
        request: Request<Streaming<EchoMessage>>,
    ) -> Result<Response<EchoSummary>, Status> {
        bump(&self.counters.upload);
        self.check_fail_first(&request)?;
        let mut inbound = request.into_inner();
        let mut hasher = Sha256::new();
        let (mut count, mut bytes) = (0u64, 0u64);
        while let Some(message) = inbound.message().await? {
            hasher.update(&message.payload);
            count += 1;
            bytes += message.payload.len() as u64;
        }
        Ok(Response::new(EchoSummary {
            count,
            sha256: to_hex(hasher),
            bytes,
        }))
    }

    type DownloadStream = BoxStream<'static, Result<EchoMessage, Status>>;

    async fn download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        bump(&self.counters.download);
        self.check_fail_first(&request)?;
        let DownloadRequest { count, size } = request.into_inner();
        let size = size as usize;
        if size > MAX_PAYLOAD {
            return Err(Status::invalid_argument(format!(
                "size {size} is over the limit of {MAX_PAYLOAD}"
            )));
        }
        // Made one message at a time as the client takes them, so `count` costs no memory.
        let messages = stream::iter(0..count).map(move |seq| {
            Ok(EchoMessage {
                seq,
                payload: payload(seq, size),
            })
        });
        Ok(Response::new(messages.boxed()))
    }

    async fn stats(&self, _request: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        Ok(Response::new(StatsReply {
            uuid: self.uuid.clone(),
            pod: self.pod.clone(),
            whoami: load(&c.whoami),
            echo: load(&c.echo),
            upload: load(&c.upload),
            download: load(&c.download),
            failed: load(&c.failed),
        }))
    }
}
