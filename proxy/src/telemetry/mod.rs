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

mod b3;
mod export;

use std::borrow::Cow;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::{HeaderMap, Request, StatusCode};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};
use opentelemetry_sdk::Resource;
use tether_api::TracingSettings;

use crate::metrics::Metrics;

/// The trace context of a request in flight, carried in its extensions so
/// inner layers can add events (tries, retries) to the hop's span.
#[derive(Clone, Debug)]
pub struct TraceCx(pub Context);

impl TraceCx {
    /// Adds an event to the span of the request, if it is traced; the
    /// attributes are built only then (nothing is allocated otherwise).
    pub fn event<B>(
        request: &Request<B>,
        name: &'static str,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) {
        if let Some(cx) = request.extensions().get::<TraceCx>() {
            cx.0.span().add_event(name, attributes());
        }
    }
}

struct Active {
    settings: TracingSettings,
    provider: SdkTracerProvider,
    tracer: Tracer,
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
    propagator: TraceContextPropagator,
}

impl Telemetry {
    /// Tracing off until a snapshot turns it on.
    pub fn new(identity: Identity, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            active: ArcSwapOption::empty(),
            identity,
            metrics,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// Applies the snapshot's tracing settings; rebuilds the exporter only
    /// when they changed. Must run inside the tokio runtime.
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
                    tracing::error!(%error, endpoint = %settings.otlp_endpoint, "tracing not started");
                    None
                }
            },
        };
        if let Some(old) = self.active.swap(next) {
            let _ = old.provider.shutdown();
        }
        match settings {
            Some(s) => {
                tracing::info!(endpoint = %s.otlp_endpoint, sample_ratio = s.sample_ratio, "tracing on")
            }
            None => tracing::info!("tracing off"),
        }
    }

    fn build(
        &self,
        settings: &TracingSettings,
    ) -> Result<Active, opentelemetry_otlp::ExporterBuildError> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        use opentelemetry_sdk::trace::SpanExporter as _;
        let endpoint = settings.otlp_endpoint.trim_end_matches('/');
        let timeout = std::time::Duration::from_secs(5);
        let resource = Resource::builder_empty()
            .with_service_name(self.identity.service.clone())
            .with_attributes([
                KeyValue::new("service.instance.id", self.identity.instance.clone()),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("tether.component", "proxy"),
            ])
            .build();
        let dropped = self.metrics.trace_spans_dropped.clone();
        let failed = self.metrics.trace_export_errors.clone();
        let processor = if settings.protocol_is_http() {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(
                    opentelemetry_http::hyper::HyperClient::with_default_connector(timeout, None),
                )
                .with_endpoint(format!("{endpoint}/v1/traces"))
                .with_timeout(timeout)
                .build()?;
            exporter.set_resource(&resource);
            export::QueueProcessor::start(exporter, dropped, failed)
        } else {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.to_owned())
                .with_timeout(timeout)
                .build()?;
            exporter.set_resource(&resource);
            export::QueueProcessor::start(exporter, dropped, failed)
        };
        let ratio = settings.sample_ratio.clamp(0.0, 1.0);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("tether-proxy");
        Ok(Active {
            settings: settings.clone(),
            provider,
            tracer,
        })
    }

    /// Whether tracing is on (one atomic load).
    pub fn is_on(&self) -> bool {
        self.active.load().is_some()
    }

    /// Starts the span of one hop if tracing is on: reads the caller's
    /// context (W3C, else B3), writes this span's context into the request
    /// as `traceparent`, and carries it in the request's extensions.
    pub fn start<B>(
        &self,
        request: &mut Request<B>,
        kind: SpanKind,
        name: String,
        attributes: Vec<KeyValue>,
    ) -> Option<HopSpan> {
        let active = self.active.load_full()?;
        let parent = self.extract(request.headers());
        let span = active
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&active.tracer, &parent);
        let cx = parent.with_span(span);
        self.propagator
            .inject_context(&cx, &mut HeaderInjector(request.headers_mut()));
        request.extensions_mut().insert(TraceCx(cx.clone()));
        Some(HopSpan { cx })
    }

    fn extract(&self, headers: &HeaderMap) -> Context {
        let cx = self.propagator.extract(&HeaderExtractor(headers));
        if cx.span().span_context().is_valid() {
            return cx;
        }
        match b3::extract(headers) {
            Some(remote) => Context::new().with_remote_span_context(remote),
            None => cx,
        }
    }
}

/// The span of one hop, ended with the response.
pub struct HopSpan {
    cx: Context,
}

impl HopSpan {
    /// Records the outcome and ends the span.
    pub fn finish(self, status: StatusCode, error: Option<&'static str>, attempts: Option<&str>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if let Some(attempts) = attempts.and_then(|a| a.parse::<i64>().ok()) {
            span.set_attribute(KeyValue::new("tether.retries", attempts - 1));
        }
        if let Some(reason) = error {
            span.set_attribute(KeyValue::new("tether.error", reason));
            span.set_attribute(KeyValue::new("error.type", reason));
            span.set_status(Status::error(Cow::Borrowed(reason)));
        } else if status.is_server_error() {
            span.set_attribute(KeyValue::new("error.type", status.as_str().to_owned()));
            span.set_status(Status::error(Cow::Owned(format!(
                "HTTP {}",
                status.as_u16()
            ))));
        }
        span.end();
    }
}
