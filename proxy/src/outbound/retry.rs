//! Retries: budgeted, with backoff, replaying a bounded copy of the body.
//!
//! A try is retried when it failed in a way the service's `retry_on` names
//! and all of these hold:
//! - the method is idempotent, or the failure was `connect-failure` (nothing
//!   reached the upstream), or a gRPC status `retry_on` names (the service
//!   said the call may be retried), or `retry_non_idempotent` is set;
//! - the body could be kept for replay: empty, or a declared length within
//!   `replay_buffer_bytes` (a body of unknown length streams and is never
//!   buffered, so slow or streaming uploads are not held back); a gRPC
//!   call's body of unknown length streams with a copy kept up to
//!   `replay_buffer_bytes`, and is replayed only if it was not read at all
//!   or was sent to its end within that size (`grpc::Replayable`): a
//!   stream partly sent is never replayed;
//! - the service's retry budget allows it.
//!
//! A retry after a connect failure (including a peer sidecar's `app-connect`)
//! goes to another endpoint than the one that failed, when there is one.
//!
//! An answer of 429 or 503 with `Retry-After: N` (seconds) that is
//! retried waits N seconds instead of the backoff, when that leaves time
//! before the request's timeout; otherwise the retry is skipped
//! (`retry-after`) and the answer returned as it is (`crate::traffic::retry_after`).
//!
//! A wanted retry that is not made is counted in `tether_retries_skipped_total`.
//! The tries made and a skipped retry go in the response's [`Outcome`], from
//! which `tether-attempts` and `tether-retry-skipped` are rendered.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use tower::retry::budget::Budget;

use super::endpoint::send_one_try;
use super::{Req, Rsp, Target};
use crate::body::Body;
use crate::errors::{Outcome, ProxyError, RetrySkip};
use crate::resilience::RetryOn;
use crate::telemetry::InFlightSpan;
use crate::traffic::retry_after::{self, Wait};

/// Sends the request in `slot` to `target`, retrying per its policy; each
/// try goes to [`send_one_try`] through the same slot (see
/// [`super::serve`]). Leaves the slot empty.
pub async fn retry(target: &Target, slot: &mut Option<Req>) -> Result<Rsp, ProxyError> {
    let service = &target.service;
    let policy = &service.retries;
    service.budget.deposit();
    if policy.attempts == 0 {
        if let (Some(mirror), Some(request)) = (&target.mirror, slot.as_ref()) {
            mirror.send(super::mirror::bodiless_copy(request));
        }
        return send_one_try(target, slot, None).await;
    }
    let Some(request) = slot.take() else {
        return Err(ProxyError::NotReady("no request to send"));
    };
    let idempotent = is_idempotent(request.method());
    // Most requests (no body, or one that is not kept) need no await here:
    // only a body to buffer builds and awaits the buffering future.
    let (first, template) = match keep_now(request, policy.replay_buffer_bytes, target.grpc) {
        Kept::Ready(first, template) => (first, template),
        Kept::Buffer(request) => {
            let (first, template) = buffer_for_replay(request).await?;
            (first, Some(template))
        }
    };
    *slot = Some(first);
    if let Some(mirror) = &target.mirror {
        // Only a body already buffered for replay is copied.
        mirror.send(template.as_ref().and_then(Replay::buffered_copy));
    }
    let mut tries = 1u32;
    // The endpoint of the last connect failure: the next try avoids it.
    let mut failed: Option<String> = None;
    loop {
        // The first try sends the request itself; a later one a copy.
        if tries > 1 {
            match template.as_ref().and_then(Replay::request) {
                Some(request) => *slot = Some(request),
                None => return Err(ProxyError::NotReady("retry without a replayable body")),
            }
        }
        // Awaited pinned where it is made: `.await` would move it.
        let result = std::pin::pin!(send_one_try(target, slot, failed.as_deref())).await;
        let Some(connect_only) = wants_retry(&result, &policy.retry_on, target.grpc) else {
            return finish(result, tries, None, target.grpc);
        };
        // What the upstream asked for (429/503 with `Retry-After`): read
        // only on the rare answer that is retried.
        let wait = match &result {
            Ok(response) => {
                let requested = retry_after::requested(response.status(), response.headers());
                match requested {
                    Some(_) => retry_after::decide(requested, target.time_left()),
                    None => Wait::Backoff,
                }
            }
            Err(_) => Wait::Backoff,
        };
        let skip = if tries > policy.attempts {
            return finish(result, tries, None, target.grpc);
        } else if !(idempotent || connect_only || policy.retry_non_idempotent) {
            Some(RetrySkip::NonIdempotent)
        } else if !template.as_ref().is_some_and(Replay::can_replay) {
            Some(RetrySkip::BodyNotReplayable)
        } else if wait == Wait::Skip {
            Some(RetrySkip::RetryAfter)
        } else if !service.budget.withdraw() {
            Some(RetrySkip::BudgetExhausted)
        } else {
            None
        };
        if let Some(skip) = skip {
            service.metrics.retry_skipped(skip.as_str());
            return finish(result, tries, Some(skip), target.grpc);
        }
        // Rare (a connect failure): the address is copied only then.
        if let Err(error) = &result {
            failed = error.failed_endpoint().map(str::to_owned);
        }
        service.metrics.retry();
        tracing::debug!(service = %service.name, try_number = tries + 1, "retrying");
        let delay = match wait {
            Wait::For(asked) => asked,
            Wait::Backoff | Wait::Skip => policy.backoff.delay(tries),
        };
        tokio::time::sleep(delay).await;
        tries += 1;
    }
}

/// If the try failed retryably, whether it is safe for any method
/// (`Some(true)`: `connect-failure`, or a gRPC call's trailers-only
/// `grpc-status` that `retry_on` names, as gRPC's own retry policy treats
/// the codes a service lists) or only for idempotent ones (`Some(false)`).
fn wants_retry(result: &Result<Rsp, ProxyError>, retry_on: &[RetryOn], grpc: bool) -> Option<bool> {
    match result {
        Ok(response) => {
            let code = response.status().as_u16();
            if retry_on.iter().any(|c| c.matches_status(code)) {
                return Some(false);
            }
            let by_grpc = grpc
                && crate::grpc::status_of(response.headers())
                    .is_some_and(|g| retry_on.iter().any(|c| c.matches_grpc(g.number())));
            by_grpc.then_some(true)
        }
        Err(error) if error.is_connect_failure() => {
            retry_on.contains(&RetryOn::ConnectFailure).then_some(true)
        }
        Err(ProxyError::UpstreamReset { .. } | ProxyError::PerTryTimeout(_)) => {
            retry_on.contains(&RetryOn::Reset).then_some(false)
        }
        Err(_) => None,
    }
}

/// The answer to send: the last try's response, or its error as one, with
/// the tries and a skipped retry in its [`Outcome`] (only when there is
/// something to say: a plain success inserts nothing).
fn finish(
    result: Result<Rsp, ProxyError>,
    tries: u32,
    skip: Option<RetrySkip>,
    grpc: bool,
) -> Result<Rsp, ProxyError> {
    let mut response = match result {
        Ok(response) => response,
        Err(error) => error.into_response_for(grpc),
    };
    if tries > 1 || skip.is_some() {
        Outcome::update(&mut response, |outcome| {
            outcome.tries = tries;
            outcome.retry_skipped = skip;
        });
    }
    Ok(response)
}

/// RFC 9110 §9.2.2 idempotent methods.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// What a later try is rebuilt from: the request line, the headers, the
/// trace context and the buffered body. Deliberately not the whole request:
/// cloning its extensions on every request would cost more than the rare
/// retry saves.
#[derive(Debug)]
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    trace: Option<InFlightSpan>,
    body: ReplayBody,
}

/// The body a later try gets.
#[derive(Debug)]
enum ReplayBody {
    /// Buffered before the first try (a declared length within the cap).
    Kept(Bytes),
    /// A gRPC body kept as it streams.
    Streamed(crate::grpc::Replayable),
}

impl Replay {
    /// Whether another try can have the body.
    fn can_replay(&self) -> bool {
        match &self.body {
            ReplayBody::Kept(_) => true,
            ReplayBody::Streamed(streamed) => streamed.can_replay(),
        }
    }

    /// A copy for a mirror, without the trace of the original's span: only
    /// when the body was buffered whole before the first try.
    fn buffered_copy(&self) -> Option<Req> {
        let ReplayBody::Kept(bytes) = &self.body else {
            return None;
        };
        let mut request = Request::new(Body::full(bytes.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        Some(request)
    }

    /// A fresh copy of the request for another try, if its body can be had.
    fn request(&self) -> Option<Req> {
        let body = match &self.body {
            ReplayBody::Kept(bytes) => Body::full(bytes.clone()),
            ReplayBody::Streamed(streamed) => streamed.body()?,
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        if let Some(trace) = &self.trace {
            request.extensions_mut().insert(trace.clone());
        }
        Some(request)
    }
}

/// What [`keep_now`] decided without reading the body.
// Made once per request and taken apart at once: boxing the larger variant
// would allocate on every request to save a move of 256 bytes.
#[allow(clippy::large_enum_variant)]
enum Kept {
    /// The request to send first and, when its body can be replayed, the
    /// template of later tries.
    Ready(Req, Option<Replay>),
    /// A body of declared length within the cap: [`buffer_for_replay`].
    Buffer(Req),
}

/// Decides how `request` is kept for replay, reading nothing: an empty body
/// is replayable as it is; only a declared length within `cap` is buffered
/// (by [`buffer_for_replay`]); a gRPC body of unknown length streams, kept
/// as it goes; any other body is not replayable.
fn keep_now(request: Req, cap: usize, grpc: bool) -> Kept {
    let body = request.body();
    if body.is_end_stream() {
        let (parts, _) = request.into_parts();
        let template = Replay::of(&parts, ReplayBody::Kept(Bytes::new()));
        return Kept::Ready(Request::from_parts(parts, Body::Empty), Some(template));
    }
    let hint = body.size_hint();
    if hint.exact().is_some_and(|n| n <= cap as u64) {
        return Kept::Buffer(request);
    }
    if grpc && hint.exact().is_none() && hint.lower() <= cap as u64 {
        let (parts, body) = request.into_parts();
        let streamed = crate::grpc::Replayable::new(body, cap);
        let first = streamed.body().unwrap_or_default();
        let template = Replay::of(&parts, ReplayBody::Streamed(streamed));
        return Kept::Ready(Request::from_parts(parts, first), Some(template));
    }
    Kept::Ready(request, None)
}

/// Reads a body of declared length within the cap ([`Kept::Buffer`]) and
/// returns the request to send first with the template of later tries.
async fn buffer_for_replay(request: Req) -> Result<(Req, Replay), ProxyError> {
    let (parts, body) = request.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|e| ProxyError::BadRequest(format!("reading the request body failed: {e}")))?
        .to_bytes();
    let template = Replay::of(&parts, ReplayBody::Kept(bytes.clone()));
    Ok((Request::from_parts(parts, Body::full(bytes)), template))
}

impl Replay {
    /// The template of `parts` (its trace context included) with `body`.
    fn of(parts: &http::request::Parts, body: ReplayBody) -> Self {
        Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            trace: parts.extensions.get::<InFlightSpan>().cloned(),
            body,
        }
    }
}

/// [`keep_now`], then [`buffer_for_replay`] when it says so.
#[cfg(test)]
async fn keep_for_replay(
    request: Req,
    cap: usize,
    grpc: bool,
) -> Result<(Option<Req>, Option<Replay>), ProxyError> {
    match keep_now(request, cap, grpc) {
        Kept::Ready(first, template) => Ok((Some(first), template)),
        Kept::Buffer(request) => {
            let (first, template) = buffer_for_replay(request).await?;
            Ok((Some(first), Some(template)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }

    #[test]
    fn classifies_statuses_and_errors() {
        let on = [RetryOn::ConnectFailure, RetryOn::Status(503)];
        let status = |code: u16| {
            let mut r = Rsp::new(Body::Empty);
            *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or_default();
            Ok(r)
        };
        assert_eq!(wants_retry(&status(503), &on, false), Some(false));
        assert_eq!(wants_retry(&status(500), &on, false), None);
        assert_eq!(wants_retry(&status(200), &on, false), None);
        let timeout = Err(ProxyError::PerTryTimeout(std::time::Duration::from_secs(1)));
        assert_eq!(wants_retry(&timeout, &on, false), None);
        assert_eq!(wants_retry(&timeout, &[RetryOn::Reset], false), Some(false));
        let unavailable = || {
            let mut r = Rsp::new(Body::Empty);
            r.headers_mut().insert(
                crate::grpc::GRPC_STATUS,
                http::HeaderValue::from_static("14"),
            );
            Ok(r)
        };
        let on_grpc = [RetryOn::Grpc(14)];
        assert_eq!(wants_retry(&unavailable(), &on_grpc, true), Some(true));
        assert_eq!(
            wants_retry(&unavailable(), &on_grpc, false),
            None,
            "not a gRPC call"
        );
        assert_eq!(wants_retry(&unavailable(), &on, true), None);
    }

    #[tokio::test]
    async fn keeps_small_declared_bodies_only() {
        let small = Request::builder()
            .method(Method::POST)
            .body(Body::full("abc"))
            .unwrap_or_default();
        let (first, template) = keep_for_replay(small, 8, false)
            .await
            .unwrap_or((None, None));
        assert!(first.is_some());
        assert!(matches!(
            template.map(|t| t.body),
            Some(ReplayBody::Kept(b)) if b == "abc"
        ));
        let big = Request::builder()
            .body(Body::full(vec![0u8; 9]))
            .unwrap_or_default();
        let (first, template) = keep_for_replay(big, 8, false).await.unwrap_or((None, None));
        assert!(first.is_some() && template.is_none());
    }
}
