//! Catalog sources: which instances of which services exist and are healthy.
//!
//! A source publishes whole [`CatalogState`]s on a `watch` channel; the
//! snapshot computer is the one subscriber, so however many proxies poll,
//! Consul sees one watch per resource.

pub mod consul;

use std::collections::BTreeMap;
use std::sync::Arc;

use tether_api::Endpoint;
use tokio::sync::watch;

/// Healthy instances per service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogState {
    /// Service name → instances.
    pub services: BTreeMap<String, Vec<Endpoint>>,
}

/// A static catalog: the instances written in mesh.yaml, published once
/// (and again on every config reload).
pub fn fixed(services: BTreeMap<String, Vec<Endpoint>>) -> watch::Receiver<Arc<CatalogState>> {
    watch::channel(Arc::new(CatalogState { services })).1
}
