//! A gRPC response body whose status comes in its trailers: the frames
//! pass through untouched (no buffering, flow control as before), and the
//! `grpc-status` of the trailers is handed to a callback once the stream
//! ends (`None` when it ended without one: reset, cut, or dropped by the
//! caller).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::{status_of, Code};
use crate::body::Body;

/// Called once with the call's status when the response stream ends.
type OnEnd = Box<dyn FnOnce(Option<Code>) + Send>;

/// A response body that reports its trailers' `grpc-status` when it ends.
pub struct StatusTail {
    inner: Body,
    on_end: Option<OnEnd>,
}

impl StatusTail {
    /// Watches `inner`; `on_end` is called once, when it ends or is dropped.
    pub fn new(inner: Body, on_end: impl FnOnce(Option<Code>) + Send + 'static) -> Self {
        StatusTail {
            inner,
            on_end: Some(Box::new(on_end)),
        }
    }

    fn end(&mut self, code: Option<Code>) {
        if let Some(on_end) = self.on_end.take() {
            on_end(code);
        }
    }
}

impl http_body::Body for StatusTail {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_of(trailers);
                    this.end(code);
                }
            }
            Poll::Ready(Some(Err(_)) | None) => this.end(None),
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for StatusTail {
    fn drop(&mut self) {
        self.end(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;

    fn watched(inner: Body) -> (StatusTail, Arc<Mutex<Vec<Option<Code>>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let tail = StatusTail::new(inner, move |code| {
            sink.lock().map(|mut s| s.push(code)).unwrap_or_default()
        });
        (tail, seen)
    }

    #[tokio::test]
    async fn a_body_without_trailers_reports_none_once() {
        let (tail, seen) = watched(Body::full("x"));
        let bytes = tail
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        assert_eq!(bytes, "x");
        assert_eq!(*seen.lock().unwrap_or_else(|e| e.into_inner()), [None]);
    }

    #[tokio::test]
    async fn trailers_report_their_grpc_status_and_pass_on_untouched() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert(
            super::super::GRPC_STATUS,
            http::HeaderValue::from_static("9"),
        );
        let frames = futures_util::stream::iter([
            Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"m"))),
            Ok(Frame::trailers(trailers)),
        ]);
        let inner = Body::Boxed(crate::body::BoxBody::new(http_body_util::StreamBody::new(
            frames,
        )));
        let (tail, seen) = watched(inner);
        let collected = tail.collect().await.ok();
        let kept = collected
            .as_ref()
            .and_then(|c| c.trailers())
            .and_then(|t| t.get("grpc-status"))
            .cloned();
        assert_eq!(kept, Some(http::HeaderValue::from_static("9")));
        assert_eq!(
            *seen.lock().unwrap_or_else(|e| e.into_inner()),
            [Some(Code::FailedPrecondition)]
        );
    }

    #[test]
    fn a_dropped_body_reports_none() {
        let (tail, seen) = watched(Body::full("x"));
        drop(tail);
        assert_eq!(*seen.lock().unwrap_or_else(|e| e.into_inner()), [None]);
    }
}
