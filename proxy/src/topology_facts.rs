//! What a stats report says about the proxy itself, for the control
//! plane's topology page: build version, inbound address, certificate
//! expiry, and the ejection state of the endpoints of every upstream it
//! called. Read when a report is made (every stats interval), never on
//! the request path.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tether_api::{EndpointHealth, StatsReport};

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
