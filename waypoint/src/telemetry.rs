//! What the waypoint reports of each call when it ends: Istio's standard request metrics
//! (`istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes`,
//! `istio_response_bytes`, with the labels of Istio's "Standard Metrics" reference), Weft's
//! own per-route counter, one JSON access-log line, and the call's trace span.
//!
//! The access log goes through a bounded channel to a writer task, so that a slow disk
//! never holds a call up: when the channel is full the line is dropped and counted.

use std::{
    io::Write,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::mpsc;

use crate::{
    called::Called,
    endpoint::Endpoint,
    grpc::Code,
    metrics::{Flags, IstioLabels, Metrics, RequestLabels},
    trace::Span,
};

/// Which calls the access log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFilter {
    /// Every call.
    All,
    /// Calls that failed: an HTTP status of 400 or more, a gRPC status other than OK, or
    /// any response flag.
    Errors,
}

/// The access log's writer side.
#[derive(Clone)]
pub struct AccessLog {
    lines: mpsc::Sender<String>,
    filter: LogFilter,
}

impl AccessLog {
    /// Starts the writer task; `-` writes to standard output.
    pub fn start(path: PathBuf, filter: LogFilter) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?,
            )
        };
        let (lines, mut rx) = mpsc::channel::<String>(8192);
        tokio::task::spawn_blocking(move || {
            let mut buffer = Vec::with_capacity(64 * 1024);
            while let Some(line) = rx.blocking_recv() {
                buffer.extend_from_slice(line.as_bytes());
                buffer.push(b'\n');
                // Batch what is already queued, then write it in one go.
                while buffer.len() < 60 * 1024 {
                    match rx.try_recv() {
                        Ok(line) => {
                            buffer.extend_from_slice(line.as_bytes());
                            buffer.push(b'\n');
                        }
                        Err(_) => break,
                    }
                }
                if let Err(err) = out.write_all(&buffer).and_then(|()| out.flush()) {
                    tracing::warn!(%err, "cannot write the access log");
                }
                buffer.clear();
            }
        });
        Ok(AccessLog { lines, filter })
    }
}

/// What is known of a call when it is answered, to report it when it ends.
pub struct Record {
    pub metrics: Metrics,
    pub access_log: Option<AccessLog>,
    pub called: Arc<Called>,
    pub route: String,
    pub grpc: bool,
    pub flags: Flags,
    pub method: http::Method,
    pub path: String,
    pub started: Instant,
    /// The endpoint that answered, once there is one.
    pub upstream: Option<Arc<Endpoint>>,
    /// Request body bytes read from the client, counted as they pass.
    pub request_bytes: Arc<AtomicU64>,
    pub response_bytes: u64,
    pub span: Option<Span>,
}

impl Record {
    /// Reports the finished call.
    pub fn finish(&mut self, status: u16, grpc_status: Option<u32>, flags: Flags) {
        let grpc_response_status = match (self.grpc, grpc_status) {
            (false, _) => "-".to_string(),
            (true, Some(code)) => code.to_string(),
            // A gRPC call that ended without a status: the client sees UNKNOWN.
            (true, None) => (Code::Unknown as u8).to_string(),
        };
        let mut all = self.flags;
        all.set(flags);
        let response_flags = all.to_string();
        let duration = self.started.elapsed();
        let called = &self.called;
        let request = RequestLabels {
            destination_service: called.label.to_string(),
            route: self.route.clone(),
            grpc_response_status: grpc_response_status.clone(),
            response_code: status,
            response_flags: response_flags.clone(),
        };
        let unknown = || "unknown".to_string();
        let (workload, workload_ns, principal) = match &self.upstream {
            Some(e) => (
                e.workload.to_string(),
                called.service.0.clone(),
                e.principal.to_string(),
            ),
            None => (unknown(), unknown(), unknown()),
        };
        let labels = IstioLabels {
            reporter: "waypoint",
            source_workload: called.source.workload.to_string(),
            source_workload_namespace: called.source.namespace.to_string(),
            source_principal: called.source.principal.to_string(),
            destination_workload: workload,
            destination_workload_namespace: workload_ns,
            destination_principal: principal,
            destination_service: called.host.to_string(),
            destination_service_name: called.service.1.clone(),
            destination_service_namespace: called.service.0.clone(),
            request_protocol: if self.grpc { "grpc" } else { "http" },
            response_code: status,
            grpc_response_status: grpc_response_status.clone(),
            response_flags: response_flags.clone(),
            connection_security_policy: "mutual_tls",
        };
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        self.metrics.count_call(
            &called.service,
            &request,
            &labels,
            [
                duration.as_secs_f64() * 1000.0,
                request_bytes as f64,
                self.response_bytes as f64,
            ],
        );

        let span = self.span.take();
        if let Some(log) = &self.access_log {
            let failed =
                status >= 400 || grpc_status.is_some_and(|c| c != 0) || all != Flags::default();
            if log.filter == LogFilter::All || failed {
                let line = serde_json::json!({
                    "start_time_unix_ms": unix_millis(SystemTime::now() - duration),
                    "protocol": if self.grpc { "gRPC" } else { "HTTP/2" },
                    "method": self.method.as_str(),
                    "path": self.path,
                    "authority": called.host.as_ref(),
                    "response_code": status,
                    "grpc_status": grpc_status,
                    "duration_ms": duration.as_secs_f64() * 1000.0,
                    "upstream_host": self.upstream.as_ref().map(|e| e.address.to_string()),
                    "upstream_cluster": self.route,
                    "response_flags": response_flags,
                    "bytes_received": request_bytes,
                    "bytes_sent": self.response_bytes,
                    "source_principal": called.source.principal.as_ref(),
                    "source_address": called.client_ip.to_string(),
                    "destination_principal": self.upstream.as_ref().map(|e| e.principal.to_string()),
                    "destination_service": called.host.as_ref(),
                    "trace_id": span.as_ref().map(|s| s.trace_id_hex()),
                });
                if log.lines.try_send(line.to_string()).is_err() {
                    self.metrics.access_log_dropped.inc();
                }
            }
        }
        if let Some(span) = span {
            span.end(
                status,
                grpc_status,
                self.upstream.as_ref().map(|e| e.address),
            );
        }
        tracing::debug!(service = %called.label, route = %self.route, status, ?grpc_status, flags = %all, "call");
    }
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
