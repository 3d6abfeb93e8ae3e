//! OTLP export requests: an `ExportTraceServiceRequest`
//! (opentelemetry/proto/collector/trace/v1) holding one `ResourceSpans`
//! with one `ScopeSpans`, around spans encoded by span.rs.
//!
//! Written by hand for one fixed message shape. The general path (SDK span
//! → SpanData → opentelemetry-proto structs → prost) cost ~24k instructions
//! per span, as much as proxying the request. The unit tests decode the
//! output with opentelemetry-proto's generated types, so the encoding is
//! checked against the published schema.

use super::protobuf::{message, string, string_attribute, tag, varint, varint_len, LEN};

/// The constant part of every request: the resource and the
/// instrumentation scope, encoded once.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// `ResourceSpans.resource` (field 1), tag and length included.
    resource: Vec<u8>,
    /// `ScopeSpans.scope` (field 1), tag and length included.
    scope: Vec<u8>,
}

impl Envelope {
    /// The resource with these string attributes, and the scope
    /// `tether-proxy` at this version.
    pub fn new(resource_attributes: &[(&str, &str)]) -> Self {
        let mut attributes = Vec::new();
        for (key, value) in resource_attributes {
            string_attribute(&mut attributes, 1, key, value);
        }
        let mut resource = Vec::new();
        message(&mut resource, 1, &attributes);
        let mut scope_body = Vec::new();
        string(&mut scope_body, 1, "tether-proxy");
        string(&mut scope_body, 2, env!("CARGO_PKG_VERSION"));
        let mut scope = Vec::new();
        message(&mut scope, 1, &scope_body);
        Self { resource, scope }
    }

    /// Appends to `out` the `ExportTraceServiceRequest` that holds the
    /// spans in `spans`.
    pub fn wrap(&self, spans: &SpanBuffer, out: &mut Vec<u8>) {
        let scope_spans_len = self.scope.len() + spans.bytes.len();
        let resource_spans_len =
            self.resource.len() + 1 + varint_len(scope_spans_len as u64) + scope_spans_len;
        out.reserve(resource_spans_len + 8);
        tag(out, 1, LEN);
        varint(out, resource_spans_len as u64);
        out.extend_from_slice(&self.resource);
        tag(out, 2, LEN);
        varint(out, scope_spans_len as u64);
        out.extend_from_slice(&self.scope);
        out.extend_from_slice(&spans.bytes);
    }
}

/// Finished spans as `ScopeSpans.spans` entries (field 2), waiting to be
/// wrapped into a request.
#[derive(Debug, Default)]
pub struct SpanBuffer {
    bytes: Vec<u8>,
    count: usize,
}

impl SpanBuffer {
    /// Appends one encoded `Span` message body.
    pub fn push(&mut self, span: &[u8]) {
        message(&mut self.bytes, 2, span);
        self.count += 1;
    }

    /// Spans held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no span is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Takes the spans out, leaving an empty buffer with room for as many.
    pub fn take(&mut self) -> SpanBuffer {
        let capacity = self.bytes.capacity();
        SpanBuffer {
            bytes: std::mem::replace(&mut self.bytes, Vec::with_capacity(capacity)),
            count: std::mem::take(&mut self.count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::context::SpanId;
    use crate::telemetry::span::{test_head as head, SpanBuilder, SpanEnd, SpanKind};
    use http::{Method, StatusCode};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::common::v1::KeyValue;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind as ProtoKind;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;

    fn ok() -> SpanEnd {
        SpanEnd {
            end_unix_nano: 2,
            status: Some(StatusCode::OK),
            error: None,
            grpc: None,
        }
    }

    fn decode(spans: &[SpanBuilder]) -> ExportTraceServiceRequest {
        let envelope = Envelope::new(&[("service.name", "web"), ("service.version", "1")]);
        let mut buffer = SpanBuffer::default();
        for span in spans {
            buffer.push(span.bytes());
        }
        assert_eq!(buffer.len(), spans.len());
        let mut out = Vec::new();
        envelope.wrap(&buffer.take(), &mut out);
        assert!(buffer.is_empty(), "take leaves the buffer empty");
        ExportTraceServiceRequest::decode(out.as_slice()).expect("valid OTLP protobuf")
    }

    fn value(attributes: &[KeyValue], key: &str) -> Option<Value> {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone()?.value)
    }

    fn attribute(span: &Span, key: &str) -> Option<Value> {
        value(&span.attributes, key)
    }

    fn text(value: &str) -> Option<Value> {
        Some(Value::StringValue(value.into()))
    }

    #[test]
    fn a_plain_span_decodes_with_the_published_schema() {
        let mut span = SpanBuilder::begin(&head(&Method::GET, "api:8080", "/"));
        span.record_try("10.0.0.7:8080", || {
            unreachable!("no event on the first try")
        });
        span.end(&ok());
        let request = decode(&[span]);
        let resource_spans = &request.resource_spans[0];
        let resource = resource_spans.resource.as_ref().expect("resource");
        assert_eq!(resource.attributes[0].key, "service.name");
        let scope_spans = &resource_spans.scope_spans[0];
        let scope = scope_spans.scope.as_ref().expect("scope");
        assert_eq!(scope.name, "tether-proxy");
        let span = &scope_spans.spans[0];
        assert_eq!(span.trace_id, vec![1; 16]);
        assert_eq!(span.span_id, vec![2; 8]);
        assert!(span.parent_span_id.is_empty());
        assert_eq!(span.name, "GET outbound api");
        assert_eq!(span.kind, ProtoKind::Client as i32);
        assert_eq!((span.start_time_unix_nano, span.end_time_unix_nano), (1, 2));
        assert_eq!(span.flags, 1);
        assert_eq!(attribute(span, "http.request.method"), text("GET"));
        assert_eq!(attribute(span, "url.path"), text("/"));
        assert_eq!(attribute(span, "server.address"), text("api"));
        assert_eq!(attribute(span, "server.port"), Some(Value::IntValue(8080)));
        assert_eq!(attribute(span, "tether.direction"), text("outbound"));
        assert_eq!(attribute(span, "tether.service"), text("api"));
        assert_eq!(attribute(span, "tether.endpoint"), text("10.0.0.7:8080"));
        assert_eq!(
            attribute(span, "http.response.status_code"),
            Some(Value::IntValue(200))
        );
        assert_eq!(attribute(span, "tether.retries"), None);
        assert_eq!(attribute(span, "error.type"), None);
        assert!(span.events.is_empty());
        assert_eq!(span.status, None, "unset status on success");
    }

    #[test]
    fn a_mirrored_copy_s_span_says_so_and_others_do_not() {
        let mut copy = head(&Method::GET, "api", "/");
        copy.mirrored = true;
        let mut mirrored = SpanBuilder::begin(&copy);
        mirrored.end(&ok());
        let mut plain = SpanBuilder::begin(&head(&Method::GET, "api", "/"));
        plain.end(&ok());
        let request = decode(&[mirrored, plain]);
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(
            attribute(&spans[0], "tether.mirror"),
            Some(Value::BoolValue(true))
        );
        assert_eq!(
            attribute(&spans[0], "tether.service"),
            text("api"),
            "still decodes after it"
        );
        assert_eq!(attribute(&spans[1], "tether.mirror"), None);
    }

    #[test]
    fn a_grpc_span_carries_its_status_code_and_fails_on_server_codes() {
        let head = head(&Method::POST, "api", "/test.Echo/Unary");
        let mut unavailable = SpanBuilder::begin(&head);
        unavailable.end(&SpanEnd {
            grpc: Some((14, "unavailable", true)),
            ..ok()
        });
        let mut not_found = SpanBuilder::begin(&head);
        not_found.end(&SpanEnd {
            grpc: Some((5, "not-found", false)),
            ..ok()
        });
        let request = decode(&[unavailable, not_found]);
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(attribute(&spans[0], "rpc.system"), text("grpc"));
        assert_eq!(
            attribute(&spans[0], "rpc.grpc.status_code"),
            Some(Value::IntValue(14))
        );
        assert_eq!(attribute(&spans[0], "error.type"), text("unavailable"));
        let status = spans[0].status.as_ref().expect("status");
        assert_eq!(
            (status.code, status.message.as_str()),
            (2, "gRPC unavailable")
        );
        assert_eq!(
            attribute(&spans[1], "rpc.grpc.status_code"),
            Some(Value::IntValue(5))
        );
        assert!(
            spans[1].status.is_none(),
            "a caller's error is no server failure"
        );
    }

    #[test]
    fn a_failed_retried_span_carries_events_and_error_status() {
        let mut head = head(&Method::POST, "api", "/v1/orders");
        head.kind = SpanKind::Server;
        head.parent = Some(SpanId([9; 8]));
        head.peer = Some("spiffe://tether.local/service/web");
        let mut failed = SpanBuilder::begin(&head);
        failed.record_try("10.0.0.7:8080", || 5);
        failed.record_try("10.0.0.8:8080", || 10);
        failed.record_try("10.0.0.9:8080", || 20);
        failed.end(&SpanEnd {
            end_unix_nano: 30,
            status: Some(StatusCode::GATEWAY_TIMEOUT),
            error: Some("timeout"),
            grpc: None,
        });
        let mut plain_5xx = SpanBuilder::begin(&head);
        plain_5xx.end(&SpanEnd {
            status: Some(StatusCode::SERVICE_UNAVAILABLE),
            ..ok()
        });
        let request = decode(&[failed, plain_5xx]);
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        let failed = &spans[0];
        assert_eq!(failed.parent_span_id, vec![9; 8]);
        assert_eq!(failed.kind, ProtoKind::Server as i32);
        assert_eq!(attribute(failed, "tether.error"), text("timeout"));
        assert_eq!(attribute(failed, "error.type"), text("timeout"));
        assert_eq!(
            attribute(failed, "tether.retries"),
            Some(Value::IntValue(2))
        );
        assert_eq!(
            attribute(failed, "tether.peer.identity"),
            text("spiffe://tether.local/service/web")
        );
        assert_eq!(attribute(failed, "tether.endpoint"), text("10.0.0.7:8080"));
        assert_eq!(failed.events.len(), 2);
        let last = &failed.events[1];
        assert_eq!((last.name.as_str(), last.time_unix_nano), ("retry", 20));
        assert_eq!(
            value(&last.attributes, "tether.try"),
            Some(Value::IntValue(3))
        );
        assert_eq!(
            value(&last.attributes, "tether.endpoint"),
            text("10.0.0.9:8080")
        );
        let status = failed.status.as_ref().expect("status");
        assert_eq!((status.code, status.message.as_str()), (2, "timeout"));
        let status = spans[1].status.as_ref().expect("status");
        assert_eq!((status.code, status.message.as_str()), (2, "HTTP 503"));
        assert_eq!(attribute(&spans[1], "error.type"), text("503"));
        assert_eq!(attribute(&spans[1], "tether.endpoint"), None, "no try made");
    }

    #[test]
    fn an_abandoned_span_is_cancelled_without_a_status_code() {
        let mut span = SpanBuilder::begin(&head(&Method::GET, "api", "/"));
        span.end(&SpanEnd {
            status: None,
            error: Some("cancelled"),
            ..ok()
        });
        let request = decode(&[span]);
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(attribute(span, "http.response.status_code"), None);
        assert_eq!(attribute(span, "tether.error"), text("cancelled"));
        let status = span.status.as_ref().expect("status");
        assert_eq!((status.code, status.message.as_str()), (2, "cancelled"));
    }

    #[test]
    fn long_fields_need_multi_byte_lengths() {
        let path = "/".repeat(20_000);
        let spans: Vec<SpanBuilder> = (0..2)
            .map(|_| {
                let mut span = SpanBuilder::begin(&head(&Method::GET, "api", &path));
                span.end(&ok());
                span
            })
            .collect();
        let request = decode(&spans);
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_eq!(attribute(&spans[1], "url.path"), text(&path));
    }

    #[test]
    fn an_empty_batch_is_a_valid_request() {
        let request = decode(&[]);
        assert!(request.resource_spans[0].scope_spans[0].spans.is_empty());
    }
}
