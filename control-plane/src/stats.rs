//! The latest per-upstream statistics of every proxy (`POST /v1/stats`).
//!
//! Reports are cumulative, so only the latest one per proxy is kept;
//! readers (rollout gates, later the topology page: edges are the report's
//! `service` → each upstream) turn successive reports into windows
//! themselves (the rollouts' windows). A proxy not heard from for
//! [`STALE_AFTER`] is forgotten.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tether_api::{StatsReport, LATENCY_BUCKET_COUNT};

/// How long a silent proxy's last report is kept: far longer than any
/// stats interval, short enough that departed proxies do not pile up.
pub const STALE_AFTER: Duration = Duration::from_secs(600);

/// Most upstream entries accepted in one report (a proxy calling more
/// upstream subsets than this is misbehaving).
pub const MAX_UPSTREAMS: usize = 10_000;

/// Why a report was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatsError {
    /// An entry's histogram has the wrong number of buckets.
    #[error("upstream `{service}`: {found} latency buckets, expected {LATENCY_BUCKET_COUNT}")]
    Buckets {
        /// The upstream.
        service: String,
        /// How many it had.
        found: usize,
    },
    /// Too many entries.
    #[error("{0} upstream entries, at most {MAX_UPSTREAMS}")]
    TooMany(usize),
}

/// How often silent proxies are looked for: pruning walks every proxy, so
/// not on every report (a thousand proxies report ~100 times a second).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The latest report of every proxy.
#[derive(Debug, Default)]
pub struct StatsStore {
    proxies: Mutex<Proxies>,
}

#[derive(Debug, Default)]
struct Proxies {
    latest: HashMap<String, (Arc<StatsReport>, Instant)>,
    pruned: Option<Instant>,
}

impl StatsStore {
    /// Keeps `report` as its proxy's latest, after checking its shape.
    pub fn record(&self, report: StatsReport) -> Result<(), StatsError> {
        if report.upstreams.len() > MAX_UPSTREAMS {
            return Err(StatsError::TooMany(report.upstreams.len()));
        }
        if let Some(bad) = report
            .upstreams
            .iter()
            .find(|u| u.latency_buckets.len() != LATENCY_BUCKET_COUNT)
        {
            return Err(StatsError::Buckets {
                service: bad.service.clone(),
                found: bad.latency_buckets.len(),
            });
        }
        if let Ok(mut proxies) = self.proxies.lock() {
            let now = Instant::now();
            if proxies
                .pruned
                .is_none_or(|at| now.duration_since(at) >= PRUNE_EVERY)
            {
                proxies
                    .latest
                    .retain(|_, (_, at)| now.duration_since(*at) < STALE_AFTER);
                proxies.pruned = Some(now);
            }
            proxies
                .latest
                .insert(report.proxy_id.clone(), (Arc::new(report), now));
        }
        Ok(())
    }

    /// Every proxy's latest report.
    pub fn latest(&self) -> Vec<Arc<StatsReport>> {
        self.proxies
            .lock()
            .map(|p| p.latest.values().map(|(r, _)| Arc::clone(r)).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_api::UpstreamCounters;

    #[test]
    fn keeps_the_latest_report_per_proxy_and_checks_buckets() {
        let store = StatsStore::default();
        let report = |requests| StatsReport {
            proxy_id: "web-1".into(),
            service: "web".into(),
            counters_since_unix_ms: 1,
            upstreams: vec![UpstreamCounters {
                service: "api".into(),
                subset: Some("v1".into()),
                requests,
                failures: 0,
                latency_buckets: vec![0; LATENCY_BUCKET_COUNT],
            }],
        };
        store.record(report(1)).unwrap();
        store.record(report(5)).unwrap();
        let latest = store.latest();
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].upstreams[0].requests, 5);
        let mut bad = report(6);
        bad.upstreams[0].latency_buckets.pop();
        assert!(matches!(store.record(bad), Err(StatsError::Buckets { .. })));
    }
}
