//! Span export off the request path. A finished span (its bytes, encoded
//! by span.rs) is appended to a bounded pending buffer; one export task
//! takes the buffer when it holds a batch, or 50 ms after its first span,
//! wraps it into a request (otlp.rs) and sends it as OTLP over gRPC or
//! HTTP/protobuf. A full buffer drops the span and counts it
//! (`tether_trace_spans_dropped_total`); traffic never waits for a
//! collector. Dropping the [`Exporter`] closes the buffer; the task sends
//! what it holds and ends.
//!
//! Appending bytes, rather than queueing span objects for the task, keeps
//! one copy of each span and no per-span channel operation.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounter;
use tokio::sync::{Notify, Semaphore};

use super::otlp::{Envelope, SpanBuffer};
use super::TracingSettings;

/// Spans waiting for export at most (~1 MiB of encoded spans).
const MAX_PENDING: usize = 4096;
/// Spans that make a batch worth sending at once.
const BATCH: usize = 512;
/// Longest a finished span waits before its batch is sent. Short, so that
/// at low rates a batch is small: it is handled on a request worker, and a
/// large batch held requests up (with the SDK's encoder, 500 ms measured
/// +0.60..+0.79 ms p99 at 1,000 rps, 50 ms +0.25). Under load batches fill
/// to `BATCH` long before this fires.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Export requests in flight at once (multiplexed on one HTTP/2 connection
/// for gRPC), so one slow answer does not stop the queue draining.
const IN_FLIGHT: usize = 4;
/// One export request, connect to answer.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The endpoint is not an `http://host:port` URL.
    #[error("otlp_endpoint {endpoint:?}: expected http://host:port (OTLP without TLS)")]
    Endpoint {
        /// What mesh.tracing said.
        endpoint: String,
    },
}

/// Why one export request failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// No answer within [`EXPORT_TIMEOUT`].
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connect or send failed.
    #[error("sending: {0}")]
    Send(#[from] hyper_util::client::legacy::Error),
    /// Reading the answer failed.
    #[error("reading the answer: {0}")]
    Answer(#[from] hyper::Error),
    /// The collector answered with an HTTP error.
    #[error("collector answered HTTP {0}")]
    Http(http::StatusCode),
    /// The collector answered with a gRPC error.
    #[error("collector answered grpc-status {code}: {message}")]
    Grpc {
        /// `grpc-status`.
        code: String,
        /// `grpc-message`, if any.
        message: String,
    },
}

/// OTLP transport: everything that differs between the two is here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318).
    HttpProtobuf,
}

impl Protocol {
    /// The export path under the endpoint.
    fn path(self) -> &'static str {
        match self {
            Protocol::Grpc => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Protocol::HttpProtobuf => "/v1/traces",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Protocol::Grpc => "application/grpc",
            Protocol::HttpProtobuf => "application/x-protobuf",
        }
    }

    /// Bytes before the message: gRPC's compressed flag and length.
    fn prefix_len(self) -> usize {
        match self {
            Protocol::Grpc => 5,
            Protocol::HttpProtobuf => 0,
        }
    }
}

/// Hands finished, sampled spans to the export task.
#[derive(Debug)]
pub struct Exporter {
    pending: Arc<Pending>,
    dropped: IntCounter,
}

/// Encoded spans between the request path and the export task.
#[derive(Debug, Default)]
struct Pending {
    state: Mutex<PendingState>,
    /// Wakes the task: a first span, a full batch, or closing.
    wake: Notify,
}

#[derive(Debug, Default)]
struct PendingState {
    spans: SpanBuffer,
    closed: bool,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, PendingState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The export task's counters.
#[derive(Debug, Clone)]
pub struct Counters {
    /// Spans dropped because the queue was full.
    pub dropped: IntCounter,
    /// Spans whose export request failed.
    pub failed: IntCounter,
    /// Spans the collector accepted.
    pub exported: IntCounter,
}

impl Counters {
    /// Registers the export families in `registry`.
    pub fn register(registry: &prometheus::Registry) -> Self {
        use crate::request_metrics::counter;
        Self {
            dropped: counter(
                registry,
                "tether_trace_spans_dropped_total",
                "Finished spans dropped because the export queue was full.",
            ),
            failed: counter(
                registry,
                "tether_trace_export_errors_total",
                "Spans the OTLP exporter failed to send.",
            ),
            exported: counter(
                registry,
                "tether_trace_spans_exported_total",
                "Spans the OTLP collector accepted.",
            ),
        }
    }
}

impl Exporter {
    /// Starts the export task for `settings`. Must run inside the tokio
    /// runtime.
    pub fn start(
        settings: &TracingSettings,
        envelope: Envelope,
        counters: Counters,
    ) -> Result<Self, ConfigError> {
        let protocol = settings.protocol;
        let uri = export_uri(&settings.otlp_endpoint, protocol)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(EXPORT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .http2_only(protocol == Protocol::Grpc)
            .build(connector);
        let pending = Arc::new(Pending::default());
        let sender = Sender {
            client,
            uri,
            protocol,
        };
        tokio::spawn(export_loop(
            Arc::new(sender),
            envelope,
            Arc::clone(&pending),
            counters.clone(),
        ));
        Ok(Self {
            pending,
            dropped: counters.dropped,
        })
    }

    /// Adds a finished span (its encoded `Span` body) to the pending
    /// batch, or drops and counts it when the buffer is full.
    pub fn submit(&self, span: &[u8]) {
        let wake = {
            let mut state = self.pending.lock();
            let held = state.spans.len();
            if held >= MAX_PENDING {
                drop(state);
                self.dropped.inc();
                return;
            }
            state.spans.push(span);
            held == 0 || held + 1 == BATCH
        };
        if wake {
            self.pending.wake.notify_one();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.pending.lock().closed = true;
        self.pending.wake.notify_one();
    }
}

fn export_uri(endpoint: &str, protocol: Protocol) -> Result<Uri, ConfigError> {
    let invalid = || ConfigError::Endpoint {
        endpoint: endpoint.to_owned(),
    };
    let base = endpoint.trim_end_matches('/');
    let uri: Uri = format!("{base}{}", protocol.path())
        .parse()
        .map_err(|_| invalid())?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(invalid());
    }
    Ok(uri)
}

struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    protocol: Protocol,
}

impl Sender {
    /// Sends one encoded `ExportTraceServiceRequest` (gRPC-framed already
    /// when the protocol is gRPC) and checks the collector's answer.
    async fn send(&self, body: Bytes) -> Result<(), ExportError> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        let content_type = HeaderValue::from_static(self.protocol.content_type());
        headers.insert(header::CONTENT_TYPE, content_type);
        if self.protocol == Protocol::Grpc {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let exchange = async {
            let (head, body) = self.client.request(request).await?.into_parts();
            let collected = body.collect().await?;
            if !head.status.is_success() {
                return Err(ExportError::Http(head.status));
            }
            if self.protocol == Protocol::Grpc {
                // Trailers, or the headers of a trailers-only answer.
                let trailers = collected.trailers();
                let field = |name: &str| {
                    trailers
                        .and_then(|t| t.get(name))
                        .or_else(|| head.headers.get(name))
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let code = field("grpc-status").unwrap_or_else(|| "missing".into());
                if code != "0" {
                    return Err(ExportError::Grpc {
                        code,
                        message: field("grpc-message").unwrap_or_default(),
                    });
                }
            }
            Ok(())
        };
        tokio::time::timeout(EXPORT_TIMEOUT, exchange)
            .await
            .map_err(|_| ExportError::Timeout(EXPORT_TIMEOUT))?
    }
}

async fn export_loop(
    sender: Arc<Sender>,
    envelope: Envelope,
    pending: Arc<Pending>,
    counters: Counters,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // A first span (or closing); then up to FLUSH_EVERY for a batch.
        pending.wake.notified().await;
        let (held, closed) = {
            let state = pending.lock();
            (state.spans.len(), state.closed)
        };
        if held < BATCH && !closed {
            tokio::select! {
                _ = pending.wake.notified() => {}
                _ = tokio::time::sleep(FLUSH_EVERY) => {}
            }
        }
        // While IN_FLIGHT requests are out, spans wait in the buffer (and
        // are dropped and counted when it is full).
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let (spans, closed) = {
            let mut state = pending.lock();
            (state.spans.take(), state.closed)
        };
        if !spans.is_empty() {
            let body = encode(&envelope, &spans, sender.protocol);
            let count = spans.len() as u64;
            let (sender, counters) = (Arc::clone(&sender), counters.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match sender.send(body).await {
                    Ok(()) => counters.exported.inc_by(count),
                    Err(error) => {
                        counters.failed.inc_by(count);
                        tracing::warn!(%error, spans = count, "span export failed");
                    }
                }
            });
        }
        if closed {
            return;
        }
    }
}

/// The request body: the protobuf message, behind gRPC's 5-byte prefix
/// (uncompressed flag, big-endian length) when the protocol is gRPC.
fn encode(envelope: &Envelope, spans: &SpanBuffer, protocol: Protocol) -> Bytes {
    let prefix = protocol.prefix_len();
    let mut out = vec![0u8; prefix];
    envelope.wrap(spans, &mut out);
    if prefix == 5 {
        let length = u32::try_from(out.len() - prefix).unwrap_or(u32::MAX);
        out[1..5].copy_from_slice(&length.to_be_bytes());
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::span::{test_head, SpanBuilder};

    fn counters() -> Counters {
        let counter = |name: &str| IntCounter::new(name, name).expect("valid counter");
        Counters {
            dropped: counter("dropped"),
            failed: counter("failed"),
            exported: counter("exported"),
        }
    }

    #[tokio::test]
    async fn a_full_buffer_drops_and_counts_and_closing_sends_the_rest() {
        // A port nothing listens on: every export request fails.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let settings = TracingSettings {
            otlp_endpoint: format!("http://127.0.0.1:{port}"),
            sample_ratio: 1.0,
            protocol: Protocol::Grpc,
        };
        let counters = counters();
        let exporter =
            Exporter::start(&settings, Envelope::new(&[]), counters.clone()).expect("valid");
        // No await in between: the export task cannot run yet.
        let span = SpanBuilder::begin(&test_head(&http::Method::GET, "api", "/"));
        for _ in 0..MAX_PENDING + 5 {
            exporter.submit(span.bytes());
        }
        assert_eq!(counters.dropped.get(), 5);
        drop(exporter);
        let mut waited = 0;
        while counters.failed.get() < MAX_PENDING as u64 && waited < 500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
        assert_eq!(
            counters.failed.get(),
            MAX_PENDING as u64,
            "every held span was sent (and failed)"
        );
        assert_eq!(counters.exported.get(), 0);
    }

    #[test]
    fn export_uris_follow_the_protocol() {
        let grpc = export_uri("http://127.0.0.1:4317/", Protocol::Grpc).expect("valid");
        assert_eq!(grpc.path(), Protocol::Grpc.path());
        let http = export_uri("http://collector:4318", Protocol::HttpProtobuf).expect("valid");
        assert_eq!(http.to_string(), "http://collector:4318/v1/traces");
        for bad in [
            "https://collector:4317",
            "collector:4317",
            "http://",
            "not a url",
        ] {
            assert!(export_uri(bad, Protocol::Grpc).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn grpc_bodies_carry_the_length_prefix() {
        let envelope = Envelope::new(&[("service.name", "web")]);
        let spans = SpanBuffer::default();
        let plain = encode(&envelope, &spans, Protocol::HttpProtobuf);
        let framed = encode(&envelope, &spans, Protocol::Grpc);
        assert_eq!(framed[0], 0, "not compressed");
        assert_eq!(
            u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize,
            plain.len()
        );
        assert_eq!(&framed[5..], &plain[..]);
    }
}
