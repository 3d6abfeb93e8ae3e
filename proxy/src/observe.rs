//! What happens around every request on either path: the hop's span, the
//! access log line and the request metrics. Shared by inbound and outbound
//! so both report the same way.

use std::sync::Arc;
use std::time::SystemTime;

use http::{Request, Response};
use tokio::time::Instant;

use crate::access_log::{timestamp, AccessLog, Entry};
use crate::body::Body;
use crate::errors::Outcome;
use crate::request_metrics::{Direction, ServiceMetrics};
use crate::telemetry::{HopSpan, SpanKind, SpanStart, Telemetry};

/// Tracing and access logging for both paths.
#[derive(Clone)]
pub struct Observer {
    telemetry: Arc<Telemetry>,
    access_log: Option<AccessLog>,
    direction: Direction,
}

/// One request being observed.
pub struct Observation {
    started: Instant,
    arrived: SystemTime,
    span: Option<HopSpan>,
    trace_id: Option<String>,
    line: Option<(String, String, String)>,
}

impl Observer {
    /// An observer for one direction.
    pub fn new(
        telemetry: Arc<Telemetry>,
        access_log: Option<AccessLog>,
        direction: Direction,
    ) -> Self {
        Self {
            telemetry,
            access_log,
            direction,
        }
    }

    /// Starts observing a request to (outbound) or of (inbound) `service`.
    pub fn begin(
        &self,
        request: &mut Request<Body>,
        service: &str,
        peer: Option<&str>,
    ) -> Observation {
        let started = Instant::now();
        let arrived = SystemTime::now();
        // Nothing to build when neither tracing nor the access log is on:
        // the common case pays for two clock reads only.
        let tracing = self.telemetry.is_on();
        if !tracing && self.access_log.is_none() {
            return Observation {
                started,
                arrived,
                span: None,
                trace_id: None,
                line: None,
            };
        }
        let line = self.access_log.as_ref().map(|_| {
            let authority = crate::authority::of_request(request).unwrap_or("");
            (
                request.method().to_string(),
                authority.to_owned(),
                request.uri().path().to_owned(),
            )
        });
        let span = if tracing {
            let kind = match self.direction {
                Direction::Outbound => SpanKind::Client,
                Direction::Inbound => SpanKind::Server,
            };
            let start = SpanStart {
                kind,
                direction: self.direction.as_str(),
                service,
                peer,
                arrived,
                started: started.into_std(),
            };
            self.telemetry.start(request, start)
        } else {
            None
        };
        // The hex trace id is for the access log line only.
        let trace_id = line
            .as_ref()
            .and(span.as_ref())
            .map(|span| span.trace_id().to_hex());
        Observation {
            started,
            arrived,
            span,
            trace_id,
            line,
        }
    }

    /// Records the response: metrics, span, access log, all from its typed
    /// [`Outcome`]; then writes the outcome's headers (`tether-error`,
    /// `tether-attempts`, `tether-retry-skipped`), the one place they are
    /// rendered on either path.
    pub fn end(
        &self,
        observation: Observation,
        response: &mut Response<Body>,
        metrics: &ServiceMetrics,
        service: &str,
        peer: Option<&str>,
    ) {
        let elapsed = observation.started.elapsed();
        // No outcome (the common case: answered on the first try) is one
        // empty-extensions check.
        let outcome = Outcome::of(response);
        Outcome::render(response);
        metrics.record(response.status(), elapsed);
        let error = outcome.error.map(|reason| {
            metrics.proxy_error(reason.as_str());
            reason.as_str()
        });
        if let Some(span) = observation.span {
            span.finish(response.status(), error, elapsed);
        }
        if let (Some(log), Some((method, authority, path))) = (&self.access_log, observation.line) {
            log.log(Entry {
                timestamp: timestamp(observation.arrived),
                direction: self.direction.as_str(),
                service: service.to_owned(),
                peer_identity: peer.map(str::to_owned),
                method,
                authority,
                path,
                status: response.status().as_u16(),
                duration_ms: elapsed.as_secs_f64() * 1e3,
                retries: outcome.retries(),
                error,
                trace_id: observation.trace_id,
            });
        }
    }
}
