//! Endpoint selection: round-robin, least-request (P2C), weighted and
//! P2C + peak EWMA, all skipping ejected endpoints.
//!
//! Why not `tower::balance::p2c`: it balances over `Service`s discovered
//! through a `Discover` stream and only does P2C. Tether needs four
//! algorithms over the same endpoint state, endpoint weights, subsets that
//! share endpoints, and outlier ejection that skips endpoints without
//! removing them. A plain `pick()` over an immutable endpoint list that is
//! swapped with each snapshot does all of that with no locks.

mod algorithm;
mod endpoint;
mod outlier;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

pub use algorithm::LoadBalancer;
pub use endpoint::{EndpointState, InFlight, InvalidEndpoint};
pub use outlier::{OutlierDetector, OutlierSettings};

/// An immutable list of endpoints and the algorithm that picks among them.
#[derive(Debug)]
pub struct EndpointSet {
    endpoints: Vec<Arc<EndpointState>>,
    algorithm: LoadBalancer,
    next: AtomicUsize,
    outliers: Arc<OutlierDetector>,
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
        }
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

    /// Picks an endpoint that is not ejected, or `None` if there is none.
    pub fn pick(&self) -> Option<&Arc<EndpointState>> {
        match self.endpoints.len() {
            0 => None,
            1 => self.endpoints.first().filter(|e| self.available(e)),
            _ => match self.algorithm {
                LoadBalancer::RoundRobin => self.pick_round_robin(),
                LoadBalancer::LeastRequest => self.pick_p2c(|e| f64::from(e.in_flight())),
                LoadBalancer::P2cEwma => self.pick_p2c(EndpointState::ewma_cost),
                LoadBalancer::Weighted => self.pick_weighted(),
            },
        }
    }

    fn pick_round_robin(&self) -> Option<&Arc<EndpointState>> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.endpoints[(start + i) % n])
            .find(|e| self.available(e))
    }

    /// Power of two random choices: the cheaper of two distinct random
    /// endpoints. Falls back to a scan when the two drawn are ejected.
    fn pick_p2c(&self, cost: impl Fn(&EndpointState) -> f64) -> Option<&Arc<EndpointState>> {
        let n = self.endpoints.len();
        let mut rng = rand::thread_rng();
        let a = rng.gen_range(0..n);
        let b = (a + rng.gen_range(1..n)) % n;
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        match (self.available(ea), self.available(eb)) {
            (true, true) => Some(if cost(eb) < cost(ea) { eb } else { ea }),
            (true, false) => Some(ea),
            (false, true) => Some(eb),
            (false, false) => self
                .endpoints
                .iter()
                .filter(|e| self.available(e))
                .min_by(|x, y| cost(x).total_cmp(&cost(y))),
        }
    }

    /// Random in proportion to weight, over available endpoints.
    fn pick_weighted(&self) -> Option<&Arc<EndpointState>> {
        let total: u64 = self
            .endpoints
            .iter()
            .filter(|e| self.available(e))
            .map(|e| u64::from(e.weight()))
            .sum();
        if total == 0 {
            return self.endpoints.iter().find(|e| self.available(e));
        }
        let mut point = rand::thread_rng().gen_range(0..total);
        for endpoint in &self.endpoints {
            if endpoint.is_ejected() {
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
    use crate::metrics::{Direction, Metrics};

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
        let metrics = Metrics::new().service(Direction::Outbound, "t");
        let settings = OutlierSettings {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
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

    #[tokio::test]
    async fn empty_or_all_ejected_picks_nothing() {
        assert!(set(&[], LoadBalancer::P2cEwma).pick().is_none());
        let s = set(&[1], LoadBalancer::RoundRobin);
        s.endpoints()[0].eject(Duration::from_secs(60), Duration::from_secs(60));
        assert!(s.pick().is_none());
    }
}
