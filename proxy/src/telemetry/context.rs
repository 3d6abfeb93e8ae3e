//! Trace identity: ids, the sampled flag, and the W3C `traceparent` header
//! (`00-{32 hex trace id}-{16 hex span id}-{2 hex flags}`) read and written.
//!
//! The header has one fixed shape, so it is parsed and formatted here in a
//! few hundred instructions rather than through a general propagator (see
//! mod.rs for why the proxy keeps its own span path).

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

/// The `traceparent` header name (a constant: a `&str` name is parsed and
/// validated on every lookup).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// A 16-byte trace id; all zeros is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id; all zeros is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random, valid trace id.
    pub fn random() -> Self {
        loop {
            let id: u128 = rand::random();
            if id != 0 {
                return Self(id.to_be_bytes());
            }
        }
    }

    /// Lowercase hex, as in `traceparent` and Jaeger's UI.
    pub fn to_hex(self) -> String {
        format!("{:032x}", u128::from_be_bytes(self.0))
    }
}

impl SpanId {
    /// A random, valid span id.
    pub fn random() -> Self {
        loop {
            let id: u64 = rand::random();
            if id != 0 {
                return Self(id.to_be_bytes());
            }
        }
    }
}

/// Where a span sits in its trace, and whether the trace is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// The trace's sampling decision (W3C flag `01`).
    pub sampled: bool,
}

impl SpanContext {
    /// Reads a valid W3C `traceparent` from `headers`, if there is one.
    /// Versions other than `00` are read by their first four fields, as
    /// the W3C spec asks of a version-00 parser.
    pub fn from_traceparent(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(&TRACEPARENT)?.as_bytes();
        let value = trim(value);
        if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let version = u8_from_hex(&value[0..2])?;
        if version == 0xff || (version == 0 && value.len() != 55) {
            return None;
        }
        if version != 0 && value.len() > 55 && value[55] != b'-' {
            return None;
        }
        let mut trace = [0u8; 16];
        let mut span = [0u8; 8];
        hex_decode(&value[3..35], &mut trace)?;
        hex_decode(&value[36..52], &mut span)?;
        let flags = u8_from_hex(&value[53..55])?;
        if trace == [0; 16] || span == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id: TraceId(trace),
            span_id: SpanId(span),
            sampled: flags & 1 == 1,
        })
    }

    /// This context as a version-00 `traceparent` value (always `Some`:
    /// hex digits and dashes are valid header bytes).
    pub fn traceparent(&self) -> Option<HeaderValue> {
        let mut out = [0u8; 55];
        out[0..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id.0, &mut out[3..35]);
        out[35] = b'-';
        hex_into(&self.span_id.0, &mut out[36..52]);
        out[52] = b'-';
        out[53] = b'0';
        out[54] = if self.sampled { b'1' } else { b'0' };
        HeaderValue::from_bytes(&out).ok()
    }
}

/// Whether a new trace with this id is sampled at `ratio`: the same rule as
/// OpenTelemetry's `TraceIdRatioBased` (the id's low 63 bits below
/// `ratio × 2^63`), so every proxy decides the same for the same id.
/// Ratios at or above 1 keep every trace, at or below 0 none.
pub fn sampled_at(trace_id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id.0[8..]);
    let low = u64::from_be_bytes(low);
    (low >> 1) < bound
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &value[start..end]
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// Lowercase hex only: W3C forbids uppercase in `traceparent`.
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn u8_from_hex(two: &[u8]) -> Option<u8> {
    Some(nibble(two[0])? << 4 | nibble(two[1])?)
}

fn hex_decode(hex: &[u8], out: &mut [u8]) -> Option<()> {
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = u8_from_hex(pair)?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(TRACEPARENT, HeaderValue::from_static(value));
        map
    }

    #[test]
    fn reads_and_writes_traceparent() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = SpanContext::from_traceparent(&headers(value)).expect("valid");
        assert_eq!(cx.trace_id.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            cx.span_id.0,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(cx.sampled);
        assert_eq!(cx.traceparent().expect("valid"), value);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let cx = SpanContext::from_traceparent(&headers(unsampled)).expect("valid");
        assert!(!cx.sampled);
        assert_eq!(cx.traceparent().expect("valid"), unsampled);
    }

    #[test]
    fn later_versions_are_read_by_their_first_fields() {
        let value = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(SpanContext::from_traceparent(&headers(value)).is_some());
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert!(
                SpanContext::from_traceparent(&headers(bad)).is_none(),
                "accepted {bad:?}"
            );
        }
        assert!(SpanContext::from_traceparent(&HeaderMap::new()).is_none());
    }

    #[test]
    fn arbitrary_values_never_panic_and_accepted_ones_round_trip() {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        let alphabet = b"0123456789abcdefABCDEF-x \t";
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for _ in 0..20_000 {
            // Mutations of a valid value, and random strings of nearby lengths.
            let mut bytes: Vec<u8> = if rng.gen_bool(0.5) {
                valid.as_bytes().to_vec()
            } else {
                (0..rng.gen_range(0..70))
                    .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                    .collect()
            };
            for _ in 0..rng.gen_range(0..3) {
                if !bytes.is_empty() {
                    let i = rng.gen_range(0..bytes.len());
                    bytes[i] = alphabet[rng.gen_range(0..alphabet.len())];
                }
            }
            let Ok(value) = HeaderValue::from_bytes(&bytes) else {
                continue;
            };
            let mut map = HeaderMap::new();
            map.insert(TRACEPARENT, value);
            if let Some(cx) = SpanContext::from_traceparent(&map) {
                let written = cx.traceparent().expect("valid");
                map.insert(TRACEPARENT, written);
                assert_eq!(SpanContext::from_traceparent(&map), Some(cx));
            }
        }
    }

    #[test]
    fn ratio_sampling_is_deterministic_per_trace_and_near_the_ratio() {
        let ids: Vec<TraceId> = (0..10_000).map(|_| TraceId::random()).collect();
        let kept = ids.iter().filter(|id| sampled_at(**id, 0.25)).count();
        assert!((2_000..3_000).contains(&kept), "{kept} of 10000 at 0.25");
        assert!(ids.iter().all(|id| sampled_at(*id, 1.0)));
        assert!(!ids.iter().any(|id| sampled_at(*id, 0.0)));
        assert_eq!(sampled_at(ids[0], 0.5), sampled_at(ids[0], 0.5));
    }
}
