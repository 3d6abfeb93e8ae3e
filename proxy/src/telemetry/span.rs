//! One hop's span, encoded as it happens. The start writes the OTLP `Span`
//! fields known on arrival (ids, name, kind, start time, request
//! attributes), each try adds its endpoint, the end adds the outcome.
//! Protobuf lets a message's fields come in any order and a repeated field
//! in pieces, so these appends make one valid `Span` body, and a finished
//! span is only its bytes: no span object, no per-attribute allocation.

use http::{Method, StatusCode};

use super::context::{SpanContext, SpanId};
use super::protobuf::{
    bool_attribute, bytes, fixed64, int_attribute, int_attribute_len, string, string_attribute,
    string_attribute_len, tag, varint, varint_len, FIXED32, LEN, VARINT,
};

/// `Span.attributes`.
const ATTRIBUTE: u32 = 9;

/// OTLP span kinds the proxy emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Inbound: the hop that serves a request for the local app.
    Server,
    /// Outbound: the hop that calls another service.
    Client,
}

/// What a span starts with.
#[derive(Debug, Clone, Copy)]
pub struct SpanHead<'a> {
    /// Trace and span id.
    pub context: SpanContext,
    /// The caller's span, when the request carried one.
    pub parent: Option<SpanId>,
    /// Server (inbound) or client (outbound).
    pub kind: SpanKind,
    /// Arrival, ns since the Unix epoch.
    pub start_unix_nano: u64,
    /// `http.request.method`.
    pub method: &'a Method,
    /// `tether.direction`: `inbound` or `outbound`.
    pub direction: &'static str,
    /// `tether.service`: the service called (outbound) or served (inbound).
    pub service: &'a str,
    /// `url.path`.
    pub path: &'a str,
    /// The request's authority: `server.address` and `server.port`.
    pub authority: &'a str,
    /// `tether.peer.identity`: the caller's verified mesh identity.
    pub peer: Option<&'a str>,
    /// `tether.mirror: true`: the request is a mirrored copy (it carries
    /// `tether-mirror: 1`).
    pub mirrored: bool,
}

/// How a span ends.
#[derive(Debug, Clone, Copy)]
pub struct SpanEnd {
    /// End, ns since the Unix epoch.
    pub end_unix_nano: u64,
    /// `http.response.status_code`; none when the request was abandoned
    /// before a response (the caller went away).
    pub status: Option<StatusCode>,
    /// `tether.error` and `error.type`: the proxy's reason, when it failed
    /// the request itself (`cancelled` when abandoned).
    pub error: Option<&'static str>,
    /// `rpc.grpc.status_code` of a gRPC call (with `rpc.system: grpc`),
    /// and its name as `error.type` when the server failed (`UNKNOWN`,
    /// `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`).
    pub grpc: Option<(u8, &'static str, bool)>,
}

/// The encoded body of one `Span` message, being built.
#[derive(Debug)]
pub struct SpanBuilder {
    bytes: Vec<u8>,
    tries: u32,
}

impl SpanBuilder {
    /// Ids, name (`METHOD direction service`), kind, start time and the
    /// request's attributes.
    pub fn begin(head: &SpanHead<'_>) -> Self {
        let text = head.path.len()
            + head.authority.len()
            + 2 * head.service.len()
            + head.peer.map_or(0, str::len);
        let mut out = Vec::with_capacity(512 + text);
        bytes(&mut out, 1, &head.context.trace_id.0);
        bytes(&mut out, 2, &head.context.span_id.0);
        if let Some(parent) = head.parent {
            bytes(&mut out, 4, &parent.0);
        }
        let name = [head.method.as_str(), " ", head.direction, " ", head.service];
        let name_len: usize = name.iter().map(|p| p.len()).sum();
        tag(&mut out, 5, LEN);
        varint(&mut out, name_len as u64);
        for part in name {
            out.extend_from_slice(part.as_bytes());
        }
        let kind = match head.kind {
            SpanKind::Server => 2,
            SpanKind::Client => 3,
        };
        tag(&mut out, 6, VARINT);
        varint(&mut out, kind);
        fixed64(&mut out, 7, head.start_unix_nano);
        string_attribute(
            &mut out,
            ATTRIBUTE,
            "http.request.method",
            head.method.as_str(),
        );
        string_attribute(&mut out, ATTRIBUTE, "url.path", head.path);
        // `server.address` drops an IPv6 literal's brackets: `[::1]:80` is `::1`.
        let (address, port) = crate::authority::split(head.authority);
        string_attribute(&mut out, ATTRIBUTE, "server.address", address);
        if let Some(port) = port {
            int_attribute(&mut out, ATTRIBUTE, "server.port", i64::from(port));
        }
        string_attribute(&mut out, ATTRIBUTE, "tether.direction", head.direction);
        string_attribute(&mut out, ATTRIBUTE, "tether.service", head.service);
        if let Some(peer) = head.peer {
            string_attribute(&mut out, ATTRIBUTE, "tether.peer.identity", peer);
        }
        if head.mirrored {
            bool_attribute(&mut out, ATTRIBUTE, "tether.mirror", true);
        }
        Self {
            bytes: out,
            tries: 0,
        }
    }

    /// A try is being sent to `endpoint`. The first try's endpoint is the
    /// span attribute `tether.endpoint`; each later one is a `retry` event
    /// (at `now()`) with `tether.try` (its number) and `tether.endpoint`.
    pub fn record_try(&mut self, endpoint: &str, now: impl FnOnce() -> u64) {
        self.tries += 1;
        let out = &mut self.bytes;
        if self.tries == 1 {
            string_attribute(out, ATTRIBUTE, "tether.endpoint", endpoint);
            return;
        }
        let number = i64::from(self.tries);
        let try_len = int_attribute_len("tether.try", number);
        let endpoint_len = string_attribute_len("tether.endpoint", endpoint);
        // Event { time_unix_nano = 1 (fixed64); name = 2; attributes = 3 }
        let event_len = 9
            + (2 + "retry".len())
            + (1 + varint_len(try_len as u64) + try_len)
            + (1 + varint_len(endpoint_len as u64) + endpoint_len);
        tag(out, 11, LEN);
        varint(out, event_len as u64);
        fixed64(out, 1, now());
        string(out, 2, "retry");
        int_attribute(out, 3, "tether.try", number);
        string_attribute(out, 3, "tether.endpoint", endpoint);
    }

    /// End time, status code, retries (`tether.retries`, tries after the
    /// first, when there were any), error attributes and status, flags.
    pub fn end(&mut self, end: &SpanEnd) {
        let out = &mut self.bytes;
        fixed64(out, 8, end.end_unix_nano);
        if let Some(code) = end.status {
            int_attribute(
                out,
                ATTRIBUTE,
                "http.response.status_code",
                i64::from(code.as_u16()),
            );
        }
        if let Some((code, _, _)) = end.grpc {
            string_attribute(out, ATTRIBUTE, "rpc.system", "grpc");
            int_attribute(out, ATTRIBUTE, "rpc.grpc.status_code", i64::from(code));
        }
        if self.tries > 1 {
            int_attribute(out, ATTRIBUTE, "tether.retries", i64::from(self.tries - 1));
        }
        let message: &[&str] = match end.error {
            Some(reason) => {
                string_attribute(out, ATTRIBUTE, "tether.error", reason);
                string_attribute(out, ATTRIBUTE, "error.type", reason);
                &[reason]
            }
            None => match &end.status {
                _ if end.grpc.is_some_and(|(_, _, failed)| failed) => {
                    let name = end.grpc.map_or("", |(_, name, _)| name);
                    string_attribute(out, ATTRIBUTE, "error.type", name);
                    &["gRPC ", name]
                }
                Some(code) if code.is_server_error() => {
                    string_attribute(out, ATTRIBUTE, "error.type", code.as_str());
                    &["HTTP ", code.as_str()]
                }
                _ => &[],
            },
        };
        if !message.is_empty() {
            // Status { message = 2; code = 3 (STATUS_CODE_ERROR = 2) }
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
        tag(out, 16, FIXED32);
        out.extend_from_slice(&1u32.to_le_bytes());
    }

    /// The `Span` message body so far.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A span head for tests: trace `01…`, span `02…`, outbound to `api`.
#[cfg(test)]
pub(crate) fn test_head<'a>(method: &'a Method, authority: &'a str, path: &'a str) -> SpanHead<'a> {
    use super::context::TraceId;
    SpanHead {
        context: SpanContext {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            sampled: true,
        },
        parent: None,
        kind: SpanKind::Client,
        start_unix_nano: 1,
        method,
        direction: "outbound",
        service: "api",
        path,
        authority,
        peer: None,
        mirrored: false,
    }
}
