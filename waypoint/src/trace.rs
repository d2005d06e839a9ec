//! Distributed tracing at the waypoint hop: W3C Trace Context (`traceparent`, with
//! `tracestate` passed through untouched), B3 when the client sends it, a span for each
//! call, and export by OTLP/gRPC when a collector is configured.
//!
//! Written from the W3C "Trace Context" recommendation (version 00 of `traceparent`),
//! the B3 propagation specification (openzipkin/b3-propagation: the multi-header
//! `x-b3-*` form and the single `b3` header), and the OTLP specification (the
//! `TraceService/Export` call, with spans batched per resource).
//!
//! The waypoint is one hop of the trace: it keeps the trace id, makes a span of its own
//! whose parent is the client's span, and tells the backend that its span is the parent.
//! A request without a trace starts one, sampled with the configured percentage; a request
//! with one keeps its sampling decision.

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hex::encode as hex;
use http::{HeaderMap, HeaderValue};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan, Status, span, status},
};
use rand::Rng;
use tokio::sync::mpsc;

pub const TRACEPARENT: &str = "traceparent";
const B3_TRACE_ID: &str = "x-b3-traceid";
const B3_SPAN_ID: &str = "x-b3-spanid";
const B3_PARENT: &str = "x-b3-parentspanid";
const B3_SINGLE: &str = "b3";

/// How the waypoint traces.
#[derive(Clone)]
pub struct Tracer {
    /// Percentage of new traces to sample, 0 to 100.
    pub sampling: f64,
    pub exporter: Option<mpsc::Sender<OtlpSpan>>,
}

/// The waypoint's span of one call.
pub struct Span {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    sampled: bool,
    name: String,
    start: SystemTime,
    exporter: Option<mpsc::Sender<OtlpSpan>>,
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    // All-zero ids are invalid in both W3C and B3.
    out.iter().any(|&b| b != 0).then_some(out)
}

/// A `traceparent` value: (trace id, parent span id, sampled). Version 00 has exactly four
/// fields; a later version may add fields after them, which are ignored (the W3C
/// recommendation's rule for versions it does not know). Upper-case hex is invalid.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let mut fields = value.split('-');
    let version = fields.next()?;
    let trace = fields.next()?;
    let parent = fields.next()?;
    let flags = fields.next()?;
    let lower = |s: &str| !s.bytes().any(|c| c.is_ascii_uppercase());
    if version.len() != 2 || version == "ff" || !lower(value) {
        return None;
    }
    if version == "00" && fields.next().is_some() {
        return None;
    }
    let flags = u8::from_str_radix(flags.get(..2)?, 16).ok()?;
    Some((unhex(trace)?, unhex(parent)?, flags & 1 == 1))
}

impl Tracer {
    /// Starts the waypoint's span for a call, and rewrites the trace headers the backend
    /// gets so that this span is their parent.
    pub fn start(&self, headers: &mut HeaderMap, name: &str) -> Span {
        let mut rng = rand::rng();
        let span_id = loop {
            let id: [u8; 8] = rng.random();
            if id != [0; 8] {
                break id;
            }
        };
        let incoming = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let b3 = b3_context(headers);
        let (trace_id, parent, sampled) = match (incoming, b3) {
            (Some((trace, parent, sampled)), _) => (trace, Some(parent), sampled),
            (None, Some((trace, parent, sampled))) => {
                (trace, parent, sampled.unwrap_or_else(|| self.sample()))
            }
            (None, None) => {
                let trace = loop {
                    let id: [u8; 16] = rng.random();
                    if id != [0; 16] {
                        break id;
                    }
                };
                (trace, None, self.sample())
            }
        };
        let flags = if sampled { "01" } else { "00" };
        let traceparent = format!("00-{}-{}-{flags}", hex(trace_id), hex(span_id));
        if let Ok(v) = HeaderValue::from_str(&traceparent) {
            headers.insert(TRACEPARENT, v);
        }
        if b3.is_some() {
            rewrite_b3(headers, &span_id);
        }
        Span {
            trace_id,
            span_id,
            parent,
            sampled,
            name: name.to_string(),
            start: SystemTime::now(),
            exporter: self.exporter.clone(),
        }
    }

    fn sample(&self) -> bool {
        self.sampling >= 100.0 || rand::rng().random_range(0.0..100.0) < self.sampling
    }
}

/// A B3 context: (trace id, span id, sampled if said). A 64-bit B3 trace id is widened to
/// 128 bits with leading zeros, as the B3 specification allows.
/// A B3 context: trace id, span id (if any), sampling decision (if said).
type B3 = ([u8; 16], Option<[u8; 8]>, Option<bool>);

fn b3_context(headers: &HeaderMap) -> Option<B3> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let trace = |t: &str| match t.len() {
        16 => unhex::<8>(t).map(|short| {
            let mut long = [0u8; 16];
            long[8..].copy_from_slice(&short);
            long
        }),
        _ => unhex::<16>(t),
    };
    if let Some(single) = text(B3_SINGLE) {
        let mut parts = single.split('-');
        let trace = trace(parts.next()?)?;
        let span = unhex::<8>(parts.next()?);
        let sampled = parts.next().map(|s| s == "1" || s == "d");
        return Some((trace, span, sampled));
    }
    let trace = trace(text(B3_TRACE_ID)?)?;
    let span = text(B3_SPAN_ID).and_then(unhex::<8>);
    let sampled = text("x-b3-sampled").map(|s| s == "1" || s == "true");
    Some((trace, span, sampled))
}

/// Makes the waypoint's span the B3 parent of the backend's.
fn rewrite_b3(headers: &mut HeaderMap, span_id: &[u8; 8]) {
    let ours = hex(span_id);
    if let Some(single) = headers.get(B3_SINGLE).and_then(|v| v.to_str().ok()) {
        let mut parts: Vec<&str> = single.split('-').collect();
        if parts.len() >= 2 {
            let parent = parts[1].to_string();
            parts[1] = &ours;
            let mut value = parts[..parts.len().min(3)].join("-");
            if parts.len() >= 3 {
                value.push('-');
                value.push_str(&parent);
            }
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(B3_SINGLE, v);
            }
        }
        return;
    }
    if let Some(parent) = headers.get(B3_SPAN_ID).cloned() {
        headers.insert(B3_PARENT, parent);
    }
    if let Ok(v) = HeaderValue::from_str(&ours) {
        headers.insert(B3_SPAN_ID, v);
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

impl Span {
    pub fn trace_id_hex(&self) -> String {
        hex(self.trace_id)
    }

    /// Ends the span: a sampled one goes to the exporter, if there is one.
    pub fn end(self, status: u16, grpc_status: Option<u32>, upstream: Option<SocketAddr>) {
        let Some(exporter) = self.exporter.filter(|_| self.sampled) else {
            return;
        };
        let failed = status >= 500 || grpc_status.is_some_and(|c| c != 0);
        let mut attributes = vec![
            attribute(
                "http.response.status_code",
                any_value::Value::IntValue(status.into()),
            ),
            attribute("weft.hop", any_value::Value::StringValue("waypoint".into())),
        ];
        if let Some(code) = grpc_status {
            attributes.push(attribute(
                "rpc.grpc.status_code",
                any_value::Value::IntValue(code.into()),
            ));
        }
        if let Some(upstream) = upstream {
            attributes.push(attribute(
                "upstream.address",
                any_value::Value::StringValue(upstream.to_string()),
            ));
        }
        let span = OtlpSpan {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: self.name,
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: nanos(self.start),
            end_time_unix_nano: nanos(SystemTime::now()),
            attributes,
            status: Some(Status {
                code: if failed {
                    status::StatusCode::Error
                } else {
                    status::StatusCode::Unset
                } as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        // A full queue drops the span rather than hold the call up.
        let _ = exporter.try_send(span);
    }
}

/// Starts the OTLP exporter: spans are batched (up to 512, or whatever arrived within a
/// second) and sent to `endpoint` (`http://host:4317`) with `TraceService/Export`.
pub fn start_exporter(endpoint: String, service: String) -> mpsc::Sender<OtlpSpan> {
    let (tx, mut rx) = mpsc::channel::<OtlpSpan>(4096);
    tokio::spawn(async move {
        let mut client = None;
        let mut batch = Vec::new();
        loop {
            let first = rx.recv().await;
            let Some(first) = first else { return };
            batch.push(first);
            let flush_at = tokio::time::Instant::now() + Duration::from_secs(1);
            while batch.len() < 512 {
                match tokio::time::timeout_at(flush_at, rx.recv()).await {
                    Ok(Some(span)) => batch.push(span),
                    Ok(None) | Err(_) => break,
                }
            }
            if client.is_none() {
                match TraceServiceClient::connect(endpoint.clone()).await {
                    Ok(c) => client = Some(c),
                    Err(err) => {
                        tracing::warn!(%endpoint, %err, dropped = batch.len(), "cannot reach the OTLP collector");
                        batch.clear();
                        continue;
                    }
                }
            }
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![attribute(
                            "service.name",
                            any_value::Value::StringValue(service.clone()),
                        )],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "weft-waypoint".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        }),
                        spans: std::mem::take(&mut batch),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            if let Some(c) = client.as_mut()
                && let Err(err) = c.export(request).await
            {
                tracing::warn!(%endpoint, %err, "OTLP export failed");
                client = None;
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(sampling: f64) -> Tracer {
        Tracer {
            sampling,
            exporter: None,
        }
    }

    #[test]
    fn traceparent_keeps_the_trace_and_makes_our_span_the_parent() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        headers.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
        let span = tracer(0.0).start(&mut headers, "/a/B");
        let out = headers[TRACEPARENT].to_str().unwrap();
        let (trace, parent, sampled) = parse_traceparent(out).unwrap();
        assert_eq!(hex(trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent, span.span_id);
        assert_ne!(hex(parent), "00f067aa0ba902b7");
        assert!(
            sampled,
            "the client's decision stands whatever the percentage"
        );
        assert_eq!(span.parent.map(hex).as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(headers["tracestate"], "congo=t61rcWkgMzE");
    }

    #[test]
    fn invalid_traceparents_are_replaced() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
        let mut headers = HeaderMap::new();
        let span = tracer(100.0).start(&mut headers, "/a/B");
        let (trace, parent, sampled) =
            parse_traceparent(headers[TRACEPARENT].to_str().unwrap()).unwrap();
        assert_eq!(trace, span.trace_id);
        assert_eq!(parent, span.span_id);
        assert!(sampled && span.parent.is_none());
        let mut headers = HeaderMap::new();
        tracer(0.0).start(&mut headers, "/a/B");
        assert!(
            !parse_traceparent(headers[TRACEPARENT].to_str().unwrap())
                .unwrap()
                .2
        );
    }

    #[test]
    fn b3_headers_follow_the_hop() {
        let mut headers = HeaderMap::new();
        headers.insert(B3_TRACE_ID, "463ac35c9f6413ad".parse().unwrap());
        headers.insert(B3_SPAN_ID, "a2fb4a1d1a96d312".parse().unwrap());
        headers.insert("x-b3-sampled", "1".parse().unwrap());
        let span = tracer(0.0).start(&mut headers, "/a/B");
        assert_eq!(span.trace_id_hex(), "0000000000000000463ac35c9f6413ad");
        assert_eq!(headers[B3_TRACE_ID], "463ac35c9f6413ad");
        assert_eq!(headers[B3_PARENT], "a2fb4a1d1a96d312");
        assert_eq!(headers[B3_SPAN_ID].to_str().unwrap(), hex(span.span_id));
        assert!(span.sampled);
        let (trace, _, _) = parse_traceparent(headers[TRACEPARENT].to_str().unwrap()).unwrap();
        assert_eq!(trace, span.trace_id);

        let mut single = HeaderMap::new();
        single.insert(
            B3_SINGLE,
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
                .parse()
                .unwrap(),
        );
        let span = tracer(0.0).start(&mut single, "/a/B");
        assert_eq!(
            single[B3_SINGLE].to_str().unwrap(),
            format!(
                "80f198ee56343ba864fe8b2a57d3eff7-{}-1-e457b5a2e4d86bd1",
                hex(span.span_id)
            )
        );
    }
}
