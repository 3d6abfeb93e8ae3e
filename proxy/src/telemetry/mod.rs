//! Tracing: one span per proxy hop, exported over OTLP, with W3C trace
//! context read and written and B3 accepted on the way in.
//!
//! Off (no `mesh.tracing` in the snapshot) the request path pays one atomic
//! load per request and passes trace headers through untouched. On, each
//! request gets a CLIENT span (outbound) or SERVER span (inbound) whose
//! context is written into the forwarded request's `traceparent`, so the
//! next hop and the app continue the same trace. Sampling is parent-based:
//! a caller's decision travels with the trace; new traces are sampled at
//! `sample_ratio`.
//!
//! Why not the OpenTelemetry SDK and opentelemetry-otlp, which this module
//! used first: measured with callgrind, a traced request cost 72.8k
//! instructions against 35k untraced: ~7k to start an SDK span, ~7k to turn
//! its SpanData into opentelemetry-proto structs, ~10k for prost to encode
//! them, the rest in propagation and attribute vectors. At saturation that
//! cut a proxy core's throughput by a quarter. A hop's span has a fixed
//! shape, so the proxy encodes it as OTLP protobuf while it happens
//! (span.rs: ids and request attributes at the start, each try's endpoint,
//! the outcome at the end), keeps finished spans as bytes in a bounded
//! buffer and sends them with its own hyper client (otlp.rs, export.rs;
//! checked against opentelemetry-proto's generated types in tests). What
//! stays standard is the wire: W3C trace context, B3, OTLP/gRPC and
//! OTLP/HTTP protobuf.

mod b3;
mod context;
mod export;
mod otlp;
mod protobuf;
mod span;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::{HeaderMap, Request, StatusCode};

pub use context::{SpanContext, SpanId, TraceId};
pub use export::Protocol as OtlpProtocol;
pub use span::SpanKind;

use context::TRACEPARENT;
pub use export::Counters as ExportCounters;
use export::{Counters, Exporter};
use otlp::Envelope;
use span::{SpanBuilder, SpanEnd, SpanHead};

/// A recorded span while its request is in flight, carried in the
/// request's extensions (and copied into replayed tries) so inner layers
/// can add each try's endpoint. Only sampled requests carry one.
#[derive(Clone, Debug)]
pub struct InFlightSpan(Arc<Mutex<SpanBuilder>>);

impl InFlightSpan {
    fn lock(&self) -> std::sync::MutexGuard<'_, SpanBuilder> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that a try of `request` goes to `endpoint`, if it is traced:
    /// the first try's endpoint is the span's `tether.endpoint`, each later
    /// try a `retry` event.
    pub fn try_started<B>(request: &Request<B>, endpoint: &str) {
        if let Some(cx) = request.extensions().get::<InFlightSpan>() {
            cx.lock()
                .record_try(endpoint, || unix_nanos(SystemTime::now()));
        }
    }
}

/// Where and how much to trace: the snapshot's `mesh.tracing`, compiled by
/// `discovery`.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// OTLP collector endpoint, e.g. `http://127.0.0.1:4317`.
    pub otlp_endpoint: String,
    /// Fraction of new traces sampled, 0.0 to 1.0 (a caller's decision wins).
    pub sample_ratio: f64,
    /// OTLP transport.
    pub protocol: OtlpProtocol,
}

struct Active {
    settings: TracingSettings,
    exporter: Exporter,
}

/// Who this proxy is, for the trace resource.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `service.name`: the mesh service this sidecar fronts.
    pub service: String,
    /// `service.instance.id`: this proxy instance.
    pub instance: String,
}

/// The proxy's tracer; reconfigured when a snapshot changes `mesh.tracing`.
pub struct Telemetry {
    active: ArcSwapOption<Active>,
    identity: Identity,
    counters: Counters,
}

/// What a hop's span is about, known when the request arrives.
pub struct SpanStart<'a> {
    /// Server (inbound) or client (outbound).
    pub kind: SpanKind,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The service called (outbound) or served (inbound).
    pub service: &'a str,
    /// The caller's verified mesh identity, inbound over mTLS.
    pub peer: Option<&'a str>,
    /// When the request arrived: wall clock, for the span's times.
    pub arrived: SystemTime,
    /// When the request arrived: monotonic, for the end of an abandoned
    /// span (the observer's own clock read, not another).
    pub started: Instant,
}

impl Telemetry {
    /// Tracing off until a snapshot turns it on.
    pub fn new(identity: Identity, counters: Counters) -> Arc<Self> {
        Arc::new(Self {
            active: ArcSwapOption::empty(),
            identity,
            counters,
        })
    }

    /// Applies the snapshot's tracing settings; restarts the exporter only
    /// when they changed (the old one sends what it holds, then stops).
    /// Must run inside the tokio runtime.
    pub fn configure(&self, settings: Option<&TracingSettings>) {
        let current = self.active.load();
        if current.as_ref().map(|a| &a.settings) == settings {
            return;
        }
        let next = match settings {
            None => None,
            Some(settings) => match self.build(settings) {
                Ok(active) => Some(Arc::new(active)),
                Err(error) => {
                    tracing::error!(%error, "tracing not started");
                    None
                }
            },
        };
        let on = next.is_some();
        self.active.store(next);
        match settings {
            Some(s) if on => {
                tracing::info!(endpoint = %s.otlp_endpoint, sample_ratio = s.sample_ratio, "tracing on")
            }
            _ => tracing::info!("tracing off"),
        }
    }

    fn build(&self, settings: &TracingSettings) -> Result<Active, export::ConfigError> {
        let envelope = Envelope::new(&[
            ("service.name", &self.identity.service),
            ("service.instance.id", &self.identity.instance),
            ("service.version", env!("CARGO_PKG_VERSION")),
            ("tether.component", "proxy"),
        ]);
        let counters = self.counters.clone();
        Ok(Active {
            settings: settings.clone(),
            exporter: Exporter::start(settings, envelope, counters)?,
        })
    }

    /// Whether tracing is on (one atomic load).
    pub fn is_on(&self) -> bool {
        self.active.load().is_some()
    }

    /// Starts the span of one hop if tracing is on: reads the caller's
    /// context (W3C, else B3), decides sampling, writes this hop's context
    /// into the request as `traceparent` and, when the span is recorded,
    /// puts a [`InFlightSpan`] in the request's extensions.
    pub fn start<B>(&self, request: &mut Request<B>, start: SpanStart<'_>) -> Option<HopSpan> {
        let active = self.active.load();
        let active = active.as_ref()?;
        let parent = extract(request.headers());
        let (trace_id, sampled) = match parent {
            Some(parent) => (parent.trace_id, parent.sampled),
            None => {
                let trace_id = TraceId::random();
                (
                    trace_id,
                    context::sampled_at(trace_id, active.settings.sample_ratio),
                )
            }
        };
        let context = SpanContext {
            trace_id,
            span_id: SpanId::random(),
            sampled,
        };
        let recording = sampled.then(|| {
            let span = SpanBuilder::begin(&SpanHead {
                context,
                parent: parent.map(|p| p.span_id),
                kind: start.kind,
                start_unix_nano: unix_nanos(start.arrived),
                method: request.method(),
                direction: start.direction,
                service: start.service,
                path: request.uri().path(),
                authority: crate::authority::of_request(request).unwrap_or(""),
                peer: start.peer,
                mirrored: request
                    .headers()
                    .get(&crate::headers::MIRROR_HEADER)
                    .is_some_and(|v| v.as_bytes() == b"1"),
            });
            Recording {
                active: Arc::clone(active),
                span: InFlightSpan(Arc::new(Mutex::new(span))),
                arrived: start.arrived,
                started: start.started,
            }
        });
        if let Some(traceparent) = context.traceparent() {
            request.headers_mut().insert(TRACEPARENT, traceparent);
        }
        if let Some(recording) = &recording {
            request.extensions_mut().insert(recording.span.clone());
        }
        Some(HopSpan { context, recording })
    }
}

/// The caller's trace context: W3C `traceparent`, else B3.
pub(crate) fn extract(headers: &HeaderMap) -> Option<SpanContext> {
    SpanContext::from_traceparent(headers).or_else(|| b3::extract(headers))
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The span of one hop: its context and, when the trace is sampled, the
/// span being recorded. Ended with the response; a span dropped without
/// one (the caller went away, the request was abandoned) still ends, as an
/// error `cancelled` without a status code.
pub struct HopSpan {
    context: SpanContext,
    recording: Option<Recording>,
}

struct Recording {
    active: Arc<Active>,
    span: InFlightSpan,
    arrived: SystemTime,
    started: Instant,
}

impl Recording {
    fn end(
        self,
        status: Option<StatusCode>,
        error: Option<&'static str>,
        elapsed: Duration,
        grpc: Option<(u8, &'static str, bool)>,
    ) {
        let mut span = self.span.lock();
        span.end(&SpanEnd {
            end_unix_nano: unix_nanos(self.arrived)
                .saturating_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)),
            status,
            error,
            grpc,
        });
        self.active.exporter.submit(span.bytes());
    }
}

impl HopSpan {
    /// The hop's trace id (for the access log).
    pub fn trace_id(&self) -> TraceId {
        self.context.trace_id
    }

    /// Records the outcome and hands the span to the exporter, if recorded.
    /// `elapsed` is the time from arrival to the response.
    pub fn finish(self, status: StatusCode, error: Option<&'static str>, elapsed: Duration) {
        self.finish_grpc(status, error, elapsed, None);
    }

    /// [`HopSpan::finish`] for a gRPC call: `grpc` is its status code,
    /// name and whether the server failed.
    pub fn finish_grpc(
        mut self,
        status: StatusCode,
        error: Option<&'static str>,
        elapsed: Duration,
        grpc: Option<(u8, &'static str, bool)>,
    ) {
        if let Some(recording) = self.recording.take() {
            recording.end(Some(status), error, elapsed, grpc);
        }
    }
}

impl Drop for HopSpan {
    fn drop(&mut self) {
        if let Some(recording) = self.recording.take() {
            let elapsed = recording.started.elapsed();
            recording.end(None, Some("cancelled"), elapsed, None);
        }
    }
}
