//! Per-upstream, per-subset request statistics of the outbound path,
//! reported to the control plane (`POST /v1/stats`) for rollout gates and
//! the mesh topology.
//!
//! Each endpoint set (a subset, or a service's whole endpoint list) holds
//! its [`SubsetStats`] handle, resolved once when a snapshot is built, so a
//! request costs three relaxed atomic adds and a bucket search over
//! [`LATENCY_BUCKETS_US`]. Handles live in the [`UpstreamStats`] registry by
//! (service, subset), so the counters stay cumulative across snapshots.
//! Without a control plane the registry is off: sets get no handle and a
//! request pays one `Option` check.
//!
//! A request counts once, on the set the route and split chose first (a
//! retry that falls back to another subset still counts for the first), when
//! the answer to the app is known. It is a failure when the answer is a 5xx
//! status (from the upstream or the proxy) or a proxy error (every
//! `tether-error` reason, e.g. a gRPC call the proxy failed with a
//! `grpc-status` in a 200). A gRPC call the upstream failed in its trailers
//! is not a failure here. Latency is the whole request as the app saw it,
//! up to the response head (retries and queueing included).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tether_api::{StatsReport, UpstreamCounters, LATENCY_BUCKETS_US, LATENCY_BUCKET_COUNT};

/// Default interval between two reports: rollout steps last tens of
/// seconds, so a 10 s resolution judges them with a few reports each, at a
/// negligible cost to the control plane (one small POST per proxy).
pub const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(10);

/// Counters of requests to one upstream subset.
#[derive(Debug)]
pub struct SubsetStats {
    requests: AtomicU64,
    failures: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKET_COUNT],
}

impl SubsetStats {
    fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one answered request.
    #[inline]
    pub fn record(&self, failed: bool, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US.partition_point(|&bound| bound < micros);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(count) = self.buckets.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counters(&self, service: &str, subset: Option<&str>) -> UpstreamCounters {
        UpstreamCounters {
            service: service.to_owned(),
            subset: subset.map(str::to_owned),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            latency_buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// (upstream service, subset; `None`: the whole endpoint list).
type SubsetKey = (String, Option<String>);

/// Every subset's counters of this proxy, by (service, subset).
#[derive(Debug)]
pub struct UpstreamStats {
    enabled: AtomicBool,
    since_unix_ms: u64,
    handles: Mutex<BTreeMap<SubsetKey, Arc<SubsetStats>>>,
}

impl Default for UpstreamStats {
    fn default() -> Self {
        Self {
            enabled: AtomicBool::new(false),
            since_unix_ms: unix_ms(),
            handles: Mutex::default(),
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl UpstreamStats {
    /// Turns counting on: snapshots built from now on carry handles. Called
    /// before the first snapshot is applied, when a control plane is set.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Release);
    }

    /// The handle of `service`'s `subset` (`None`: the whole endpoint
    /// list), or `None` when counting is off. Called when a snapshot is
    /// built, never per request.
    pub fn handle(&self, service: &str, subset: Option<&str>) -> Option<Arc<SubsetStats>> {
        if !self.enabled.load(Ordering::Acquire) {
            return None;
        }
        let mut handles = self.handles.lock().ok()?;
        let key = (service.to_owned(), subset.map(str::to_owned));
        Some(Arc::clone(
            handles
                .entry(key)
                .or_insert_with(|| Arc::new(SubsetStats::new())),
        ))
    }

    /// The report of every subset that has seen a request.
    pub fn report(&self, proxy_id: &str, service: &str) -> StatsReport {
        let upstreams = self
            .handles
            .lock()
            .map(|handles| {
                handles
                    .iter()
                    .map(|((s, subset), stats)| stats.counters(s, subset.as_deref()))
                    .filter(|c| c.requests > 0)
                    .collect()
            })
            .unwrap_or_default();
        StatsReport {
            proxy_id: proxy_id.to_owned(),
            service: service.to_owned(),
            counters_since_unix_ms: self.since_unix_ms,
            upstreams,
            ..StatsReport::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_counts_and_buckets_and_is_off_by_default() {
        let stats = UpstreamStats::default();
        assert!(stats.handle("api", Some("v1")).is_none(), "off by default");
        stats.enable();
        let v1 = stats.handle("api", Some("v1")).unwrap();
        v1.record(false, Duration::from_micros(100));
        v1.record(true, Duration::from_millis(3));
        v1.record(false, Duration::from_secs(100));
        let again = stats.handle("api", Some("v1")).unwrap();
        assert!(Arc::ptr_eq(&v1, &again), "one handle per subset");
        let _unused = stats.handle("api", Some("v2")).unwrap();
        let report = stats.report("web-1", "web");
        assert_eq!(report.upstreams.len(), 1, "unused subsets are left out");
        let c = &report.upstreams[0];
        assert_eq!((c.requests, c.failures), (3, 1));
        assert_eq!(c.latency_buckets.len(), LATENCY_BUCKET_COUNT);
        assert_eq!(c.latency_buckets[0], 1, "100 µs: first bucket");
        assert_eq!(c.latency_buckets[4], 1, "3 ms: the 5 ms bucket");
        assert_eq!(
            c.latency_buckets[LATENCY_BUCKET_COUNT - 1],
            1,
            "open bucket"
        );
    }
}
