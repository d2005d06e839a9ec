//! The body the waypoint answers a call with. An upstream response streams through frame by
//! frame, trailers included, as the client reads it (so a server stream is never held
//! whole). The call's deadline keeps running while it does: when it passes, the upstream
//! stream is reset and a gRPC client gets DEADLINE_EXCEEDED in the trailers. When the body
//! ends, however it ends, the call is counted: the endpoint's health and latency, and the
//! request metric with its response flags.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::{
    breaker::Admission,
    cluster::Cluster,
    endpoint::{Endpoint, Outcome},
    grpc::{self, Code},
    metrics::Flags,
    replay::BoxError,
    telemetry::Record,
    upstream::Lease,
};

/// A call in flight on an endpoint: counted in its in-flight requests until dropped.
pub struct InFlight(pub Arc<Endpoint>);

impl InFlight {
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint
            .active
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InFlight(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// An upstream answer that is still streaming.
pub struct Streaming {
    pub inner: Incoming,
    pub deadline: Option<Pin<Box<Sleep>>>,
    pub record: Record,
    pub cluster: Arc<Cluster>,
    pub in_flight: InFlight,
    pub status: u16,
    /// Held for the life of the answer: the connection's stream slot, the cluster's request slot.
    pub _lease: Lease,
    pub _admission: Admission,
}

pub enum ResponseBody {
    Empty,
    Streaming(Box<Option<Streaming>>),
}

impl ResponseBody {
    pub fn streaming(streaming: Streaming) -> Self {
        ResponseBody::Streaming(Box::new(Some(streaming)))
    }
}

/// Ends a streaming call: reports the endpoint's outcome and counts the call.
fn end(mut s: Streaming, grpc_status: Option<u32>, flags: Flags) {
    let outcome = if flags.contains(Flags::UR) {
        Outcome::Reset
    } else if flags.contains(Flags::UT) {
        Outcome::Timeout
    } else {
        Outcome::Status(match grpc_status {
            Some(code) if s.record.grpc => grpc::as_http_status(code),
            _ => s.status,
        })
    };
    // A client that left is no news about the endpoint.
    if !flags.contains(Flags::DC) {
        s.cluster.report(&s.in_flight.0, outcome);
    }
    s.record.finish(s.status, grpc_status, flags);
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let ResponseBody::Streaming(slot) = self.get_mut() else {
            return Poll::Ready(None);
        };
        let Some(s) = slot.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(deadline) = s.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            let (grpc, s) = (s.record.grpc, slot.take());
            let mut flags = Flags::UT;
            flags.set(Flags::LR);
            if let Some(s) = s {
                end(s, grpc.then_some(Code::DeadlineExceeded as u32), flags);
            }
            if grpc {
                let mut trailers = HeaderMap::new();
                grpc::insert_status(
                    &mut trailers,
                    Code::DeadlineExceeded,
                    "deadline exceeded at the waypoint",
                );
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(Some(Err("upstream response timed out".into())));
        }
        match Pin::new(&mut s.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    s.record.response_bytes += data.len() as u64;
                }
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc::status(trailers);
                    if let Some(s) = slot.take() {
                        end(s, code, Flags::default());
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                if let Some(s) = slot.take() {
                    end(s, None, Flags::default());
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                let grpc = s.record.grpc;
                if let Some(s) = slot.take() {
                    end(s, grpc.then_some(Code::Unavailable as u32), Flags::UR);
                }
                if !grpc {
                    return Poll::Ready(Some(Err(err.into())));
                }
                // A gRPC client gets the status the failure deserves, after the messages
                // that came before it, rather than a reset stream (which clients read as
                // INTERNAL or UNKNOWN).
                let mut trailers = HeaderMap::new();
                let message = format!("upstream reset after the response began: {err}");
                grpc::insert_status(&mut trailers, Code::Unavailable, &message);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Empty => true,
            ResponseBody::Streaming(s) => s.is_none(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let ResponseBody::Streaming(slot) = self
            && let Some(s) = slot.take()
        {
            end(s, None, Flags::DC);
        }
    }
}

/// An answer of the waypoint's own: a trailers-only gRPC status for a gRPC call, else the
/// matching HTTP status.
pub fn local(mut record: Record, code: Code, flag: Flags, message: &str) -> Response<ResponseBody> {
    record.flags.set(flag);
    let response = if record.grpc {
        grpc::trailers_only(code, message, ResponseBody::Empty)
    } else {
        let mut r = Response::new(ResponseBody::Empty);
        *r.status_mut() = grpc::http_status(code);
        if let Ok(v) = HeaderValue::from_str(message) {
            r.headers_mut().insert("x-weft-error", v);
        }
        r
    };
    record.finish(
        response.status().as_u16(),
        record.grpc.then_some(code as u32),
        Flags::default(),
    );
    tracing::debug!(service = %record.called.label, %message, "answered locally");
    response
}
