//! One layer of the outbound stack as a tower `Service`: a plain async
//! function of (inner service, request). Each layer file holds only its
//! logic; this file holds the tower plumbing once.

use std::task::{Context, Poll};

use tower::Service;

use super::{BoxFuture, Req, Rsp};
use crate::errors::ProxyError;

/// What every layer wraps: the rest of the stack.
pub trait Inner:
    Service<Req, Response = Rsp, Error = ProxyError, Future: Send> + Clone + Send + 'static
{
}

impl<S> Inner for S where
    S: Service<Req, Response = Rsp, Error = ProxyError, Future: Send> + Clone + Send + 'static
{
}

/// A layer: `run(inner, request)` for every request. Always ready (the
/// layers hold no per-service state; limits live in the target), so cloning
/// it per request costs nothing.
pub struct Step<S> {
    run: fn(S, Req) -> BoxFuture,
    inner: S,
}

impl<S> Step<S> {
    /// Wraps `inner` with `run`.
    pub fn new(run: fn(S, Req) -> BoxFuture, inner: S) -> Self {
        Self { run, inner }
    }
}

impl<S: Clone> Clone for Step<S> {
    fn clone(&self) -> Self {
        Self {
            run: self.run,
            inner: self.inner.clone(),
        }
    }
}

impl<S: Inner> Service<Req> for Step<S> {
    type Response = Rsp;
    type Error = ProxyError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> BoxFuture {
        (self.run)(self.inner.clone(), request)
    }
}
