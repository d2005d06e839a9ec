//! A request body that can be sent again. The first attempt streams the client's body
//! through as it arrives (so streaming calls are never held back), and keeps a copy of what
//! passed, up to a bound. A retry replays the copy and then carries on from the client. Once
//! a body outgrows the bound the copy is dropped, and the call can no longer be retried.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How much of a request body is kept for replay.
pub const LIMIT: usize = 64 * 1024;

struct State<B> {
    source: Option<B>,
    /// Body bytes read from the client so far, for the request-size metric.
    received: Arc<AtomicU64>,
    data: Vec<Bytes>,
    kept: usize,
    trailers: Option<HeaderMap>,
    ended: bool,
    overflowed: bool,
    failed: Option<String>,
    /// Bumped by each new attempt's body: only the newest may read, so that an abandoned
    /// attempt (whose stream hyper may still be feeding) can neither steal the client's
    /// frames nor their wake-ups.
    generation: u64,
}

/// The shared record of one request body.
pub struct Replay<B = Incoming>(Arc<Mutex<State<B>>>);

impl<B> Clone for Replay<B> {
    fn clone(&self) -> Self {
        Replay(self.0.clone())
    }
}

impl<B: Body> Replay<B> {
    pub fn new(source: B) -> Self {
        let ended = source.is_end_stream();
        Replay(Arc::new(Mutex::new(State {
            source: Some(source),
            received: Arc::default(),
            data: Vec::new(),
            kept: 0,
            trailers: None,
            ended,
            overflowed: false,
            failed: None,
            generation: 0,
        })))
    }

    /// The count of body bytes read from the client, which grows as the body streams.
    pub fn received(&self) -> Arc<AtomicU64> {
        self.0
            .lock()
            .map_or_else(|_| Arc::default(), |s| s.received.clone())
    }

    /// Whether another attempt could send the body from its start.
    pub fn replayable(&self) -> bool {
        self.0
            .lock()
            .is_ok_and(|s| !s.overflowed && s.failed.is_none())
    }

    /// A body for the next attempt: from the start.
    pub fn body(&self) -> ReplayBody<B> {
        let generation = self.0.lock().map_or(0, |mut s| {
            s.generation += 1;
            s.generation
        });
        ReplayBody {
            replay: self.0.clone(),
            generation,
            next: 0,
            trailers_sent: false,
        }
    }
}

pub struct ReplayBody<B = Incoming> {
    replay: Arc<Mutex<State<B>>>,
    generation: u64,
    next: usize,
    trailers_sent: bool,
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let replay = self.replay.clone();
        let Ok(mut state) = replay.lock() else {
            return Poll::Ready(Some(Err("request body state poisoned".into())));
        };
        if state.generation != self.generation {
            // Superseded by a retry: fail, so that hyper resets this attempt's stream.
            return Poll::Ready(Some(Err("request body superseded by a retry".into())));
        }
        if let Some(err) = &state.failed {
            return Poll::Ready(Some(Err(err.clone().into())));
        }
        if self.next < state.data.len() {
            let data = state.data[self.next].clone();
            self.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if state.ended {
            if !self.trailers_sent {
                self.trailers_sent = true;
                if let Some(trailers) = state.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
            return Poll::Ready(None);
        }
        let Some(source) = state.source.as_mut() else {
            return Poll::Ready(None);
        };
        // Empty DATA frames carry nothing, and servers count them as abuse (a flood of them
        // is a known HTTP/2 attack): skip them.
        let polled = loop {
            match Pin::new(&mut *source).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if frame.data_ref().is_some_and(|d| d.is_empty()) => {}
                other => break other,
            }
        };
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                state.ended = true;
                state.source = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                let message = err.to_string();
                state.failed = Some(message.clone());
                Poll::Ready(Some(Err(message.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        state
                            .received
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        if !state.overflowed {
                            state.kept += data.len();
                            if state.kept > LIMIT {
                                state.overflowed = true;
                                state.data = Vec::new();
                            } else {
                                state.data.push(data.clone());
                                self.next = state.data.len();
                            }
                        }
                        Frame::data(data)
                    }
                    Err(frame) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            state.trailers = Some(trailers.clone());
                            state.ended = true;
                            state.source = None;
                            self.trailers_sent = true;
                        }
                        frame
                    }
                };
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.replay.lock().is_ok_and(|s| {
            s.ended && self.next >= s.data.len() && (self.trailers_sent || s.trailers.is_none())
        })
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Frames = StreamBody<
        futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
    >;

    fn source(chunks: &[&'static [u8]], trailers: bool) -> Frames {
        let mut frames: Vec<_> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("x-end", "yes".parse().unwrap());
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures::stream::iter(frames))
    }

    async fn read(body: ReplayBody<Frames>) -> (Vec<u8>, Option<HeaderMap>) {
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes().to_vec(), trailers)
    }

    #[tokio::test]
    async fn a_retry_sees_the_same_body_and_trailers() {
        let replay = Replay::new(source(&[b"ab", b"cd"], true));
        let first = read(replay.body()).await;
        assert_eq!(first.0, b"abcd");
        assert_eq!(first.1.as_ref().unwrap()["x-end"], "yes");
        assert!(replay.replayable());
        assert_eq!(read(replay.body()).await, first);
    }

    #[tokio::test]
    async fn a_retry_after_a_partial_read_carries_on_from_the_source() {
        let replay = Replay::new(source(&[b"ab", b"cd", b"ef"], false));
        let mut first = replay.body();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        drop(first);
        assert_eq!(read(replay.body()).await.0, b"abcdef");
    }

    #[tokio::test]
    async fn an_abandoned_attempt_can_no_longer_read() {
        let replay = Replay::new(source(&[b"ab", b"cd"], false));
        let mut first = replay.body();
        let _ = first.frame().await.unwrap().unwrap();
        let second = replay.body();
        assert!(first.frame().await.unwrap().is_err());
        assert_eq!(read(second).await.0, b"abcd");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_replayable() {
        static BIG: [u8; LIMIT] = [7; LIMIT];
        let replay = Replay::new(source(&[&BIG, b"x"], false));
        assert_eq!(read(replay.body()).await.0.len(), LIMIT + 1);
        assert!(!replay.replayable());
    }
}
