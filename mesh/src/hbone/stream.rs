//! One HTTP/2 stream as a byte stream: `AsyncRead` from its DATA frames, `AsyncWrite` into
//! them within the flow-control window, and `shutdown` as END_STREAM, which is how a TCP
//! half-close crosses the tunnel. A stream dropped before both ends finished is reset by h2
//! itself (RST_STREAM CANCEL); resetting one that finished would discard DATA frames still
//! queued for sending, so there is no reset here.
//!
//! [`splice`] joins a stream to a socket without the byte-stream view: bytes read from the
//! socket go into HTTP/2 as they are (no copy), and DATA frames are written to the socket as
//! they arrived (no intermediate buffer).

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The largest write handed to HTTP/2 at once; h2 frames it further.
const MAX_WRITE: usize = 1024 * 1024;

/// Reads from the socket in [`splice`] start at this size, double while they fill the
/// buffer and halve while they do not: a chatty connection keeps a small buffer, a bulk one
/// a large one.
const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 256 * 1024;

pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    /// Kept alive as long as the stream, e.g. to count a pooled connection's streams.
    _guard: Option<Box<dyn Send + Sync>>,
}

impl H2Stream {
    pub fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        H2Stream {
            send,
            recv,
            pending: Bytes::new(),
            _guard: guard,
        }
    }
}

fn h2_to_io(err: h2::Error) -> io::Error {
    if err.is_io() {
        return err
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    io::Error::new(io::ErrorKind::ConnectionReset, err)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                // END_STREAM from the peer: end of file, the tunnel's half-close.
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    // Return the window as soon as the bytes are ours, so the sender keeps going.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                Some(Err(err)) if err.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(err)) => return Poll::Ready(Err(h2_to_io(err))),
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let want = buf.len().min(MAX_WRITE);
        self.send.reserve_capacity(want);
        loop {
            let granted = self.send.capacity();
            if granted > 0 {
                let n = granted.min(want);
                self.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(h2_to_io)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Poll::Ready(Err(h2_to_io(err))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "tunnel stream closed",
                    )));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 sends queued DATA frames from its connection task.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.send.reserve_capacity(0);
        Poll::Ready(self.send.send_data(Bytes::new(), true).map_err(h2_to_io))
    }
}

/// Joins `tunnel` and `other` both ways until both sides finish, carrying each half-close
/// across (END_STREAM one way, `shutdown` the other). Returns the bytes (to `other`, from
/// `other`); an error ends both directions.
pub async fn splice<S: AsyncRead + AsyncWrite + Unpin>(
    tunnel: &mut H2Stream,
    other: &mut S,
) -> io::Result<(u64, u64)> {
    splice_watched(tunnel, other, &Unwatched)
        .await
        .map_err(Broken::into_io)
}

/// What a splice shows of the bytes it carries to whoever follows the protocol inside
/// them (`crate::relayed`); the plain [`splice`] shows nothing to nobody.
pub trait Watch: Sync {
    /// Bytes read from the socket, before they go into the tunnel. With `wanted` (a notice
    /// is due, see [`Watch::notice`]), the first offset in them where one may go, and the
    /// notice.
    fn socket_sent(&self, _bytes: &[u8], _wanted: bool) -> Option<(usize, Bytes)> {
        None
    }
    /// Bytes from the tunnel: returns what may go to the socket now; the rest is held
    /// until more comes.
    fn tunnel_sent(&self, data: Bytes) -> Bytes {
        data
    }
    /// Whether the tunnel may end here without leaving the socket's peer waiting for an
    /// answer; if not, its end is a break ([`Broken::Tunnel`]).
    fn may_end(&self) -> bool {
        true
    }
    /// When the peer on one side is to be told to go (the agent drains): that side, and
    /// the signal, which turns true.
    fn drain(&self) -> Option<(Toward, tokio::sync::watch::Receiver<bool>)> {
        None
    }
    /// The notice for that side (an HTTP/2 GOAWAY) when it may go now, between two frames
    /// of what that side is sent; `None` while it may not, and after it went.
    fn notice(&self) -> Option<Bytes> {
        None
    }
}

/// A side of a splice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    Socket,
    Tunnel,
}

/// Waits until `drain` turns true; never, once it is gone (and then it is dropped).
async fn drained(drain: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match drain {
        Some(rx) => {
            let turned = rx.wait_for(|d| *d).await.is_ok();
            *drain = None;
            if !turned {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

fn drain_toward(watch: &impl Watch, side: Toward) -> Option<tokio::sync::watch::Receiver<bool>> {
    watch.drain().filter(|(t, _)| *t == side).map(|(_, rx)| rx)
}

struct Unwatched;
impl Watch for Unwatched {}

/// Which side of a splice failed.
#[derive(Debug)]
pub enum Broken {
    /// The tunnel: its stream or connection failed, or it ended while [`Watch::may_end`]
    /// said no. The socket is still there to be told.
    Tunnel(io::Error),
    /// The socket.
    Socket(io::Error),
}

impl Broken {
    pub fn into_io(self) -> io::Error {
        match self {
            Broken::Tunnel(e) | Broken::Socket(e) => e,
        }
    }
}

/// [`splice`], showing `watch` what passes.
pub async fn splice_watched<S: AsyncRead + AsyncWrite + Unpin>(
    tunnel: &mut H2Stream,
    other: &mut S,
    watch: &impl Watch,
) -> Result<(u64, u64), Broken> {
    let (mut from, mut to) = tokio::io::split(other);
    let H2Stream {
        send,
        recv,
        pending,
        ..
    } = tunnel;
    tokio::try_join!(
        tunnel_to(recv, pending, &mut to, watch),
        to_tunnel(&mut from, send, watch)
    )
}

/// DATA frames to `to`, each written as it came; the window is returned once it is written,
/// so a slow reader holds the sender back rather than filling the agent's memory.
async fn tunnel_to(
    recv: &mut RecvStream,
    pending: &mut Bytes,
    to: &mut (impl AsyncWrite + Unpin),
    watch: &impl Watch,
) -> Result<u64, Broken> {
    let first = watch.tunnel_sent(std::mem::take(pending));
    let mut total = first.len() as u64;
    to.write_all(&first).await.map_err(Broken::Socket)?;
    let mut drain = drain_toward(watch, Toward::Socket);
    let mut wanted = false;
    loop {
        let next = tokio::select! {
            next = poll_fn(|cx| recv.poll_data(cx)) => Some(next),
            () = drained(&mut drain) => {
                wanted = true;
                None
            }
        };
        match next {
            None => {}
            Some(None) => break,
            Some(Some(Ok(data))) => {
                let (len, data) = (data.len(), watch.tunnel_sent(data));
                to.write_all(&data).await.map_err(Broken::Socket)?;
                total += data.len() as u64;
                let _ = recv.flow_control().release_capacity(len);
            }
            Some(Some(Err(err))) if err.reason() == Some(h2::Reason::NO_ERROR) => break,
            Some(Some(Err(err))) => return Err(Broken::Tunnel(h2_to_io(err))),
        }
        // What went to the socket ends with a whole frame: the notice may go after it.
        if wanted && let Some(notice) = watch.notice() {
            to.write_all(&notice).await.map_err(Broken::Socket)?;
            wanted = false;
        }
    }
    if !watch.may_end() {
        return Err(Broken::Tunnel(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the tunnel ended with calls unanswered",
        )));
    }
    to.shutdown().await.map_err(Broken::Socket)?;
    Ok(total)
}

/// Bytes of `from` into DATA frames, handed to h2 in the buffer they were read into.
async fn to_tunnel(
    from: &mut (impl AsyncRead + Unpin),
    send: &mut SendStream<Bytes>,
    watch: &impl Watch,
) -> Result<u64, Broken> {
    let mut buf = BytesMut::new();
    let mut want = MIN_READ;
    let mut total = 0u64;
    let mut drain = drain_toward(watch, Toward::Tunnel);
    let mut wanted = false;
    loop {
        if buf.capacity() < want {
            buf.reserve(want);
        }
        let read = tokio::select! {
            read = from.read_buf(&mut buf) => Some(read.map_err(Broken::Socket)?),
            () = drained(&mut drain) => {
                wanted = true;
                None
            }
        };
        let Some(n) = read else {
            // Everything read so far went into the tunnel.
            if let Some(notice) = watch.notice() {
                send_all(send, notice).await?;
                wanted = false;
            }
            continue;
        };
        if n == 0 {
            send.reserve_capacity(0);
            send.send_data(Bytes::new(), true)
                .map_err(|e| Broken::Tunnel(h2_to_io(e)))?;
            return Ok(total);
        }
        let split = watch.socket_sent(&buf, wanted);
        total += n as u64;
        want = if n >= want {
            (want * 2).min(MAX_READ)
        } else {
            (want / 2).max(MIN_READ)
        };
        let mut chunk = buf.split().freeze();
        if let Some((at, notice)) = split {
            send_all(send, chunk.split_to(at)).await?;
            send_all(send, notice).await?;
            wanted = false;
        }
        send_all(send, chunk).await?;
    }
}

/// `chunk` into DATA frames as the flow-control window lets it.
async fn send_all(send: &mut SendStream<Bytes>, mut chunk: Bytes) -> Result<(), Broken> {
    while !chunk.is_empty() {
        send.reserve_capacity(chunk.len());
        let granted = loop {
            let granted = send.capacity();
            if granted > 0 {
                break granted;
            }
            match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Err(Broken::Tunnel(h2_to_io(err))),
                None => {
                    return Err(Broken::Tunnel(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "tunnel stream closed",
                    )));
                }
            }
        };
        let part = chunk.split_to(granted.min(chunk.len()));
        send.send_data(part, false)
            .map_err(|e| Broken::Tunnel(h2_to_io(e)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/2 connection in memory; returns the client's stream and the server's.
    async fn stream_pair() -> (H2Stream, H2Stream) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::Builder::new()
                .initial_window_size(64 * 1024)
                .handshake::<_, Bytes>(b)
                .await
                .unwrap();
            let (request, mut respond) = conn.accept().await.unwrap().unwrap();
            let send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            H2Stream::new(send, request.into_body(), None)
        });
        let (mut client, conn) = h2::client::Builder::new()
            .initial_window_size(64 * 1024)
            .handshake::<_, Bytes>(a)
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("10.0.0.1:80")
            .body(())
            .unwrap();
        let (response, send) = client.send_request(request, false).unwrap();
        let server_stream = server.await.unwrap();
        let recv = response.await.unwrap().into_body();
        (H2Stream::new(send, recv, None), server_stream)
    }

    #[tokio::test]
    async fn splice_carries_both_ways_and_both_half_closes() {
        let (mut client, mut server) = stream_pair().await;
        let (mut socket, mut far) = tokio::io::duplex(8 * 1024);
        let spliced = tokio::spawn(async move { splice(&mut server, &mut far).await });
        // Well over the 64 KiB windows and the socket's buffer: flow control must hold.
        let upload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let download: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
        let (up, down) = (upload.clone(), download.clone());
        let client_side = tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(&mut client);
            let (_, received) = tokio::join!(
                async {
                    wr.write_all(&up).await.unwrap();
                    wr.shutdown().await.unwrap();
                },
                async {
                    let mut received = Vec::new();
                    rd.read_to_end(&mut received).await.unwrap();
                    received
                }
            );
            received
        });
        let (mut socket_rd, mut socket_wr) = tokio::io::split(&mut socket);
        let both = async {
            tokio::join!(
                async {
                    socket_wr.write_all(&down).await.unwrap();
                    socket_wr.shutdown().await.unwrap();
                },
                async {
                    let mut got = Vec::new();
                    // Ends only when the client's half-close crossed as END_STREAM, then
                    // shutdown.
                    socket_rd.read_to_end(&mut got).await.unwrap();
                    got
                }
            )
        };
        let (_, got) = tokio::time::timeout(std::time::Duration::from_secs(20), both)
            .await
            .expect("a half-close did not cross the splice");
        assert_eq!(got.len(), upload.len());
        assert!(got == upload, "upload corrupted");
        let received = client_side.await.unwrap();
        assert!(received == download, "download corrupted");
        let (to_socket, from_socket) = spliced.await.unwrap().unwrap();
        assert_eq!(
            (to_socket, from_socket),
            (upload.len() as u64, download.len() as u64)
        );
    }
}
