//! The API's response body: a few byte chunks sent in order, none copied
//! into one buffer. A snapshot is a small per-service head and tail around
//! the mesh-wide part that every proxy's snapshot shares, so serving it to
//! hundreds of proxies costs refcounts, not a copy of the mesh per service.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// Chunks sent front to back; the length is exact, so responses carry
/// `content-length`.
#[derive(Debug, Default)]
pub struct Chunks {
    parts: Vec<Bytes>,
    next: usize,
}

impl Chunks {
    /// A body of `parts` in order.
    pub fn new(parts: Vec<Bytes>) -> Self {
        Self { parts, next: 0 }
    }
}

impl From<Bytes> for Chunks {
    fn from(bytes: Bytes) -> Self {
        Self::new(vec![bytes])
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        while let Some(part) = this.parts.get_mut(this.next) {
            this.next += 1;
            if !part.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(std::mem::take(part)))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.parts[self.next.min(self.parts.len())..]
            .iter()
            .all(Bytes::is_empty)
    }

    fn size_hint(&self) -> SizeHint {
        let left = self.parts[self.next.min(self.parts.len())..]
            .iter()
            .map(|p| p.len() as u64)
            .sum();
        SizeHint::with_exact(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn chunks_arrive_in_order_with_an_exact_length() {
        let body = Chunks::new(vec![
            Bytes::from_static(b"{\"a\":"),
            Bytes::new(),
            Bytes::from_static(b"1}"),
        ]);
        assert_eq!(body.size_hint().exact(), Some(7));
        assert!(!body.is_end_stream());
        let bytes = body.collect().await.map(|c| c.to_bytes());
        assert_eq!(bytes.ok().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert!(Chunks::default().is_end_stream());
    }
}
