//! `GET /v1/topology`: the service graph with a recent window's figures,
//! computed from the proxies' statistics ([`crate::stats::StatsStore`]
//! spans), their reports (applied/refused versions) and the catalog's
//! instances. Pure: [`compute`] takes everything it reads as arguments.
//!
//! Edges are "the proxies of `from` sent requests to `to`" (a report's
//! `service` → each upstream). A proxy's rate is its counters' difference
//! between its newest report and the newest one at or before the window's
//! start, over the time between them; rates of several proxies add up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use tether_api::{
    EdgeView, InstanceView, Problem, ProblemKind, ProxyStatus, ProxyView, ServiceView, StatsReport,
    Topology, TrafficFigures, UpstreamCounters, LATENCY_BUCKET_COUNT,
};

use crate::rollout::window::p99_ms;
use crate::stats::Span;

/// Window when the request names none: long enough to smooth a 10 s stats
/// interval over three reports, short enough that a failure shows within
/// seconds.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
/// Longest window (`?window=`): what the stats history keeps.
pub const MAX_WINDOW: Duration = Duration::from_secs(60);
/// Shortest window: a couple of stats intervals at the fastest setting.
pub const MIN_WINDOW: Duration = Duration::from_secs(2);
/// Success rate under which an edge is a problem (Linkerd's dashboards and
/// most SLOs start at "two nines").
pub const SUCCESS_THRESHOLD: f64 = 0.99;
/// Fewest requests in the window before a success rate is judged: one
/// failure among three requests is not an incident.
pub const MIN_REQUESTS_TO_JUDGE: u64 = 5;
/// A certificate expiring sooner than this is a problem: a day leaves
/// time to fix issuance before proxies stop handshaking.
pub const CERTIFICATE_WARNING: Duration = Duration::from_secs(24 * 3600);

/// The window a `window=` query asks for, clamped to what is kept.
pub fn window_from_query(value: Option<&str>) -> Duration {
    value
        .and_then(|v| humantime::parse_duration(v).ok())
        .unwrap_or(DEFAULT_WINDOW)
        .clamp(MIN_WINDOW, MAX_WINDOW)
}

/// Replaces an unspecified inbound IP (`0.0.0.0:15006`) with the address
/// the report came from, so it matches the catalog's instance address.
pub fn resolve_inbound(report: &mut StatsReport, peer: IpAddr) {
    if let Some(address) = &mut report.inbound_address {
        if let Ok(mut addr) = address.parse::<std::net::SocketAddr>() {
            if addr.ip().is_unspecified() {
                addr.set_ip(peer);
                *address = addr.to_string();
            }
        }
    }
}

/// What [`compute`] reads.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Every proxy's statistics over the window.
    pub spans: &'a [Span],
    /// Every proxy's report (`/v1/status`).
    pub proxies: &'a [ProxyStatus],
    /// Every service's catalog instances (from the snapshots).
    pub endpoints: &'a BTreeMap<String, Vec<String>>,
    /// The window.
    pub window: Duration,
    /// Now, Unix milliseconds.
    pub now_unix_ms: u64,
}

/// Counts summed over proxies.
#[derive(Debug, Clone)]
struct Sum {
    requests: u64,
    failures: u64,
    rps: f64,
    buckets: Vec<u64>,
}

impl Default for Sum {
    fn default() -> Self {
        Self {
            requests: 0,
            failures: 0,
            rps: 0.0,
            buckets: vec![0; LATENCY_BUCKET_COUNT],
        }
    }
}

impl Sum {
    fn add(&mut self, other: &Sum) {
        self.requests += other.requests;
        self.failures += other.failures;
        self.rps += other.rps;
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
    }

    fn figures(&self) -> TrafficFigures {
        let success_rate = if self.requests == 0 {
            1.0
        } else {
            1.0 - self.failures.min(self.requests) as f64 / self.requests as f64
        };
        TrafficFigures {
            requests: self.requests,
            failures: self.failures,
            rps: (self.rps * 100.0).round() / 100.0,
            success_rate,
            p99_ms: p99_ms(&self.buckets),
        }
    }
}

/// One proxy's per-upstream-service counts in the window: the newest
/// report minus the base, over the time between them. A proxy whose
/// counters started inside the window counts from zero at its start.
fn proxy_sums(span: &Span, window_start_unix_ms: u64, now_unix_ms: u64) -> BTreeMap<&str, Sum> {
    let latest = &span.latest;
    let latest_unix_ms = now_unix_ms.saturating_sub(millis(span.age));
    let from_zero = latest.counters_since_unix_ms >= window_start_unix_ms;
    let elapsed_ms = if from_zero {
        latest_unix_ms.saturating_sub(latest.counters_since_unix_ms)
    } else {
        millis(span.elapsed)
    };
    // By (service, subset): a proxy may call hundreds of subsets.
    let bases: HashMap<(&str, Option<&str>), &UpstreamCounters> = if from_zero {
        HashMap::new()
    } else {
        span.base
            .upstreams
            .iter()
            .map(|b| ((b.service.as_str(), b.subset.as_deref()), b))
            .collect()
    };
    let mut sums: BTreeMap<&str, Sum> = BTreeMap::new();
    for upstream in &latest.upstreams {
        let base = bases
            .get(&(upstream.service.as_str(), upstream.subset.as_deref()))
            .copied();
        let requests = upstream
            .requests
            .saturating_sub(base.map_or(0, |b| b.requests));
        let delta = Sum {
            requests,
            failures: upstream
                .failures
                .saturating_sub(base.map_or(0, |b| b.failures)),
            rps: if elapsed_ms == 0 {
                0.0
            } else {
                requests as f64 * 1000.0 / elapsed_ms as f64
            },
            buckets: (0..LATENCY_BUCKET_COUNT)
                .map(|i| {
                    let now = upstream.latency_buckets.get(i).copied().unwrap_or(0);
                    let then = base
                        .and_then(|b| b.latency_buckets.get(i).copied())
                        .unwrap_or(0);
                    now.saturating_sub(then)
                })
                .collect(),
        };
        sums.entry(upstream.service.as_str())
            .or_default()
            .add(&delta);
    }
    sums
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The topology.
pub fn compute(inputs: Inputs<'_>) -> Topology {
    let Inputs {
        spans,
        proxies,
        endpoints,
        window,
        now_unix_ms,
    } = inputs;
    let window_start = now_unix_ms.saturating_sub(millis(window));
    // Proxies silent for longer than the window say nothing about it.
    let fresh: Vec<&Span> = spans.iter().filter(|s| s.age <= window).collect();

    let mut edges: BTreeMap<(String, String), Sum> = BTreeMap::new();
    let mut outbound: BTreeMap<String, Sum> = BTreeMap::new();
    for span in &fresh {
        for (to, sum) in proxy_sums(span, window_start, now_unix_ms) {
            let from = span.latest.service.clone();
            outbound.entry(from.clone()).or_default().add(&sum);
            edges.entry((from, to.to_owned())).or_default().add(&sum);
        }
    }
    let mut inbound: BTreeMap<&str, Sum> = BTreeMap::new();
    for ((_, to), sum) in &edges {
        inbound.entry(to.as_str()).or_default().add(sum);
    }

    let proxy_views = proxy_views(spans, proxies);
    let mut names: BTreeSet<String> = endpoints.keys().cloned().collect();
    names.extend(edges.keys().flat_map(|(a, b)| [a.clone(), b.clone()]));
    names.extend(proxy_views.iter().map(|p| p.service.clone()));
    let depth = depths(&names, edges.keys());

    let mut problems = Vec::new();
    for view in &proxy_views {
        if let Some(rejected) = view.rejected_version {
            problems.push(Problem {
                kind: ProblemKind::RefusedConfig,
                service: view.service.clone(),
                subject: view.proxy_id.clone(),
                message: format!(
                    "refused config {rejected}: {}; still runs {}",
                    view.error.as_deref().unwrap_or("no reason given"),
                    view.applied_version
                ),
            });
        }
        if let Some(not_after) = view.certificate_not_after_unix {
            let now = now_unix_ms / 1000;
            if not_after < now + CERTIFICATE_WARNING.as_secs() {
                let message = if not_after <= now {
                    format!("certificate expired {} ago", hm(now - not_after))
                } else {
                    format!("certificate expires in {}", hm(not_after - now))
                };
                problems.push(Problem {
                    kind: ProblemKind::CertificateExpiring,
                    service: view.service.clone(),
                    subject: view.proxy_id.clone(),
                    message,
                });
            }
        }
    }
    for ((from, to), sum) in &edges {
        let figures = sum.figures();
        if figures.requests >= MIN_REQUESTS_TO_JUDGE && figures.success_rate < SUCCESS_THRESHOLD {
            problems.push(Problem {
                kind: ProblemKind::LowSuccessRate,
                service: to.clone(),
                subject: format!("{from} → {to}"),
                message: format!(
                    "success rate {:.1} % ({} of {} requests failed)",
                    figures.success_rate * 100.0,
                    figures.failures,
                    figures.requests
                ),
            });
        }
    }

    let instances = instances(&fresh, proxies, &proxy_views, endpoints);
    let mut services: Vec<ServiceView> = names
        .iter()
        .map(|name| {
            let instances = instances.get(name.as_str()).cloned().unwrap_or_default();
            for instance in instances.iter().filter(|i| i.ejected_by > 0) {
                problems.push(Problem {
                    kind: ProblemKind::EjectedInstance,
                    service: name.clone(),
                    subject: instance.address.clone(),
                    message: format!(
                        "ejected by {} of {} calling proxies",
                        instance.ejected_by, instance.observed_by
                    ),
                });
            }
            ServiceView {
                name: name.clone(),
                depth: depth.get(name.as_str()).copied().unwrap_or(0),
                inbound: inbound.get(name.as_str()).map(Sum::figures),
                outbound: outbound.get(name).map(Sum::figures),
                instances,
                proxies: proxy_views
                    .iter()
                    .filter(|p| &p.service == name)
                    .map(|p| p.proxy_id.clone())
                    .collect(),
                problem: false,
            }
        })
        .collect();
    problems.sort_by(|a, b| {
        (rank(a.kind), &a.service, &a.subject).cmp(&(rank(b.kind), &b.service, &b.subject))
    });
    let troubled: BTreeSet<&str> = problems.iter().map(|p| p.service.as_str()).collect();
    for service in &mut services {
        service.problem = troubled.contains(service.name.as_str());
    }
    services.sort_by(|a, b| (a.depth, &a.name).cmp(&(b.depth, &b.name)));
    Topology {
        window_seconds: window.as_secs(),
        generated_unix_ms: now_unix_ms,
        services,
        edges: edges
            .iter()
            .map(|((from, to), sum)| EdgeView {
                from: from.clone(),
                to: to.clone(),
                figures: sum.figures(),
            })
            .collect(),
        proxies: proxy_views,
        problems,
    }
}

/// Problems' order: what breaks traffic first.
fn rank(kind: ProblemKind) -> u8 {
    match kind {
        ProblemKind::LowSuccessRate => 0,
        ProblemKind::EjectedInstance => 1,
        ProblemKind::RefusedConfig => 2,
        ProblemKind::CertificateExpiring => 3,
    }
}

/// `3h05m`, `12m`.
fn hm(seconds: u64) -> String {
    let (h, m) = (seconds / 3600, seconds % 3600 / 60);
    if h > 0 {
        format!("{h}h{m:02}m")
    } else {
        format!("{m}m")
    }
}

/// Every proxy: its report (versions, refusal) joined with its latest
/// statistics (build version, inbound address, certificate).
fn proxy_views(spans: &[Span], proxies: &[ProxyStatus]) -> Vec<ProxyView> {
    let mut views: BTreeMap<&str, ProxyView> = BTreeMap::new();
    for status in proxies {
        let r = &status.report;
        views.insert(
            r.proxy_id.as_str(),
            ProxyView {
                proxy_id: r.proxy_id.clone(),
                service: r.service.clone(),
                applied_version: r.applied_version,
                rejected_version: r.rejected_version,
                error: r.error.clone(),
                connected: status.connected,
                last_contact_unix: status.last_contact_unix,
                ..ProxyView::default()
            },
        );
    }
    for span in spans {
        let stats = &span.latest;
        let view = views
            .entry(stats.proxy_id.as_str())
            .or_insert_with(|| ProxyView {
                proxy_id: stats.proxy_id.clone(),
                service: stats.service.clone(),
                ..ProxyView::default()
            });
        view.proxy_version.clone_from(&stats.proxy_version);
        view.inbound_address.clone_from(&stats.inbound_address);
        view.certificate_not_after_unix = stats.certificate_not_after_unix;
        view.stats_age_ms = Some(millis(span.age));
    }
    let mut views: Vec<ProxyView> = views.into_values().collect();
    views.sort_by(|a, b| (&a.service, &a.proxy_id).cmp(&(&b.service, &b.proxy_id)));
    views
}

/// Each service's instances: the catalog's, plus endpoints callers still
/// report; with how many fresh calling proxies eject each, and the proxy
/// fronting it.
fn instances(
    fresh: &[&Span],
    proxies: &[ProxyStatus],
    views: &[ProxyView],
    endpoints: &BTreeMap<String, Vec<String>>,
) -> HashMap<String, Vec<InstanceView>> {
    let mut by_service: BTreeMap<String, BTreeMap<String, InstanceView>> = BTreeMap::new();
    for (service, addresses) in endpoints {
        let instances = by_service.entry(service.clone()).or_default();
        for address in addresses {
            instances.insert(
                address.clone(),
                InstanceView {
                    address: address.clone(),
                    healthy: true,
                    ..InstanceView::default()
                },
            );
        }
    }
    for span in fresh {
        for endpoint in &span.latest.endpoints {
            let instance = by_service
                .entry(endpoint.service.clone())
                .or_default()
                .entry(endpoint.address.clone())
                .or_insert_with(|| InstanceView {
                    address: endpoint.address.clone(),
                    ..InstanceView::default()
                });
            instance.observed_by += 1;
            if endpoint.ejected {
                instance.ejected_by += 1;
            }
        }
    }
    let applied: HashMap<&str, u64> = proxies
        .iter()
        .map(|p| (p.report.proxy_id.as_str(), p.report.applied_version))
        .collect();
    for view in views {
        let Some(address) = &view.inbound_address else {
            continue;
        };
        if let Some(instance) = by_service
            .get_mut(&view.service)
            .and_then(|instances| instances.get_mut(address))
        {
            instance.proxy_id = Some(view.proxy_id.clone());
            instance.proxy_version.clone_from(&view.proxy_version);
            instance.config_version = applied.get(view.proxy_id.as_str()).copied();
        }
    }
    by_service
        .into_iter()
        .map(|(service, instances)| (service, instances.into_values().collect()))
        .collect()
}

/// Layer of each service: 0 for services no one calls, else one more than
/// its deepest caller, over the graph without the edges that close a cycle
/// (found by a depth-first walk in name order, so the layout is stable).
fn depths<'a>(
    names: &'a BTreeSet<String>,
    edges: impl Iterator<Item = &'a (String, String)>,
) -> HashMap<&'a str, u32> {
    let mut callees: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges {
        if from != to {
            callees.entry(from.as_str()).or_default().push(to.as_str());
        }
    }
    // Depth-first walk: keep forward edges only, in post-order.
    let mut state: HashMap<&str, u8> = HashMap::new(); // 1 on stack, 2 done
    let mut order: Vec<&str> = Vec::new();
    let mut kept: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for root in names.iter().map(String::as_str) {
        if state.contains_key(root) {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(root, 0)];
        state.insert(root, 1);
        while let Some((node, next)) = stack.pop() {
            let children = callees.get(node).map(Vec::as_slice).unwrap_or_default();
            if let Some(&child) = children.get(next) {
                stack.push((node, next + 1));
                match state.get(child) {
                    Some(1) => {} // closes a cycle: dropped
                    Some(_) => kept.entry(node).or_default().push(child),
                    None => {
                        kept.entry(node).or_default().push(child);
                        state.insert(child, 1);
                        stack.push((child, 0));
                    }
                }
            } else {
                state.insert(node, 2);
                order.push(node);
            }
        }
    }
    // Reverse post-order is a topological order of the kept edges.
    let mut depth: HashMap<&str, u32> = names.iter().map(|n| (n.as_str(), 0)).collect();
    for node in order.iter().rev() {
        let d = depth.get(node).copied().unwrap_or(0);
        for child in kept.get(node).map(Vec::as_slice).unwrap_or_default() {
            if let Some(c) = depth.get_mut(child) {
                *c = (*c).max(d + 1);
            }
        }
    }
    depth
}

#[cfg(test)]
mod tests;
