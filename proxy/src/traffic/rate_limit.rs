//! Local rate limits: a token bucket kept as one atomic number (GCRA, the
//! generic cell rate algorithm, which admits exactly what a token bucket
//! of the same rate and size admits), and the inbound limit that keeps one
//! such bucket per caller.
//!
//! A bucket of rate `r` and size `b` remembers only the *theoretical
//! arrival time* `tat`: when the bucket would be full again if nothing
//! else came. A request at `now` passes when `tat - now <= (b - 1) / r`
//! (at least one token left) and moves `tat` on by `1 / r`; a refused one
//! is told to come back when that inequality will hold. One
//! compare-and-swap per request, no lock, no background refill.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

/// Most per-caller buckets an inbound limit keeps: callers are mesh
/// services (bounded by the mesh), so this is only reached by a mesh far
/// larger than any we know of, or by forged identities; callers beyond it
/// share one bucket rather than growing memory without bound.
pub const MAX_CALLER_BUCKETS: usize = 4096;

/// Bucket of the callers without a mesh identity (plaintext), and of
/// callers beyond [`MAX_CALLER_BUCKETS`].
const SHARED_CALLER: &str = "";

/// A request refused by a bucket: how long until it would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Time until a token is back.
    pub wait: Duration,
}

impl Refused {
    /// `Retry-After` in whole seconds: the wait rounded up, at least 1
    /// (a `Retry-After: 0` would invite an immediate retry that fails too).
    pub fn retry_after_secs(self) -> u64 {
        let secs = self.wait.as_secs() + u64::from(self.wait.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// A token bucket of `rate` requests per second and `burst` size.
#[derive(Debug)]
pub struct TokenBucket {
    /// When the bucket was made: `tat` is counted from here, in ns.
    epoch: Instant,
    /// Theoretical arrival time, ns since `epoch`.
    tat: AtomicU64,
    /// Time one token takes to come back, ns (at least 1).
    interval: u64,
    /// How far ahead of now `tat` may be and still admit: `(burst - 1)`
    /// intervals.
    tolerance: u64,
    /// The settings, to carry the bucket over an unchanged snapshot.
    spec: (u64, u32),
}

impl TokenBucket {
    /// A full bucket: `requests_per_second` (above 0) sustained, `burst`
    /// (at least 1) at once.
    pub fn new(requests_per_second: f64, burst: u32) -> Self {
        let interval = (1e9 / requests_per_second).clamp(1.0, u64::MAX as f64) as u64;
        let burst = burst.max(1);
        Self {
            epoch: Instant::now(),
            tat: AtomicU64::new(0),
            interval,
            tolerance: interval.saturating_mul(u64::from(burst - 1)),
            spec: (requests_per_second.to_bits(), burst),
        }
    }

    /// Whether this bucket was made with these settings.
    pub fn is(&self, requests_per_second: f64, burst: u32) -> bool {
        self.spec == (requests_per_second.to_bits(), burst.max(1))
    }

    /// Takes a token now, or says how long until one is back.
    pub fn try_acquire(&self) -> Result<(), Refused> {
        self.try_acquire_at(Instant::now())
    }

    /// [`Self::try_acquire`] at `now` (tests choose the time).
    pub fn try_acquire_at(&self, now: Instant) -> Result<(), Refused> {
        let now =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            let ahead = start - now;
            if ahead > self.tolerance {
                return Err(Refused {
                    wait: Duration::from_nanos(ahead - self.tolerance),
                });
            }
            let next = start.saturating_add(self.interval);
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

/// An outbound limit: the caller's own requests to one service.
#[derive(Debug)]
pub struct OutboundLimit {
    /// The bucket, shared by every request to the service.
    pub bucket: TokenBucket,
    /// `tether_rate_limited_total{direction="outbound",service}`.
    pub refused: IntCounter,
}

/// The limit of the service this sidecar fronts: one bucket for all
/// callers, or one per caller.
#[derive(Debug)]
pub struct InboundLimit {
    rate: f64,
    burst: u32,
    buckets: Buckets,
    /// `tether_rate_limited_total{direction="inbound",service}`.
    pub refused: IntCounter,
}

#[derive(Debug)]
enum Buckets {
    /// Every caller shares one.
    Shared(TokenBucket),
    /// One per caller service name, made on its first request; the mutex
    /// is held for a map lookup and one bucket update.
    PerCaller(Mutex<HashMap<String, TokenBucket>>),
}

impl InboundLimit {
    /// A limit of `rate` per second and `burst` at once, per caller or shared.
    pub fn new(rate: f64, burst: u32, per_caller: bool, refused: IntCounter) -> Self {
        let buckets = if per_caller {
            Buckets::PerCaller(Mutex::new(HashMap::new()))
        } else {
            Buckets::Shared(TokenBucket::new(rate, burst))
        };
        Self {
            rate,
            burst,
            buckets,
            refused,
        }
    }

    /// Whether this limit was made with these settings (its buckets then
    /// carry over to the next snapshot).
    pub fn is(&self, rate: f64, burst: u32, per_caller: bool) -> bool {
        self.rate.to_bits() == rate.to_bits()
            && self.burst == burst
            && per_caller == matches!(self.buckets, Buckets::PerCaller(_))
    }

    /// Admits a request from `caller` (its service name; `None` for a
    /// caller without a mesh identity), or says how long until it would
    /// pass. Counts the refusal.
    pub fn admit(&self, caller: Option<&str>) -> Result<(), Refused> {
        let result = match &self.buckets {
            Buckets::Shared(bucket) => bucket.try_acquire(),
            Buckets::PerCaller(map) => {
                let caller = caller.unwrap_or(SHARED_CALLER);
                // A poisoned map (a panic while held, which the code
                // inside cannot do) still holds valid buckets.
                let mut map = map
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let key = if map.contains_key(caller) || map.len() < MAX_CALLER_BUCKETS {
                    caller
                } else {
                    SHARED_CALLER
                };
                match map.get(key) {
                    Some(bucket) => bucket.try_acquire(),
                    None => {
                        let bucket = TokenBucket::new(self.rate, self.burst);
                        let result = bucket.try_acquire();
                        map.insert(key.to_owned(), bucket);
                        result
                    }
                }
            }
        };
        if result.is_err() {
            self.refused.inc();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> IntCounter {
        IntCounter::new("t", "t").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_full_bucket_admits_its_burst_then_the_rate() {
        let bucket = TokenBucket::new(20.0, 5);
        let t0 = Instant::now();
        let admitted = (0..100)
            .filter(|_| bucket.try_acquire_at(t0).is_ok())
            .count();
        assert_eq!(admitted, 5, "a burst of 5 at one instant");
        // One token every 50 ms.
        let refused = bucket.try_acquire_at(t0 + Duration::from_millis(10));
        assert_eq!(
            refused,
            Err(Refused {
                wait: Duration::from_millis(40)
            })
        );
        assert!(bucket
            .try_acquire_at(t0 + Duration::from_millis(50))
            .is_ok());
        assert!(bucket
            .try_acquire_at(t0 + Duration::from_millis(50))
            .is_err());
        // Over one second at a steady pace: 20 more.
        let later: usize = (1..=200)
            .filter(|i| {
                bucket
                    .try_acquire_at(t0 + Duration::from_millis(50 + i * 5))
                    .is_ok()
            })
            .count();
        assert_eq!(later, 20);
        // A quiet spell refills it to the burst, never beyond.
        let quiet = t0 + Duration::from_secs(60);
        let admitted = (0..100)
            .filter(|_| bucket.try_acquire_at(quiet).is_ok())
            .count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        let secs = |ms: u64| {
            Refused {
                wait: Duration::from_millis(ms),
            }
            .retry_after_secs()
        };
        assert_eq!(secs(0), 1);
        assert_eq!(secs(40), 1);
        assert_eq!(secs(1000), 1);
        assert_eq!(secs(1001), 2);
        let slow = TokenBucket::new(0.1, 1);
        let t0 = Instant::now();
        assert!(slow.try_acquire_at(t0).is_ok());
        let refused = slow.try_acquire_at(t0).err();
        assert_eq!(refused.map(Refused::retry_after_secs), Some(10));
    }

    #[test]
    fn concurrent_takers_never_get_more_than_the_burst() {
        let bucket = std::sync::Arc::new(TokenBucket::new(0.001, 50));
        let t0 = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let bucket = std::sync::Arc::clone(&bucket);
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|_| bucket.try_acquire_at(t0).is_ok())
                        .count()
                })
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(total, 50);
    }

    #[test]
    fn per_caller_limits_give_each_caller_its_own_bucket() {
        let limit = InboundLimit::new(0.001, 2, true, counter());
        let passed = |caller: Option<&str>| (0..10).filter(|_| limit.admit(caller).is_ok()).count();
        assert_eq!(passed(Some("web")), 2);
        assert_eq!(passed(Some("batch")), 2);
        assert_eq!(passed(None), 2, "plaintext callers share one bucket");
        assert_eq!(passed(Some("web")), 0);
        assert_eq!(limit.refused.get(), 8 + 8 + 8 + 10);
        let shared = InboundLimit::new(0.001, 2, false, counter());
        assert_eq!(
            (0..10)
                .filter(|i| shared
                    .admit(Some(if i % 2 == 0 { "a" } else { "b" }))
                    .is_ok())
                .count(),
            2
        );
        assert!(shared.is(0.001, 2, false) && !shared.is(0.001, 2, true));
    }

    #[test]
    fn callers_beyond_the_bound_share_a_bucket() {
        let limit = InboundLimit::new(0.001, 1, true, counter());
        for i in 0..MAX_CALLER_BUCKETS + 10 {
            let _ = limit.admit(Some(&format!("caller-{i}")));
        }
        if let Buckets::PerCaller(map) = &limit.buckets {
            let len = map.lock().map(|m| m.len()).unwrap_or(0);
            assert_eq!(
                len,
                MAX_CALLER_BUCKETS + 1,
                "the callers and the shared bucket"
            );
        }
    }
}
