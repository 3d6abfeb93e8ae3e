//! What a stats report says about the proxy itself, for the control
//! plane's topology page: build version, inbound address, certificate
//! expiry, and the ejection state of the endpoints of every upstream it
//! called. Read when a report is made (every stats interval), never on
//! the request path; [`report_loop`] sends them with the upstream
//! statistics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tether_api::{EndpointHealth, StatsReport};

use crate::control_client::{ControlCallError, ControlPlaneClient};
use crate::identity::MeshIdentity;
use crate::state::MeshState;

/// Most endpoints listed in one report: a proxy calling huge services still
/// sends a bounded report (the control plane accepts 1 MiB).
const MAX_ENDPOINTS: usize = 2_000;

/// Where the facts are read from.
#[derive(Clone)]
pub struct ProxyFacts {
    /// The state in force (its endpoints carry the ejection state).
    pub state: Arc<ArcSwap<MeshState>>,
    /// The mesh identity, when the proxy has one.
    pub identity: Option<Arc<MeshIdentity>>,
    /// The inbound listener as bound.
    pub inbound: SocketAddr,
}

impl ProxyFacts {
    /// Adds the facts to `report` (whose `upstreams` are already filled).
    pub fn fill(&self, report: &mut StatsReport) {
        report.proxy_version = Some(env!("CARGO_PKG_VERSION").to_owned());
        report.inbound_address = Some(self.inbound.to_string());
        report.certificate_not_after_unix = self
            .identity
            .as_ref()
            .and_then(|identity| identity.current())
            .map(|current| unix(current.not_after()));
        let state = self.state.load();
        let mut services: Vec<&str> = report
            .upstreams
            .iter()
            .map(|u| u.service.as_str())
            .collect();
        services.dedup();
        report.endpoints = services
            .iter()
            .filter_map(|name| state.services.get(*name).map(|s| (*name, s)))
            .flat_map(|(name, service)| {
                service.endpoints.iter().map(move |e| EndpointHealth {
                    service: name.to_owned(),
                    address: e.address().to_owned(),
                    ejected: e.is_ejected(),
                })
            })
            .take(MAX_ENDPOINTS)
            .collect();
    }
}

fn unix(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Longest one report may take; a lost report's counts go with the next
/// one (they are cumulative).
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Posts this proxy's statistics to the control plane every `interval`,
/// forever. A failed post is logged at debug (the snapshot subscription
/// already warns when the control plane is away); its counts go with the
/// next one. Each report also carries `facts` (version, inbound address,
/// certificate expiry, upstream endpoints' ejection state).
pub async fn report_loop(
    stats: Arc<crate::upstream_stats::UpstreamStats>,
    client: ControlPlaneClient,
    proxy_id: String,
    service: String,
    interval: Duration,
    facts: ProxyFacts,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let mut report = stats.report(&proxy_id, &service);
        facts.fill(&mut report);
        match client
            .stats(&report, REPORT_TIMEOUT.min(interval * 2))
            .await
        {
            Ok(()) => {}
            Err(ControlCallError::Status { status, message }) => {
                tracing::warn!(%status, %message, "control plane refused the stats report")
            }
            Err(error) => tracing::debug!(%error, "could not send the stats report"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tether_api::{Snapshot, UpstreamCounters};

    use super::*;
    use crate::discovery::{build, SnapshotMetrics};

    #[tokio::test]
    async fn reports_version_address_and_the_called_upstreams_ejections() {
        let metrics = SnapshotMetrics::for_tests();
        let snapshot: Snapshot = serde_json::from_str(
            r#"{"version": 3, "mesh": {"trust_domain": "tether.local"}, "services": {
                "api": {"endpoints": [{"address": "127.0.0.1:1"}, {"address": "127.0.0.1:2"}]},
                "db": {"endpoints": [{"address": "127.0.0.1:3"}]}}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let empty = MeshState::empty(crate::discovery::build::unknown_metrics(&metrics));
        let state =
            build(Arc::new(snapshot), &empty, &metrics, None).unwrap_or_else(|p| panic!("{p:?}"));
        state.services["api"].endpoints[1].eject(Duration::from_secs(30), Duration::from_secs(300));
        let facts = ProxyFacts {
            state: Arc::new(ArcSwap::from_pointee(state)),
            identity: None,
            inbound: "0.0.0.0:15006".parse().unwrap_or_else(|e| panic!("{e}")),
        };
        let mut report = StatsReport {
            upstreams: vec![UpstreamCounters {
                service: "api".into(),
                requests: 1,
                latency_buckets: vec![0; tether_api::LATENCY_BUCKET_COUNT],
                ..UpstreamCounters::default()
            }],
            ..StatsReport::default()
        };
        facts.fill(&mut report);
        assert_eq!(
            report.proxy_version.as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(report.inbound_address.as_deref(), Some("0.0.0.0:15006"));
        assert_eq!(report.certificate_not_after_unix, None);
        let seen: Vec<(&str, &str, bool)> = report
            .endpoints
            .iter()
            .map(|e| (e.service.as_str(), e.address.as_str(), e.ejected))
            .collect();
        // db was not called: its endpoints are not reported.
        assert_eq!(
            seen,
            vec![("api", "127.0.0.1:1", false), ("api", "127.0.0.1:2", true)]
        );
    }
}
