//! Whole-request timeout: from arrival to response headers, over the queue
//! and every try. Answered with 504 and `tether-error: timeout`.

use tower::ServiceExt;

use super::step::Inner;
use super::{BoxFuture, Req, Target};
use crate::errors::ProxyError;

/// Runs the rest of the stack under the target's timeout.
pub fn run<S: Inner>(inner: S, request: Req) -> BoxFuture {
    Box::pin(async move {
        let limit = Target::of(&request)?.timeout;
        tokio::time::timeout(limit, inner.oneshot(request))
            .await
            .unwrap_or(Err(ProxyError::Timeout(limit)))
    })
}
