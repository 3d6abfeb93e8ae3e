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
//! shape, so the proxy records it in a compact struct (record.rs), encodes
//! OTLP protobuf from it directly (otlp.rs, checked against
//! opentelemetry-proto's generated types in tests) and sends it with the
//! proxy's own hyper client (export.rs). What stays standard is the wire:
//! W3C trace context, B3, OTLP/gRPC and OTLP/HTTP protobuf.

mod b3;
mod context;
mod export;
mod otlp;
mod record;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::{HeaderMap, Request, StatusCode};
use tether_api::TracingSettings;

use crate::metrics::Metrics;
pub use context::{SpanContext, SpanId, TraceId};
pub use record::{RetryEvent, SpanKind, SpanRecord};

use context::TRACEPARENT;
use export::{Counters, Exporter};
use otlp::Envelope;

/// What inner layers add to a recorded span while its request is in
/// flight: the endpoint of the last try and one event per retry. Carried
/// in the request's extensions (and copied into replayed tries) only when
/// the span is recorded.
#[derive(Clone, Debug, Default)]
pub struct TraceCx(Arc<Mutex<Extras>>);

#[derive(Debug, Default)]
struct Extras {
    endpoint: Option<String>,
    retry_events: Vec<RetryEvent>,
}

impl TraceCx {
    fn with<B>(request: &Request<B>, update: impl FnOnce(&mut Extras)) {
        if let Some(cx) = request.extensions().get::<TraceCx>() {
            update(&mut cx.0.lock().unwrap_or_else(PoisonError::into_inner));
        }
    }

    /// Records the endpoint a try of `request` went to, if it is traced.
    pub fn endpoint<B>(request: &Request<B>, address: &str) {
        Self::with(request, |extras| {
            extras.endpoint = Some(address.to_owned());
        });
    }

    /// Records that try number `try_number` (2 for the first retry) of
    /// `request` starts now, if it is traced.
    pub fn retry<B>(request: &Request<B>, try_number: u32) {
        Self::with(request, |extras| {
            extras.retry_events.push(RetryEvent {
                at_unix_nano: unix_nanos(SystemTime::now()),
                try_number,
            });
        });
    }
}

struct Active {
    settings: TracingSettings,
    ratio: f64,
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
    metrics: Metrics,
}

/// What a hop's span is about, known when the request arrives.
pub struct SpanStart {
    /// Server (inbound) or client (outbound).
    pub kind: SpanKind,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The service called (outbound) or served (inbound).
    pub service: String,
    /// The request's authority.
    pub authority: String,
    /// The caller's verified mesh identity, inbound over mTLS.
    pub peer: Option<String>,
    /// When the request arrived.
    pub arrived: SystemTime,
}

impl Telemetry {
    /// Tracing off until a snapshot turns it on.
    pub fn new(identity: Identity, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            active: ArcSwapOption::empty(),
            identity,
            metrics,
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
        let counters = Counters {
            dropped: self.metrics.trace_spans_dropped.clone(),
            failed: self.metrics.trace_export_errors.clone(),
            exported: self.metrics.trace_spans_exported.clone(),
        };
        Ok(Active {
            settings: settings.clone(),
            ratio: settings.sample_ratio.clamp(0.0, 1.0),
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
    /// puts a [`TraceCx`] in the request's extensions.
    pub fn start<B>(&self, request: &mut Request<B>, start: SpanStart) -> Option<HopSpan> {
        let active = self.active.load();
        let active = active.as_ref()?;
        let parent = extract(request.headers());
        let (trace_id, sampled) = match parent {
            Some(parent) => (parent.trace_id, parent.sampled),
            None => {
                let trace_id = TraceId::random();
                (trace_id, context::sampled_at(trace_id, active.ratio))
            }
        };
        let context = SpanContext {
            trace_id,
            span_id: SpanId::random(),
            sampled,
        };
        if let Some(traceparent) = context.traceparent() {
            request.headers_mut().insert(TRACEPARENT, traceparent);
        }
        let recording = sampled.then(|| {
            let extras = TraceCx::default();
            request.extensions_mut().insert(extras.clone());
            Recording {
                active: Arc::clone(active),
                extras,
                record: SpanRecord {
                    context,
                    parent: parent.map(|p| p.span_id),
                    kind: start.kind,
                    start_unix_nano: unix_nanos(start.arrived),
                    end_unix_nano: 0,
                    method: request.method().clone(),
                    direction: start.direction,
                    service: start.service,
                    path: request.uri().path().to_owned(),
                    authority: start.authority,
                    peer: start.peer,
                    status: 0,
                    error: None,
                    retries: None,
                    endpoint: None,
                    retry_events: Vec::new(),
                },
            }
        });
        Some(HopSpan {
            context,
            recording: recording.map(Box::new),
        })
    }
}

/// The caller's trace context: W3C `traceparent`, else B3.
fn extract(headers: &HeaderMap) -> Option<SpanContext> {
    SpanContext::from_traceparent(headers).or_else(|| b3::extract(headers))
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The span of one hop: its context, and the record being filled when the
/// trace is sampled. Ended with the response.
pub struct HopSpan {
    context: SpanContext,
    recording: Option<Box<Recording>>,
}

struct Recording {
    active: Arc<Active>,
    extras: TraceCx,
    record: SpanRecord,
}

impl HopSpan {
    /// The hop's trace id (for the access log).
    pub fn trace_id(&self) -> TraceId {
        self.context.trace_id
    }

    /// Records the outcome and queues the span for export, if recorded.
    /// `elapsed` is the time from arrival to the response.
    pub fn finish(
        self,
        status: StatusCode,
        error: Option<&'static str>,
        attempts: Option<&str>,
        elapsed: Duration,
    ) {
        let Some(recording) = self.recording else {
            return;
        };
        let Recording {
            active,
            extras,
            mut record,
        } = *recording;
        let extras = std::mem::take(&mut *extras.0.lock().unwrap_or_else(PoisonError::into_inner));
        record.end_unix_nano = record
            .start_unix_nano
            .saturating_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
        record.status = status.as_u16();
        record.error = error;
        record.retries = attempts
            .and_then(|a| a.parse::<u32>().ok())
            .map(|a| a.saturating_sub(1));
        record.endpoint = extras.endpoint;
        record.retry_events = extras.retry_events;
        active.exporter.submit(&record);
    }
}
