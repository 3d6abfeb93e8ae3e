//! `Retry-After` on a retryable answer: how long the upstream asks the
//! caller to wait, and whether a retry can honour it.
//!
//! Only 429 and 503 answers are read (RFC 9110 §10.2.3 names them), and
//! only the delta-seconds form (`Retry-After: 2`); an HTTP-date is treated
//! as absent (clocks of caller and upstream need not agree, and dates are
//! rare between services), so the usual backoff applies.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

/// Longest wait read from `Retry-After`: anything longer is beyond any
/// request timeout (the retry is then skipped) and saturates here.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The wait an answer asks for: `Retry-After` in seconds on a 429 or 503.
pub fn requested(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    parse(headers.get(http::header::RETRY_AFTER)?.as_bytes())
}

/// `delta-seconds` (1*DIGIT); `None` for anything else (an HTTP-date).
pub fn parse(value: &[u8]) -> Option<Duration> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let secs = value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    Some(
        secs.map_or(MAX_RETRY_AFTER, Duration::from_secs)
            .min(MAX_RETRY_AFTER),
    )
}

/// How a retry waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The usual backoff: the answer asked for nothing.
    Backoff,
    /// At least this long, as the upstream asked.
    For(Duration),
    /// Not at all: the wait asked for does not fit in the time left.
    Skip,
}

/// How to wait after an answer that asked for `requested`, with `left`
/// before the request's timeout: a wait that leaves no time for the retry
/// itself (`requested >= left`) skips the retry.
pub fn decide(requested: Option<Duration>, left: Duration) -> Wait {
    match requested {
        None => Wait::Backoff,
        Some(wait) if wait < left => Wait::For(wait),
        Some(_) => Wait::Skip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_delta_seconds_only() {
        assert_eq!(parse(b"1"), Some(Duration::from_secs(1)));
        assert_eq!(parse(b" 30 "), Some(Duration::from_secs(30)));
        assert_eq!(parse(b"0"), Some(Duration::ZERO));
        assert_eq!(parse(b"99999999999999999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse(b"Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse(b"-1"), None);
        assert_eq!(parse(b"1.5"), None);
        assert_eq!(parse(b""), None);
    }

    #[test]
    fn only_429_and_503_ask_for_a_wait() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("2"),
        );
        let two = Some(Duration::from_secs(2));
        assert_eq!(requested(StatusCode::SERVICE_UNAVAILABLE, &headers), two);
        assert_eq!(requested(StatusCode::TOO_MANY_REQUESTS, &headers), two);
        assert_eq!(requested(StatusCode::BAD_GATEWAY, &headers), None);
        assert_eq!(
            requested(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()),
            None
        );
    }

    #[test]
    fn a_wait_that_does_not_fit_skips_the_retry() {
        let s = Duration::from_secs;
        assert_eq!(decide(None, s(1)), Wait::Backoff);
        assert_eq!(decide(Some(s(1)), s(5)), Wait::For(s(1)));
        assert_eq!(decide(Some(s(30)), s(2)), Wait::Skip);
        assert_eq!(decide(Some(s(2)), s(2)), Wait::Skip, "no time left to try");
        assert_eq!(
            decide(Some(Duration::ZERO), s(1)),
            Wait::For(Duration::ZERO)
        );
    }
}
