//! `uuid-client`'s work: many unary Whoami calls over one HTTP/2 connection, and a report
//! of who answered, with which status, and how fast.
//!
//! A failed call is counted, never fatal, because the tests of retries and outlier
//! detection expect some to fail; only failing to connect ends the run. Every call is
//! bounded by the client's own timeout, so a stalled proxy cannot hang a test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::metadata::AsciiMetadataKey;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use super::faults::REQUEST_KEY;
use super::metadata::{self, Header, HeaderCycle};
use super::proto::WhoamiRequest;
use super::proto::whoami_client::WhoamiClient;
use super::{ConnectError, code_name};
use crate::stats::Summary;

/// `uuid-client` kept its error type's name from before [`ConnectError`] was shared.
pub type ClientError = ConnectError;

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
    /// How long the client waits for one call; the server is not told.
    pub call_timeout: Duration,
    /// The gRPC deadline each call carries (`grpc-timeout`); the client gives up then too.
    pub deadline: Option<Duration>,
    /// Sent on every call.
    pub headers: Vec<Header>,
    pub header_cycle: Option<HeaderCycle>,
    /// Sends a fresh `x-request-key` with every call.
    pub unique_key: bool,
    /// Size of `WhoamiRequest.padding`.
    pub request_bytes: usize,
    /// Asked of the server as `WhoamiRequest.reply_bytes`.
    pub reply_bytes: u32,
    /// Calls per second: call i starts at `start + i / rate`, as far as `concurrency` lets.
    pub rate: Option<f64>,
}

impl ClientConfig {
    /// One call at a time, as fast as they go, with nothing extra in them.
    pub fn new(url: String, calls: u64) -> Self {
        Self {
            url,
            calls,
            concurrency: 1,
            caller: String::new(),
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(5),
            deadline: None,
            headers: Vec::new(),
            header_cycle: None,
            unique_key: false,
            request_bytes: 0,
            reply_bytes: 0,
            rate: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientReport {
    pub calls: u64,
    pub ok: u64,
    pub errors: u64,
    pub by_uuid: BTreeMap<String, u64>,
    pub by_pod: BTreeMap<String, u64>,
    /// Every call by its status, named as [`code_name`] does.
    pub by_status: BTreeMap<String, u64>,
    /// With a header cycle: for each value of the header, the UUIDs that answered it.
    pub by_header: Option<BTreeMap<String, BTreeMap<String, u64>>>,
    /// Of the successful calls; `None` when there were none.
    pub latency: Option<Summary>,
    /// From connected to the last reply.
    pub seconds: f64,
}

impl ClientReport {
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "calls": self.calls,
            "ok": self.ok,
            "errors": self.errors,
            "by_uuid": self.by_uuid,
            "by_pod": self.by_pod,
            "by_status": self.by_status,
            "latency_ms": self.latency.map(|s| latency_ms(&s)),
            "seconds": self.seconds,
        });
        if let Some(by_header) = &self.by_header {
            json["by_header"] = serde_json::json!(by_header);
        }
        json
    }
}

fn latency_ms(s: &Summary) -> serde_json::Value {
    // The summary is in microseconds with nanosecond precision; milliseconds keep it.
    let ms = |us: f64| (us * 1e3).round() / 1e6;
    serde_json::json!({
        "count": s.count,
        "p50": ms(s.p50_us),
        "p90": ms(s.p90_us),
        "p99": ms(s.p99_us),
        "mean": ms(s.mean_us),
    })
}

/// What one worker saw.
#[derive(Debug, Default)]
struct Part {
    ok: u64,
    errors: u64,
    by_uuid: BTreeMap<String, u64>,
    by_pod: BTreeMap<String, u64>,
    by_status: BTreeMap<String, u64>,
    by_header: BTreeMap<String, BTreeMap<String, u64>>,
    latencies: Vec<Duration>,
}

impl Part {
    fn merge_into(self, report: &mut ClientReport, latencies: &mut Vec<Duration>) {
        report.ok += self.ok;
        let add = |into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>| {
            for (k, v) in from {
                *into.entry(k).or_default() += v;
            }
        };
        add(&mut report.by_uuid, self.by_uuid);
        add(&mut report.by_pod, self.by_pod);
        add(&mut report.by_status, self.by_status);
        if let Some(by_header) = &mut report.by_header {
            for (value, uuids) in self.by_header {
                add(by_header.entry(value).or_default(), uuids);
            }
        }
        latencies.extend(self.latencies);
    }
}

/// What all workers share.
struct Run {
    cfg: ClientConfig,
    next: AtomicU64,
    /// When call 0 is due.
    start: Instant,
    /// Makes this run's request keys unlike any other run's, on any client.
    run_id: String,
    padding: Vec<u8>,
}

/// How many failed calls each worker describes on stderr; the rest are only counted.
const ERRORS_LOGGED: u64 = 5;

/// Connects one channel (one HTTP/2 connection) and makes `calls` unary calls over it,
/// `concurrency` at a time.
pub async fn run_client(cfg: &ClientConfig) -> Result<ClientReport, ClientError> {
    let channel = super::connect(&cfg.url, cfg.connect_timeout).await?;
    let run = Arc::new(Run {
        cfg: cfg.clone(),
        next: AtomicU64::new(0),
        start: Instant::now(),
        run_id: uuid::Uuid::new_v4().simple().to_string(),
        padding: vec![0; cfg.request_bytes],
    });
    let workers: Vec<_> = (0..cfg.concurrency.max(1))
        .map(|_| tokio::spawn(worker(super::client(channel.clone()), Arc::clone(&run))))
        .collect();

    let mut report = ClientReport {
        calls: cfg.calls,
        by_header: cfg.header_cycle.as_ref().map(|_| BTreeMap::new()),
        ..ClientReport::default()
    };
    let mut latencies = Vec::new();
    for w in workers {
        match w.await {
            Ok(part) => part.merge_into(&mut report, &mut latencies),
            // A worker cannot panic on a reply; if one did, its calls count as errors below.
            Err(e) => eprintln!("uuid-client: worker failed: {e}"),
        }
    }
    report.errors = report.calls - report.ok;
    report.latency = Summary::of(&mut latencies);
    report.seconds = run.start.elapsed().as_secs_f64();
    Ok(report)
}

async fn worker(mut client: WhoamiClient<Channel>, run: Arc<Run>) -> Part {
    let cfg = &run.cfg;
    let mut part = Part::default();
    loop {
        let i = run.next.fetch_add(1, Ordering::Relaxed);
        if i >= cfg.calls {
            break;
        }
        // With a rate, latency counts from when the call was due: a client that falls
        // behind shows it as latency instead of quietly lowering the rate.
        let due = match cfg.rate {
            Some(rate) => {
                let due = run.start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => Instant::now(),
        };
        let sent = Instant::now();
        let cycle_value = cfg.header_cycle.as_ref().map(|c| c.value(i));
        let request = request(&run, i, cycle_value.as_deref());
        let result = tokio::time::timeout(cfg.call_timeout, client.whoami(request)).await;
        let code = match result {
            Ok(Ok(reply)) => {
                part.latencies.push(due.elapsed());
                let reply = reply.into_inner();
                part.ok += 1;
                if let Some(value) = cycle_value {
                    *part
                        .by_header
                        .entry(value)
                        .or_default()
                        .entry(reply.uuid.clone())
                        .or_default() += 1;
                }
                *part.by_uuid.entry(reply.uuid).or_default() += 1;
                *part.by_pod.entry(reply.pod).or_default() += 1;
                Code::Ok
            }
            Ok(Err(status)) => {
                let code = classify(&status, cfg.deadline, sent.elapsed());
                part.errors += 1;
                if part.errors <= ERRORS_LOGGED {
                    eprintln!("uuid-client: call {i} failed: {status}");
                }
                code
            }
            Err(_) => {
                part.errors += 1;
                if part.errors <= ERRORS_LOGGED {
                    eprintln!(
                        "uuid-client: call {i} timed out after {:?}",
                        cfg.call_timeout
                    );
                }
                Code::DeadlineExceeded
            }
        };
        *part.by_status.entry(code_name(code)).or_default() += 1;
    }
    part
}

fn request(run: &Run, i: u64, cycle_value: Option<&str>) -> Request<WhoamiRequest> {
    let cfg = &run.cfg;
    let mut request = Request::new(WhoamiRequest {
        caller: cfg.caller.clone(),
        reply_bytes: cfg.reply_bytes,
        padding: run.padding.clone(),
    });
    let map = request.metadata_mut();
    metadata::apply(map, &cfg.headers);
    if let (Some(cycle), Some(value)) = (&cfg.header_cycle, cycle_value) {
        metadata::set(map, &cycle.key, value);
    }
    if cfg.unique_key {
        metadata::set(
            map,
            &AsciiMetadataKey::from_static(REQUEST_KEY),
            &format!("{}-{i}", run.run_id),
        );
    }
    if let Some(deadline) = cfg.deadline {
        request.set_timeout(deadline);
    }
    request
}

/// The code a call's failure counts under. tonic's client enforces a `grpc-timeout` by
/// failing the call with `Cancelled`; the gRPC specification calls that
/// `DeadlineExceeded`, and so does every other client, so the report does too.
fn classify(status: &Status, deadline: Option<Duration>, elapsed: Duration) -> Code {
    match (status.code(), deadline) {
        (Code::Cancelled, Some(d)) if elapsed >= d => Code::DeadlineExceeded,
        (code, _) => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelled_at_the_deadline_is_deadline_exceeded() {
        let ms = Duration::from_millis;
        let cancelled = Status::cancelled("Timeout expired");
        assert_eq!(
            classify(&cancelled, Some(ms(100)), ms(101)),
            Code::DeadlineExceeded
        );
        // Cancelled early, or with no deadline, is a real cancellation.
        assert_eq!(classify(&cancelled, Some(ms(100)), ms(5)), Code::Cancelled);
        assert_eq!(classify(&cancelled, None, ms(500)), Code::Cancelled);
        assert_eq!(
            classify(&Status::unavailable("x"), Some(ms(1)), ms(5)),
            Code::Unavailable
        );
    }

    #[test]
    fn report_json_has_header_breakdown_only_with_a_cycle() {
        let mut report = ClientReport {
            calls: 1,
            ok: 1,
            ..ClientReport::default()
        };
        assert!(report.to_json().get("by_header").is_none());
        assert!(report.to_json()["latency_ms"].is_null());
        report.by_header = Some(BTreeMap::new());
        report.latency = Summary::of(&mut [Duration::from_micros(1500)]);
        let json = report.to_json();
        assert_eq!(json["by_header"], serde_json::json!({}));
        assert_eq!(json["latency_ms"]["p50"], 1.5);
    }
}
