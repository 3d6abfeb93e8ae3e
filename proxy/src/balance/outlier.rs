//! Outlier detection: eject an endpoint after a streak of failures, but never
//! more than `max_ejection_percent` of the service's endpoints at once; and
//! when fewer than [`PANIC_THRESHOLD_PERCENT`] of them are left available,
//! the balancer ignores ejection (panic mode).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::EndpointState;
use crate::request_metrics::ServiceMetrics;

/// Below this share of available (not ejected) endpoints the balancer picks
/// among all of them, ejected ones included: Envoy's healthy panic threshold
/// and its default. "At least one may be ejected" ejects every endpoint of a
/// one-instance service; without this, it would answer nothing until the
/// ejection ran out, however soon the instance recovered. 50 % keeps a
/// two-instance service with one ejected out of panic mode.
pub const PANIC_THRESHOLD_PERCENT: u32 = 50;

/// When endpoints are ejected, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierSettings {
    /// Failures in a row that eject an endpoint (0: never).
    pub consecutive_failures: u32,
    /// First ejection lasts this long; the n-th lasts n times as long.
    pub base_ejection: Duration,
    /// Longest an ejection may last.
    pub max_ejection: Duration,
    /// Never eject more than this share of the endpoints (0 to 100 percent).
    pub max_ejection_percent: u32,
}

/// Per-service ejection bookkeeping.
#[derive(Debug)]
pub struct OutlierDetector {
    endpoints: usize,
    panic_threshold_percent: u32,
    consecutive_failures: u32,
    base_ejection: Duration,
    max_ejection: Duration,
    max_ejected: usize,
    ejected: AtomicUsize,
    metrics: ServiceMetrics,
}

impl OutlierDetector {
    /// A detector for a service with `endpoints` endpoints. At least one
    /// endpoint may be ejected whenever the percentage is above zero (as
    /// Envoy does), so a two-endpoint service at 10 % still ejects.
    pub fn new(policy: &OutlierSettings, endpoints: usize, metrics: ServiceMetrics) -> Self {
        let percent = policy.max_ejection_percent.min(100) as usize;
        let max_ejected = if percent == 0 {
            0
        } else {
            (endpoints * percent / 100).max(1)
        };
        Self {
            endpoints,
            panic_threshold_percent: PANIC_THRESHOLD_PERCENT,
            consecutive_failures: policy.consecutive_failures,
            base_ejection: policy.base_ejection,
            max_ejection: policy.max_ejection,
            max_ejected,
            ejected: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Starts the count of ejected endpoints at `n` (endpoints still ejected
    /// when a new snapshot carries them over).
    pub fn with_ejected(self, n: usize) -> Self {
        self.ejected.store(n, Ordering::Relaxed);
        self
    }

    /// Sets the panic threshold (percent of endpoints that must be
    /// available; 0 turns panic mode off).
    pub fn with_panic_threshold(mut self, percent: u32) -> Self {
        self.panic_threshold_percent = percent.min(100);
        self
    }

    /// Endpoints ejected now.
    pub fn ejected(&self) -> usize {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Whether fewer endpoints than the panic threshold are available, so
    /// the balancer should ignore ejection. One relaxed load when none is
    /// ejected.
    pub fn panicking(&self) -> bool {
        let ejected = self.ejected.load(Ordering::Relaxed);
        ejected > 0
            && self.endpoints.saturating_sub(ejected) * 100
                < self.endpoints * self.panic_threshold_percent as usize
    }

    /// Whether the balancer may ignore ejection when nothing else is left.
    pub fn panic_enabled(&self) -> bool {
        self.panic_threshold_percent > 0
    }

    /// A pick ignored ejection (panic mode).
    pub fn panicked(&self) {
        self.metrics.lb_panic();
    }

    /// An ejected endpoint was restored.
    pub fn restored(&self) {
        // Saturating: a snapshot swap may have reset the count under us.
        let _ = self
            .ejected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Records the outcome of one request to `endpoint`.
    pub fn record(&self, endpoint: &EndpointState, failed: bool) {
        if !failed {
            endpoint.record_success();
            return;
        }
        let streak = endpoint.record_failure();
        if self.consecutive_failures == 0 || streak < self.consecutive_failures {
            return;
        }
        // Reserve a slot under the cap before ejecting.
        let reserved = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_ejected).then_some(n + 1)
            })
            .is_ok();
        if !reserved {
            return;
        }
        if endpoint.eject(self.base_ejection, self.max_ejection) {
            self.metrics.ejection();
            tracing::warn!(
                endpoint = endpoint.address(),
                streak,
                "endpoint ejected after consecutive failures"
            );
        } else {
            self.restored();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_metrics::{Direction, RequestMetrics};

    fn detector(endpoints: usize, percent: u32) -> OutlierDetector {
        let policy = OutlierSettings {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: percent,
        };
        OutlierDetector::new(
            &policy,
            endpoints,
            RequestMetrics::new().service(Direction::Outbound, "t"),
        )
    }

    fn ep(port: u16) -> EndpointState {
        EndpointState::new(&format!("127.0.0.1:{port}"), 1).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn ejects_after_streak_only() {
        let d = detector(4, 50);
        let a = ep(1);
        d.record(&a, true);
        d.record(&a, true);
        d.record(&a, false);
        d.record(&a, true);
        d.record(&a, true);
        assert!(!a.is_ejected());
        d.record(&a, true);
        assert!(a.is_ejected());
        assert_eq!(d.ejected(), 1);
    }

    #[tokio::test]
    async fn never_ejects_more_than_the_cap() {
        let d = detector(4, 50);
        let eps: Vec<_> = (0..4).map(ep).collect();
        for e in &eps {
            for _ in 0..3 {
                d.record(e, true);
            }
        }
        assert_eq!(eps.iter().filter(|e| e.is_ejected()).count(), 2);
        assert_eq!(d.ejected(), 2);
    }

    #[tokio::test]
    async fn panics_below_the_threshold_only() {
        let one = detector(1, 50);
        assert!(!one.panicking());
        let a = ep(1);
        for _ in 0..3 {
            one.record(&a, true);
        }
        assert!(a.is_ejected(), "at least one may be ejected: all of one");
        assert!(one.panicking(), "nothing left: balance over all");
        // Two endpoints, one ejected: 50 % left is not below 50 %.
        let two = detector(2, 50);
        let b = ep(2);
        for _ in 0..3 {
            two.record(&b, true);
        }
        assert!(b.is_ejected());
        assert!(!two.panicking());
        // Five, three ejected: 40 % left.
        let five = detector(5, 100).with_ejected(3);
        assert!(five.panicking());
        assert!(!detector(5, 100).with_ejected(2).panicking());
        let off = detector(1, 50).with_panic_threshold(0).with_ejected(1);
        assert!(!off.panicking() && !off.panic_enabled());
    }

    #[tokio::test]
    async fn zero_percent_disables_ejection() {
        let d = detector(4, 0);
        let a = ep(1);
        for _ in 0..10 {
            d.record(&a, true);
        }
        assert!(!a.is_ejected());
    }
}
