//! Per-service concurrency limit (circuit breaker `max_requests` and
//! `max_pending_requests`): beyond both, a fast 503 `tether-error: overloaded`.

use std::future::Future;

use super::Rsp;
use crate::errors::ProxyError;
use crate::state::Service;

/// Holds a slot of `service`'s limiter while the rest of the path runs.
/// The rest is made by `inner` only once a slot is held: taking a ready-made
/// future would store it twice in this one (unstarted and awaited).
pub async fn hold<F, Fut>(service: &Service, inner: F) -> Result<Rsp, ProxyError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Rsp, ProxyError>>,
{
    let _permit = service
        .limiter
        .acquire()
        .await
        .map_err(|_| ProxyError::Overloaded(service.name.clone()))?;
    inner().await
}
