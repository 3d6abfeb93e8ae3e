//! The traffic-management metric families, registered once with the
//! others and resolved per service when a snapshot is applied.

use prometheus::{IntCounter, IntCounterVec, Registry};

use super::fault::FaultCounters;
use crate::request_metrics::{counter_vec, Direction};

/// `tether_faults_injected_total` and `tether_rate_limited_total`.
#[derive(Clone)]
pub struct TrafficFamilies {
    faults: IntCounterVec,
    rate_limited: IntCounterVec,
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
}
