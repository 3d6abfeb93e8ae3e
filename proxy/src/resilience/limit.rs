//! Concurrency limit with a bounded queue: up to `max_requests` in flight,
//! up to `max_pending` more waiting, and a fast refusal beyond that
//! (503 `tether-error: overloaded`). [`hold`] is the layer both the
//! outbound path (per service: circuit breaker `max_requests` and
//! `max_pending_requests`) and the inbound path (the local app) use.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::errors::ProxyError;

/// Holds a slot of `limiter` while the rest of the path runs; `name` says
/// what is overloaded when there is none. The rest is made by `inner` only
/// once a slot is held: taking a ready-made future would store it twice in
/// this one (unstarted and awaited).
pub async fn hold<F, Fut, T>(
    limiter: &ConcurrencyLimiter,
    name: &str,
    inner: F,
) -> Result<T, ProxyError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, ProxyError>>,
{
    let _permit = limiter
        .acquire()
        .await
        .map_err(|_| ProxyError::Overloaded(name.to_owned()))?;
    // Made in place and awaited pinned: `inner().await` would move it.
    std::pin::pin!(inner()).await
}

/// Limits the requests in flight to one service.
#[derive(Debug)]
pub struct ConcurrencyLimiter {
    slots: Arc<Semaphore>,
    pending: AtomicU32,
    max_requests: u32,
    max_pending: u32,
}

/// A slot held for one request; released when dropped.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] OwnedSemaphorePermit);

/// The limiter is full and so is its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded;

impl ConcurrencyLimiter {
    /// A limiter with the given limits.
    pub fn new(max_requests: u32, max_pending: u32) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_requests as usize)),
            pending: AtomicU32::new(0),
            max_requests,
            max_pending,
        }
    }

    /// The configured limits, to decide whether a new snapshot needs a new limiter.
    pub fn limits(&self) -> (u32, u32) {
        (self.max_requests, self.max_pending)
    }

    /// Takes a slot, waiting in the queue if there is room in it.
    pub async fn acquire(&self) -> Result<Permit, Overloaded> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(Permit(permit));
        }
        let queued = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_pending).then_some(n + 1)
            })
            .is_ok();
        if !queued {
            return Err(Overloaded);
        }
        let _dequeue = Dequeue(&self.pending);
        Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map(Permit)
            .map_err(|_| Overloaded)
    }
}

struct Dequeue<'a>(&'a AtomicU32);

impl Drop for Dequeue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queues_up_to_pending_then_refuses() {
        let limiter = Arc::new(ConcurrencyLimiter::new(1, 1));
        let first = limiter.acquire().await;
        assert!(first.is_ok());
        let queued = tokio::spawn({
            let limiter = Arc::clone(&limiter);
            async move { limiter.acquire().await.is_ok() }
        });
        // Poll until the queued request is counted as pending.
        while limiter.pending.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(limiter.acquire().await.err(), Some(Overloaded));
        drop(first);
        assert!(queued.await.unwrap_or(false));
    }

    #[tokio::test]
    async fn zero_pending_fails_fast() {
        let limiter = ConcurrencyLimiter::new(1, 0);
        let _held = limiter.acquire().await;
        assert_eq!(limiter.acquire().await.err(), Some(Overloaded));
    }
}
