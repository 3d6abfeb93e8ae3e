//! Windowed figures from cumulative counters: what a subset received since
//! a window opened, summed over every calling proxy, and its success rate
//! and p99.
//!
//! Each (proxy, subset) keeps a base (its counters when the window opened,
//! or zero when the proxy's counters started after that), its last counters
//! and what was carried over a reset. Counters that go backwards, or a new
//! `counters_since_unix_ms`, mean the proxy restarted: what it counted up
//! to its last report is carried and it counts from zero again. A proxy
//! first heard from after the window opened whose counters are older than
//! the window starts from its first report (its earlier traffic is not the
//! window's; at most one stats interval of the window is lost).

use std::collections::HashMap;

use tether_api::{StatsReport, SubsetFigures, UpstreamCounters, LATENCY_BUCKETS_US};

/// Counts of one subset: requests, failures, requests per latency bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Requests.
    pub requests: u64,
    /// Failures.
    pub failures: u64,
    /// Requests per bucket (`LATENCY_BUCKETS_US` then the open one).
    pub buckets: Vec<u64>,
}

impl Totals {
    fn of(counters: &UpstreamCounters) -> Self {
        Self {
            requests: counters.requests,
            failures: counters.failures,
            buckets: counters.latency_buckets.clone(),
        }
    }

    /// Whether any counter is below `earlier`'s (the proxy restarted).
    fn went_backwards(&self, earlier: &Totals) -> bool {
        self.requests < earlier.requests
            || self.failures < earlier.failures
            || self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .any(|(now, then)| now < then)
    }

    fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.failures += other.failures;
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
    }

    fn minus(&self, base: &Totals) -> Totals {
        Totals {
            requests: self.requests.saturating_sub(base.requests),
            failures: self.failures.saturating_sub(base.failures),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(base.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// Success rate, failures, p99 of these counts.
    pub fn figures(&self) -> SubsetFigures {
        let success_rate = if self.requests == 0 {
            1.0
        } else {
            1.0 - self.failures.min(self.requests) as f64 / self.requests as f64
        };
        SubsetFigures {
            requests: self.requests,
            failures: self.failures,
            success_rate,
            p99_ms: p99_ms(&self.buckets),
        }
    }
}

/// The 99th percentile from bucket counts: the upper bound (ms) of the
/// bucket holding the request ranked ⌈0.99 × n⌉. `None` without requests,
/// or when that request is in the open bucket (slower than every bound).
/// The bound, not an interpolation: the gate never passes a latency that
/// might be over the threshold.
pub fn p99_ms(buckets: &[u64]) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total * 99).div_ceil(100);
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return LATENCY_BUCKETS_US.get(i).map(|us| *us as f64 / 1000.0);
        }
    }
    None
}

#[derive(Debug)]
struct Entry {
    since: u64,
    base: Totals,
    last: Totals,
    carried: Totals,
}

/// The counts of one service's subsets since a moment.
#[derive(Debug)]
pub struct Window {
    opened_unix_ms: u64,
    entries: HashMap<(String, Option<String>), Entry>,
}

impl Window {
    /// A window opened at `opened_unix_ms`.
    pub fn new(opened_unix_ms: u64) -> Self {
        Self {
            opened_unix_ms,
            entries: HashMap::new(),
        }
    }

    /// Takes in `report`'s counters of `service` (idempotent: the same
    /// report twice changes nothing).
    pub fn observe(&mut self, report: &StatsReport, service: &str) {
        for counters in report.upstreams.iter().filter(|u| u.service == service) {
            let now = Totals::of(counters);
            let key = (report.proxy_id.clone(), counters.subset.clone());
            match self.entries.get_mut(&key) {
                None => {
                    let base = if report.counters_since_unix_ms >= self.opened_unix_ms {
                        Totals::default()
                    } else {
                        now.clone()
                    };
                    self.entries.insert(
                        key,
                        Entry {
                            since: report.counters_since_unix_ms,
                            base,
                            last: now,
                            carried: Totals::default(),
                        },
                    );
                }
                Some(entry) => {
                    if entry.since != report.counters_since_unix_ms
                        || now.went_backwards(&entry.last)
                    {
                        let counted = entry.last.minus(&entry.base);
                        entry.carried.add(&counted);
                        entry.base = Totals::default();
                        entry.since = report.counters_since_unix_ms;
                    }
                    entry.last = now;
                }
            }
        }
    }

    /// What `subset` received in the window, over every proxy.
    pub fn totals(&self, subset: &str) -> Totals {
        let mut sum = Totals::default();
        for ((_, s), entry) in &self.entries {
            if s.as_deref() == Some(subset) {
                sum.add(&entry.carried);
                sum.add(&entry.last.minus(&entry.base));
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_api::LATENCY_BUCKET_COUNT;

    fn report(proxy: &str, since: u64, subset: &str, requests: u64, failures: u64) -> StatsReport {
        let mut buckets = vec![0; LATENCY_BUCKET_COUNT];
        buckets[2] = requests;
        StatsReport {
            proxy_id: proxy.into(),
            service: "web".into(),
            counters_since_unix_ms: since,
            upstreams: vec![UpstreamCounters {
                service: "api".into(),
                subset: Some(subset.into()),
                requests,
                failures,
                latency_buckets: buckets,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn p99_is_the_bound_of_the_bucket_of_the_99th_percentile() {
        let mut buckets = vec![0; LATENCY_BUCKET_COUNT];
        assert_eq!(p99_ms(&buckets), None, "no request");
        buckets[1] = 99; // ≤ 0.5 ms
        buckets[10] = 1; // ≤ 300 ms
        assert_eq!(
            p99_ms(&buckets),
            Some(0.5),
            "rank 99 of 100 is in the 0.5 ms bucket"
        );
        buckets[10] = 2;
        assert_eq!(
            p99_ms(&buckets),
            Some(300.0),
            "rank 100 of 101 is in the 300 ms bucket"
        );
        buckets[LATENCY_BUCKET_COUNT - 1] = 50;
        assert_eq!(
            p99_ms(&buckets),
            None,
            "in the open bucket: slower than every bound"
        );
    }

    #[test]
    fn counts_deltas_since_the_window_opened() {
        let mut window = Window::new(1_000);
        // Counters older than the window: the first report is the base.
        window.observe(&report("web-1", 10, "v2", 100, 5), "api");
        assert_eq!(window.totals("v2").requests, 0);
        window.observe(&report("web-1", 10, "v2", 130, 8), "api");
        window.observe(&report("web-1", 10, "v2", 130, 8), "api");
        let t = window.totals("v2");
        assert_eq!((t.requests, t.failures), (30, 3), "idempotent per report");
        assert_eq!(t.buckets[2], 30);
        // A proxy whose counters started after the window counts in full.
        window.observe(&report("web-2", 2_000, "v2", 20, 0), "api");
        assert_eq!(window.totals("v2").requests, 50);
        // Another subset and another service are apart.
        window.observe(&report("web-3", 2_000, "v1", 7, 0), "api");
        window.observe(&report("web-3", 2_000, "v2", 7, 0), "other");
        assert_eq!(window.totals("v1").requests, 7);
        assert_eq!(window.totals("v2").requests, 50);
    }

    #[test]
    fn a_counter_reset_carries_what_was_counted() {
        let mut window = Window::new(1_000);
        window.observe(&report("web-1", 10, "v2", 100, 0), "api");
        window.observe(&report("web-1", 10, "v2", 140, 2), "api");
        // The proxy restarted with the same id: counters went backwards.
        window.observe(&report("web-1", 10, "v2", 15, 1), "api");
        let t = window.totals("v2");
        assert_eq!((t.requests, t.failures), (55, 3), "40 before + 15 after");
        // A new `counters_since` is a restart even if counters grew.
        window.observe(&report("web-1", 5_000, "v2", 20, 1), "api");
        assert_eq!(window.totals("v2").requests, 40 + 15 + 20);
    }

    #[test]
    fn figures_of_totals() {
        let t = Totals {
            requests: 200,
            failures: 40,
            buckets: {
                let mut b = vec![0; LATENCY_BUCKET_COUNT];
                b[3] = 200;
                b
            },
        };
        let f = t.figures();
        assert!((f.success_rate - 0.8).abs() < 1e-9);
        assert_eq!(f.p99_ms, Some(2.5));
        assert_eq!(Totals::default().figures().success_rate, 1.0);
    }
}
