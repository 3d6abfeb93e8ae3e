//! Traffic policy: timeouts, retries, balancing and circuit breaking.
//!
//! Every field has a default, so a snapshot (or mesh.yaml) names only what it
//! changes. The defaults are the ones documented in `docs/proxy.md`; the
//! rules a policy must follow are in `validate.rs`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::traffic::Locality;

/// Per-service traffic policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Whole-request timeout, from the request's arrival to the response
    /// headers, over all tries. Answered with `504` + `tether-error: timeout`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// TCP connect timeout to one endpoint.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a pooled upstream connection may sit idle before it is closed.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// `tcp` services: how long an opaque stream may carry no byte in either
    /// direction before the caller's sidecar closes it (both ends).
    #[serde(default = "default_stream_idle_timeout", with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    /// Retry policy.
    #[serde(default)]
    pub retries: RetryPolicy,
    /// Endpoint selection algorithm.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Concurrency limits and outlier ejection.
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
    /// Locality-aware balancing (off by default).
    #[serde(default, skip_serializing_if = "Locality::is_default")]
    pub locality: Locality,
}

// Five seconds: long enough for ordinary RPCs, short enough that a stuck
// upstream frees the caller's resources (Linkerd and Envoy route defaults are
// in this range).
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
// One second: a loopback or LAN connect takes well under a millisecond; a
// connect that takes a second is a dead host, better retried elsewhere.
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
// Twenty seconds: below the keep-alive limits of the servers the proxy
// talks to (a peer sidecar closes an HTTP/1.1 connection idle for its
// header-read timeout, 30 s; nginx 75 s), so the proxy closes idle
// connections before the server does and never races it.
fn default_idle_timeout() -> Duration {
    Duration::from_secs(20)
}
// One hour (Envoy's tcp_proxy default): long enough for database and
// message-queue connections that idle between bursts, short enough that a
// peer that vanished without a FIN does not hold a stream forever.
fn default_stream_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}

impl Default for TrafficPolicy {
    fn default() -> Self {
        Self {
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
            idle_timeout: default_idle_timeout(),
            stream_idle_timeout: default_stream_idle_timeout(),
            retries: RetryPolicy::default(),
            load_balancer: LoadBalancer::default(),
            circuit_breaker: CircuitBreaker::default(),
            locality: Locality::default(),
        }
    }
}

/// Endpoint selection algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancer {
    /// Each endpoint in turn.
    RoundRobin,
    /// Power of two random choices, fewer requests in flight wins.
    LeastRequest,
    /// Random in proportion to endpoint weights.
    Weighted,
    /// Power of two choices by peak-EWMA latency × in-flight requests.
    #[default]
    P2cEwma,
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first try (0 disables retries).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Timeout of one try, from sending to response headers. `None` (the
    /// default): a try is bounded only by the whole-request `timeout`, as in
    /// Envoy; set it shorter to give later tries time within `timeout`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    /// Exponential backoff between tries, with full jitter.
    #[serde(default)]
    pub backoff: Backoff,
    /// Retry budget: retries allowed as a share of recent requests.
    #[serde(default)]
    pub budget: RetryBudget,
    /// Conditions that make a try retryable.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// Largest request body kept for replay; larger bodies are never retried.
    #[serde(default = "default_replay_buffer_bytes")]
    pub replay_buffer_bytes: usize,
    /// Whether POST/PATCH (non-idempotent methods) are retried on conditions
    /// other than `connect-failure`. Off by default: a reset or a 503 may come
    /// after the upstream acted on the request.
    #[serde(default)]
    pub retry_non_idempotent: bool,
}

fn default_attempts() -> u32 {
    2
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::Status(503),
    ]
}
// 64 KiB: covers typical JSON RPC bodies while bounding memory per request.
fn default_replay_buffer_bytes() -> usize {
    64 * 1024
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: default_attempts(),
            per_try_timeout: None,
            backoff: Backoff::default(),
            budget: RetryBudget::default(),
            retry_on: default_retry_on(),
            replay_buffer_bytes: default_replay_buffer_bytes(),
            retry_non_idempotent: false,
        }
    }
}

/// Exponential backoff with full jitter: retry `n` (1 for the first) waits a
/// random time in `[0, min(max, base·2ⁿ⁻¹)]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// First backoff ceiling.
    #[serde(default = "default_backoff_base", with = "humantime_serde")]
    pub base: Duration,
    /// Largest backoff ceiling.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub max: Duration,
}

fn default_backoff_base() -> Duration {
    Duration::from_millis(25)
}
fn default_backoff_max() -> Duration {
    Duration::from_millis(250)
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

/// Retry budget: at most `ratio` retries per request over the last `ttl`,
/// plus `min_per_second` always allowed, so retries never multiply an outage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries allowed per original request (0.2 = 20 %).
    #[serde(default = "default_budget_ratio")]
    pub ratio: f32,
    /// Retries per second allowed regardless of traffic.
    #[serde(default = "default_budget_min")]
    pub min_per_second: u32,
    /// Window over which requests are counted.
    #[serde(default = "default_budget_ttl", with = "humantime_serde")]
    pub ttl: Duration,
}

fn default_budget_ratio() -> f32 {
    0.2
}
fn default_budget_min() -> u32 {
    10
}
fn default_budget_ttl() -> Duration {
    Duration::from_secs(10)
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: default_budget_ratio(),
            min_per_second: default_budget_min(),
            ttl: default_budget_ttl(),
        }
    }
}

/// A condition that makes a try retryable.
///
/// Written as `connect-failure`, `reset`, `5xx`, `gateway-error`
/// (502, 503, 504), a status code such as `503`, or a gRPC status code by
/// name (`unavailable`, `resource-exhausted`, `deadline-exceeded`, …: the
/// names of [`GRPC_CODE_NAMES`]), matched against a gRPC call's
/// trailers-only response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RetryOnRepr", into = "String")]
pub enum RetryOn {
    /// The connection to the endpoint could not be made (nothing was sent).
    ConnectFailure,
    /// The connection broke before response headers arrived.
    Reset,
    /// Any 5xx status.
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// This exact status code.
    Status(u16),
    /// This gRPC status code (0-16), written by name.
    Grpc(u8),
}

/// The gRPC status codes by number, named as `retry_on` writes them
/// (`grpc/doc/statuscodes.md`, in kebab-case).
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid-argument",
    "deadline-exceeded",
    "not-found",
    "already-exists",
    "permission-denied",
    "resource-exhausted",
    "failed-precondition",
    "aborted",
    "out-of-range",
    "unimplemented",
    "internal",
    "unavailable",
    "data-loss",
    "unauthenticated",
];

/// The default `retry_on` of a service with `protocol: grpc` whose policy
/// does not set one: `[connect-failure, reset, unavailable]`.
pub fn default_grpc_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure, RetryOn::Reset, RetryOn::Grpc(14)]
}

/// Whether `retry_on` is the HTTP default (`[connect-failure, reset,
/// 503]`), which a `protocol: grpc` service reads as
/// [`default_grpc_retry_on`].
pub fn is_default_retry_on(retry_on: &[RetryOn]) -> bool {
    retry_on == default_retry_on().as_slice()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RetryOnRepr {
    Code(u16),
    Text(String),
}

impl TryFrom<RetryOnRepr> for RetryOn {
    type Error = String;

    fn try_from(repr: RetryOnRepr) -> Result<Self, Self::Error> {
        let text = match repr {
            RetryOnRepr::Code(code) => return RetryOn::status(code),
            RetryOnRepr::Text(text) => text,
        };
        match text.as_str() {
            "connect-failure" => Ok(RetryOn::ConnectFailure),
            "reset" => Ok(RetryOn::Reset),
            "5xx" => Ok(RetryOn::ServerError),
            "gateway-error" => Ok(RetryOn::GatewayError),
            other => match other.parse::<u16>() {
                Ok(code) => RetryOn::status(code),
                Err(_) => match GRPC_CODE_NAMES.iter().position(|n| *n == other) {
                    Some(code) => Ok(RetryOn::Grpc(code as u8)),
                    None => Err(format!(
                        "unknown retry_on condition `{other}`: expected connect-failure, reset, 5xx, gateway-error, a status code such as 503, or a gRPC status name such as unavailable"
                    )),
                },
            },
        }
    }
}

impl RetryOn {
    fn status(code: u16) -> Result<Self, String> {
        if (100..=599).contains(&code) {
            Ok(RetryOn::Status(code))
        } else {
            Err(format!(
                "retry_on status {code} is not an HTTP status (100-599)"
            ))
        }
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryOn::ConnectFailure => f.write_str("connect-failure"),
            RetryOn::Reset => f.write_str("reset"),
            RetryOn::ServerError => f.write_str("5xx"),
            RetryOn::GatewayError => f.write_str("gateway-error"),
            RetryOn::Status(code) => write!(f, "{code}"),
            RetryOn::Grpc(code) => f.write_str(
                GRPC_CODE_NAMES
                    .get(usize::from(*code))
                    .unwrap_or(&"unknown"),
            ),
        }
    }
}

impl From<RetryOn> for String {
    fn from(value: RetryOn) -> Self {
        value.to_string()
    }
}

/// Concurrency limits and outlier ejection for one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Failures in a row (5xx, connect error, reset) that eject an endpoint.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// First ejection lasts this long; the n-th lasts n times as long.
    #[serde(default = "default_base_ejection", with = "humantime_serde")]
    pub base_ejection: Duration,
    /// Longest an ejection may last, however often the endpoint was ejected.
    #[serde(default = "default_max_ejection", with = "humantime_serde")]
    pub max_ejection: Duration,
    /// Never eject more than this share of the endpoints (percent).
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
    /// Requests waiting for a slot beyond `max_requests`; more fail fast with 503.
    #[serde(default = "default_max_pending")]
    pub max_pending_requests: u32,
    /// Requests in flight to the service at once.
    #[serde(default = "default_max_requests")]
    pub max_requests: u32,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejection_percent() -> u32 {
    50
}
fn default_max_pending() -> u32 {
    1024
}
fn default_max_requests() -> u32 {
    1024
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            base_ejection: default_base_ejection(),
            max_ejection: default_max_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
            max_pending_requests: default_max_pending(),
            max_requests: default_max_requests(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrap {
        retry_on: Vec<RetryOn>,
    }

    #[test]
    fn retry_on_reads_names_and_codes() {
        let w: Wrap = serde_yaml_like(
            r#"{"retry_on": ["connect-failure", "reset", "503", 502, "5xx", "gateway-error"]}"#,
        );
        assert_eq!(
            w.retry_on,
            vec![
                RetryOn::ConnectFailure,
                RetryOn::Reset,
                RetryOn::Status(503),
                RetryOn::Status(502),
                RetryOn::ServerError,
                RetryOn::GatewayError
            ]
        );
    }

    #[test]
    fn retry_on_reads_grpc_codes_by_name_and_writes_them_back() {
        let w: Wrap = serde_yaml_like(
            r#"{"retry_on": ["unavailable", "resource-exhausted", "deadline-exceeded"]}"#,
        );
        assert_eq!(
            w.retry_on,
            vec![RetryOn::Grpc(14), RetryOn::Grpc(8), RetryOn::Grpc(4)]
        );
        assert_eq!(RetryOn::Grpc(14).to_string(), "unavailable");
        let bad = serde_json::from_str::<Wrap>(r#"{"retry_on": ["UNAVAILABLE"]}"#);
        assert!(bad.is_err());
        assert!(is_default_retry_on(&RetryPolicy::default().retry_on));
        assert!(!is_default_retry_on(&default_grpc_retry_on()));
    }

    fn serde_yaml_like<T: for<'de> Deserialize<'de>>(json: &str) -> T {
        serde_json::from_str(json).expect("test input parses")
    }
}
