//! The latest per-upstream statistics of every proxy (`POST /v1/stats`).
//!
//! Reports are cumulative: rollout gates read the latest one per proxy and
//! turn successive reports into windows themselves (the rollouts'
//! windows). For the topology page, a short history per proxy is kept too
//! (one report per [`HISTORY_SPACING`] over [`HISTORY_SPAN`]), so a recent
//! window's rates are the difference of two reports. A proxy not heard
//! from for [`STALE_AFTER`] is forgotten.

use std::collections::{HashMap, VecDeque};
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

/// How far back the history reaches: the topology page's longest window
/// (`?window=` at most this), plus one spacing for the base report.
pub const HISTORY_SPAN: Duration = Duration::from_secs(60 + 2);

/// Least time between two kept reports of one proxy: a proxy reporting
/// every 500 ms keeps ~30 reports, not 120 (a newer report replaces the
/// newest kept one until this has passed).
pub const HISTORY_SPACING: Duration = Duration::from_secs(2);

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
    /// Per proxy, its reports oldest first; the last is the latest.
    latest: HashMap<String, VecDeque<(Arc<StatsReport>, Instant)>>,
    pruned: Option<Instant>,
}

/// A proxy's newest report and the oldest kept one of a window.
#[derive(Debug, Clone)]
pub struct Span {
    /// The oldest report at or before the window's start (else the oldest
    /// kept) with the same counter start as `latest`.
    pub base: Arc<StatsReport>,
    /// The newest report.
    pub latest: Arc<StatsReport>,
    /// Time between the two (zero when they are the same report).
    pub elapsed: Duration,
    /// How long ago `latest` arrived.
    pub age: Duration,
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
                proxies.latest.retain(|_, history| {
                    history
                        .back()
                        .is_some_and(|(_, at)| now.duration_since(*at) < STALE_AFTER)
                });
                proxies.pruned = Some(now);
            }
            let history = proxies.latest.entry(report.proxy_id.clone()).or_default();
            keep(history, Arc::new(report), now);
        }
        Ok(())
    }

    /// Every proxy's latest report.
    pub fn latest(&self) -> Vec<Arc<StatsReport>> {
        self.proxies
            .lock()
            .map(|p| {
                p.latest
                    .values()
                    .filter_map(|h| h.back().map(|(r, _)| Arc::clone(r)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every proxy's [`Span`] over the last `window` (at most
    /// [`HISTORY_SPAN`] is kept).
    pub fn spans(&self, window: Duration) -> Vec<Span> {
        let now = Instant::now();
        let Ok(proxies) = self.proxies.lock() else {
            return Vec::new();
        };
        proxies
            .latest
            .values()
            .filter_map(|history| {
                let (latest, latest_at) = history.back()?;
                let same_run =
                    |r: &StatsReport| r.counters_since_unix_ms == latest.counters_since_unix_ms;
                let start = now.checked_sub(window);
                // The newest report at or before the window's start, else
                // the oldest of the same run.
                let (base, base_at) = history
                    .iter()
                    .rev()
                    .filter(|(r, _)| same_run(r))
                    .find(|(_, at)| start.is_some_and(|s| *at <= s))
                    .or_else(|| history.iter().find(|(r, _)| same_run(r)))?;
                Some(Span {
                    base: Arc::clone(base),
                    latest: Arc::clone(latest),
                    elapsed: latest_at.duration_since(*base_at),
                    age: now.duration_since(*latest_at),
                })
            })
            .collect()
    }
}

/// Appends `report` to a proxy's history: replaces the newest entry while
/// it is less than [`HISTORY_SPACING`] after the one before it (so the
/// newest stays exact and older ones stay spaced), then drops what is older
/// than [`HISTORY_SPAN`] (keeping at least the newest two).
fn keep(
    history: &mut VecDeque<(Arc<StatsReport>, Instant)>,
    report: Arc<StatsReport>,
    now: Instant,
) {
    let len = history.len();
    if len >= 2 {
        if let (Some((_, before)), Some((_, newest))) = (history.get(len - 2), history.get(len - 1))
        {
            if newest.duration_since(*before) < HISTORY_SPACING {
                history.pop_back();
            }
        }
    }
    history.push_back((report, now));
    while history.len() > 2
        && history
            .get(1)
            .is_some_and(|(_, at)| now.duration_since(*at) > HISTORY_SPAN)
    {
        history.pop_front();
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
            ..Default::default()
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

#[cfg(test)]
mod history_tests {
    use super::*;

    fn report(since: u64, requests: u64) -> StatsReport {
        StatsReport {
            proxy_id: "web-1".into(),
            service: "web".into(),
            counters_since_unix_ms: since,
            upstreams: vec![tether_api::UpstreamCounters {
                service: "api".into(),
                subset: None,
                requests,
                failures: 0,
                latency_buckets: vec![0; LATENCY_BUCKET_COUNT],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn history_is_spaced_and_bounded_and_the_newest_is_exact() {
        let t0 = Instant::now();
        let mut history = VecDeque::new();
        // A report every 500 ms for 100 s.
        for i in 0..200u64 {
            keep(
                &mut history,
                Arc::new(report(1, i)),
                t0 + Duration::from_millis(500 * i),
            );
        }
        let newest = history.back().map(|(r, _)| r.upstreams[0].requests);
        assert_eq!(newest, Some(199));
        let span = HISTORY_SPAN.as_secs() as usize / HISTORY_SPACING.as_secs() as usize;
        assert!(
            history.len() <= span + 3,
            "{} entries kept for a {span}-entry span",
            history.len()
        );
        let (_, oldest) = history[0];
        let (_, newest) = history[history.len() - 1];
        let reach = newest.duration_since(oldest);
        assert!(
            reach >= HISTORY_SPAN && reach <= HISTORY_SPAN + HISTORY_SPACING * 2,
            "{reach:?}"
        );
    }

    #[test]
    fn spans_start_at_the_oldest_report_of_the_same_run() {
        let store = StatsStore::default();
        store.record(report(1, 10)).unwrap();
        store.record(report(1, 15)).unwrap();
        let spans = store.spans(Duration::from_secs(30));
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].base.upstreams[0].requests, 10);
        assert_eq!(spans[0].latest.upstreams[0].requests, 15);
        // The proxy restarted: its old counters are not a base.
        store.record(report(2, 3)).unwrap();
        let spans = store.spans(Duration::from_secs(30));
        assert_eq!(spans[0].base.upstreams[0].requests, 3);
        assert_eq!(spans[0].elapsed, Duration::ZERO);
        assert_eq!(store.latest()[0].upstreams[0].requests, 3);
    }
}
