//! Answering a client's HTTP/2 connection that cannot be served at all, in HTTP/2: each
//! stream it opens gets a status instead of a connection that just closes. A gRPC client
//! reads a closed connection as UNKNOWN (tonic) or UNAVAILABLE (grpc-go) depending on the
//! library; a trailers-only response with `grpc-status` (gRPC over HTTP/2, "Responses") is
//! read the same by all of them. The node agent uses this when no upstream will take a
//! captured gRPC or HTTP/2 connection (no waypoint pod reachable, say), before it has sent
//! a byte of the client's anywhere, so nothing the client sent was acted on.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

/// What every stream of the connection is answered with.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status: 200 for gRPC (whose status is `grpc`), else the error's own.
    pub http: http::StatusCode,
    /// The gRPC status code and message, for a gRPC port.
    pub grpc: Option<(u16, String)>,
}

impl Answer {
    /// UNAVAILABLE (14) for gRPC, 503 for plain HTTP/2.
    pub fn unavailable(grpc: bool, message: &str) -> Self {
        Self::of(grpc, 14, http::StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// PERMISSION_DENIED (7) for gRPC, 403 for plain HTTP/2.
    pub fn denied(grpc: bool, message: &str) -> Self {
        Self::of(grpc, 7, http::StatusCode::FORBIDDEN, message)
    }

    fn of(grpc: bool, code: u16, http: http::StatusCode, message: &str) -> Self {
        match grpc {
            true => Answer {
                http: http::StatusCode::OK,
                grpc: Some((code, message.to_string())),
            },
            false => Answer { http, grpc: None },
        }
    }

    fn response(&self) -> http::Response<()> {
        let mut response = http::Response::new(());
        *response.status_mut() = self.http;
        let headers = response.headers_mut();
        if let Some((code, message)) = &self.grpc {
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            headers.insert("grpc-status", http::HeaderValue::from(*code));
            if let Ok(value) = http::HeaderValue::from_str(&percent_encode(message)) {
                headers.insert("grpc-message", value);
            }
        }
        response
    }
}

/// Serves `io` as an HTTP/2 server that answers each stream with `answer` (headers only,
/// ending the stream) for `within`; then sends GOAWAY, so that the client opens its next
/// connection anew, and answers what it still sends for as long again. Not at once: an
/// h2-based client fails a call that it had queued but not yet sent when a GOAWAY comes
/// (tonic reads it as CANCELLED). A client that does not speak HTTP/2 just sees the
/// connection close.
pub async fn answer_every_stream<T>(io: T, answer: &Answer, within: Duration)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let Ok(Ok(mut connection)) =
        tokio::time::timeout(within, h2::server::Builder::new().handshake::<_, Bytes>(io)).await
    else {
        return;
    };
    let response = answer.response();
    if tokio::time::timeout(within, answer_streams(&mut connection, &response))
        .await
        .is_ok()
    {
        return;
    }
    connection.graceful_shutdown();
    let _ = tokio::time::timeout(within, answer_streams(&mut connection, &response)).await;
}

async fn answer_streams<T>(
    connection: &mut h2::server::Connection<T, Bytes>,
    response: &http::Response<()>,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(Ok((_request, mut respond))) = connection.accept().await {
        let _ = respond.send_response(response.clone(), true);
    }
}

/// `grpc-message` is percent-encoded UTF-8: everything outside printable ASCII, and `%`.
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stream a client opens gets the answer as headers that end the stream, and the
    /// connection ends when the client is done with it.
    #[tokio::test]
    async fn each_stream_gets_the_answer_and_the_connection_ends() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let answer = Answer::unavailable(true, "no waypoint pod is reachable: 100%");
        let served = tokio::spawn(async move {
            answer_every_stream(server, &answer, Duration::from_secs(5)).await
        });
        let (mut send, connection) = h2::client::handshake(client).await.unwrap();
        let driver = tokio::spawn(connection);
        let mut responses = Vec::new();
        for _ in 0..3 {
            let request = http::Request::post("http://whoami/whoami.Whoami/Whoami")
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            let (response, _body) = send.send_request(request, false).unwrap();
            responses.push(response);
        }
        for response in responses {
            let response = response.await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["grpc-status"], "14");
            assert_eq!(
                response.headers()["grpc-message"],
                "no waypoint pod is reachable: 100%25"
            );
            assert!(response.into_body().is_end_stream());
        }
        drop(send);
        tokio::time::timeout(Duration::from_secs(2), served)
            .await
            .expect("the connection ends")
            .unwrap();
        let _ = driver.await;
    }

    #[test]
    fn plain_http2_gets_the_http_status() {
        let answer = Answer::denied(false, "denied");
        let response = answer.response();
        assert_eq!(response.status(), 403);
        assert!(response.headers().get("grpc-status").is_none());
    }
}
