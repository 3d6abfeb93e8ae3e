//! Per-service concurrency limit (circuit breaker `max_requests` and
//! `max_pending_requests`): beyond both, a fast 503 `tether-error: overloaded`.

use tower::ServiceExt;

use super::step::Inner;
use super::{BoxFuture, Req, Target};
use crate::errors::ProxyError;

/// Holds a slot of the target service's limiter while the rest runs.
pub fn run<S: Inner>(inner: S, request: Req) -> BoxFuture {
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
