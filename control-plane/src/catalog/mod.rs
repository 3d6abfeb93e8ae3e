//! Catalog sources: which instances of which services exist and are healthy.
//!
//! A source sits behind the small [`Catalog`] trait: subscribing gives a
//! `watch` channel of whole [`CatalogState`]s, the current one at once and
//! every change after it (the in-process form of a Consul blocking query).
//! The snapshot computer is the one subscriber, so however many proxies
//! poll, Consul sees one watch per resource.

pub mod consul;

use std::collections::BTreeMap;
use std::sync::Arc;

use tether_api::Endpoint;
use tokio::sync::watch;

/// Healthy instances per service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogState {
    /// Service name → healthy instances.
    pub services: BTreeMap<String, Vec<Endpoint>>,
    /// Whether the source has read everything once. Until then the state is
    /// partial (a service may look empty only because its first answer is
    /// still on the way), and no snapshot is computed from it.
    pub synced: bool,
}

impl CatalogState {
    /// A complete state holding these services.
    pub fn synced(services: BTreeMap<String, Vec<Endpoint>>) -> Self {
        Self {
            services,
            synced: true,
        }
    }

    /// Every service name in the catalog.
    pub fn service_names(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }

    /// The healthy instances of `service` (none if it is unknown).
    pub fn healthy(&self, service: &str) -> &[Endpoint] {
        self.services.get(service).map_or(&[], Vec::as_slice)
    }
}

/// A source of [`CatalogState`]s. Dropping it stops its watches.
pub trait Catalog: Send + Sync {
    /// The current state now, and every change after it.
    fn subscribe(&self) -> watch::Receiver<Arc<CatalogState>>;
}

/// A static catalog: the instances written in mesh.yaml, complete from the
/// start (a config reload brings a new one).
pub struct StaticCatalog {
    tx: watch::Sender<Arc<CatalogState>>,
}

impl StaticCatalog {
    /// A catalog that always holds these instances.
    pub fn new(services: BTreeMap<String, Vec<Endpoint>>) -> Self {
        Self {
            tx: watch::channel(Arc::new(CatalogState::synced(services))).0,
        }
    }
}

impl Catalog for StaticCatalog {
    fn subscribe(&self) -> watch::Receiver<Arc<CatalogState>> {
        self.tx.subscribe()
    }
}

/// A spawned task that is aborted when this handle is dropped, so a watch
/// never outlives the catalog that started it.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_static_catalog_is_complete_at_once() {
        let endpoint = Endpoint {
            address: "127.0.0.1:1".to_owned(),
            weight: 3,
            tags: vec!["v1".to_owned()],
            meta: BTreeMap::new(),
            zone: None,
        };
        let catalog = StaticCatalog::new([("api".to_owned(), vec![endpoint])].into());
        let state = catalog.subscribe().borrow().clone();
        assert!(state.synced);
        assert_eq!(state.service_names().collect::<Vec<_>>(), vec!["api"]);
        assert_eq!(state.healthy("api")[0].weight, 3);
        assert!(state.healthy("web").is_empty());
    }
}
