//! Incoming trace context: W3C `traceparent`, else B3 (single `b3` header
//! or the `x-b3-*` headers), from arbitrary header lines. Whatever is
//! accepted must be what the header said, and must survive being written
//! back as a `traceparent`.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tether_proxy::fuzzing::extract_trace_context;
use tether_proxy::telemetry::SpanContext;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A B3 id as written (trimmed, lowercased, 64-bit trace ids left-padded)
/// must be the id read.
fn same_id(written: &str, read: &[u8]) {
    let written = written.trim().to_ascii_lowercase();
    let padded = format!("{written:0>width$}", width = read.len() * 2);
    assert_eq!(
        padded,
        hex(read),
        "B3 id `{written}` was read as {}",
        hex(read)
    );
}

fuzz_target!(|data: &[u8]| {
    // The input is header lines, `name: value`, as on the wire.
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value[1..].trim_ascii_start()),
        ) {
            headers.append(name, value);
        }
    }
    let Some(context) = extract_trace_context(&headers) else {
        return;
    };
    assert_ne!(context.trace_id.0, [0; 16], "all-zero trace id accepted");
    assert_ne!(context.span_id.0, [0; 8], "all-zero span id accepted");

    // Written back, it reads the same.
    let Some(written) = context.traceparent() else {
        panic!("no traceparent for {context:?}");
    };
    let mut again = HeaderMap::new();
    again.insert(HeaderName::from_static("traceparent"), written);
    let reread = SpanContext::from_traceparent(&again);
    assert_eq!(reread, Some(context), "traceparent round trip");

    // Where it came from, it says the same.
    if let Some(w3c) = SpanContext::from_traceparent(&headers) {
        assert_eq!(w3c, context, "traceparent wins over B3");
        let value = headers
            .get("traceparent")
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        let value = String::from_utf8_lossy(value);
        let value = value.trim();
        assert_eq!(&value[3..35], hex(&context.trace_id.0));
        assert_eq!(&value[36..52], hex(&context.span_id.0));
        return;
    }
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let single = text("b3").and_then(|b3| {
        let mut parts = b3.trim().split('-');
        Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
    });
    let multi = text("x-b3-traceid").zip(text("x-b3-spanid"));
    let from_single = single
        .as_ref()
        .is_some_and(|(t, s)| b3_id(t, &[16, 32]) && b3_id(s, &[16]));
    let (trace, span) = match (&single, multi) {
        (Some((t, s)), _) if from_single => (t.clone(), s.clone()),
        (_, Some((t, s))) => (t.to_owned(), s.to_owned()),
        _ => panic!("a B3 context from no valid B3 header: {context:?} from {headers:?}"),
    };
    same_id(&trace, &context.trace_id.0);
    same_id(&span, &context.span_id.0);
});

/// A valid B3 id: lower or upper hex of one of these lengths, not all zero.
fn b3_id(id: &str, lengths: &[usize]) -> bool {
    lengths.contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && id.bytes().any(|b| b != b'0')
}
