//! A finished span in the proxy's own compact form: the ids, two
//! timestamps and the handful of fields a hop has. This, not a general
//! span object, is what crosses the export queue; otlp.rs encodes it.

use http::Method;

use super::context::{SpanContext, SpanId};

/// OTLP span kinds the proxy emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Inbound: the hop that serves a request for the local app.
    Server,
    /// Outbound: the hop that calls another service.
    Client,
}

/// A `retry` event: the time a try after the first was sent, and its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryEvent {
    /// When the try was sent, in ns since the Unix epoch.
    pub at_unix_nano: u64,
    /// The try's number (2 for the first retry).
    pub try_number: u32,
}

/// One hop's finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// Trace and span id; only sampled spans are recorded.
    pub context: SpanContext,
    /// The caller's span, when the request carried one.
    pub parent: Option<SpanId>,
    /// Server (inbound) or client (outbound).
    pub kind: SpanKind,
    /// Start, ns since the Unix epoch.
    pub start_unix_nano: u64,
    /// End, ns since the Unix epoch.
    pub end_unix_nano: u64,
    /// `http.request.method`.
    pub method: Method,
    /// `tether.direction`: `inbound` or `outbound`.
    pub direction: &'static str,
    /// `tether.service`: the service called (outbound) or served (inbound).
    pub service: String,
    /// `url.path`.
    pub path: String,
    /// The request's authority (`host[:port]`): `server.address` and
    /// `server.port`.
    pub authority: String,
    /// `tether.peer.identity`: the caller's verified mesh identity.
    pub peer: Option<String>,
    /// `http.response.status_code`.
    pub status: u16,
    /// `tether.error` and `error.type`: the proxy's reason, when it failed
    /// the request itself.
    pub error: Option<&'static str>,
    /// `tether.retries`, when the retry layer ran.
    pub retries: Option<u32>,
    /// `tether.endpoint`: the endpoint of the last try.
    pub endpoint: Option<String>,
    /// One event per retry.
    pub retry_events: Vec<RetryEvent>,
}

impl SpanRecord {
    /// The span's name: `METHOD direction service`.
    pub fn name_parts(&self) -> [&str; 5] {
        [
            self.method.as_str(),
            " ",
            self.direction,
            " ",
            self.service.as_str(),
        ]
    }

    /// Whether the span's status is an error: the proxy failed the request
    /// or the answer is a 5xx.
    pub fn is_error(&self) -> bool {
        self.error.is_some() || self.status >= 500
    }

    /// `server.address` and `server.port` from the authority. An IPv6
    /// literal keeps its brackets off: `[::1]:80` is `::1` and 80.
    pub fn server_address(&self) -> (&str, Option<u16>) {
        let authority = self.authority.as_str();
        if let Some(rest) = authority.strip_prefix('[') {
            if let Some((host, after)) = rest.split_once(']') {
                let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
                return (host, port);
            }
        }
        match authority.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => match port.parse() {
                Ok(port) => (host, Some(port)),
                Err(_) => (authority, None),
            },
            _ => (authority, None),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::telemetry::context::TraceId;

    pub(crate) fn record(authority: &str) -> SpanRecord {
        SpanRecord {
            context: SpanContext {
                trace_id: TraceId([1; 16]),
                span_id: SpanId([2; 8]),
                sampled: true,
            },
            parent: None,
            kind: SpanKind::Client,
            start_unix_nano: 1,
            end_unix_nano: 2,
            method: Method::GET,
            direction: "outbound",
            service: "api".into(),
            path: "/".into(),
            authority: authority.into(),
            peer: None,
            status: 200,
            error: None,
            retries: None,
            endpoint: None,
            retry_events: Vec::new(),
        }
    }

    #[test]
    fn splits_the_authority_into_address_and_port() {
        assert_eq!(record("api").server_address(), ("api", None));
        assert_eq!(record("api:8080").server_address(), ("api", Some(8080)));
        assert_eq!(record("[::1]:80").server_address(), ("::1", Some(80)));
        assert_eq!(record("[::1]").server_address(), ("::1", None));
        assert_eq!(record("::1").server_address(), ("::1", None));
        assert_eq!(record("api:x").server_address(), ("api:x", None));
    }

    #[test]
    fn errors_are_the_proxys_reasons_and_5xx() {
        let mut span = record("api");
        assert!(!span.is_error());
        span.status = 503;
        assert!(span.is_error());
        span.status = 404;
        span.error = Some("timeout");
        assert!(span.is_error());
    }
}
