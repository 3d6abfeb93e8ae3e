//! Whole-request timeout: from arrival to response headers, over the queue
//! and every try. Answered with 504 and `tether-error: timeout`.

use std::task::{Context, Poll};

use tower::{Layer, Service, ServiceExt};

use super::{BoxFuture, Req, Rsp, Target};
use crate::errors::ProxyError;

/// Adds the whole-request timeout.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeoutLayer;

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout { inner }
    }
}

/// See [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
}

impl<S> Service<Req> for Timeout<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> BoxFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            let limit = Target::of(&request)?.timeout;
            tokio::time::timeout(limit, inner.oneshot(request))
                .await
                .unwrap_or(Err(ProxyError::Timeout(limit)))
        })
    }
}
