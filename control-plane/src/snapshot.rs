//! Snapshots: computed per proxy service from config + catalog, versioned,
//! and published to long-polls through one `watch` channel.
//!
//! A new version is made only when a service's computed content changes.
//! Versions come from the wall clock, `max(previous + 1, unix millis)`, so
//! they keep growing across control-plane restarts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tether_api::{Authorization, AuthorizationRule, MeshSettings, ServiceSnapshot, Snapshot};
use tokio::sync::watch;

use crate::catalog::CatalogState;
use crate::config::MeshConfig;
use crate::metrics::ControlMetrics;

/// Every service's current snapshot.
pub struct Snapshots {
    current: ArcSwap<BTreeMap<String, Arc<Snapshot>>>,
    changed: watch::Sender<u64>,
    last_version: Mutex<u64>,
    metrics: ControlMetrics,
}

impl Snapshots {
    /// An empty store.
    pub fn new(metrics: ControlMetrics) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(BTreeMap::new()),
            changed: watch::channel(0).0,
            last_version: Mutex::new(0),
            metrics,
        })
    }

    /// The snapshot of `service`, if the service is known.
    pub fn get(&self, service: &str) -> Option<Arc<Snapshot>> {
        self.current.load().get(service).cloned()
    }

    /// Current version per service.
    pub fn versions(&self) -> BTreeMap<String, u64> {
        self.current
            .load()
            .iter()
            .map(|(k, v)| (k.clone(), v.version))
            .collect()
    }

    /// Wakes when any snapshot changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Recomputes every service's snapshot; bumps versions only where the
    /// content changed.
    pub fn update(&self, config: &MeshConfig, catalog: &CatalogState) {
        let previous = self.current.load_full();
        let mut next = BTreeMap::new();
        let mut changed = 0;
        let services = compute_services(config, catalog);
        for name in services.keys() {
            let mut snapshot = compute(config, &services, name);
            match previous.get(name) {
                Some(old) if same_content(old, &snapshot) => {
                    next.insert(name.clone(), Arc::clone(old));
                }
                _ => {
                    snapshot.version = self.next_version();
                    next.insert(name.clone(), Arc::new(snapshot));
                    changed += 1;
                }
            }
        }
        let removed = previous.keys().any(|k| !next.contains_key(k));
        if changed > 0 || removed {
            self.metrics.snapshot_updates.inc_by(changed);
            self.current.store(Arc::new(next));
            self.changed.send_modify(|n| *n += 1);
            tracing::info!(changed, services = services.len(), "snapshots updated");
        }
    }

    fn next_version(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let Ok(mut last) = self.last_version.lock() else {
            return now;
        };
        *last = (*last + 1).max(now);
        *last
    }
}

fn same_content(old: &Snapshot, new: &Snapshot) -> bool {
    Snapshot {
        version: 0,
        ..old.clone()
    } == *new
}

/// Every service (configured or in the catalog) with endpoints and policy.
fn compute_services(
    config: &MeshConfig,
    catalog: &CatalogState,
) -> BTreeMap<String, ServiceSnapshot> {
    let names = config.services.keys().chain(catalog.services.keys());
    names
        .map(|name| {
            let endpoints = catalog.services.get(name).cloned().unwrap_or_default();
            let service = match config.services.get(name) {
                Some(c) => ServiceSnapshot {
                    protocol: c.protocol,
                    policy: c.policy.clone(),
                    endpoints,
                    subsets: c.subsets.clone(),
                    split: c.split.clone(),
                    routes: c.routes.clone(),
                },
                None => ServiceSnapshot {
                    policy: config.defaults.clone(),
                    endpoints,
                    ..ServiceSnapshot::default()
                },
            };
            (name.clone(), service)
        })
        .collect()
}

/// The snapshot for the proxy of `service` (version 0: set by the store).
pub fn compute(
    config: &MeshConfig,
    services: &BTreeMap<String, ServiceSnapshot>,
    service: &str,
) -> Snapshot {
    let authorization = config.authorization.as_ref().map(|authz| Authorization {
        default: authz.default,
        rules: authz
            .rules
            .iter()
            .filter(|r| r.to == service || r.to == "*")
            .map(|r| AuthorizationRule {
                from: r.from.clone(),
                methods: r.methods.clone(),
                paths: r.paths.clone(),
            })
            .collect(),
    });
    Snapshot {
        version: 0,
        service: Some(service.to_owned()),
        mesh: MeshSettings {
            trust_domain: config.trust_domain.clone(),
            tracing: config.tracing.clone(),
        },
        services: services.clone(),
        authorization,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use tether_api::Endpoint;

    fn config(text: &str) -> MeshConfig {
        crate::config::parse(Path::new("m.yaml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn catalog(addresses: &[&str]) -> CatalogState {
        let endpoints = addresses
            .iter()
            .map(|a| Endpoint {
                address: (*a).to_owned(),
                weight: 1,
                tags: vec![],
                meta: Default::default(),
            })
            .collect();
        CatalogState {
            services: [("api".to_owned(), endpoints)].into_iter().collect(),
        }
    }

    #[test]
    fn versions_change_only_with_content_and_keep_growing() {
        let store = Snapshots::new(ControlMetrics::new());
        let c = config("services:\n  web: {}\n  api: {}\n");
        store.update(&c, &catalog(&["127.0.0.1:1"]));
        let first = store.versions();
        assert!(
            first["api"] > 1_700_000_000_000,
            "wall-clock based: {first:?}"
        );
        store.update(&c, &catalog(&["127.0.0.1:1"]));
        assert_eq!(store.versions(), first, "same inputs, same versions");
        store.update(&c, &catalog(&["127.0.0.1:1", "127.0.0.1:2"]));
        let second = store.versions();
        assert!(second["api"] > first["api"] && second["web"] > first["web"]);
        assert_eq!(
            store.get("api").map(|s| s.services["api"].endpoints.len()),
            Some(2)
        );
    }

    #[test]
    fn authorization_holds_the_rules_for_the_service_only() {
        let c = config("services:\n  web: {}\n  api: {}\nauthorization:\n  default: deny\n  rules:\n    - { to: api, from: [web], methods: [GET] }\n    - { to: web, from: [api] }\n");
        let services = compute_services(&c, &CatalogState::default());
        let api = compute(&c, &services, "api");
        let rules = api.authorization.map(|a| a.rules).unwrap_or_default();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].from, vec!["web".to_owned()]);
    }
}
