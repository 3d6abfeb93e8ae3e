//! gRPC as gRPC: what the proxy needs to know about a gRPC call beyond
//! HTTP/2.
//!
//! - detection: a request whose `content-type` starts with
//!   `application/grpc` ([`is_grpc`]: one header lookup, made once per
//!   request by the observer);
//! - the outcome is the `grpc-status` ([`Code`]), read from the response
//!   headers of a trailers-only response, or from the trailers by
//!   [`StatusTail`] once a streamed response ends;
//! - errors the proxy makes are gRPC errors: HTTP 200 with `grpc-status`
//!   and `grpc-message` ([`error_response`]);
//! - `grpc-timeout` ([`parse_timeout`], [`encode_timeout`]): the call's
//!   deadline, passed on reduced by the time spent in the proxy.
//!
//! A non-gRPC request pays for the one `content-type` check only.

pub mod health;
mod replay;
mod tail;

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::body::Body;

pub use replay::Replayable;
pub use tail::StatusTail;

/// `grpc-status`: the call's status code (in the trailers, or in the
/// headers of a trailers-only response).
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`: the status message, percent-encoded.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `grpc-timeout`: the caller's deadline, relative (`100m`, `5S`, …).
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Whether `headers` are those of a gRPC request or response
/// (`content-type: application/grpc`, `application/grpc+proto`, …).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A gRPC status code (`grpc/doc/statuscodes.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    /// 0: success.
    Ok = 0,
    /// 1: cancelled by the caller.
    Cancelled = 1,
    /// 2: unknown error.
    Unknown = 2,
    /// 3: invalid argument.
    InvalidArgument = 3,
    /// 4: the deadline expired.
    DeadlineExceeded = 4,
    /// 5: not found.
    NotFound = 5,
    /// 6: already exists.
    AlreadyExists = 6,
    /// 7: the caller may not do this.
    PermissionDenied = 7,
    /// 8: a resource (quota, capacity) is exhausted.
    ResourceExhausted = 8,
    /// 9: the system is not in the state the operation needs.
    FailedPrecondition = 9,
    /// 10: aborted (concurrency conflict).
    Aborted = 10,
    /// 11: out of range.
    OutOfRange = 11,
    /// 12: not implemented.
    Unimplemented = 12,
    /// 13: internal error.
    Internal = 13,
    /// 14: the service is unavailable (transient: retry).
    Unavailable = 14,
    /// 15: data loss.
    DataLoss = 15,
    /// 16: the caller is not authenticated.
    Unauthenticated = 16,
}

const CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

impl Code {
    /// The code with this number, if there is one.
    pub fn from_number(n: u32) -> Option<Code> {
        CODES.get(usize::try_from(n).ok()?).copied()
    }

    /// The code named (kebab-case, as in `retry_on`: `unavailable`,
    /// `resource-exhausted`, `deadline-exceeded`, …).
    pub fn from_name(name: &str) -> Option<Code> {
        CODES.iter().copied().find(|c| c.name() == name)
    }

    /// The code's number, as in `grpc-status`.
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// The code's name in kebab-case: the `grpc_status` label value and
    /// the `retry_on` spelling.
    pub const fn name(self) -> &'static str {
        match self {
            Code::Ok => "ok",
            Code::Cancelled => "cancelled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid-argument",
            Code::DeadlineExceeded => "deadline-exceeded",
            Code::NotFound => "not-found",
            Code::AlreadyExists => "already-exists",
            Code::PermissionDenied => "permission-denied",
            Code::ResourceExhausted => "resource-exhausted",
            Code::FailedPrecondition => "failed-precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out-of-range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data-loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// Whether the code says the server failed (not the caller): what
    /// outlier detection counts as a failure, like a 5xx: `UNKNOWN`,
    /// `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS` (not `DEADLINE_EXCEEDED`,
    /// which the caller's own short deadline can cause).
    pub const fn is_server_failure(self) -> bool {
        matches!(
            self,
            Code::Unknown | Code::Internal | Code::Unavailable | Code::DataLoss
        )
    }

    /// The value of a `grpc-status` header.
    fn header_value(self) -> HeaderValue {
        const VALUES: [&str; 17] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16",
        ];
        HeaderValue::from_static(VALUES[self as usize])
    }
}

/// The `grpc-status` in `headers` (a trailers-only response's headers, or
/// trailers); an unparsable or unknown value is `UNKNOWN`.
pub fn status_of(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get(GRPC_STATUS)?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .and_then(Code::from_number);
    Some(code.unwrap_or(Code::Unknown))
}

/// A trailers-only gRPC error response: HTTP 200, `content-type:
/// application/grpc`, `grpc-status: code`, `grpc-message: message`
/// (percent-encoded), no body.
pub fn error_response(code: Code, message: &str) -> Response<Body> {
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS, code.header_value());
    if let Ok(message) = HeaderValue::from_bytes(percent_encode(message).as_bytes()) {
        headers.insert(GRPC_MESSAGE, message);
    }
    response
}

/// Percent-encodes a `grpc-message`: bytes outside printable ASCII and `%`
/// itself (gRPC over HTTP/2, "Responses").
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.trim_end().as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The duration a `grpc-timeout` value says: 1 to 8 ASCII digits and a
/// unit (`H`, `M`, `S`, `m` ms, `u` µs, `n` ns); `None` when malformed
/// (the header is then ignored, as gRPC servers do).
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (&unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `remaining` as a `grpc-timeout` value, in the finest unit whose
/// number fits in 8 digits (rounded up, so a deadline is never shortened
/// to zero by the encoding).
pub fn encode_timeout(remaining: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = remaining.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let (n, unit) = units
        .iter()
        .map(|&(per, unit)| (nanos.div_ceil(per), unit))
        .find(|&(n, _)| n <= MAX)
        .unwrap_or((MAX, 'H'));
    let text = format!("{n}{unit}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("1n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_grpc_by_content_type_only() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(!is_grpc(&headers));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        assert!(is_grpc(&headers));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&headers));
    }

    #[test]
    fn codes_round_trip_by_number_and_name() {
        for (n, code) in CODES.iter().enumerate() {
            assert_eq!(usize::from(code.number()), n);
            assert_eq!(Code::from_number(n as u32), Some(*code));
            assert_eq!(Code::from_name(code.name()), Some(*code));
            assert_eq!(code.header_value(), n.to_string().as_str());
        }
        assert_eq!(Code::from_number(17), None);
        assert_eq!(Code::from_name("UNAVAILABLE"), None);
    }

    #[test]
    fn status_of_reads_the_header_and_calls_garbage_unknown() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_of(&headers), None);
        headers.insert(GRPC_STATUS, HeaderValue::from_static("14"));
        assert_eq!(status_of(&headers), Some(Code::Unavailable));
        headers.insert(GRPC_STATUS, HeaderValue::from_static("x"));
        assert_eq!(status_of(&headers), Some(Code::Unknown));
    }

    #[test]
    fn error_responses_are_trailers_only_with_an_encoded_message() {
        let response = error_response(Code::Unavailable, "no endpoints for `api` 100%\n");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(response.headers()[GRPC_STATUS], "14");
        assert_eq!(
            response.headers()[GRPC_MESSAGE],
            "no endpoints for `api` 100%25"
        );
        assert!(matches!(response.body(), Body::Empty));
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn parses_every_timeout_unit_and_refuses_malformed_values() {
        let t = |s: &'static str| parse_timeout(&HeaderValue::from_static(s));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("7u"), Some(Duration::from_micros(7)));
        assert_eq!(t("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "m", "123456789m", "1x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encodes_timeouts_in_the_finest_unit_that_fits() {
        assert_eq!(encode_timeout(Duration::from_millis(250)), "250000u");
        assert_eq!(encode_timeout(Duration::from_secs(5)), "5000000u");
        assert_eq!(encode_timeout(Duration::from_secs(500)), "500000m");
        assert_eq!(encode_timeout(Duration::ZERO), "0n");
        for d in [1u64, 999, 123_456_789, 86_400_000_000_000] {
            let d = Duration::from_nanos(d);
            let back = parse_timeout(&encode_timeout(d)).unwrap_or_default();
            assert!(back >= d, "{d:?} came back as {back:?}");
        }
    }
}
