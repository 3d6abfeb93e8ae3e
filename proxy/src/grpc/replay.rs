//! Replay of a gRPC request body of unknown length, without holding it
//! back: the first try streams it (a client or bidirectional stream is
//! never buffered before it is sent), keeping a copy of what went by up to
//! a cap. Another try can have the body when either
//! - the first never read any of it (a connect failure: the body is still
//!   whole and goes with the next try), or
//! - it was sent to its end within the cap (a unary call, or a short
//!   stream): the copy is replayed.
//!
//! A stream partly sent, or longer than the cap, is never replayed.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use crate::body::{Body, BoxBody};

/// The shared record of one request body.
#[derive(Debug)]
struct Record {
    /// The body, until a try starts reading it.
    unread: Option<Body>,
    /// What was read, while within `cap`.
    kept: BytesMut,
    cap: usize,
    /// The body was read to its end with everything kept.
    complete: bool,
    /// More than `cap` (or trailers) went by: nothing can be replayed.
    spoiled: bool,
}

/// A request body kept for replay as it streams.
#[derive(Debug, Clone)]
pub struct Replayable {
    record: Arc<Mutex<Record>>,
}

impl Replayable {
    /// Keeps up to `cap` bytes of `body` as it is sent.
    pub fn new(body: Body, cap: usize) -> Self {
        Replayable {
            record: Arc::new(Mutex::new(Record {
                unread: Some(body),
                kept: BytesMut::new(),
                cap,
                complete: false,
                spoiled: false,
            })),
        }
    }

    /// The body for a try: the original while no try has read it, else the
    /// copy of a body read to its end within the cap; `None` when the body
    /// was partly sent (or was too long).
    pub fn body(&self) -> Option<Body> {
        let Ok(record) = self.record.lock() else {
            return None;
        };
        if record.unread.is_some() {
            return Some(Body::Boxed(BoxBody::new(Tee {
                record: Arc::clone(&self.record),
                inner: None,
            })));
        }
        (record.complete && !record.spoiled).then(|| Body::full(record.kept.clone().freeze()))
    }

    /// Whether [`Replayable::body`] would give a body.
    pub fn can_replay(&self) -> bool {
        self.record
            .lock()
            .is_ok_and(|r| r.unread.is_some() || (r.complete && !r.spoiled))
    }
}

/// The body of a try that streams the original and keeps a copy.
struct Tee {
    record: Arc<Mutex<Record>>,
    /// The original, once this try took it.
    inner: Option<Body>,
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if this.inner.is_none() {
            this.inner = this.record.lock().ok().and_then(|mut r| r.unread.take());
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(&mut *inner).poll_frame(cx);
        // The sender may stop polling once the body says it has ended.
        let ended = inner.is_end_stream();
        if let Poll::Ready(result) = &frame {
            if let Ok(mut record) = this.record.lock() {
                match result {
                    Some(Ok(frame)) => match frame.data_ref() {
                        Some(data) if record.kept.len() + data.len() <= record.cap => {
                            record.kept.extend_from_slice(data);
                        }
                        _ => {
                            record.spoiled = true;
                            record.kept = BytesMut::new();
                        }
                    },
                    Some(Err(_)) => record.spoiled = true,
                    None => record.complete = true,
                }
                if ended {
                    record.complete = true;
                }
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_some_and(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(SizeHint::default, Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn read(body: Body) -> Bytes {
        body.collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn an_unread_body_goes_whole_with_the_next_try() {
        let replay = Replayable::new(Body::full("abc"), 2);
        drop(replay.body());
        assert!(replay.can_replay(), "not read: still whole");
        let body = replay.body().unwrap_or_default();
        assert_eq!(read(body).await, "abc");
        assert!(!replay.can_replay(), "3 bytes went by, cap 2");
    }

    #[tokio::test]
    async fn a_body_sent_to_its_end_within_the_cap_is_replayed() {
        let replay = Replayable::new(Body::full("abc"), 8);
        assert_eq!(read(replay.body().unwrap_or_default()).await, "abc");
        assert!(replay.can_replay());
        assert_eq!(read(replay.body().unwrap_or_default()).await, "abc");
    }

    /// A body of two frames, as a client stream sends them.
    fn two_frames() -> Body {
        let frames = futures_util::stream::iter([
            Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"c"))),
        ]);
        Body::Boxed(BoxBody::new(http_body_util::StreamBody::new(frames)))
    }

    #[tokio::test]
    async fn a_stream_read_to_its_end_is_replayed_whole() {
        let replay = Replayable::new(two_frames(), 8);
        assert_eq!(read(replay.body().unwrap_or_default()).await, "abc");
        assert_eq!(read(replay.body().unwrap_or_default()).await, "abc");
    }

    #[tokio::test]
    async fn a_partly_sent_body_is_not_replayed() {
        let replay = Replayable::new(two_frames(), 8);
        let mut body = replay.body().unwrap_or_default();
        let first = body.frame().await;
        assert!(first.is_some());
        // The try failed here: the end of the body was never read.
        drop(body);
        assert!(!replay.can_replay());
        assert!(replay.body().is_none());
    }
}
