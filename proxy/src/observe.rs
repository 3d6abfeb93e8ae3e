//! What happens around every request on either path: the hop's span, the
//! access log line and the request metrics. Shared by inbound and outbound
//! so both report the same way.

use std::sync::Arc;
use std::time::SystemTime;

use http::{Request, Response};
use tokio::time::Instant;

use crate::access_log::{timestamp, AccessLog, Entry};
use crate::body::{Body, BoxBody};
use crate::errors::Outcome;
use crate::grpc;
use crate::request_metrics::{Direction, ServiceMetrics};
use crate::tap::{Tap, TapOutcome, TapRequest, TapUpstream};
use crate::telemetry::{HopSpan, SpanKind, SpanStart, Telemetry};

/// Tracing and access logging for both paths.
#[derive(Clone)]
pub struct Observer {
    telemetry: Arc<Telemetry>,
    access_log: Option<AccessLog>,
    direction: Direction,
    /// Live taps (`GET /tap`); one relaxed load per request while none is open.
    tap: Tap,
}

/// One request being observed.
pub struct Observation {
    started: Instant,
    /// The wall clock at arrival, read only for what reports it (a tap, a
    /// span, the access log): `None` when none of them is on.
    arrived: Option<SystemTime>,
    span: Option<HopSpan>,
    line: Option<(String, String, String)>,
    grpc: bool,
    /// What a tap needs of the request: `None` unless a tap was open when
    /// it arrived (boxed: keeps the observation small for everyone else).
    tap: Option<Box<TapRequest>>,
}

impl Observation {
    /// Whether the request is a gRPC call (`content-type:
    /// application/grpc*`): its errors are answered as gRPC errors.
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// When the request arrived (its timeout counts from here).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Whether a tap was open when the request arrived: the path then
    /// leaves a [`TapUpstream`] in the response's extensions.
    pub fn is_tapped(&self) -> bool {
        self.tap.is_some()
    }
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
            tap: Tap::default(),
        }
    }

    /// Offers every request's outcome to the live taps of `tap`.
    pub fn with_tap(mut self, tap: Tap) -> Self {
        self.tap = tap;
        self
    }

    /// Starts observing a request to (outbound) or of (inbound) `service`.
    pub fn begin(
        &self,
        request: &mut Request<Body>,
        service: &str,
        peer: Option<&str>,
    ) -> Observation {
        let started = Instant::now();
        let grpc = grpc::is_grpc(request.headers());
        // One relaxed load while nobody taps.
        let tapped = self.tap.is_active();
        // Nothing to build when no tap, no tracing and no access log is
        // on: the common case pays for one clock read only.
        let tracing = self.telemetry.is_on();
        if !tapped && !tracing && self.access_log.is_none() {
            return Observation {
                started,
                arrived: None,
                span: None,
                line: None,
                grpc,
                tap: None,
            };
        }
        let arrived = SystemTime::now();
        let tap = tapped.then(|| Box::new(TapRequest::of(request, arrived)));
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
        Observation {
            started,
            arrived: Some(arrived),
            span,
            line,
            grpc,
            tap,
        }
    }

    /// Records the response: metrics, span, access log, all from its typed
    /// [`Outcome`]; then writes the outcome's headers (`tether-error`,
    /// `tether-attempts`, `tether-retry-skipped`), the one place they are
    /// rendered on either path. Returns the request's duration.
    pub fn end(
        &self,
        observation: Observation,
        response: &mut Response<Body>,
        metrics: &ServiceMetrics,
        service: &str,
        peer: Option<&str>,
    ) -> std::time::Duration {
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
        let status = response.status();
        // The hex trace id is for the access log line only (made here, not
        // kept in every observation: the request's future stays small).
        let trace_id = observation
            .line
            .as_ref()
            .and(observation.span.as_ref())
            .map(|span| span.trace_id().to_hex());
        if let Some(request) = observation.tap {
            self.tap.publish(
                *request,
                TapOutcome {
                    direction: self.direction,
                    service,
                    peer,
                    status: status.as_u16(),
                    latency: elapsed,
                    error,
                    upstream: response
                        .extensions_mut()
                        .remove::<TapUpstream>()
                        .map(|u| u.0),
                },
            );
        }
        let entry = |line: (String, String, String), trace_id: Option<String>| {
            let (method, authority, path) = line;
            Entry {
                timestamp: timestamp(observation.arrived.unwrap_or_else(SystemTime::now)),
                direction: self.direction.as_str(),
                service: service.to_owned(),
                peer_identity: peer.map(str::to_owned),
                method,
                authority,
                path,
                status: status.as_u16(),
                duration_ms: elapsed.as_secs_f64() * 1e3,
                retries: outcome.retries(),
                error,
                grpc_status: None,
                trace_id,
            }
        };
        if !observation.grpc {
            // The common case, as before gRPC: nothing is kept for later.
            if let Some(span) = observation.span {
                span.finish(status, error, elapsed);
            }
            if let (Some(log), Some(line)) = (&self.access_log, observation.line) {
                log.log(entry(line, trace_id));
            }
            return elapsed;
        }
        let done = Done {
            span: observation.span,
            entry: match (&self.access_log, observation.line) {
                (Some(_), Some(line)) => Some(entry(line, trace_id)),
                _ => None,
            },
            status,
            error,
            elapsed,
        };
        // A gRPC call ends with its grpc-status: in the headers of a
        // trailers-only response, else in the trailers, once streamed.
        match grpc::status_of(response.headers()) {
            Some(code) => done.finish(self.access_log.as_ref(), metrics, Some(code)),
            None if status != http::StatusCode::OK
                || http_body::Body::is_end_stream(response.body()) =>
            {
                done.finish(self.access_log.as_ref(), metrics, None)
            }
            None => {
                let log = self.access_log.clone();
                let metrics = metrics.clone();
                let body = std::mem::take(response.body_mut());
                let tail = grpc::StatusTail::new(body, move |code| {
                    done.finish(log.as_ref(), &metrics, code);
                });
                *response.body_mut() = Body::Boxed(BoxBody::new(tail));
            }
        }
        elapsed
    }
}

/// What is left to record of a gRPC call once its response headers are
/// known: its span and access log line, written now, or (a status that
/// comes in the trailers) when the response stream ends.
struct Done {
    span: Option<HopSpan>,
    entry: Option<Entry>,
    status: http::StatusCode,
    error: Option<&'static str>,
    elapsed: std::time::Duration,
}

impl Done {
    /// Records the call's status (`none` when it ended without one), its
    /// span and its log line.
    fn finish(self, log: Option<&AccessLog>, metrics: &ServiceMetrics, code: Option<grpc::Code>) {
        metrics.grpc_status(code.map_or("none", grpc::Code::name));
        let grpc = code.map(|c| (c.number(), c.name(), c.is_server_failure()));
        if let Some(span) = self.span {
            span.finish_grpc(self.status, self.error, self.elapsed, grpc);
        }
        if let (Some(log), Some(mut entry)) = (log, self.entry) {
            entry.grpc_status = code.map(grpc::Code::number);
            log.log(entry);
        }
    }
}
