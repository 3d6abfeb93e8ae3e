//! The traffic-management metric families (faults, rate limits, mirroring,
//! locality), registered once with the others and resolved per service
//! when a snapshot is applied, only for services that configure the
//! feature: the request path never looks a label set up by name.

use prometheus::{IntCounter, IntCounterVec, Registry};

use super::fault::FaultCounters;
use crate::request_metrics::{counter_vec, Direction};

/// `tether_faults_injected_total`, `tether_rate_limited_total`,
/// `tether_mirror_requests_total` and `tether_locality_spillover_total`.
#[derive(Clone)]
pub struct TrafficFamilies {
    faults: IntCounterVec,
    rate_limited: IntCounterVec,
    mirror: IntCounterVec,
    spillover: IntCounterVec,
}

impl TrafficFamilies {
    /// Registers the families in `registry`.
    pub fn register(registry: &Registry) -> Self {
        Self {
            faults: counter_vec(
                registry,
                "tether_faults_injected_total",
                "Faults injected into outbound requests by configuration, by service and kind (delay, abort).",
                &["service", "kind"],
            ),
            rate_limited: counter_vec(
                registry,
                "tether_rate_limited_total",
                "Requests refused by a local rate limit, by direction (outbound: this caller's limit for the service; inbound: the limit of the service this sidecar fronts) and service.",
                &["direction", "service"],
            ),
            mirror: counter_vec(
                registry,
                "tether_mirror_requests_total",
                "Requests drawn for mirroring, by service and outcome: sent (the copy got a response below 500), failed (no response, a 5xx or the mirror's timeout), dropped (max_in_flight copies already in flight) or skipped (the body was not buffered for replay).",
                &["service", "outcome"],
            ),
            spillover: counter_vec(
                registry,
                "tether_locality_spillover_total",
                "Requests of a locality-aware service sent to every zone because too few endpoints of the proxy's zone were healthy (or it had none).",
                &["service"],
            ),
        }
    }

    /// The fault counters of `service`.
    pub fn faults(&self, service: &str) -> FaultCounters {
        FaultCounters {
            delays: self.faults.with_label_values(&[service, "delay"]),
            aborts: self.faults.with_label_values(&[service, "abort"]),
        }
    }

    /// The rate-limit counter of `service` in `direction`.
    pub fn rate_limited(&self, direction: Direction, service: &str) -> IntCounter {
        self.rate_limited
            .with_label_values(&[direction.as_str(), service])
    }

    /// Mirror handles of `service` (the mirrored one: the caller's target).
    pub fn mirror(&self, service: &str) -> MirrorMetrics {
        let outcome = |o: &str| self.mirror.with_label_values(&[service, o]);
        MirrorMetrics {
            sent: outcome("sent"),
            failed: outcome("failed"),
            dropped: outcome("dropped"),
            skipped: outcome("skipped"),
        }
    }

    /// The spillover counter of `service`.
    pub fn spillover(&self, service: &str) -> IntCounter {
        self.spillover.with_label_values(&[service])
    }
}

/// One service's mirror outcomes.
#[derive(Clone)]
pub struct MirrorMetrics {
    /// The copy got a response (below 500).
    pub sent: IntCounter,
    /// The copy got no response, a 5xx, or ran out of time.
    pub failed: IntCounter,
    /// Not copied: `max_in_flight` copies were already in flight.
    pub dropped: IntCounter,
    /// Not copied: the body streams (not buffered for replay).
    pub skipped: IntCounter,
}

impl std::fmt::Debug for MirrorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorMetrics").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TrafficFamilies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficFamilies").finish_non_exhaustive()
    }
}
