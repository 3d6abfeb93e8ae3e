//! The one body type that flows through the proxy.
//!
//! An enum rather than a boxed trait object: the common cases (a streamed
//! hyper body, a small buffered body the proxy made or replays) need no
//! allocation per request.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;

/// A request inside the proxy.
pub type Req = http::Request<Body>;
/// A response inside the proxy.
pub type Rsp = http::Response<Body>;

/// A request or response body inside the proxy.
#[derive(Debug, Default)]
pub enum Body {
    /// No body.
    #[default]
    Empty,
    /// A buffered body, yielded once (proxy-made responses, replayed requests).
    Full(Option<Bytes>),
    /// A body streamed from a peer.
    Incoming(Incoming),
    /// A response body streamed from a pooled HTTP/1.1 connection, which
    /// goes back to its pool once the body has been read to the end.
    Pooled(Incoming, PoolSlot),
    /// Any other body, boxed: a body someone watches (a gRPC response whose
    /// status comes in its trailers, a gRPC request kept for replay). Only
    /// gRPC calls pay for the box.
    Boxed(BoxBody),
}

/// A boxed body of the proxy's frame and error types.
pub struct BoxBody(Pin<Box<dyn http_body::Body<Data = Bytes, Error = hyper::Error> + Send>>);

impl BoxBody {
    /// Boxes `body`.
    pub fn new(
        body: impl http_body::Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
    ) -> Self {
        BoxBody(Box::pin(body))
    }
}

impl std::fmt::Debug for BoxBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxBody")
    }
}

impl Body {
    /// A buffered body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(bytes))
        }
    }
}

impl Body {
    /// A response body on a pooled connection; an already complete one
    /// (`HEAD`, `204`, `Content-Length: 0`) frees the connection at once.
    pub fn pooled(body: Incoming, mut slot: PoolSlot) -> Self {
        if http_body::Body::is_end_stream(&body) {
            slot.release();
        }
        Body::Pooled(body, slot)
    }
}

impl From<Incoming> for Body {
    fn from(body: Incoming) -> Self {
        Body::Incoming(body)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(body) => Pin::new(body).poll_frame(cx),
            Body::Pooled(body, slot) => {
                let frame = Pin::new(&mut *body).poll_frame(cx);
                if matches!(frame, Poll::Ready(None)) || body.is_end_stream() {
                    slot.release();
                }
                frame
            }
            Body::Boxed(body) => body.0.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::Incoming(body) | Body::Pooled(body, _) => body.is_end_stream(),
            Body::Boxed(body) => body.0.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(body) | Body::Pooled(body, _) => body.size_hint(),
            Body::Boxed(body) => body.0.size_hint(),
        }
    }
}

/// Where a [`PoolSlot`] returns its connection: the upstream pool
/// (`transport::EndpointPool`), which sits above this module.
pub trait ConnectionPool: Send + Sync {
    /// Takes back an HTTP/1.1 connection whose response body was read to the end.
    fn give_back(self: Arc<Self>, sender: http1::SendRequest<Body>);
}

/// An HTTP/1.1 connection lent to a response: back to its pool when the
/// response body has been read to the end, closed otherwise.
pub struct PoolSlot {
    pool: Weak<dyn ConnectionPool>,
    sender: Option<http1::SendRequest<Body>>,
}

impl std::fmt::Debug for PoolSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolSlot")
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

impl PoolSlot {
    /// Lends `sender`, taken from `pool`, to one response.
    pub fn new(pool: Weak<dyn ConnectionPool>, sender: http1::SendRequest<Body>) -> Self {
        PoolSlot {
            pool,
            sender: Some(sender),
        }
    }

    /// The response body is complete: the connection can serve again.
    pub fn release(&mut self) {
        if let (Some(sender), Some(pool)) = (self.sender.take(), self.pool.upgrade()) {
            pool.give_back(sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn full_body_yields_its_bytes_once() {
        let body = Body::full("hello");
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(5));
        let bytes = body.collect().await.map(|c| c.to_bytes());
        assert_eq!(bytes.ok().as_deref(), Some(&b"hello"[..]));
    }

    #[test]
    fn empty_full_is_empty() {
        assert!(http_body::Body::is_end_stream(&Body::full("")));
    }
}
