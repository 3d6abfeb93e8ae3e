//! B3 trace context (Zipkin), accepted on the way in: the single `b3` header
//! (`{trace}-{span}[-{sampled}[-{parent}]]`) and the multi-header form
//! (`x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`).
//! Tether writes W3C `traceparent` on the way out, so a B3 trace continues
//! as W3C from the first sidecar on.

use super::context::{SpanContext, SpanId, TraceId};
use http::header::HeaderName;
use http::HeaderMap;

const B3: HeaderName = HeaderName::from_static("b3");
const TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// The remote span context carried by B3 headers, if any are valid.
pub fn extract(headers: &HeaderMap) -> Option<SpanContext> {
    single(headers).or_else(|| multi(headers))
}

fn text<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Hex digits only: `from_str_radix` alone also takes a leading `+`.
fn is_hex(id: &str) -> bool {
    id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn trace_id(hex: &str) -> Option<TraceId> {
    // 64-bit B3 trace ids are left-padded to 128 bits.
    let id = match hex.len() {
        16 | 32 if is_hex(hex) => u128::from_str_radix(hex, 16).ok()?,
        _ => return None,
    };
    (id != 0).then(|| TraceId(id.to_be_bytes()))
}

fn span_id(hex: &str) -> Option<SpanId> {
    if hex.len() != 16 || !is_hex(hex) {
        return None;
    }
    let id = u64::from_str_radix(hex, 16).ok()?;
    (id != 0).then(|| SpanId(id.to_be_bytes()))
}

fn sampled(flag: Option<&str>) -> bool {
    matches!(flag, Some("1" | "d" | "true"))
}

fn context(trace_id: TraceId, span_id: SpanId, sampled: bool) -> SpanContext {
    SpanContext {
        trace_id,
        span_id,
        sampled,
    }
}

fn single(headers: &HeaderMap) -> Option<SpanContext> {
    let value = text(headers, &B3)?;
    let mut parts = value.split('-');
    let trace = trace_id(parts.next()?)?;
    let span = span_id(parts.next()?)?;
    Some(context(trace, span, sampled(parts.next())))
}

fn multi(headers: &HeaderMap) -> Option<SpanContext> {
    let trace = trace_id(text(headers, &TRACE_ID)?)?;
    let span = span_id(text(headers, &SPAN_ID)?)?;
    let flag = if text(headers, &FLAGS) == Some("1") {
        Some("1")
    } else {
        text(headers, &SAMPLED)
    };
    Some(context(trace, span, sampled(flag)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, http::HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn reads_single_header() {
        let cx = extract(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]));
        let cx = cx.expect("valid b3");
        assert_eq!(cx.trace_id.to_hex(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(cx.span_id.0, 0xe457b5a2e4d86bd1u64.to_be_bytes());
        assert!(cx.sampled);
    }

    #[test]
    fn reads_multi_headers_and_pads_64_bit_ids() {
        let cx = extract(&headers(&[
            ("x-b3-traceid", "64fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
        ]))
        .expect("valid b3");
        assert_eq!(cx.trace_id.to_hex(), "000000000000000064fe8b2a57d3eff7");
        assert!(!cx.sampled);
    }

    #[test]
    fn ignores_garbage() {
        assert!(extract(&headers(&[("b3", "zzz-yyy")])).is_none());
        assert!(
            extract(&headers(&[("b3", "0")])).is_none(),
            "b3: 0 is a sampling decision only"
        );
        assert!(extract(&HeaderMap::new()).is_none());
    }

    #[test]
    fn ids_are_hex_digits_only() {
        // Found by fuzzing (fuzz/fuzz_targets/trace_context.rs): a leading
        // `+` passed `from_str_radix`, so `+0f067aa0ba902b7` read as span
        // 00f067aa0ba902b7.
        assert!(extract(&headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "+0f067aa0ba902b7"),
        ]))
        .is_none());
        assert!(extract(&headers(&[(
            "b3",
            "+0f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1"
        )]))
        .is_none());
        assert!(extract(&headers(&[("b3", "+4fe8b2a57d3eff7-e457b5a2e4d86bd1")])).is_none());
    }
}
