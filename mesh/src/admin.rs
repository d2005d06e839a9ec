//! The small HTTP/1.1 server behind the admin (:15000), metrics (:15020) and readiness
//! (:15021) ports of both the agent and the waypoint. Each port gets a handler that maps a
//! path to a response; there is no routing framework because there are five paths.
//!
//! The readiness port also speaks gRPC ([`serve_ready`]): `grpc.health.v1.Health` (`Check`
//! and `Watch`, from tonic-health), so that a Kubernetes `grpc:` probe works as well as an
//! `httpGet:` one on `/healthz/ready`.

use std::{convert::Infallible, future::Future, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What a handler answers for one GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    pub fn json(value: &impl serde::Serialize) -> Self {
        match serde_json::to_string_pretty(value) {
            Ok(body) => Reply {
                status: 200,
                content_type: "application/json",
                body,
            },
            Err(err) => Reply::text(500, format!("cannot encode: {err}\n")),
        }
    }

    pub fn not_found() -> Self {
        Reply::text(404, "not found\n")
    }
}

/// Maps a request path (without the query) to a reply.
pub type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// Serves `handler` on `listener` until `shutdown` completes.
/// How long a client of these ports may take to send a request's headers (and, over
/// HTTP/2, to answer a keep-alive ping) before its connection is closed.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn serve(listener: TcpListener, handler: Handler, shutdown: impl Future<Output = ()>) {
    serve_within(listener, handler, shutdown, HEADER_READ_TIMEOUT).await
}

async fn serve_within(
    listener: TcpListener,
    handler: Handler,
    shutdown: impl Future<Output = ()>,
    header_read_timeout: std::time::Duration,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(%err, "admin accept failed");
                    continue;
                }
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let reply = handler(req.uri().path());
                async move { Ok::<_, Infallible>(to_response(reply)) }
            });
            if let Err(err) = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%err, "admin connection ended with an error");
            }
        });
    }
}

fn to_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(reply.content_type),
    );
    response
}

/// The health service of a process: set `""` and its own name SERVING once it is ready,
/// NOT_SERVING when it stops.
pub type HealthReporter = tonic_health::server::HealthReporter;
pub type HealthService =
    tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>;

/// A health service, and the reporter that sets its statuses.
pub fn health() -> (HealthReporter, HealthService) {
    let reporter = HealthReporter::new();
    let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
    (
        reporter,
        tonic_health::pb::health_server::HealthServer::new(service),
    )
}

/// Sets the overall status (`""`) and `name`'s together.
pub async fn set_serving(reporter: &HealthReporter, name: &str, serving: bool) {
    use tonic_health::ServingStatus;
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for service in ["", name] {
        reporter.set_service_status(service, status).await;
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves the readiness port: gRPC health checks to `health` (over HTTP/2), everything
/// else to `handler` (over HTTP/1.1 or HTTP/2), until `shutdown` completes.
pub async fn serve_ready(
    listener: TcpListener,
    handler: Handler,
    health: HealthService,
    shutdown: impl Future<Output = ()>,
) {
    use http_body_util::BodyExt;
    use tonic::codegen::Service;
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(%err, "readiness accept failed");
                    continue;
                }
            },
        };
        let (handler, health) = (handler.clone(), health.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (handler, mut health) = (handler.clone(), health.clone());
                async move {
                    if req.uri().path().starts_with("/grpc.health.v1.Health/") {
                        let response = match health.call(req).await {
                            Ok(r) => r,
                            Err(never) => match never {},
                        };
                        return Ok::<_, Infallible>(
                            response.map(|b| b.map_err(BoxError::from).boxed_unsync()),
                        );
                    }
                    let reply = to_response(handler(req.uri().path()));
                    Ok(reply.map(|b| b.map_err(BoxError::from).boxed_unsync()))
                }
            });
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(HEADER_READ_TIMEOUT)
                .keep_alive_timeout(HEADER_READ_TIMEOUT);
            let served = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                tracing::debug!(%err, "readiness connection ended with an error");
            }
        });
    }
}

/// Encodes a prometheus-client registry in the text exposition format.
pub fn metrics_reply(registry: &prometheus_client::registry::Registry) -> Reply {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => Reply {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        },
        Err(err) => Reply::text(500, format!("cannot encode metrics: {err}\n")),
    }
}

/// An HTTP/1.1 GET of `path` from `addr`, within `timeout`: the status and the body. For the
/// agent's own small clients (`weft-agent await-pod`), not for general use.
pub async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: std::time::Duration,
) -> std::io::Result<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    let get = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(connection);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(std::io::Error::other)?;
        let response = send
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, get)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client that opens a connection and never finishes its request is dropped after
    /// the header read timeout (here 300 ms).
    #[tokio::test]
    async fn a_client_that_sends_no_headers_is_dropped() {
        const TIMEOUT: std::time::Duration = std::time::Duration::from_millis(300);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(|_| Reply::text(200, "ok\n"));
        tokio::spawn(serve_within(
            listener,
            handler,
            std::future::pending(),
            TIMEOUT,
        ));
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(TIMEOUT * 10, tcp.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the connection stayed open");
        assert!(started.elapsed() >= TIMEOUT, "{:?}", started.elapsed());
        assert!(
            !String::from_utf8_lossy(&buf).contains("200"),
            "a request without its end of headers was answered"
        );
    }
}
