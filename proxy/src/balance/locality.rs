//! Locality-aware balancing: a subset's endpoints in the proxy's own zone,
//! preferred while enough of them are healthy.
//!
//! The partition is made once, when a snapshot is built: a set whose
//! service has `locality.enabled` (and a proxy started with `--zone`)
//! carries a [`LocalEndpoints`] holding its endpoints in that zone as a set
//! of their own (sharing their live state and the service's outlier
//! detector). Per request, [`LocalEndpoints::choose`] only reads it: while
//! no endpoint of the service is ejected (one atomic load) the local set
//! serves; otherwise the healthy share of the local endpoints decides.
//!
//! Why a threshold and not Envoy's gradual spill: one number an operator
//! can reason about ("stay local while 70 % of the local instances are
//! healthy"), and a request path that only reads. The default threshold
//! matches where Envoy's own spill starts (see
//! `tether_api::DEFAULT_MIN_LOCAL_HEALTHY_PERCENT`).

use std::sync::Arc;

use prometheus::IntCounter;

use super::{EndpointSet, OutlierDetector};

/// The local part of an endpoint set and when to leave it.
pub struct LocalEndpoints {
    /// The set's endpoints in the proxy's zone (possibly none).
    local: Arc<EndpointSet>,
    /// Stay local while at least this share (percent) is not ejected.
    min_healthy_percent: u32,
    /// Requests sent to every zone instead.
    spillover: IntCounter,
}

impl std::fmt::Debug for LocalEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEndpoints")
            .field("local", &self.local.endpoints().len())
            .field("min_healthy_percent", &self.min_healthy_percent)
            .finish_non_exhaustive()
    }
}

impl LocalEndpoints {
    /// The local part `local` of a set, left when fewer than
    /// `min_healthy_percent` of it are healthy (counted in `spillover`).
    pub fn new(local: Arc<EndpointSet>, min_healthy_percent: u32, spillover: IntCounter) -> Self {
        Self {
            local,
            min_healthy_percent: min_healthy_percent.min(100),
            spillover,
        }
    }

    /// The local endpoints.
    pub fn local(&self) -> &Arc<EndpointSet> {
        &self.local
    }

    /// The set a request picks from: the local one while it is healthy
    /// enough, else `all` (the whole subset), counted as a spill.
    pub fn choose<'a>(
        &'a self,
        all: &'a Arc<EndpointSet>,
        outliers: &OutlierDetector,
    ) -> &'a Arc<EndpointSet> {
        let endpoints = self.local.endpoints();
        let ejected = if outliers.ejected() == 0 {
            0
        } else {
            endpoints.iter().filter(|e| e.is_ejected()).count()
        };
        if healthy_enough(endpoints.len(), ejected, self.min_healthy_percent) {
            &self.local
        } else {
            self.spillover.inc();
            all
        }
    }
}

/// Whether `total - ejected` of `total` local endpoints is at least
/// `min_percent` % of them (and there is one at all).
pub fn healthy_enough(total: usize, ejected: usize, min_percent: u32) -> bool {
    let healthy = total.saturating_sub(ejected) as u128;
    total > 0 && healthy > 0 && healthy * 100 >= u128::from(min_percent) * total as u128
}

/// Whether an endpoint in `zone` is local to a proxy in `local_zone`
/// (an endpoint of unknown zone never is).
pub fn is_local(zone: Option<&str>, local_zone: &str) -> bool {
    zone == Some(local_zone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{EndpointState, LoadBalancer, OutlierSettings};
    use std::time::Duration;

    #[test]
    fn the_threshold_is_inclusive_and_needs_a_healthy_endpoint() {
        assert!(healthy_enough(10, 3, 70), "7 of 10 is 70 %");
        assert!(!healthy_enough(10, 4, 70), "6 of 10 is below");
        assert!(!healthy_enough(0, 0, 0), "no local endpoint: spill");
        assert!(
            !healthy_enough(2, 2, 0),
            "every local endpoint ejected: spill"
        );
        assert!(
            healthy_enough(3, 2, 0),
            "threshold 0: stay while one is healthy"
        );
        assert!(healthy_enough(1, 0, 100));
        assert!(!healthy_enough(usize::MAX, 1, 100), "no overflow");
    }

    #[test]
    fn zones_match_exactly_and_unknown_is_remote() {
        assert!(is_local(Some("a"), "a"));
        assert!(!is_local(Some("b"), "a"));
        assert!(!is_local(None, "a"));
    }

    fn detector(endpoints: usize) -> Arc<OutlierDetector> {
        let settings = OutlierSettings {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(30),
            max_ejection_percent: 100,
        };
        let metrics = crate::discovery::SnapshotMetrics::for_tests();
        let service = metrics.service(crate::request_metrics::Direction::Outbound, "api");
        Arc::new(OutlierDetector::new(&settings, endpoints, service).with_panic_threshold(0))
    }

    #[test]
    fn stays_local_until_ejections_pass_the_threshold_then_spills_and_counts() {
        let endpoint = |port: u16| {
            Arc::new(
                EndpointState::new(&format!("127.0.0.1:{port}"), 1).unwrap_or_else(|_| panic!()),
            )
        };
        let (a1, a2, b1) = (endpoint(1), endpoint(2), endpoint(3));
        let outliers = detector(3);
        let set = |members: Vec<Arc<EndpointState>>| {
            Arc::new(EndpointSet::new(
                members,
                LoadBalancer::RoundRobin,
                Arc::clone(&outliers),
            ))
        };
        let all = set(vec![Arc::clone(&a1), Arc::clone(&a2), Arc::clone(&b1)]);
        let spill = IntCounter::new("s", "s").unwrap_or_else(|_| panic!());
        let local = LocalEndpoints::new(
            set(vec![Arc::clone(&a1), Arc::clone(&a2)]),
            50,
            spill.clone(),
        );
        assert!(Arc::ptr_eq(local.choose(&all, &outliers), local.local()));
        assert_eq!(spill.get(), 0);
        outliers.record(&a1, true);
        assert!(a1.is_ejected());
        assert!(
            Arc::ptr_eq(local.choose(&all, &outliers), local.local()),
            "1 of 2 healthy is 50 %: still local"
        );
        outliers.record(&a2, true);
        assert!(
            Arc::ptr_eq(local.choose(&all, &outliers), &all),
            "none healthy: spill"
        );
        assert_eq!(spill.get(), 1);
    }
}
