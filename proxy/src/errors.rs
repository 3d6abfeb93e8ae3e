//! Errors the proxy answers itself, how each becomes an HTTP response, and
//! the typed [`Outcome`] a response carries out of the request path.
//!
//! Every response the proxy makes carries `tether-error: <reason>` so an
//! operator never has to guess why a 503 happened. The reason, the number of
//! tries and a skipped retry travel as an [`Outcome`] in the response's
//! extensions; [`Outcome::render`] writes the headers from it once, and
//! metrics, spans and the access log read the typed value, never the headers.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::body::Body;
use crate::grpc;

// Header names are constants, not `&str`: a `&str` name is parsed and
// validated on every lookup or insert.

/// Response header naming why the proxy answered itself.
pub const TETHER_ERROR: HeaderName = HeaderName::from_static("tether-error");
/// Response header with the number of tries when a request was retried.
pub const TETHER_ATTEMPTS: HeaderName = HeaderName::from_static("tether-attempts");
/// Response header saying why a wanted retry was not made.
pub const TETHER_RETRY_SKIPPED: HeaderName = HeaderName::from_static("tether-retry-skipped");

/// Why the proxy answered a request (or refused or ended a TCP stream)
/// itself: the one vocabulary of `tether-error`, the `reason` label of
/// `tether_proxy_errors_total`, the span's `tether.error` and the access
/// log's `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The authority names no service, or the request has none.
    UnknownService,
    /// The service (or the chosen subset) has no endpoints at all.
    NoEndpoints,
    /// Every endpoint is ejected by outlier detection (only when the panic
    /// threshold does not balance over ejected endpoints).
    AllEndpointsEjected,
    /// The whole-request or per-try timeout fired.
    Timeout,
    /// Concurrency and pending limits are full.
    Overloaded,
    /// No connection could be made to the endpoint, or (mTLS) the peer
    /// sidecar could not reach its app.
    UpstreamConnect,
    /// The connection broke before response headers arrived.
    UpstreamReset,
    /// Inbound: the local app could not be reached; nothing was processed.
    AppConnect,
    /// The request could not be forwarded as given.
    BadRequest,
    /// The proxy is starting or shutting down.
    NotReady,
    /// Authorization policy refuses the caller.
    Unauthorized,
    /// An opaque TCP stream broke after it was set up.
    Reset,
    /// An opaque TCP stream carried nothing for its idle timeout and was closed.
    IdleTimeout,
    /// A fault the configuration asks for (`fault.abort`) answered the
    /// request; it never reached the upstream.
    InjectedFault,
    /// A local rate limit (`rate_limit`) refused the request.
    RateLimited,
}

impl Reason {
    /// The reason as it appears in headers, labels, spans and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownService => "unknown-service",
            Reason::NoEndpoints => "no-endpoints",
            Reason::AllEndpointsEjected => "all-endpoints-ejected",
            Reason::Timeout => "timeout",
            Reason::Overloaded => "overloaded",
            Reason::UpstreamConnect => "upstream-connect",
            Reason::UpstreamReset => "upstream-reset",
            Reason::AppConnect => "app-connect",
            Reason::BadRequest => "bad-request",
            Reason::NotReady => "not-ready",
            Reason::Unauthorized => "unauthorized",
            Reason::Reset => "reset",
            Reason::IdleTimeout => "idle-timeout",
            Reason::InjectedFault => "injected-fault",
            Reason::RateLimited => "rate-limited",
        }
    }
}

/// Why a wanted retry was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetrySkip {
    /// The service's retry budget is spent.
    BudgetExhausted,
    /// The body was too large (or of unknown length) to keep for replay.
    BodyNotReplayable,
    /// The method is not idempotent and the try may have reached the upstream.
    NonIdempotent,
    /// The upstream's `Retry-After` asks for a wait that does not fit in
    /// the time the request has left.
    RetryAfter,
}

impl RetrySkip {
    /// The reason as it appears in `tether-retry-skipped` and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            RetrySkip::BudgetExhausted => "budget-exhausted",
            RetrySkip::BodyNotReplayable => "body-not-replayable",
            RetrySkip::NonIdempotent => "non-idempotent",
            RetrySkip::RetryAfter => "retry-after",
        }
    }
}

/// How the proxy's handling of one request ended, carried in the
/// response's extensions. Absent means: answered by the upstream on the
/// first try, so a plain success inserts nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Why the proxy answered itself, if it did.
    pub error: Option<Reason>,
    /// Tries made (0 when none reached the retry layer).
    pub tries: u32,
    /// Why a wanted retry was not made, if one was not.
    pub retry_skipped: Option<RetrySkip>,
}

impl Outcome {
    /// The outcome `response` carries (the default when it carries none).
    pub fn of<B>(response: &Response<B>) -> Outcome {
        response
            .extensions()
            .get::<Outcome>()
            .copied()
            .unwrap_or_default()
    }

    /// Changes the outcome `response` carries, adding one if it has none.
    pub fn update<B>(response: &mut Response<B>, change: impl FnOnce(&mut Outcome)) {
        let extensions = response.extensions_mut();
        match extensions.get_mut::<Outcome>() {
            Some(outcome) => change(outcome),
            None => {
                let mut outcome = Outcome::default();
                change(&mut outcome);
                extensions.insert(outcome);
            }
        }
    }

    /// Retries made: tries after the first.
    pub fn retries(&self) -> u32 {
        self.tries.saturating_sub(1)
    }

    /// Writes `tether-error`, `tether-attempts` (more than one try) and
    /// `tether-retry-skipped` from the outcome `response` carries; a
    /// response without one is left as it is.
    pub fn render<B>(response: &mut Response<B>) {
        let Some(outcome) = response.extensions().get::<Outcome>().copied() else {
            return;
        };
        let headers = response.headers_mut();
        if let Some(reason) = outcome.error {
            headers.insert(TETHER_ERROR, HeaderValue::from_static(reason.as_str()));
        }
        if outcome.tries > 1 {
            headers.insert(TETHER_ATTEMPTS, HeaderValue::from(outcome.tries));
        }
        if let Some(skip) = outcome.retry_skipped {
            headers.insert(
                TETHER_RETRY_SKIPPED,
                HeaderValue::from_static(skip.as_str()),
            );
        }
    }
}

/// Whether `response`, from a peer sidecar, says the sidecar could not reach
/// its app: `502` with `tether-error: app-connect`, so nothing was
/// processed. Only believe it from an authenticated peer (mTLS): a plain
/// upstream could send the same. Only a 502 is looked at further.
pub fn is_peer_app_connect<B>(response: &Response<B>) -> bool {
    response.status() == StatusCode::BAD_GATEWAY
        && response
            .headers()
            .get(TETHER_ERROR)
            .is_some_and(|v| v.as_bytes() == Reason::AppConnect.as_str().as_bytes())
}

/// [`is_peer_app_connect`] for a gRPC call: the peer sidecar answers it
/// as a gRPC error (HTTP 200, `grpc-status: 14`) with `tether-error:
/// app-connect`, or as a `502` (an older sidecar).
pub fn is_peer_grpc_app_connect<B>(response: &Response<B>) -> bool {
    (response.status() == StatusCode::OK || response.status() == StatusCode::BAD_GATEWAY)
        && response
            .headers()
            .get(TETHER_ERROR)
            .is_some_and(|v| v.as_bytes() == Reason::AppConnect.as_str().as_bytes())
}

/// Removes a claimed `app-connect` from an app's own `502`: only this
/// sidecar may say its app was unreachable, so an app (or a caller it
/// relays) cannot make the calling sidecar retry a processed request.
pub fn strip_app_connect<B>(response: &mut Response<B>) {
    if is_peer_app_connect(response) {
        response.headers_mut().remove(TETHER_ERROR);
    }
}

/// [`strip_app_connect`] for a gRPC call, whose claim may come on a 200.
pub fn strip_grpc_app_connect<B>(response: &mut Response<B>) {
    if is_peer_grpc_app_connect(response) {
        response.headers_mut().remove(TETHER_ERROR);
    }
}

/// An error on the request path that the proxy turns into a response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The authority names no service in the snapshot.
    #[error("unknown service `{0}`: no such service in the mesh configuration")]
    UnknownService(String),
    /// The request has no `Host` header or authority.
    #[error("request has no Host header or authority to route by")]
    MissingAuthority,
    /// The service (or the chosen subset) has no endpoints.
    #[error("service `{0}` has no endpoints")]
    NoEndpoints(String),
    /// Every endpoint of the service (or subset) is ejected.
    #[error("every endpoint of `{0}` is ejected by outlier detection")]
    AllEndpointsEjected(String),
    /// The whole-request timeout fired.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The last try's per-try timeout fired.
    #[error("upstream did not answer within the per-try timeout of {0:?}")]
    PerTryTimeout(Duration),
    /// Concurrency and pending limits are full.
    #[error("service `{0}` is overloaded: too many requests in flight and pending")]
    Overloaded(String),
    /// No connection could be made to the endpoint.
    #[error("could not connect to {endpoint}: {source}")]
    UpstreamConnect {
        /// The endpoint tried.
        endpoint: String,
        /// Why.
        #[source]
        source: crate::transport::ClientError,
    },
    /// The peer sidecar at the endpoint (authenticated by mTLS) could not
    /// reach its app: nothing was processed, as with a connect failure.
    #[error("the sidecar at {endpoint} could not reach its app")]
    PeerAppConnect {
        /// The endpoint tried.
        endpoint: String,
    },
    /// Inbound: the local app could not be reached.
    #[error("could not connect to the local app at {endpoint}: {source}")]
    AppConnect {
        /// The app's address.
        endpoint: String,
        /// Why.
        #[source]
        source: crate::transport::ClientError,
    },
    /// The connection broke before response headers arrived.
    #[error("connection to {endpoint} failed before a response: {source}")]
    UpstreamReset {
        /// The endpoint tried.
        endpoint: String,
        /// Why.
        #[source]
        source: crate::transport::ClientError,
    },
    /// The request could not be forwarded as given.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Authorization policy refuses this caller.
    #[error("`{caller}` may not call `{service}` with this method and path")]
    Unauthorized {
        /// The caller's identity, or `unauthenticated`.
        caller: String,
        /// The service called.
        service: String,
    },
    /// The proxy is shutting down or not ready.
    #[error("proxy is not ready: {0}")]
    NotReady(&'static str),
    /// An abort the configuration injects (`fault.abort`).
    #[error("fault injected by the mesh configuration")]
    InjectedFault {
        /// HTTP status answered to a plain HTTP request.
        status: StatusCode,
        /// gRPC status answered to a gRPC call.
        grpc: grpc::Code,
    },
    /// A local rate limit refused the request.
    #[error("rate limit of `{service}` exceeded ({direction}): retry after {retry_after}s")]
    RateLimited {
        /// The service whose limit it is.
        service: String,
        /// `outbound` (the caller's own limit) or `inbound` (the service's).
        direction: &'static str,
        /// Whole seconds until a token is back (`Retry-After`), at least 1.
        retry_after: u64,
    },
}

impl ProxyError {
    /// The error for a pick that found no endpoint of `service`.
    pub fn unpicked(error: crate::balance::PickError, service: &str) -> Self {
        match error {
            crate::balance::PickError::NoEndpoints => ProxyError::NoEndpoints(service.to_owned()),
            crate::balance::PickError::AllEjected => {
                ProxyError::AllEndpointsEjected(service.to_owned())
            }
        }
    }

    /// The reason that goes in `tether-error`, metrics, spans and logs.
    pub fn reason(&self) -> Reason {
        match self {
            ProxyError::UnknownService(_) | ProxyError::MissingAuthority => Reason::UnknownService,
            ProxyError::NoEndpoints(_) => Reason::NoEndpoints,
            ProxyError::AllEndpointsEjected(_) => Reason::AllEndpointsEjected,
            ProxyError::Timeout(_) | ProxyError::PerTryTimeout(_) => Reason::Timeout,
            ProxyError::Overloaded(_) => Reason::Overloaded,
            ProxyError::UpstreamConnect { .. } | ProxyError::PeerAppConnect { .. } => {
                Reason::UpstreamConnect
            }
            ProxyError::AppConnect { .. } => Reason::AppConnect,
            ProxyError::UpstreamReset { .. } => Reason::UpstreamReset,
            ProxyError::BadRequest(_) => Reason::BadRequest,
            ProxyError::NotReady(_) => Reason::NotReady,
            ProxyError::Unauthorized { .. } => Reason::Unauthorized,
            ProxyError::InjectedFault { .. } => Reason::InjectedFault,
            ProxyError::RateLimited { .. } => Reason::RateLimited,
        }
    }

    /// The status code the proxy answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Timeout(_) | ProxyError::PerTryTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::PeerAppConnect { .. }
            | ProxyError::AppConnect { .. }
            | ProxyError::UpstreamReset { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::BadRequest(_) | ProxyError::MissingAuthority => StatusCode::BAD_REQUEST,
            ProxyError::Unauthorized { .. } => StatusCode::FORBIDDEN,
            ProxyError::InjectedFault { status, .. } => *status,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::UnknownService(_)
            | ProxyError::NoEndpoints(_)
            | ProxyError::AllEndpointsEjected(_)
            | ProxyError::Overloaded(_)
            | ProxyError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether the error happened before anything reached the upstream (or,
    /// for a peer sidecar's `app-connect`, its app), so a retry is safe for
    /// any method.
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamConnect { .. } | ProxyError::PeerAppConnect { .. }
        )
    }

    /// The endpoint a connect failure was to, so a retry can go elsewhere.
    pub fn failed_endpoint(&self) -> Option<&str> {
        match self {
            ProxyError::UpstreamConnect { endpoint, .. }
            | ProxyError::PeerAppConnect { endpoint } => Some(endpoint),
            _ => None,
        }
    }

    /// The `Retry-After` (whole seconds) the answer carries: rate limits only.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The gRPC status a gRPC caller gets for this error (docs/proxy.md,
    /// "gRPC": the mapping table).
    pub fn grpc_code(&self) -> grpc::Code {
        match self {
            ProxyError::Timeout(_) | ProxyError::PerTryTimeout(_) => grpc::Code::DeadlineExceeded,
            ProxyError::Overloaded(_) | ProxyError::RateLimited { .. } => {
                grpc::Code::ResourceExhausted
            }
            ProxyError::InjectedFault { grpc, .. } => *grpc,
            ProxyError::Unauthorized { .. } => grpc::Code::PermissionDenied,
            ProxyError::BadRequest(_) => grpc::Code::Internal,
            ProxyError::UnknownService(_)
            | ProxyError::MissingAuthority
            | ProxyError::NoEndpoints(_)
            | ProxyError::AllEndpointsEjected(_)
            | ProxyError::UpstreamConnect { .. }
            | ProxyError::PeerAppConnect { .. }
            | ProxyError::AppConnect { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::NotReady(_) => grpc::Code::Unavailable,
        }
    }

    /// The response for this error in the caller's protocol: a gRPC error
    /// (HTTP 200, `grpc-status`, `grpc-message`) for a gRPC call, else as
    /// [`ProxyError::into_response`].
    pub fn into_response_for(self, grpc_call: bool) -> Response<Body> {
        if !grpc_call {
            return self.into_response();
        }
        let reason = self.reason();
        let retry_after = self.retry_after();
        let mut response = grpc::error_response(self.grpc_code(), &format!("tether: {self}"));
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.extensions_mut().insert(Outcome {
            error: Some(reason),
            ..Outcome::default()
        });
        response
    }

    /// The response the proxy sends for this error, its [`Outcome`] naming
    /// the reason (`tether-error` is written by [`Outcome::render`]).
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let reason = self.reason();
        let retry_after = self.retry_after();
        let message = format!("tether: {self}\n");
        let mut response = Response::new(Body::full(message));
        *response.status_mut() = status;
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response.extensions_mut().insert(Outcome {
            error: Some(reason),
            ..Outcome::default()
        });
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_service_is_503_with_reason_and_name() {
        let mut response = ProxyError::UnknownService("nope".into()).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(Outcome::of(&response).error, Some(Reason::UnknownService));
        assert!(
            response.headers().get(TETHER_ERROR).is_none(),
            "not yet rendered"
        );
        Outcome::render(&mut response);
        assert_eq!(response.headers()[TETHER_ERROR], "unknown-service");
        match response.into_body() {
            Body::Full(Some(bytes)) => assert!(String::from_utf8_lossy(&bytes).contains("nope")),
            other => panic!("unexpected body {other:?}"),
        }
    }

    #[test]
    fn a_grpc_caller_gets_a_grpc_error_with_the_reason() {
        let mut response = ProxyError::NoEndpoints("api".into()).into_response_for(true);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[grpc::GRPC_STATUS], "14");
        let message = response.headers()[grpc::GRPC_MESSAGE]
            .to_str()
            .unwrap_or("");
        assert!(message.contains("`api` has no endpoints"), "{message}");
        Outcome::render(&mut response);
        assert_eq!(response.headers()[TETHER_ERROR], "no-endpoints");
        let code = |e: ProxyError| e.grpc_code();
        assert_eq!(
            code(ProxyError::Timeout(Duration::from_secs(1))),
            grpc::Code::DeadlineExceeded
        );
        assert_eq!(
            code(ProxyError::Overloaded("api".into())),
            grpc::Code::ResourceExhausted
        );
        let denied = ProxyError::Unauthorized {
            caller: "web".into(),
            service: "api".into(),
        };
        assert_eq!(code(denied), grpc::Code::PermissionDenied);
        let plain = ProxyError::NoEndpoints("api".into()).into_response_for(false);
        assert_eq!(plain.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn timeout_is_504() {
        let error = ProxyError::Timeout(Duration::from_secs(1));
        assert_eq!(error.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(error.reason().as_str(), "timeout");
    }

    #[test]
    fn renders_tries_and_skips_once_from_the_outcome() {
        let mut response = Response::new(Body::Empty);
        Outcome::render(&mut response);
        assert!(response.headers().is_empty(), "no outcome, no headers");
        Outcome::update(&mut response, |o| o.tries = 3);
        Outcome::update(&mut response, |o| {
            o.retry_skipped = Some(RetrySkip::BudgetExhausted)
        });
        assert_eq!(Outcome::of(&response).retries(), 2);
        Outcome::render(&mut response);
        assert_eq!(response.headers()[TETHER_ATTEMPTS], "3");
        assert_eq!(response.headers()[TETHER_RETRY_SKIPPED], "budget-exhausted");
        assert!(response.headers().get(TETHER_ERROR).is_none());
    }

    #[test]
    fn app_connect_is_a_502_with_its_reason_and_only_that() {
        let with = |status: u16, reason: &'static str| {
            let mut r = Response::new(Body::Empty);
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or_default();
            r.headers_mut()
                .insert(TETHER_ERROR, HeaderValue::from_static(reason));
            r
        };
        assert!(is_peer_app_connect(&with(502, "app-connect")));
        assert!(!is_peer_app_connect(&with(503, "app-connect")));
        assert!(!is_peer_app_connect(&with(502, "upstream-connect")));
        let mut forged = with(502, "app-connect");
        strip_app_connect(&mut forged);
        assert!(forged.headers().get(TETHER_ERROR).is_none());
        let mut other = with(502, "upstream-reset");
        strip_app_connect(&mut other);
        assert_eq!(other.headers()[TETHER_ERROR], "upstream-reset");
    }
}
