//! Whole-request timeout: from arrival to response headers, over the queue
//! and every try. Answered with 504 and `tether-error: timeout`.

use std::future::Future;
use std::time::Duration;

use futures_util::FutureExt;

use super::Rsp;
use crate::errors::ProxyError;

/// Runs `inner` (the rest of the path) for at most `limit`. A plain
/// function over tokio's `Timeout`, not an `async fn`: an `async fn` that
/// takes a future (or an `async` block that captures one) stores it twice,
/// unstarted and awaited, doubling the request's future at every layer.
pub fn within<F>(limit: Duration, inner: F) -> impl Future<Output = Result<Rsp, ProxyError>>
where
    F: Future<Output = Result<Rsp, ProxyError>>,
{
    tokio::time::timeout(limit, inner).map(move |r| r.unwrap_or(Err(ProxyError::Timeout(limit))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_is_cut_at_the_limit() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(Rsp::new(crate::body::Body::Empty))
        };
        let result = within(Duration::from_secs(1), slow).await;
        assert!(matches!(result, Err(ProxyError::Timeout(d)) if d == Duration::from_secs(1)));
        let fast = async { Ok(Rsp::new(crate::body::Body::Empty)) };
        assert!(within(Duration::from_secs(1), fast).await.is_ok());
    }
}
