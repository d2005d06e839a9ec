//! An HTTP/2 connection relayed byte for byte through the tunnel, followed frame by frame,
//! so that when the tunnel breaks (its waypoint pod killed, say) the client's calls in
//! flight get a status instead of a connection that just closes. tonic reads a closed
//! connection as UNKNOWN, grpc-go as UNAVAILABLE; a `grpc-status` in trailers is read the
//! same by every client.
//!
//! The relay looks at frame heads only (RFC 9113 §4.1), never at headers or payloads,
//! except a GOAWAY's last stream and a PING's opaque data:
//!
//! - from the client, which streams it opened (HEADERS on a new odd stream) and reset;
//! - from the upstream, which of those it answered (response HEADERS) and ended
//!   (END_STREAM, RST_STREAM, or above a GOAWAY's last stream). Its bytes go to the client
//!   in whole frames, so that a break always leaves the client at a frame boundary.
//!
//! On a break each open stream gets HEADERS that end it: trailers (`grpc-status: 14`) when
//! its response had begun, a trailers-only response when not ("gRPC over HTTP/2",
//! Responses), or `:status 503` for plain HTTP/2. They are written with HPACK's static
//! table and literals without indexing only (RFC 7541 §6.1, §6.2.2), which leave the
//! client's dynamic table as the upstream's encoder left it. A GOAWAY follows at once
//! (last stream: the highest it opened), so that the client's next calls go on a new
//! connection, to another waypoint pod if there is one. Answering them here instead, as
//! `refusal` does, would fail them all while a healthy pod is a reconnect away.
//!
//! When the agent stops (it drains, and a next agent serves the new connections), the
//! client is told so: a GOAWAY with last stream 2^31-1 and NO_ERROR, which takes none of its
//! calls away but lets it open no new one here (RFC 9113 §6.8), goes between two frames of
//! what it is sent. Its next calls take a new connection, through the next agent, and this
//! one closes once its calls are done, well before the drain period is over. The same goes
//! inward ([`splice_inward`]): a waypoint's connection to a pod of the node, where the
//! client is beyond the tunnel and the pod's frames are followed as they stream by, and the
//! notice goes where one of them ends.
//!
//! Not followed: a connection that does not start with the client preface (HTTP/1.1, say),
//! or whose upstream does not start with SETTINGS; it passes as it is, and a break closes
//! it. A break in the middle of a header block (HEADERS, then CONTINUATION) cannot be
//! answered either: nothing may come between them.

use std::{collections::BTreeMap, io, sync::Mutex, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::watch,
    time::Instant,
};

use crate::{
    hbone::{Broken, H2Stream, Toward, Watch, splice_watched},
    refusal::{Answer, percent_encode},
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEAD: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const PUSH_PROMISE: u8 = 0x5;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const INTERNAL_ERROR: u32 = 0x2;

/// Joins `tunnel` and `client` as [`crate::hbone::splice`] does, following the HTTP/2
/// inside; when the tunnel breaks, the client's open streams get `answer`, then GOAWAY,
/// and `within` for the client to go. When `drain` turns true, the client is told to go
/// (see [`notice`]).
pub async fn splice_answering<S: AsyncRead + AsyncWrite + Unpin>(
    tunnel: &mut H2Stream,
    client: &mut S,
    answer: &Answer,
    within: Duration,
    drain: Option<watch::Receiver<bool>>,
) -> io::Result<(u64, u64)> {
    let frames = Frames {
        relay: Mutex::default(),
        drain,
    };
    match splice_watched(tunnel, client, &frames).await {
        Ok(counts) => Ok(counts),
        Err(Broken::Socket(err)) => Err(err),
        Err(Broken::Tunnel(err)) => {
            let relay = frames.relay.into_inner().unwrap_or_else(|e| e.into_inner());
            if relay.answerable() {
                let streams = relay.streams.open.len();
                tracing::info!(%err, streams, "the tunnel broke; answering the open calls");
                let whole = within + Duration::from_secs(1);
                let _ = tokio::time::timeout(whole, relay.answer(client, answer, within)).await;
            }
            Err(err)
        }
    }
}

/// The relay's view, shared by its two directions.
struct Frames {
    relay: Mutex<Relay>,
    drain: Option<watch::Receiver<bool>>,
}

#[derive(Default)]
struct Relay {
    /// Set when either side turned out not to speak HTTP/2: everything passes as it is.
    off: bool,
    requests: Requests,
    /// The upstream's bytes that do not make a whole frame yet.
    hold: BytesMut,
    /// The upstream's first frame was seen (it must be SETTINGS).
    upstream_started: bool,
    streams: Streams,
    /// The drain's GOAWAY went to the client.
    noticed: bool,
}

impl Watch for Frames {
    fn socket_sent(&self, bytes: &[u8], _wanted: bool) -> Option<(usize, Bytes)> {
        let Ok(mut relay) = self.relay.lock() else {
            return None;
        };
        if relay.off {
            return None;
        }
        let Relay {
            requests, streams, ..
        } = &mut *relay;
        if requests.feed(bytes, |head, payload, _| {
            streams.client_sent(head, payload);
        }) == Feed::NotHttp2
        {
            relay.off = true;
        }
        None
    }

    fn tunnel_sent(&self, data: Bytes) -> Bytes {
        let Ok(mut relay) = self.relay.lock() else {
            return data;
        };
        relay.pass(data)
    }

    fn may_end(&self) -> bool {
        self.relay
            .lock()
            .map_or(true, |relay| relay.off || relay.streams.open.is_empty())
    }

    fn drain(&self) -> Option<(Toward, watch::Receiver<bool>)> {
        self.drain.clone().map(|rx| (Toward::Socket, rx))
    }

    /// The upstream's bytes reach the client in whole frames: between two writes it is
    /// always at a frame boundary, unless inside a header block.
    fn notice(&self) -> Option<Bytes> {
        let mut relay = self.relay.lock().ok()?;
        let ready = relay.answerable() && relay.requests.preface == PREFACE.len();
        if !ready || relay.noticed {
            return None;
        }
        relay.noticed = true;
        tracing::debug!("draining: GOAWAY to the relayed client");
        Some(notice())
    }
}

/// The GOAWAY that tells an HTTP/2 client to open no new stream here, and takes none of
/// the ones it opened away: last stream 2^31-1, NO_ERROR, as a server that shuts down
/// gracefully sends first (RFC 9113 §6.8). The client finishes its calls, opens a new
/// connection for the next ones (through the next agent), and closes this one once it is
/// idle; the upstream, which sent no GOAWAY, goes on serving what comes.
fn notice() -> Bytes {
    let mut out = BytesMut::with_capacity(HEAD + 8);
    goaway(&mut out, 0x7fff_ffff);
    out.freeze()
}

/// Appends a GOAWAY with `last` as its last stream, and NO_ERROR.
fn goaway(out: &mut BytesMut, last: u32) {
    let mut payload = [0u8; 8];
    payload[..4].copy_from_slice(&last.to_be_bytes());
    frame(out, GOAWAY, 0, 0, &payload);
}

/// Joins a tunnel to `pod` as [`crate::hbone::splice`] does, with the tunnel's side the
/// HTTP/2 client (a waypoint's connection to the pod, say) when it speaks HTTP/2: when
/// `drain` turns true, that client is told to go ([`notice`]), between two of the pod's
/// frames, so that its next calls take a new connection (through the next agent) instead
/// of being cut when this agent's drain is over. Anything else passes as it is.
pub async fn splice_inward<S: AsyncRead + AsyncWrite + Unpin>(
    tunnel: &mut H2Stream,
    pod: &mut S,
    drain: watch::Receiver<bool>,
) -> io::Result<(u64, u64)> {
    let inward = Inward {
        state: Mutex::new(InwardState {
            server: Requests {
                preface: PREFACE.len(),
                ..Requests::default()
            },
            ..InwardState::default()
        }),
        drain,
    };
    splice_watched(tunnel, pod, &inward)
        .await
        .map_err(Broken::into_io)
}

/// The inward relay's view: frame heads of both directions, nothing else.
struct Inward {
    state: Mutex<InwardState>,
    drain: watch::Receiver<bool>,
}

#[derive(Default)]
struct InwardState {
    off: bool,
    /// From the tunnel: the client preface, then frames.
    client: Requests,
    /// From the pod: frames, the first of them SETTINGS.
    server: Requests,
    server_started: bool,
    server_in_block: bool,
    noticed: bool,
}

impl InwardState {
    fn followed(&self) -> bool {
        !self.off && !self.noticed && self.client.preface == PREFACE.len()
    }

    /// Follows the pod's frames; with `wanted`, returns the first offset in `bytes` where a
    /// frame ends outside a header block.
    fn server_sent(&mut self, bytes: &[u8], wanted: bool) -> Option<usize> {
        let InwardState {
            server,
            server_started,
            server_in_block,
            off,
            ..
        } = self;
        let mut at = None;
        server.feed(bytes, |head, _, end| {
            if !*server_started {
                *server_started = true;
                *off |= head.kind != SETTINGS || head.stream != 0;
            }
            match head.kind {
                HEADERS | PUSH_PROMISE | CONTINUATION => {
                    *server_in_block = !head.has(END_HEADERS);
                }
                _ => {}
            }
            if wanted && at.is_none() && !*server_in_block {
                at = Some(end);
            }
        });
        at.filter(|_| !self.off)
    }

    fn at_boundary(&self) -> bool {
        self.server_started
            && !self.server_in_block
            && self.server.frame.is_none()
            && self.server.have == 0
    }
}

impl Watch for Inward {
    fn tunnel_sent(&self, data: Bytes) -> Bytes {
        if let Ok(mut state) = self.state.lock()
            && !state.off
            && state.client.preface < PREFACE.len()
            && state.client.feed(&data, |_, _, _| {}) == Feed::NotHttp2
        {
            state.off = true;
        }
        data
    }

    fn socket_sent(&self, bytes: &[u8], wanted: bool) -> Option<(usize, Bytes)> {
        let mut state = self.state.lock().ok()?;
        if state.off || state.noticed {
            return None;
        }
        let wanted = wanted && state.followed();
        let at = state.server_sent(bytes, wanted)?;
        state.noticed = true;
        tracing::debug!("draining: GOAWAY to the tunnel's HTTP/2 client");
        Some((at, notice()))
    }

    fn drain(&self) -> Option<(Toward, watch::Receiver<bool>)> {
        Some((Toward::Tunnel, self.drain.clone()))
    }

    fn notice(&self) -> Option<Bytes> {
        let mut state = self.state.lock().ok()?;
        if !state.followed() || !state.at_boundary() {
            return None;
        }
        state.noticed = true;
        tracing::debug!("draining: GOAWAY to the tunnel's HTTP/2 client");
        Some(notice())
    }
}

impl Relay {
    /// The whole frames of what the upstream sent so far; the rest waits.
    fn pass(&mut self, data: Bytes) -> Bytes {
        let mut input = if self.hold.is_empty() {
            data
        } else {
            self.hold.extend_from_slice(&data);
            std::mem::take(&mut self.hold).freeze()
        };
        if self.off {
            return input;
        }
        let mut at = 0;
        while let Some(head) = input.get(at..at + HEAD).map(Head::parse) {
            let end = at + HEAD + head.len;
            if end > input.len() {
                break;
            }
            if !self.upstream_started {
                self.upstream_started = true;
                if head.kind != SETTINGS || head.stream != 0 {
                    self.off = true;
                    return input;
                }
            }
            self.streams.upstream_sent(&head, &input[at + HEAD..end]);
            at = end;
        }
        if at < input.len() {
            self.hold = BytesMut::from(&input[at..]);
            input.truncate(at);
        }
        input
    }

    fn answerable(&self) -> bool {
        !self.off && self.upstream_started && !self.streams.upstream_in_block
    }

    /// Ends the open streams with `answer` and sends GOAWAY at once (last stream: the
    /// highest the client opened), so that its next calls go on a new connection, which
    /// may reach another pod; then acknowledges its PINGs and SETTINGS for up to `within`
    /// while it goes.
    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        client: &mut S,
        answer: &Answer,
        within: Duration,
    ) -> io::Result<()> {
        let mut out = BytesMut::new();
        for (id, open) in std::mem::take(&mut self.streams.open) {
            write_answer(&mut out, id, open.answered, answer);
        }
        let last = self.streams.highest;
        goaway(&mut out, last);
        client.write_all(&out).await?;
        let until = Instant::now() + within;
        let mut buf = BytesMut::with_capacity(16 * 1024);
        loop {
            match tokio::time::timeout_at(until, client.read_buf(&mut buf)).await {
                Err(_) | Ok(Ok(0)) => break,
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(err),
            }
            out.clear();
            let Relay {
                requests, streams, ..
            } = &mut self;
            let fed = requests.feed(&buf, |head, payload, _| {
                match streams.client_sent(head, payload) {
                    // Above `last` the client knows the stream was not taken.
                    Some(Event::Opened(id)) if id <= last && streams.open.remove(&id).is_some() => {
                        write_answer(&mut out, id, false, answer);
                    }
                    Some(Event::Ping(data)) => frame(&mut out, PING, ACK, 0, &data),
                    Some(Event::Settings) => frame(&mut out, SETTINGS, ACK, 0, &[]),
                    _ => {}
                }
            });
            buf.clear();
            if fed == Feed::NotHttp2 {
                break;
            }
            client.write_all(&out).await?;
        }
        client.shutdown().await
    }
}

/// A frame's head (RFC 9113 §4.1).
#[derive(Debug, Clone, Copy)]
struct Head {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Head {
    fn parse(b: &[u8]) -> Head {
        Head {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize,
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Feed {
    Ok,
    NotHttp2,
}

/// The client's bytes, read as they stream by: the preface, then frame heads. Of the
/// payloads only a PING's is kept (8 bytes), to acknowledge it.
struct Requests {
    /// Bytes of the preface seen.
    preface: usize,
    head: [u8; HEAD],
    have: usize,
    /// The frame being read, and how much of its payload is still to come.
    frame: Option<(Head, usize)>,
    ping: Vec<u8>,
}

impl Default for Requests {
    fn default() -> Self {
        Requests {
            preface: 0,
            head: [0; HEAD],
            have: 0,
            frame: None,
            ping: Vec::new(),
        }
    }
}

impl Requests {
    /// Reads `bytes`, calling `on` with each frame that ends in them, and the offset in
    /// `bytes` just after it.
    fn feed(&mut self, mut bytes: &[u8], mut on: impl FnMut(&Head, &[u8], usize)) -> Feed {
        let whole = bytes.len();
        if self.preface < PREFACE.len() {
            let n = bytes.len().min(PREFACE.len() - self.preface);
            if bytes[..n] != PREFACE[self.preface..self.preface + n] {
                return Feed::NotHttp2;
            }
            self.preface += n;
            bytes = &bytes[n..];
        }
        while !bytes.is_empty() {
            match &mut self.frame {
                None => {
                    let n = bytes.len().min(HEAD - self.have);
                    self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                    self.have += n;
                    bytes = &bytes[n..];
                    if self.have == HEAD {
                        self.have = 0;
                        let head = Head::parse(&self.head);
                        self.ping.clear();
                        self.frame = Some((head, head.len));
                    }
                }
                Some((head, left)) => {
                    let n = bytes.len().min(*left);
                    if head.kind == PING && self.ping.len() + n <= 8 {
                        self.ping.extend_from_slice(&bytes[..n]);
                    }
                    *left -= n;
                    bytes = &bytes[n..];
                }
            }
            if let Some((head, 0)) = self.frame {
                self.frame = None;
                on(&head, &self.ping, whole - bytes.len());
            }
        }
        Feed::Ok
    }
}

/// What a client frame asks of the relay once the upstream is gone.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A new stream's request headers are complete.
    Opened(u32),
    Ping([u8; 8]),
    Settings,
}

#[derive(Debug, Clone, Copy)]
struct Open {
    /// The upstream sent its response headers.
    answered: bool,
}

/// The streams the client opened that the upstream has not ended.
#[derive(Default)]
struct Streams {
    open: BTreeMap<u32, Open>,
    highest: u32,
    /// A new stream whose header block has not ended yet.
    opening: Option<u32>,
    /// The upstream is in the middle of a header block.
    upstream_in_block: bool,
}

impl Streams {
    fn client_sent(&mut self, head: &Head, payload: &[u8]) -> Option<Event> {
        match head.kind {
            HEADERS if head.stream % 2 == 1 && head.stream > self.highest => {
                self.highest = head.stream;
                self.open.insert(head.stream, Open { answered: false });
                self.opening = Some(head.stream);
                self.block_end(head)
            }
            HEADERS | CONTINUATION => self.block_end(head),
            RST_STREAM => {
                self.open.remove(&head.stream);
                None
            }
            PING if !head.has(ACK) => payload.try_into().ok().map(Event::Ping),
            SETTINGS if !head.has(ACK) => Some(Event::Settings),
            _ => None,
        }
    }

    fn block_end(&mut self, head: &Head) -> Option<Event> {
        if head.has(END_HEADERS) {
            self.opening.take().map(Event::Opened)
        } else {
            None
        }
    }

    fn upstream_sent(&mut self, head: &Head, payload: &[u8]) {
        match head.kind {
            HEADERS => {
                self.upstream_in_block = !head.has(END_HEADERS);
                if head.has(END_STREAM) {
                    self.open.remove(&head.stream);
                } else if let Some(open) = self.open.get_mut(&head.stream) {
                    open.answered = true;
                }
            }
            CONTINUATION => self.upstream_in_block = !head.has(END_HEADERS),
            DATA if head.has(END_STREAM) => {
                self.open.remove(&head.stream);
            }
            RST_STREAM => {
                self.open.remove(&head.stream);
            }
            GOAWAY if payload.len() >= 4 => {
                // Streams above it were refused: the client knows, and retries them.
                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                    & 0x7fff_ffff;
                self.open.retain(|id, _| *id <= last);
            }
            _ => {}
        }
    }
}

/// Appends a frame.
fn frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.put_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream & 0x7fff_ffff);
    out.put_slice(payload);
}

/// Appends what ends stream `id` with `answer`: trailers when its response had begun
/// (`answered`), else a whole response in one HEADERS frame. Plain HTTP/2 whose response
/// had begun cannot be given a status any more: it is reset.
fn write_answer(out: &mut BytesMut, id: u32, answered: bool, answer: &Answer) {
    let mut block = Vec::with_capacity(64);
    match (&answer.grpc, answered) {
        (None, true) => {
            frame(out, RST_STREAM, 0, id, &INTERNAL_ERROR.to_be_bytes());
            return;
        }
        (None, false) => status(&mut block, answer.http.as_str()),
        (Some((code, message)), answered) => {
            if !answered {
                status(&mut block, "200");
                // content-type is entry 31 of the static table.
                integer(&mut block, 0x00, 4, 31);
                string(&mut block, b"application/grpc");
            }
            literal(&mut block, b"grpc-status", code.to_string().as_bytes());
            literal(
                &mut block,
                b"grpc-message",
                percent_encode(message).as_bytes(),
            );
        }
    }
    frame(out, HEADERS, END_STREAM | END_HEADERS, id, &block);
}

/// `:status` (static entry 8) with `value`, as a literal without indexing.
fn status(block: &mut Vec<u8>, value: &str) {
    integer(block, 0x00, 4, 8);
    string(block, value.as_bytes());
}

/// A literal header field without indexing, with a new name (RFC 7541 §6.2.2).
fn literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    block.push(0x00);
    string(block, name);
    string(block, value);
}

/// A string literal, not Huffman-coded (RFC 7541 §5.2).
fn string(block: &mut Vec<u8>, s: &[u8]) {
    integer(block, 0x00, 7, s.len());
    block.extend_from_slice(s);
}

/// An integer with an N-bit prefix (RFC 7541 §5.1); `first` holds the bits above it.
fn integer(block: &mut Vec<u8>, first: u8, prefix: u32, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        block.push(first | value as u8);
        return;
    }
    block.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        block.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    block.push(rest as u8);
}

#[cfg(test)]
#[path = "relayed_tests.rs"]
mod tests;
