//! Exponential backoff with jitter: the one helper behind every delay
//! between retries in the proxy (request retries, control-plane reconnects,
//! certificate requests).

use std::time::Duration;

use rand::Rng;

/// How a delay is drawn under its ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Anywhere in `[0, ceiling]` ("full jitter"): spreads many callers the
    /// most; right for request retries, where waiting less is no harm.
    Full,
    /// In `[ceiling/2, ceiling]` ("equal jitter"): spread, but never much
    /// shorter than the ceiling; right for reconnects, which must not hammer
    /// a server that is down.
    Equal,
}

/// Exponential backoff: retry `n` (1 for the first) waits a random time
/// under `min(max, base · 2ⁿ⁻¹)`, drawn by `jitter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First ceiling.
    pub base: Duration,
    /// Largest ceiling.
    pub max: Duration,
    /// How a delay is drawn under the ceiling.
    pub jitter: Jitter,
}

impl Backoff {
    /// Full-jitter backoff from `base` up to `max`.
    pub const fn full(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            jitter: Jitter::Full,
        }
    }

    /// Equal-jitter backoff from `base` up to `max`.
    pub const fn equal(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            jitter: Jitter::Equal,
        }
    }

    /// The ceiling for retry number `retry` (1 for the first).
    pub fn ceiling(&self, retry: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max)
    }

    /// The wait before retry number `retry` (1 for the first).
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        if ceiling.is_zero() {
            return Duration::ZERO;
        }
        let floor = match self.jitter {
            Jitter::Full => Duration::ZERO,
            Jitter::Equal => ceiling / 2,
        };
        rand::thread_rng().gen_range(floor..=ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let policy = Backoff::full(Duration::from_millis(10), Duration::from_millis(35));
        for _ in 0..200 {
            assert!(policy.delay(1) <= Duration::from_millis(10));
            assert!(policy.delay(2) <= Duration::from_millis(20));
            assert!(policy.delay(9) <= Duration::from_millis(35));
        }
        let zero = Backoff::full(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.delay(3), Duration::ZERO);
    }

    #[test]
    fn equal_jitter_stays_in_the_upper_half() {
        let policy = Backoff::equal(Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..200 {
            let first = policy.delay(1);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
            let late = policy.delay(40);
            assert!((Duration::from_millis(2500)..=Duration::from_secs(5)).contains(&late));
        }
    }
}
