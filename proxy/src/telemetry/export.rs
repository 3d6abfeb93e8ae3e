//! Span export off the request path: a bounded queue between the request
//! path and one export task, which batches, encodes (otlp.rs) and sends
//! OTLP over gRPC or HTTP/protobuf. A full queue drops the span and counts
//! it (`tether_trace_spans_dropped_total`); traffic never waits for a
//! collector. Dropping the [`Exporter`] closes the queue; the task sends
//! what it holds and ends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounter;
use tether_api::TracingSettings;
use tokio::sync::{mpsc, Semaphore};

use super::otlp::{Envelope, Scratch};
use super::record::SpanRecord;

/// Spans waiting for export at most; ~1 MiB of span records at worst.
const QUEUE: usize = 4096;
/// Spans per export request.
const BATCH: usize = 512;
/// Longest a finished span waits before its batch is sent. Short, so that
/// at low rates a batch is small: it is encoded on a request worker, and a
/// large batch held requests up (500 ms here measured +0.60..+0.79 ms p99
/// at 1,000 rps with the SDK's encoder, 50 ms +0.25). Under load batches
/// fill to `BATCH` long before this fires.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Export requests in flight at once (multiplexed on one HTTP/2 connection
/// for gRPC), so one slow answer does not stop the queue draining.
const IN_FLIGHT: usize = 4;
/// One export request, connect to answer.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// The gRPC method of OTLP trace export.
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

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

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Hands finished, sampled spans to the export task.
#[derive(Debug)]
pub struct Exporter {
    queue: mpsc::Sender<SpanRecord>,
    dropped: IntCounter,
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

impl Exporter {
    /// Starts the export task for `settings`. Must run inside the tokio
    /// runtime.
    pub fn start(
        settings: &TracingSettings,
        envelope: Envelope,
        counters: Counters,
    ) -> Result<Self, ConfigError> {
        let protocol = if settings.protocol_is_http() {
            Protocol::HttpProtobuf
        } else {
            Protocol::Grpc
        };
        let uri = export_uri(&settings.otlp_endpoint, protocol)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(EXPORT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .http2_only(protocol == Protocol::Grpc)
            .build(connector);
        let (queue, receiver) = mpsc::channel(QUEUE);
        let sender = Sender {
            client,
            uri,
            protocol,
        };
        tokio::spawn(export_loop(
            Arc::new(sender),
            envelope,
            receiver,
            counters.clone(),
        ));
        Ok(Self {
            queue,
            dropped: counters.dropped,
        })
    }

    /// Queues a finished span, or drops and counts it when the queue is full.
    pub fn submit(&self, span: SpanRecord) {
        if self.queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

fn export_uri(endpoint: &str, protocol: Protocol) -> Result<Uri, ConfigError> {
    let invalid = || ConfigError::Endpoint {
        endpoint: endpoint.to_owned(),
    };
    let base = endpoint.trim_end_matches('/');
    let path = match protocol {
        Protocol::Grpc => GRPC_PATH,
        Protocol::HttpProtobuf => "/v1/traces",
    };
    let uri: Uri = format!("{base}{path}").parse().map_err(|_| invalid())?;
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
        let content_type = match self.protocol {
            Protocol::Grpc => "application/grpc",
            Protocol::HttpProtobuf => "application/x-protobuf",
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if self.protocol == Protocol::Grpc {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let head = response.headers().clone();
            let collected = response.into_body().collect().await?;
            if !status.is_success() {
                return Err(ExportError::Http(status));
            }
            if self.protocol == Protocol::Grpc {
                // Trailers, or the headers of a trailers-only answer.
                let trailers = collected.trailers().cloned().unwrap_or_default();
                let field = |name: &str| {
                    trailers
                        .get(name)
                        .or_else(|| head.get(name))
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
    mut queue: mpsc::Receiver<SpanRecord>,
    counters: Counters,
) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut batch = Vec::with_capacity(BATCH);
    let mut scratch = Scratch::default();
    loop {
        // Spans are taken as many at a time as are queued: one wake-up
        // per burst rather than per span.
        if queue.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let deadline = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(deadline);
        let mut closed = false;
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            tokio::select! {
                taken = queue.recv_many(&mut batch, room) => if taken == 0 {
                    closed = true;
                    break;
                },
                _ = &mut deadline => break,
            }
        }
        // While IN_FLIGHT requests are out, spans wait in the queue (and
        // are dropped and counted when it is full).
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let body = encode(&envelope, &batch, sender.protocol, &mut scratch);
        let count = batch.len() as u64;
        batch.clear();
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
        if closed {
            return;
        }
    }
}

/// The request body: the protobuf message, behind gRPC's 5-byte prefix
/// (uncompressed flag, big-endian length) when the protocol is gRPC.
fn encode(
    envelope: &Envelope,
    spans: &[SpanRecord],
    protocol: Protocol,
    scratch: &mut Scratch,
) -> Bytes {
    let prefix = if protocol == Protocol::Grpc { 5 } else { 0 };
    let mut out = vec![0u8; prefix];
    envelope.encode(spans, &mut out, scratch);
    if prefix == 5 {
        let length = u32::try_from(out.len() - 5).unwrap_or(u32::MAX);
        out[1..5].copy_from_slice(&length.to_be_bytes());
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_uris_follow_the_protocol() {
        let grpc = export_uri("http://127.0.0.1:4317/", Protocol::Grpc).expect("valid");
        assert_eq!(grpc.path(), GRPC_PATH);
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
        let mut scratch = Scratch::default();
        let plain = encode(&envelope, &[], Protocol::HttpProtobuf, &mut scratch);
        let framed = encode(&envelope, &[], Protocol::Grpc, &mut scratch);
        assert_eq!(framed[0], 0, "not compressed");
        assert_eq!(
            u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize,
            plain.len()
        );
        assert_eq!(&framed[5..], &plain[..]);
    }
}
