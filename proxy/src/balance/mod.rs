//! Endpoint selection: round-robin, least-request (P2C), weighted and
//! P2C + peak EWMA, all skipping ejected endpoints — unless too few are
//! left (the panic threshold, see [`outlier`]): then they balance over every
//! endpoint, ejected ones included, so ejection never leaves a service with
//! nothing to try.
//!
//! Why not `tower::balance::p2c`: it balances over `Service`s discovered
//! through a `Discover` stream and only does P2C. Tether needs four
//! algorithms over the same endpoint state, endpoint weights, subsets that
//! share endpoints, and outlier ejection that skips endpoints without
//! removing them. A plain `pick()` over an immutable endpoint list that is
//! swapped with each snapshot does all of that with no locks.

mod algorithm;
mod endpoint;
pub mod locality;
mod outlier;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use crate::upstream_stats::SubsetStats;

pub use algorithm::LoadBalancer;
pub use endpoint::{EndpointState, InFlight, InvalidEndpoint};
pub use locality::LocalEndpoints;
pub use outlier::{OutlierDetector, OutlierSettings, PANIC_THRESHOLD_PERCENT};

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// The set has no endpoints.
    NoEndpoints,
    /// Every endpoint is ejected and panic mode is off.
    AllEjected,
}

/// An immutable list of endpoints and the algorithm that picks among them.
#[derive(Debug)]
pub struct EndpointSet {
    endpoints: Vec<Arc<EndpointState>>,
    algorithm: LoadBalancer,
    next: AtomicUsize,
    outliers: Arc<OutlierDetector>,
    /// With locality-aware balancing: the endpoints in the proxy's zone.
    locality: Option<LocalEndpoints>,
    /// Request counters reported to the control plane (`None`: not reported).
    stats: Option<Arc<SubsetStats>>,
}

impl EndpointSet {
    /// A set over `endpoints`, sharing `outliers` with its service's other sets.
    pub fn new(
        endpoints: Vec<Arc<EndpointState>>,
        algorithm: LoadBalancer,
        outliers: Arc<OutlierDetector>,
    ) -> Self {
        let start = if endpoints.is_empty() {
            0
        } else {
            rand::thread_rng().gen_range(0..endpoints.len())
        };
        Self {
            endpoints,
            algorithm,
            next: AtomicUsize::new(start),
            outliers,
            locality: None,
            stats: None,
        }
    }

    /// This set, preferring its endpoints in the proxy's zone as `local`
    /// says (see [`locality`]).
    pub fn with_locality(mut self, local: LocalEndpoints) -> Self {
        self.locality = Some(local);
        self
    }

    /// The set a request picks from: with locality-aware balancing, the
    /// local endpoints while they are healthy enough; otherwise this set.
    /// One `Option` check for a set without it.
    pub fn localized(self: &Arc<Self>) -> &Arc<Self> {
        match &self.locality {
            None => self,
            Some(local) => local.choose(self, &self.outliers),
        }
    }

    /// Counts the requests routed to this set in `stats`.
    pub fn with_stats(mut self, stats: Option<Arc<SubsetStats>>) -> Self {
        self.stats = stats;
        self
    }

    /// The counters of requests routed to this set, when reported.
    #[inline]
    pub fn stats(&self) -> Option<&SubsetStats> {
        self.stats.as_deref()
    }

    /// The endpoints, ejected or not.
    pub fn endpoints(&self) -> &[Arc<EndpointState>] {
        &self.endpoints
    }

    fn available(&self, endpoint: &EndpointState) -> bool {
        let mut restored = false;
        let available = endpoint.is_available(&mut restored);
        if restored {
            self.outliers.restored();
        }
        available
    }

    /// Picks an endpoint that is not ejected. When too few endpoints of the
    /// service are available (below the panic threshold), or none of this
    /// set is, picks among all of them instead, ejected ones included, and
    /// counts it in `tether_lb_panic_total`.
    pub fn pick(&self) -> Result<&Arc<EndpointState>, PickError> {
        if self.endpoints.is_empty() {
            return Err(PickError::NoEndpoints);
        }
        if !self.outliers.panicking() {
            if let Some(endpoint) = self.pick_among(|e| self.available(e)) {
                return Ok(endpoint);
            }
            if !self.outliers.panic_enabled() {
                return Err(PickError::AllEjected);
            }
        }
        self.outliers.panicked();
        // Every endpoint is eligible; asking still restores those whose
        // ejection has run out, so panic mode ends on its own.
        self.pick_among(|e| {
            self.available(e);
            true
        })
        .ok_or(PickError::AllEjected)
    }

    /// Whether every endpoint is ejected (false for an empty set).
    pub fn all_ejected(&self) -> bool {
        !self.endpoints.is_empty() && self.endpoints.iter().all(|e| e.is_ejected())
    }

    /// Whether the set has an endpoint other than `address`.
    pub fn has_other_than(&self, address: &str) -> bool {
        self.endpoints.iter().any(|e| e.address() != address)
    }

    /// Like [`pick`](Self::pick), but away from the endpoint at `avoid`
    /// (where the last try could not connect) while another can be had.
    pub fn pick_avoiding(&self, avoid: Option<&str>) -> Result<&Arc<EndpointState>, PickError> {
        let picked = self.pick()?;
        let Some(avoid) = avoid else {
            return Ok(picked);
        };
        if picked.address() != avoid || self.endpoints.len() == 1 {
            return Ok(picked);
        }
        for _ in 0..2 {
            let again = self.pick()?;
            if again.address() != avoid {
                return Ok(again);
            }
        }
        Ok(self
            .endpoints
            .iter()
            .find(|e| e.address() != avoid && !e.is_ejected())
            .unwrap_or(picked))
    }

    /// The algorithm's choice among the endpoints `usable` accepts.
    fn pick_among(&self, usable: impl Fn(&EndpointState) -> bool) -> Option<&Arc<EndpointState>> {
        match self.endpoints.len() {
            0 => None,
            1 => self.endpoints.first().filter(|e| usable(e)),
            _ => match self.algorithm {
                LoadBalancer::RoundRobin => self.pick_round_robin(usable),
                LoadBalancer::LeastRequest => self.pick_p2c(usable, |e| f64::from(e.in_flight())),
                LoadBalancer::P2cEwma => self.pick_p2c(usable, EndpointState::ewma_cost),
                LoadBalancer::Weighted => self.pick_weighted(usable),
            },
        }
    }

    fn pick_round_robin(
        &self,
        usable: impl Fn(&EndpointState) -> bool,
    ) -> Option<&Arc<EndpointState>> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.endpoints[(start + i) % n])
            .find(|e| usable(e))
    }

    /// Power of two random choices: the cheaper of two distinct random
    /// endpoints. Falls back to a scan when neither drawn is usable.
    fn pick_p2c(
        &self,
        usable: impl Fn(&EndpointState) -> bool,
        cost: impl Fn(&EndpointState) -> f64,
    ) -> Option<&Arc<EndpointState>> {
        let n = self.endpoints.len();
        let mut rng = rand::thread_rng();
        let a = rng.gen_range(0..n);
        let b = (a + rng.gen_range(1..n)) % n;
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        match (usable(ea), usable(eb)) {
            (true, true) => Some(if cost(eb) < cost(ea) { eb } else { ea }),
            (true, false) => Some(ea),
            (false, true) => Some(eb),
            (false, false) => self
                .endpoints
                .iter()
                .filter(|e| usable(e))
                .min_by(|x, y| cost(x).total_cmp(&cost(y))),
        }
    }

    /// Random in proportion to weight, over usable endpoints.
    fn pick_weighted(
        &self,
        usable: impl Fn(&EndpointState) -> bool,
    ) -> Option<&Arc<EndpointState>> {
        let total: u64 = self
            .endpoints
            .iter()
            .filter(|e| usable(e))
            .map(|e| u64::from(e.weight()))
            .sum();
        if total == 0 {
            return self.endpoints.iter().find(|e| usable(e));
        }
        let mut point = rand::thread_rng().gen_range(0..total);
        for endpoint in &self.endpoints {
            if !usable(endpoint) {
                continue;
            }
            let w = u64::from(endpoint.weight());
            if point < w {
                return Some(endpoint);
            }
            point -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::request_metrics::{Direction, RequestMetrics};

    fn set(weights: &[u32], algorithm: LoadBalancer) -> EndpointSet {
        let endpoints = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Arc::new(
                    EndpointState::new(&format!("127.0.0.1:{}", 1000 + i), *w)
                        .unwrap_or_else(|e| panic!("{e}")),
                )
            })
            .collect::<Vec<_>>();
        let metrics = RequestMetrics::new().service(Direction::Outbound, "t");
        // One failure ejects, and any share may be: tests choose.
        let settings = OutlierSettings {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 100,
        };
        let outliers = Arc::new(OutlierDetector::new(&settings, endpoints.len(), metrics));
        EndpointSet::new(endpoints, algorithm, outliers)
    }

    fn counts(set: &EndpointSet, n: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for _ in 0..n {
            let picked = set
                .pick()
                .map(|e| e.address().to_owned())
                .unwrap_or_default();
            *counts.entry(picked).or_default() += 1;
        }
        counts
    }

    #[tokio::test]
    async fn round_robin_is_exactly_even() {
        let s = set(&[1, 1, 1], LoadBalancer::RoundRobin);
        let c = counts(&s, 300);
        assert!(c.values().all(|&n| n == 100), "{c:?}");
    }

    #[tokio::test]
    async fn weighted_follows_weights() {
        let s = set(&[1, 3], LoadBalancer::Weighted);
        let c = counts(&s, 40_000);
        let heavy = c["127.0.0.1:1001"] as f64 / 40_000.0;
        assert!((0.72..0.78).contains(&heavy), "{heavy}");
    }

    #[tokio::test]
    async fn least_request_avoids_busy_endpoint() {
        let s = set(&[1, 1], LoadBalancer::LeastRequest);
        let _busy: Vec<_> = (0..5).map(|_| s.endpoints()[0].start()).collect();
        let c = counts(&s, 100);
        assert_eq!(c.get("127.0.0.1:1001"), Some(&100), "{c:?}");
    }

    #[tokio::test]
    async fn p2c_ewma_prefers_fast_endpoint() {
        let s = set(&[1, 1, 1], LoadBalancer::P2cEwma);
        s.endpoints()[0].observe_rtt(Duration::from_millis(100));
        s.endpoints()[1].observe_rtt(Duration::from_millis(1));
        s.endpoints()[2].observe_rtt(Duration::from_millis(1));
        let c = counts(&s, 3000);
        // The slow one wins only if drawn twice, which P2C never does.
        assert_eq!(c.get("127.0.0.1:1000"), None, "{c:?}");
    }

    #[tokio::test]
    async fn ejected_endpoints_are_skipped_by_every_algorithm() {
        for algorithm in [
            LoadBalancer::RoundRobin,
            LoadBalancer::LeastRequest,
            LoadBalancer::Weighted,
            LoadBalancer::P2cEwma,
        ] {
            let s = set(&[1, 1, 1], algorithm);
            assert!(s.endpoints()[1].eject(Duration::from_secs(60), Duration::from_secs(60)));
            let c = counts(&s, 600);
            assert_eq!(c.get("127.0.0.1:1001"), None, "{algorithm:?} {c:?}");
            assert_eq!(c.values().sum::<usize>(), 600);
        }
    }

    /// Ejects through the set's own detector, which counts it.
    fn ejecting(set: &EndpointSet, index: usize) {
        set.outliers.record(&set.endpoints()[index], true);
    }

    #[tokio::test]
    async fn an_empty_set_has_no_endpoints() {
        assert_eq!(
            set(&[], LoadBalancer::P2cEwma).pick().err(),
            Some(PickError::NoEndpoints)
        );
    }

    #[tokio::test]
    async fn below_the_panic_threshold_ejected_endpoints_are_picked_too() {
        for algorithm in [
            LoadBalancer::RoundRobin,
            LoadBalancer::LeastRequest,
            LoadBalancer::Weighted,
            LoadBalancer::P2cEwma,
        ] {
            // One instance, ejected: it is still picked.
            let one = set(&[1], algorithm);
            ejecting(&one, 0);
            assert!(one.endpoints()[0].is_ejected());
            assert!(one.pick().is_ok(), "{algorithm:?}");
            // Five, three ejected (40 % left): every one is picked.
            let five = set(&[1, 1, 1, 1, 1], algorithm);
            for i in 0..3 {
                ejecting(&five, i);
            }
            let c = counts(&five, 2000);
            assert_eq!(c.len(), 5, "{algorithm:?} {c:?}");
            assert!(!c.contains_key(""), "{algorithm:?} {c:?}");
        }
    }

    #[tokio::test]
    async fn without_panic_mode_all_ejected_says_so() {
        let endpoints = vec![Arc::new(
            EndpointState::new("127.0.0.1:1000", 1).unwrap_or_else(|e| panic!("{e}")),
        )];
        let policy = OutlierSettings {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        };
        let metrics = RequestMetrics::new().service(Direction::Outbound, "t");
        let outliers = Arc::new(OutlierDetector::new(&policy, 1, metrics).with_panic_threshold(0));
        let s = EndpointSet::new(endpoints, LoadBalancer::RoundRobin, outliers);
        s.outliers.record(&s.endpoints()[0], true);
        assert_eq!(s.pick().err(), Some(PickError::AllEjected));
    }

    #[tokio::test]
    async fn a_retry_avoids_the_endpoint_that_failed() {
        for algorithm in [LoadBalancer::P2cEwma, LoadBalancer::RoundRobin] {
            let s = set(&[1, 1], algorithm);
            for _ in 0..100 {
                let picked = s
                    .pick_avoiding(Some("127.0.0.1:1000"))
                    .map(|e| e.address().to_owned());
                assert_eq!(picked.ok().as_deref(), Some("127.0.0.1:1001"));
            }
        }
        let one = set(&[1], LoadBalancer::P2cEwma);
        assert!(
            one.pick_avoiding(Some("127.0.0.1:1000")).is_ok(),
            "nothing else"
        );
    }
}
