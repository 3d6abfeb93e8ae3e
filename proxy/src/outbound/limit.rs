//! Per-service concurrency limit (circuit breaker `max_requests` and
//! `max_pending_requests`): beyond both, a fast 503 `tether-error: overloaded`.

use std::task::{Context, Poll};

use tower::{Layer, Service, ServiceExt};

use super::{BoxFuture, Req, Rsp, Target};
use crate::errors::ProxyError;

/// Adds the per-service concurrency limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitLayer;

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Limit<S> {
        Limit { inner }
    }
}

/// See [`LimitLayer`].
#[derive(Debug, Clone)]
pub struct Limit<S> {
    inner: S,
}

impl<S> Service<Req> for Limit<S>
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
            let service = Target::of(&request)?.service;
            let _permit = service
                .limiter
                .acquire()
                .await
                .map_err(|_| ProxyError::Overloaded(service.name.clone()))?;
            inner.oneshot(request).await
        })
    }
}
