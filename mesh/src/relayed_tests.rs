use super::*;

use std::time::Duration;

use http::{Request, Response};

/// A tunnel over an in-memory HBONE connection: the client's stream, the far end's stream,
/// and the task that holds the far end's connection (abort it to break the tunnel).
async fn tunnel() -> (H2Stream, H2Stream, tokio::task::JoinHandle<()>) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let (far_tx, far_rx) = tokio::sync::oneshot::channel();
    let held = tokio::spawn(async move {
        let mut conn = h2::server::handshake(b).await.unwrap();
        let (request, mut respond) = conn.accept().await.unwrap().unwrap();
        let send = respond.send_response(Response::new(()), false).unwrap();
        let _ = far_tx.send(H2Stream::new(send, request.into_body(), None));
        while let Some(Ok(_)) = conn.accept().await {}
    });
    let (mut client, conn) = h2::client::handshake(a).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::connect("10.0.0.1:80").body(()).unwrap();
    let (response, send) = client.send_request(request, false).unwrap();
    let far = far_rx.await.unwrap();
    let recv = response.await.unwrap().into_body();
    (H2Stream::new(send, recv, None), far, held)
}

fn call(path: &str) -> Request<()> {
    Request::post(format!("http://whoami{path}"))
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}

fn grpc_headers(response: Response<()>) -> Response<()> {
    let mut response = response;
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    // A header the upstream's encoder adds to the client's dynamic table.
    response
        .headers_mut()
        .insert("x-served-by", http::HeaderValue::from_static("b1"));
    response
}

/// The upstream (a waypoint, say) answers the first call whole, starts the second's
/// response and leaves the third unanswered; then its connection goes away. The first
/// call is intact, the second ends with UNAVAILABLE in its trailers after the bytes it
/// had, the third gets a trailers-only UNAVAILABLE; a GOAWAY comes with them, so the
/// client's next call needs a new connection.
#[tokio::test]
async fn open_calls_get_unavailable_when_the_tunnel_breaks() {
    let (mut near, far, held) = tunnel().await;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    // The upstream application, speaking HTTP/2 inside the tunnel.
    tokio::spawn(async move {
        let mut conn = h2::server::handshake(far).await.unwrap();
        let (mut kept, mut unanswered) = (Vec::new(), Vec::new());
        for i in 0..3 {
            let (_request, mut respond) = conn.accept().await.unwrap().unwrap();
            let response = grpc_headers(Response::new(()));
            match i {
                0 => {
                    let mut body = respond.send_response(response, false).unwrap();
                    body.send_data(Bytes::from_static(b"whole"), false).unwrap();
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    body.send_trailers(trailers).unwrap();
                }
                1 => {
                    let mut body = respond.send_response(response, false).unwrap();
                    body.send_data(Bytes::from_static(b"partial"), false)
                        .unwrap();
                    kept.push(body);
                }
                _ => unanswered.push(respond),
            }
        }
        let _ = ready_tx.send(());
        // Keep the streams open while the connection is driven.
        let _kept = (kept, unanswered);
        while let Some(Ok(_)) = conn.accept().await {}
    });
    let (app, relay_end) = tokio::io::duplex(1 << 16);
    let long = "x".repeat(300);
    let answer = Answer::unavailable(true, &format!("the waypoint went away {long}"));
    let relay = tokio::spawn(async move {
        let mut relay_end = relay_end;
        splice_answering(
            &mut near,
            &mut relay_end,
            &answer,
            Duration::from_millis(300),
            None,
        )
        .await
    });
    let (mut client, conn) = h2::client::handshake(app).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut responses = Vec::new();
    for path in ["/a", "/b", "/c"] {
        let (response, _send) = client.send_request(call(path), true).unwrap();
        responses.push(response);
    }
    let mut responses = responses.into_iter();
    let whole = responses.next().unwrap().await.unwrap();
    assert_eq!(whole.headers()["x-served-by"], "b1");
    let mut body = whole.into_body();
    assert_eq!(body.data().await.unwrap().unwrap(), "whole");
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    let partial = responses.next().unwrap().await.unwrap();
    assert_eq!(partial.status(), 200);
    let mut partial = partial.into_body();
    assert_eq!(partial.data().await.unwrap().unwrap(), "partial");
    ready_rx.await.unwrap();
    // The upstream's connection (the waypoint pod) goes away.
    held.abort();
    let trailers = tokio::time::timeout(Duration::from_secs(5), partial.trailers())
        .await
        .expect("the open call was answered")
        .unwrap()
        .unwrap();
    assert_eq!(trailers["grpc-status"], "14");
    let message = trailers["grpc-message"].to_str().unwrap();
    assert!(message.starts_with("the waypoint went away xxx") && message.len() > 300);
    let unanswered = responses.next().unwrap().await.unwrap();
    assert_eq!(unanswered.status(), 200);
    assert_eq!(unanswered.headers()["grpc-status"], "14");
    assert_eq!(unanswered.headers()["content-type"], "application/grpc");
    assert!(unanswered.body().is_end_stream());
    // GOAWAY came with the answers; the relay lets go within `within`, and a call after
    // the break needs a new connection.
    let ended = tokio::time::timeout(Duration::from_secs(3), relay)
        .await
        .expect("the relay ended after its GOAWAY")
        .unwrap();
    assert!(ended.is_err(), "{ended:?}");
    let after = client
        .ready()
        .await
        .and_then(|mut c| c.send_request(call("/d"), true).map(|_| ()));
    assert!(after.is_err(), "a call went on after the GOAWAY");
    let _ = tokio::time::timeout(Duration::from_secs(3), driver).await;
}

/// The frames of a server's connection preface and a response, as bytes.
fn frames(list: &[(u8, u8, u32, &[u8])]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for (kind, flags, stream, payload) in list {
        frame(&mut out, *kind, *flags, *stream, payload);
    }
    out.to_vec()
}

/// Bytes from the upstream go to the client in whole frames only, however they arrive,
/// and the streams follow what each side sent: a GOAWAY ends the streams above its last.
#[test]
fn the_relay_passes_whole_frames_and_follows_the_streams() {
    let mut relay = Relay::default();
    let mut client = PREFACE.to_vec();
    client.extend(frames(&[
        (SETTINGS, 0, 0, &[]),
        (HEADERS, END_HEADERS, 1, b"h"),
        (DATA, END_STREAM, 1, b"req"),
        (HEADERS, 0, 3, b"h"),
        (CONTINUATION, END_HEADERS | END_STREAM, 3, b"h"),
        (HEADERS, END_HEADERS | END_STREAM, 5, b"h"),
        (HEADERS, END_HEADERS | END_STREAM, 7, b"h"),
        (RST_STREAM, 0, 7, &[0, 0, 0, 8]),
    ]));
    // A byte at a time: heads split anywhere.
    let mut events = Vec::new();
    for b in &client {
        let Relay {
            requests, streams, ..
        } = &mut relay;
        let fed = requests.feed(std::slice::from_ref(b), |head, payload, _| {
            events.extend(streams.client_sent(head, payload))
        });
        assert_eq!(fed, Feed::Ok);
    }
    assert_eq!(
        events,
        [
            Event::Settings,
            Event::Opened(1),
            Event::Opened(3),
            Event::Opened(5),
            Event::Opened(7)
        ]
    );
    assert_eq!(relay.streams.open.keys().collect::<Vec<_>>(), [&1, &3, &5]);
    let upstream = frames(&[
        (SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]),
        (HEADERS, END_HEADERS, 1, b"h"),
        (DATA, END_STREAM, 1, &[7; 100]),
        (HEADERS, END_HEADERS, 3, b"h"),
        (GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]),
    ]);
    let mut out = Vec::new();
    for chunk in upstream.chunks(7) {
        let passed = relay.pass(Bytes::copy_from_slice(chunk));
        out.extend_from_slice(&passed);
        // Always a frame boundary.
        let mut at = 0;
        while at < out.len() {
            at += HEAD + Head::parse(&out[at..]).len;
        }
        assert_eq!(at, out.len());
    }
    assert_eq!(out, upstream);
    assert!(relay.hold.is_empty());
    // 1 ended, 5 was above the GOAWAY, 3 had its response headers.
    assert_eq!(relay.streams.open.len(), 1);
    assert!(relay.streams.open[&3].answered);
    assert!(relay.answerable());
}

/// A connection that is not HTTP/2 passes as it is, and may end at any time.
#[test]
fn a_connection_that_is_not_http2_passes_as_it_is() {
    let frames_ = Frames {
        relay: Mutex::default(),
        drain: None,
    };
    frames_.socket_sent(b"GET / HTTP/1.1\r\nHost: whoami\r\n\r\n", false);
    let answer = Bytes::from_static(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(frames_.tunnel_sent(answer.clone()), answer);
    assert!(frames_.may_end());
    // And an upstream that does not begin with SETTINGS turns the relay off too.
    let mut relay = Relay::default();
    let odd = Bytes::from(frames(&[(DATA, 0, 1, b"x"), (DATA, 0, 1, b"y")]));
    assert_eq!(relay.pass(odd.clone()), odd);
    assert!(relay.off && !relay.answerable());
}

/// A plain HTTP/2 call that had no response gets 503; one whose response had begun is
/// reset, since a status can no longer be given.
#[test]
fn plain_http2_gets_503_or_a_reset() {
    let answer = Answer::unavailable(false, "gone");
    let mut out = BytesMut::new();
    write_answer(&mut out, 1, false, &answer);
    write_answer(&mut out, 3, true, &answer);
    let first = Head::parse(&out);
    assert_eq!((first.kind, first.stream), (HEADERS, 1));
    assert!(first.has(END_STREAM) && first.has(END_HEADERS));
    // `:status` by its static index (8), then the literal "503".
    assert_eq!(&out[HEAD..HEAD + first.len], &[0x08, 3, b'5', b'0', b'3']);
    let second = Head::parse(&out[HEAD + first.len..]);
    assert_eq!((second.kind, second.stream, second.len), (RST_STREAM, 3, 4));
}

/// RFC 7541 §C.1: 10 in a 5-bit prefix, 1337 in a 5-bit prefix, 42 in an 8-bit prefix.
#[test]
fn hpack_integers_follow_the_rfc_examples() {
    let mut out = Vec::new();
    integer(&mut out, 0, 5, 10);
    assert_eq!(out, [0x0a]);
    out.clear();
    integer(&mut out, 0, 5, 1337);
    assert_eq!(out, [0x1f, 0x9a, 0x0a]);
    out.clear();
    integer(&mut out, 0, 8, 42);
    assert_eq!(out, [0x2a]);
}

/// An HTTP/2 server that holds its first call's response until `release` fires, then
/// answers it with `grpc-status: 0`; it serves on until its peer goes.
async fn held_server<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: S,
    accepted: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
) {
    let mut conn = h2::server::handshake(io).await.unwrap();
    let (_request, mut respond) = conn.accept().await.unwrap().unwrap();
    let _ = accepted.send(());
    let answered = tokio::spawn(async move {
        let _ = release.await;
        let mut body = respond
            .send_response(grpc_headers(Response::new(())), false)
            .unwrap();
        body.send_data(Bytes::from_static(b"answer"), false)
            .unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        body.send_trailers(trailers).unwrap();
    });
    while let Some(Ok(_)) = conn.accept().await {}
    let _ = answered.await;
}

/// The client of a draining relay gets GOAWAY: its next call is refused by its own HTTP/2
/// (so it takes a new connection), the call in flight finishes intact, and the connection
/// then closes; the relay ends without a break.
async fn client_told_to_go(
    app: tokio::io::DuplexStream,
    drain: tokio::sync::watch::Sender<bool>,
    accepted: tokio::sync::oneshot::Receiver<()>,
    release: tokio::sync::oneshot::Sender<()>,
    relay: tokio::task::JoinHandle<io::Result<(u64, u64)>>,
) {
    let (mut client, conn) = h2::client::handshake(app).await.unwrap();
    let driver = tokio::spawn(conn);
    let (response, _send) = client.send_request(call("/a"), true).unwrap();
    accepted.await.unwrap();
    drain.send(true).unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let next = client
                .clone()
                .ready()
                .await
                .and_then(|mut c| c.send_request(call("/b"), true).map(|_| ()));
            if next.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "no GOAWAY reached the client");
    release.send(()).unwrap();
    let response = response.await.unwrap();
    let mut body = response.into_body();
    assert_eq!(body.data().await.unwrap().unwrap(), "answer");
    assert_eq!(body.trailers().await.unwrap().unwrap()["grpc-status"], "0");
    drop(client);
    tokio::time::timeout(Duration::from_secs(3), driver)
        .await
        .expect("the client's connection closed once idle")
        .unwrap()
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(3), relay)
        .await
        .expect("the relay ended with the connection")
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
}

/// Outbound: the client is on the socket side, the upstream beyond the tunnel.
#[tokio::test]
async fn a_draining_relay_tells_its_client_to_go_and_lets_the_calls_finish() {
    let (mut near, far, _held) = tunnel().await;
    let ((accepted_tx, accepted_rx), (release_tx, release_rx)) = (
        tokio::sync::oneshot::channel(),
        tokio::sync::oneshot::channel(),
    );
    tokio::spawn(held_server(far, accepted_tx, release_rx));
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let (app, relay_end) = tokio::io::duplex(1 << 16);
    let relay = tokio::spawn(async move {
        let mut relay_end = relay_end;
        let answer = Answer::unavailable(true, "gone");
        splice_answering(
            &mut near,
            &mut relay_end,
            &answer,
            Duration::from_millis(300),
            Some(drain_rx),
        )
        .await
    });
    client_told_to_go(app, drain_tx, accepted_rx, release_tx, relay).await;
}

/// Inbound: the client is beyond the tunnel (a waypoint), the server on the socket side
/// (the pod).
#[tokio::test]
async fn a_draining_inward_relay_tells_the_tunnels_client_to_go() {
    let (near, mut far, _held) = tunnel().await;
    let ((accepted_tx, accepted_rx), (release_tx, release_rx)) = (
        tokio::sync::oneshot::channel(),
        tokio::sync::oneshot::channel(),
    );
    let (pod, relay_end) = tokio::io::duplex(1 << 16);
    tokio::spawn(held_server(pod, accepted_tx, release_rx));
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(async move {
        let mut relay_end = relay_end;
        splice_inward(&mut far, &mut relay_end, drain_rx).await
    });
    // The client's bytes cross the tunnel: a byte stream over `near`.
    let (app, mut app_end) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let mut near = near;
        let _ = tokio::io::copy_bidirectional(&mut near, &mut app_end).await;
    });
    client_told_to_go(app, drain_tx, accepted_rx, release_tx, relay).await;
}

/// The pod's frames are followed across reads: a notice wanted in the middle of a frame
/// goes where that frame ends, never inside it or inside a header block; and a pod that
/// does not speak HTTP/2 never gets one.
#[test]
fn an_inward_notice_goes_between_frames_only() {
    let mut state = InwardState {
        server: Requests {
            preface: PREFACE.len(),
            ..Requests::default()
        },
        ..InwardState::default()
    };
    state.client.feed(PREFACE, |_, _, _| {});
    let settings = frames(&[(SETTINGS, 0, 0, &[])]);
    assert_eq!(state.server_sent(&settings, false), None);
    assert!(state.at_boundary());
    // A header block split over two frames, then a DATA frame split over two reads.
    let block = frames(&[(HEADERS, 0, 1, b"h"), (CONTINUATION, END_HEADERS, 1, b"h")]);
    let data = frames(&[(DATA, 0, 1, b"0123456789")]);
    let first_half = [&block[..HEAD + 1], &block[HEAD + 1..], &data[..HEAD + 4]].concat();
    // Wanted here: the HEADERS frame ends inside the block, the CONTINUATION ends it.
    assert_eq!(state.server_sent(&first_half, true), Some(block.len()));
    assert!(!state.at_boundary(), "mid-DATA");
    let rest = &data[HEAD + 4..];
    assert_eq!(state.server_sent(rest, true), Some(rest.len()));
    assert!(state.at_boundary());

    let mut plain = InwardState::default();
    assert_eq!(
        plain.client.feed(b"GET / HTTP/1.1\r\n", |_, _, _| {}),
        Feed::NotHttp2
    );
}
