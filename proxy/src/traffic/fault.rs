//! Fault injection: a delay and/or an abort on a share of the requests to
//! a service (or one of its routes), optionally only on requests that
//! carry a header. Decided by the caller's sidecar after routing.

use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};
use prometheus::IntCounter;
use rand::Rng;

use crate::grpc;

/// Resolution of a share: parts per million (a percent with four decimals).
const SHARE_SCALE: u32 = 1_000_000;

/// A share of requests, sampled independently for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share(u32);

impl Share {
    /// `percent` (0 to 100; out of range is clamped) of the requests.
    pub fn from_percent(percent: f64) -> Self {
        let ppm = (percent.clamp(0.0, 100.0) * f64::from(SHARE_SCALE) / 100.0).round();
        Self(ppm as u32)
    }

    /// Whether this request falls in the share: no random draw for 0 % or
    /// 100 %.
    pub fn sample(self) -> bool {
        match self.0 {
            0 => false,
            n if n >= SHARE_SCALE => true,
            n => rand::thread_rng().gen_range(0..SHARE_SCALE) < n,
        }
    }
}

/// What an injected abort answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort {
    /// To a plain HTTP request.
    pub status: StatusCode,
    /// To a gRPC call (trailers-only).
    pub grpc: grpc::Code,
}

impl Abort {
    /// An abort configured as an HTTP status: a gRPC call gets the gRPC
    /// status gRPC maps that HTTP status to (gRPC's
    /// `http-grpc-status-mapping.md`).
    pub fn http(status: StatusCode) -> Self {
        let grpc = match status.as_u16() {
            400 => grpc::Code::Internal,
            401 => grpc::Code::Unauthenticated,
            403 => grpc::Code::PermissionDenied,
            404 => grpc::Code::Unimplemented,
            429 | 502..=504 => grpc::Code::Unavailable,
            _ => grpc::Code::Unknown,
        };
        Self { status, grpc }
    }

    /// An abort configured as a gRPC status: a plain HTTP request gets the
    /// HTTP status closest to it.
    pub fn grpc(code: grpc::Code) -> Self {
        let status = match code {
            grpc::Code::InvalidArgument
            | grpc::Code::FailedPrecondition
            | grpc::Code::OutOfRange => StatusCode::BAD_REQUEST,
            grpc::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            grpc::Code::PermissionDenied => StatusCode::FORBIDDEN,
            grpc::Code::NotFound => StatusCode::NOT_FOUND,
            grpc::Code::AlreadyExists | grpc::Code::Aborted => StatusCode::CONFLICT,
            grpc::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            grpc::Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            grpc::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            grpc::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self { status, grpc: code }
    }
}

/// Counters of one service's injected faults.
#[derive(Debug, Clone)]
pub struct FaultCounters {
    /// `tether_faults_injected_total{service,kind="delay"}`.
    pub delays: IntCounter,
    /// `tether_faults_injected_total{service,kind="abort"}`.
    pub aborts: IntCounter,
}

/// The faults configured for a service or a route.
#[derive(Debug)]
pub struct Fault {
    /// Only requests carrying this header are eligible.
    pub header: Option<HeaderName>,
    /// How long, for which share.
    pub delay: Option<(Duration, Share)>,
    /// What, for which share.
    pub abort: Option<(Abort, Share)>,
    /// Counted per service.
    pub counters: FaultCounters,
}

impl Fault {
    /// Whether a request with `headers` may get this fault (it carries
    /// the `header` asked for, or none is asked for).
    pub fn eligible(&self, headers: &HeaderMap) -> bool {
        self.header
            .as_ref()
            .is_none_or(|name| headers.contains_key(name))
    }

    /// Draws whether this request is aborted, and counts it if so.
    pub fn draw_abort(&self) -> Option<Abort> {
        let (abort, share) = self.abort?;
        share.sample().then(|| {
            self.counters.aborts.inc();
            abort
        })
    }

    /// Draws whether this request is delayed (independently of the abort,
    /// as Envoy does: a request may be both), and counts it if so.
    pub fn draw_delay(&self) -> Option<Duration> {
        let (delay, share) = self.delay?;
        share.sample().then(|| {
            self.counters.delays.inc();
            delay
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> FaultCounters {
        let c = |n: &str| IntCounter::new(n, n).unwrap_or_else(|e| panic!("{e}"));
        FaultCounters {
            delays: c("d"),
            aborts: c("a"),
        }
    }

    #[test]
    fn shares_sample_about_their_percent_and_the_ends_exactly() {
        assert!((0..1000).all(|_| Share::from_percent(100.0).sample()));
        assert!((0..1000).all(|_| !Share::from_percent(0.0).sample()));
        assert_eq!(Share::from_percent(150.0), Share::from_percent(100.0));
        assert_eq!(Share::from_percent(0.0001), Share(1));
        let n = 20_000;
        let hits = (0..n)
            .filter(|_| Share::from_percent(12.5).sample())
            .count();
        let share = hits as f64 / f64::from(n);
        // 12.5 % ± 1.5 points: the binomial sd at n = 20,000 is 0.23 points.
        assert!((0.11..=0.14).contains(&share), "{share}");
    }

    #[test]
    fn only_requests_with_the_header_are_eligible_and_faults_are_counted() {
        let fault = Fault {
            header: Some(HeaderName::from_static("x-tether-fault")),
            delay: Some((Duration::from_millis(5), Share::from_percent(100.0))),
            abort: Some((
                Abort::http(StatusCode::SERVICE_UNAVAILABLE),
                Share::from_percent(100.0),
            )),
            counters: counters(),
        };
        assert!(!fault.eligible(&HeaderMap::new()));
        let mut headers = HeaderMap::new();
        headers.insert("x-tether-fault", http::HeaderValue::from_static("1"));
        assert!(fault.eligible(&headers));
        assert_eq!(fault.draw_delay(), Some(Duration::from_millis(5)));
        assert_eq!(
            fault.draw_abort().map(|a| (a.status, a.grpc)),
            Some((StatusCode::SERVICE_UNAVAILABLE, grpc::Code::Unavailable))
        );
        assert_eq!(
            (fault.counters.delays.get(), fault.counters.aborts.get()),
            (1, 1)
        );
        let never = Fault {
            header: None,
            delay: Some((Duration::from_millis(5), Share::from_percent(0.0))),
            abort: None,
            counters: counters(),
        };
        assert!(never.eligible(&HeaderMap::new()));
        assert_eq!((never.draw_delay(), never.draw_abort()), (None, None));
        assert_eq!(
            never.counters.delays.get(),
            0,
            "only injections are counted"
        );
    }

    #[test]
    fn aborts_map_between_http_and_grpc() {
        assert_eq!(
            Abort::grpc(grpc::Code::ResourceExhausted).status,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            Abort::grpc(grpc::Code::Unavailable).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            Abort::http(StatusCode::NOT_FOUND).grpc,
            grpc::Code::Unimplemented
        );
        assert_eq!(
            Abort::http(StatusCode::INTERNAL_SERVER_ERROR).grpc,
            grpc::Code::Unknown
        );
    }
}
