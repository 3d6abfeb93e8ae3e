//! OTLP protobuf encoding of a batch of [`SpanRecord`]s: an
//! `ExportTraceServiceRequest` (opentelemetry/proto/collector/trace/v1)
//! holding one `ResourceSpans` with one `ScopeSpans`.
//!
//! Written by hand for one fixed message shape. The general path (SDK span
//! → SpanData → opentelemetry-proto structs → prost) cost ~24k instructions
//! per span, as much as proxying the request; here a span is encoded in one
//! pass into a reused buffer, then framed. The unit
//! tests decode the output with opentelemetry-proto's generated types, so
//! the encoding is checked against the published schema.

use super::record::{SpanKind, SpanRecord};

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

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
    /// spans encoded in `spans`.
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

/// Spans encoded as `ScopeSpans.spans` entries, waiting to be wrapped into
/// a request. Spans are encoded as they finish, so nothing but these bytes
/// is kept per span.
#[derive(Debug, Default)]
pub struct SpanBuffer {
    bytes: Vec<u8>,
    count: usize,
    body: Vec<u8>,
}

impl SpanBuffer {
    /// Encodes `span` and appends it.
    pub fn push(&mut self, span: &SpanRecord) {
        // The body first (its length is the frame's prefix), then framed.
        self.body.clear();
        span_fields(&mut self.body, span);
        message(&mut self.bytes, 2, &self.body);
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
            body: Vec::new(),
        }
    }
}

/// Span fields (opentelemetry/proto/trace/v1/trace.proto, message Span).
fn span_fields(out: &mut Vec<u8>, span: &SpanRecord) {
    // Room for the fixed fields, keys and framing, plus the variable text.
    let text = span.path.len()
        + span.authority.len()
        + 2 * span.service.len()
        + span.peer.as_ref().map_or(0, String::len)
        + span.endpoint.as_ref().map_or(0, String::len);
    out.reserve(448 + text + 40 * span.retry_events.len());
    bytes(out, 1, &span.context.trace_id.0);
    bytes(out, 2, &span.context.span_id.0);
    if let Some(parent) = span.parent {
        bytes(out, 4, &parent.0);
    }
    let name = span.name_parts();
    let name_len: usize = name.iter().map(|p| p.len()).sum();
    tag(out, 5, LEN);
    varint(out, name_len as u64);
    for part in name {
        out.extend_from_slice(part.as_bytes());
    }
    let kind = match span.kind {
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    };
    tag(out, 6, VARINT);
    varint(out, kind);
    fixed64(out, 7, span.start_unix_nano);
    fixed64(out, 8, span.end_unix_nano);

    string_attribute(out, 9, "http.request.method", span.method.as_str());
    string_attribute(out, 9, "url.path", &span.path);
    let (address, port) = span.server_address();
    string_attribute(out, 9, "server.address", address);
    if let Some(port) = port {
        int_attribute(out, 9, "server.port", i64::from(port));
    }
    string_attribute(out, 9, "tether.direction", span.direction);
    string_attribute(out, 9, "tether.service", &span.service);
    if let Some(peer) = &span.peer {
        string_attribute(out, 9, "tether.peer.identity", peer);
    }
    if let Some(endpoint) = &span.endpoint {
        string_attribute(out, 9, "tether.endpoint", endpoint);
    }
    int_attribute(out, 9, "http.response.status_code", i64::from(span.status));
    if let Some(retries) = span.retries {
        int_attribute(out, 9, "tether.retries", i64::from(retries));
    }
    if let Some(reason) = span.error {
        string_attribute(out, 9, "tether.error", reason);
        string_attribute(out, 9, "error.type", reason);
    } else if span.status >= 500 {
        let code = status_digits(span.status);
        string_attribute(out, 9, "error.type", as_str(&code));
    }

    for event in &span.retry_events {
        let attribute_len = int_attribute_len("tether.try", i64::from(event.try_number));
        let event_len = 9 + (1 + 1 + 5) + 1 + varint_len(attribute_len as u64) + attribute_len;
        tag(out, 11, LEN);
        varint(out, event_len as u64);
        fixed64(out, 1, event.at_unix_nano);
        string(out, 2, "retry");
        int_attribute(out, 3, "tether.try", i64::from(event.try_number));
    }

    if span.is_error() {
        // Status { message = 2; code = 3 (STATUS_CODE_ERROR = 2) }.
        let digits;
        let message: &[&str] = match span.error {
            Some(reason) => &[reason],
            None => {
                digits = status_digits(span.status);
                &["HTTP ", as_str(&digits)]
            }
        };
        let message_len: usize = message.iter().map(|p| p.len()).sum();
        let status_len = 1 + varint_len(message_len as u64) + message_len + 2;
        tag(out, 15, LEN);
        varint(out, status_len as u64);
        tag(out, 2, LEN);
        varint(out, message_len as u64);
        for part in message {
            out.extend_from_slice(part.as_bytes());
        }
        tag(out, 3, VARINT);
        varint(out, 2);
    }
    // flags (field 16, fixed32): W3C trace flags, sampled.
    tag(out, 16, 5);
    out.extend_from_slice(&1u32.to_le_bytes());
}

fn status_digits(status: u16) -> [u8; 3] {
    let status = status.min(999);
    [
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]
}

fn as_str(digits: &[u8; 3]) -> &str {
    std::str::from_utf8(digits).unwrap_or("500")
}

/// A `KeyValue` with a string `AnyValue` as field `field`. Keys are short
/// literals (one-byte lengths); every length is computed before writing, so
/// the buffer grows at most once.
fn string_attribute(out: &mut Vec<u8>, field: u32, key: &str, value: &str) {
    let value_len = value.len() as u64;
    let any_len = 1 + varint_len(value_len) + value.len();
    let kv_len = 2 + key.len() + 1 + varint_len(any_len as u64) + any_len;
    out.reserve(kv_len + 6);
    tag(out, field, LEN);
    varint(out, kv_len as u64);
    key_field(out, key);
    out.push(2 << 3 | LEN);
    varint(out, any_len as u64);
    out.push(1 << 3 | LEN);
    varint(out, value_len);
    out.extend_from_slice(value.as_bytes());
}

/// `KeyValue.key` (field 1) for a literal key shorter than 128 bytes.
#[inline]
fn key_field(out: &mut Vec<u8>, key: &str) {
    debug_assert!(key.len() < 128);
    out.push(1 << 3 | LEN);
    out.push(key.len() as u8);
    out.extend_from_slice(key.as_bytes());
}

fn int_attribute_len(key: &str, value: i64) -> usize {
    let any_len = 1 + varint_len(value as u64);
    2 + key.len() + 1 + varint_len(any_len as u64) + any_len
}

/// A `KeyValue` with an `int_value` (`AnyValue` field 3) as field `field`.
fn int_attribute(out: &mut Vec<u8>, field: u32, key: &str, value: i64) {
    let any_len = 1 + varint_len(value as u64);
    let kv_len = int_attribute_len(key, value);
    out.reserve(kv_len + 6);
    tag(out, field, LEN);
    varint(out, kv_len as u64);
    key_field(out, key);
    out.push(2 << 3 | LEN);
    varint(out, any_len as u64);
    out.push(3 << 3 | VARINT);
    varint(out, value as u64);
}

fn message(out: &mut Vec<u8>, field: u32, body: &[u8]) {
    tag(out, field, LEN);
    varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

#[inline]
fn string(out: &mut Vec<u8>, field: u32, value: &str) {
    bytes(out, field, value.as_bytes());
}

#[inline]
fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    tag(out, field, LEN);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

#[inline]
fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    tag(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

#[inline]
fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, u64::from(field << 3 | u32::from(wire_type)));
}

#[inline]
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[inline]
fn varint_len(value: u64) -> usize {
    // 1 byte per started 7 bits; 0 takes one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::context::SpanId;
    use crate::telemetry::record::tests::record;
    use crate::telemetry::record::RetryEvent;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind as ProtoKind;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;

    fn decode(spans: &[SpanRecord]) -> ExportTraceServiceRequest {
        let envelope = Envelope::new(&[("service.name", "web"), ("service.version", "1")]);
        let mut buffer = SpanBuffer::default();
        for span in spans {
            buffer.push(span);
        }
        assert_eq!(buffer.len(), spans.len());
        let mut out = Vec::new();
        envelope.wrap(&buffer.take(), &mut out);
        assert!(buffer.is_empty(), "take leaves the buffer empty");
        ExportTraceServiceRequest::decode(out.as_slice()).expect("valid OTLP protobuf")
    }

    fn attribute(span: &Span, key: &str) -> Option<Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone()?.value)
    }

    fn text(value: &str) -> Option<Value> {
        Some(Value::StringValue(value.into()))
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
        }
    }

    #[test]
    fn a_plain_span_decodes_with_the_published_schema() {
        let request = decode(&[record("api:8080")]);
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
    fn a_failed_retried_span_carries_events_and_error_status() {
        let mut span = record("api");
        span.kind = SpanKind::Server;
        span.parent = Some(SpanId([9; 8]));
        span.status = 504;
        span.error = Some("timeout");
        span.retries = Some(2);
        span.peer = Some("spiffe://tether.local/service/web".into());
        span.endpoint = Some("10.0.0.7:8080".into());
        span.retry_events = vec![
            RetryEvent {
                at_unix_nano: 10,
                try_number: 2,
            },
            RetryEvent {
                at_unix_nano: 20,
                try_number: 3,
            },
        ];
        let mut plain_5xx = record("api");
        plain_5xx.status = 503;
        let request = decode(&[span, plain_5xx]);
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
        assert_eq!(failed.events[1].name, "retry");
        assert_eq!(failed.events[1].time_unix_nano, 20);
        assert_eq!(
            failed.events[1].attributes[0]
                .value
                .clone()
                .and_then(|v| v.value),
            Some(Value::IntValue(3))
        );
        let status = failed.status.as_ref().expect("status");
        assert_eq!((status.code, status.message.as_str()), (2, "timeout"));
        let status = spans[1].status.as_ref().expect("status");
        assert_eq!((status.code, status.message.as_str()), (2, "HTTP 503"));
        assert_eq!(attribute(&spans[1], "error.type"), text("503"));
    }

    #[test]
    fn long_fields_need_multi_byte_lengths() {
        let mut span = record("api");
        span.path = "/".repeat(20_000);
        let request = decode(&[span.clone(), span]);
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_eq!(attribute(&spans[1], "url.path"), text(&"/".repeat(20_000)));
    }

    #[test]
    fn an_empty_batch_is_a_valid_request() {
        let request = decode(&[]);
        assert!(request.resource_spans[0].scope_spans[0].spans.is_empty());
    }
}
