//! Exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;
use tether_api::Backoff;

/// Wait before retry number `retry` (1 for the first retry): a random time in
/// `[0, min(max, base · 2^(retry-1))]`. Full jitter spreads retries of many
/// callers so they do not hit a recovering upstream in lockstep.
pub fn backoff(policy: &Backoff, retry: u32) -> Duration {
    let ceiling = policy
        .base
        .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
        .min(policy.max);
    if ceiling.is_zero() {
        return Duration::ZERO;
    }
    rand::thread_rng().gen_range(Duration::ZERO..=ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let policy = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(35),
        };
        for _ in 0..200 {
            assert!(backoff(&policy, 1) <= Duration::from_millis(10));
            assert!(backoff(&policy, 2) <= Duration::from_millis(20));
            assert!(backoff(&policy, 9) <= Duration::from_millis(35));
        }
        let zero = Backoff {
            base: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(backoff(&zero, 3), Duration::ZERO);
    }
}
