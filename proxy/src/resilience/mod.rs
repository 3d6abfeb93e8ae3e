//! Generic resilience pieces used by the outbound and inbound stacks.

mod backoff;
mod limit;

pub use backoff::backoff;
pub use limit::{ConcurrencyLimiter, Permit};
