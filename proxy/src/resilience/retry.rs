//! Retry policy, compiled from the snapshot by `discovery`.

use std::time::Duration;

use super::Backoff;

/// When and how a failed try is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try (0 disables retries).
    pub attempts: u32,
    /// Timeout of one try, from sending to response headers; `None`: a try
    /// is bounded only by the whole-request timeout.
    pub per_try_timeout: Option<Duration>,
    /// Delay between tries.
    pub backoff: Backoff,
    /// The retry budget's settings (the budget itself is per service).
    pub budget: BudgetSettings,
    /// Conditions that make a try retryable.
    pub retry_on: Vec<RetryOn>,
    /// Largest request body kept for replay; larger bodies are never retried.
    pub replay_buffer_bytes: usize,
    /// Whether non-idempotent methods are retried on conditions other than
    /// `connect-failure`.
    pub retry_non_idempotent: bool,
}

/// Settings of a retry budget (`tower`'s `TpsBudget`): `ratio` retries per
/// request over `ttl`, plus `min_per_second` always. Valid by construction
/// (`discovery` checks the ranges `TpsBudget::new` asserts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSettings {
    /// Window over which requests are counted (1 s to 60 s).
    pub ttl: Duration,
    /// Retries per second allowed regardless of traffic (below `i32::MAX`).
    pub min_per_second: u32,
    /// Retries allowed per request (0 to 1000).
    pub ratio: f32,
}

/// A condition that makes a try retryable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// The connection to the endpoint could not be made (nothing was sent).
    ConnectFailure,
    /// The connection broke (or the try timed out) before response headers.
    Reset,
    /// Any 5xx status.
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// This exact status code.
    Status(u16),
    /// This `grpc-status` of a gRPC call's trailers-only response
    /// (`unavailable` is 14).
    Grpc(u8),
}

impl RetryOn {
    /// Whether a response with this status is retryable under this condition.
    pub fn matches_status(self, code: u16) -> bool {
        match self {
            RetryOn::ServerError => (500..600).contains(&code),
            RetryOn::GatewayError => matches!(code, 502..=504),
            RetryOn::Status(want) => want == code,
            RetryOn::ConnectFailure | RetryOn::Reset | RetryOn::Grpc(_) => false,
        }
    }

    /// Whether a gRPC call answered with this `grpc-status` is retryable
    /// under this condition.
    pub fn matches_grpc(self, code: u8) -> bool {
        self == RetryOn::Grpc(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_matches_statuses() {
        assert!(RetryOn::ServerError.matches_status(500));
        assert!(!RetryOn::ServerError.matches_status(404));
        assert!(RetryOn::GatewayError.matches_status(504));
        assert!(!RetryOn::GatewayError.matches_status(500));
        assert!(RetryOn::Status(503).matches_status(503));
        assert!(!RetryOn::Reset.matches_status(503));
    }
}
