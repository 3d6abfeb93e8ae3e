//! Errors the proxy answers itself, and how each becomes an HTTP response.
//!
//! Every response the proxy makes carries `tether-error: <reason>` so an
//! operator never has to guess why a 503 happened.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::body::Body;

// Header names are constants, not `&str`: a `&str` name is parsed and
// validated on every lookup or insert.

/// Response header naming why the proxy answered itself.
pub const TETHER_ERROR: HeaderName = HeaderName::from_static("tether-error");
/// Response header with the number of tries when a request was retried.
pub const TETHER_ATTEMPTS: HeaderName = HeaderName::from_static("tether-attempts");
/// Response header saying why a wanted retry was not made.
pub const TETHER_RETRY_SKIPPED: HeaderName = HeaderName::from_static("tether-retry-skipped");

/// An error on the request path that the proxy turns into a response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The authority names no service in the snapshot.
    #[error("unknown service `{0}`: no such service in the mesh configuration")]
    UnknownService(String),
    /// The request has no `Host` header or authority.
    #[error("request has no Host header or authority to route by")]
    MissingAuthority,
    /// The service (or the chosen subset) has no endpoint to send to.
    #[error("service `{0}` has no available endpoints")]
    NoEndpoints(String),
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
}

impl ProxyError {
    /// The short reason that goes in the `tether-error` header and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::UnknownService(_) | ProxyError::MissingAuthority => "unknown-service",
            ProxyError::NoEndpoints(_) => "no-endpoints",
            ProxyError::Timeout(_) | ProxyError::PerTryTimeout(_) => "timeout",
            ProxyError::Overloaded(_) => "overloaded",
            ProxyError::UpstreamConnect { .. } => "upstream-connect",
            ProxyError::UpstreamReset { .. } => "upstream-reset",
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::NotReady(_) => "not-ready",
            ProxyError::Unauthorized { .. } => "unauthorized",
        }
    }

    /// The status code the proxy answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Timeout(_) | ProxyError::PerTryTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamReset { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::BadRequest(_) | ProxyError::MissingAuthority => StatusCode::BAD_REQUEST,
            ProxyError::Unauthorized { .. } => StatusCode::FORBIDDEN,
            ProxyError::UnknownService(_)
            | ProxyError::NoEndpoints(_)
            | ProxyError::Overloaded(_)
            | ProxyError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether the error happened before anything reached the upstream, so a
    /// retry is safe for any method.
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, ProxyError::UpstreamConnect { .. })
    }

    /// The response the proxy sends for this error.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let reason = self.reason();
        let message = format!("tether: {self}\n");
        let mut response = Response::new(Body::full(message));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(TETHER_ERROR, HeaderValue::from_static(reason));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_service_is_503_with_reason_and_name() {
        let response = ProxyError::UnknownService("nope".into()).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[TETHER_ERROR], "unknown-service");
        match response.into_body() {
            Body::Full(Some(bytes)) => assert!(String::from_utf8_lossy(&bytes).contains("nope")),
            other => panic!("unexpected body {other:?}"),
        }
    }

    #[test]
    fn timeout_is_504() {
        let error = ProxyError::Timeout(Duration::from_secs(1));
        assert_eq!(error.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(error.reason(), "timeout");
    }
}
