//! Generic resilience pieces used by the outbound and inbound stacks:
//! backoff, the retry policy, and the concurrency limit layer.

mod backoff;
mod limit;
mod retry;

pub use backoff::{Backoff, Jitter};
pub use limit::{hold, ConcurrencyLimiter, Overloaded, Permit};
pub use retry::{BudgetSettings, RetryOn, RetryPolicy};
