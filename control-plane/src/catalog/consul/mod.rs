//! The Consul catalog: one blocking query on `/v1/catalog/services` and, per
//! service, one on `/v1/health/service/<name>?passing=true`, each with
//! `index` and `wait`, folded into one [`CatalogState`] that any number of
//! proxies' snapshots are computed from.
//!
//! **Why a thin client of our own** (on hyper-util's client, already in the
//! build for the server and the `status` command) rather than a Consul crate:
//! - `consulrs` 0.1.0 (its only release) has no `/v1/health/...` endpoints,
//!   so it cannot filter to passing instances, and it pulls reqwest 0.11,
//!   hyper 0.14 and OpenSSL: a second HTTP and TLS stack beside hyper 1 and
//!   rustls.
//! - `rs-consul` 0.15 would serve (hyper 1, rustls, blocking queries on both
//!   endpoints), but the watcher needs exactly two GETs; our own ~150 lines
//!   let us see the raw `X-Consul-Index` (reset when it goes backwards,
//!   never 0), bound every wait, carry `ServiceMeta`/`Weights` as they are,
//!   and add no dependency.
//!
//! Either way the rest of the control plane only sees the [`Catalog`] trait.
//!
//! Consul limits concurrent HTTP connections per client IP
//! (`limits.http_max_conns_per_client`, default 200) and every watched
//! service holds one open blocking query: with more than ~190 services, raise
//! that limit on the agent the control plane talks to.

mod api;
mod hold;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tether_api::Endpoint;
use tokio::sync::watch;
use tokio::time::Instant;

pub use api::{escape, ConsulApi, ConsulError};
use hold::Hold;

use super::{AbortOnDrop, Catalog, CatalogState};
use crate::config::{usable_address, ConsulConfig};
use crate::metrics::ControlMetrics;

/// Consul's own service, never a mesh upstream.
const CONSUL_SERVICE: &str = "consul";
/// Consul's default `limits.http_max_conns_per_client`.
const CONSUL_DEFAULT_CONN_LIMIT: usize = 200;

/// A watched Consul catalog; dropping it stops every watch.
pub struct ConsulCatalog {
    tx: watch::Sender<Arc<CatalogState>>,
    metrics: ControlMetrics,
    _task: AbortOnDrop,
}

impl Drop for ConsulCatalog {
    fn drop(&mut self) {
        self.metrics.consul_watches.set(0);
    }
}

impl ConsulCatalog {
    /// Starts watching the agent in `config` (needs a Tokio runtime).
    pub fn start(config: ConsulConfig, metrics: ControlMetrics) -> Self {
        let (tx, _) = watch::channel(Arc::new(CatalogState::default()));
        let api = ConsulApi::new(config, metrics.clone());
        let task = tokio::spawn(watch_services(api, tx.clone()));
        Self {
            tx,
            metrics,
            _task: AbortOnDrop(task),
        }
    }
}

impl Catalog for ConsulCatalog {
    fn subscribe(&self) -> watch::Receiver<Arc<CatalogState>> {
        self.tx.subscribe()
    }
}

/// What the watches have learnt so far.
#[derive(Default)]
struct Known {
    /// Services with a health answer.
    services: BTreeMap<String, Vec<Endpoint>>,
    /// The last service list, once read.
    listed: Option<BTreeSet<String>>,
    /// Every listed service had a health answer at least once.
    synced: bool,
    /// Set while Consul's removals wait (see [`hold`]).
    hold: Option<Hold>,
}

type Shared = Arc<Mutex<Known>>;

/// Publishes the current state if it differs from the last one published.
fn publish(tx: &watch::Sender<Arc<CatalogState>>, shared: &Shared) {
    let Ok(mut known) = shared.lock() else { return };
    if !known.synced {
        known.synced = known
            .listed
            .as_ref()
            .is_some_and(|listed| listed.iter().all(|n| known.services.contains_key(n)));
    }
    if !known.synced {
        // Nobody uses a partial state: skip copying it (O(n²) at start-up).
        return;
    }
    if known
        .hold
        .as_ref()
        .is_some_and(|h| !h.active(Instant::now()))
    {
        known.hold = None;
        tracing::info!("consul resync hold over: instances Consul no longer lists are dropped");
    }
    let merged;
    let services = match &known.hold {
        Some(hold) => {
            merged = hold.merge(&known.services);
            &merged
        }
        None => &known.services,
    };
    tx.send_if_modified(|current| {
        if current.synced && current.services == *services {
            return false;
        }
        *current = Arc::new(CatalogState::synced(services.clone()));
        true
    });
}

/// Starts a resync hold (unless one runs or none is configured): called by
/// a watch whose query succeeded after failing, or whose index went
/// backwards, before its answer is applied.
fn hold_removals(api: &ConsulApi, tx: &watch::Sender<Arc<CatalogState>>, shared: &Shared) {
    let hold_for = api.resync_hold();
    if hold_for.is_zero() {
        return;
    }
    let now = Instant::now();
    let until = now + hold_for;
    {
        // One lock for the check and the start: watches that recover
        // together start one hold. Lock order as in `publish`: `shared`,
        // then `tx`.
        let Ok(mut known) = shared.lock() else { return };
        if known.hold.as_ref().is_some_and(|h| h.active(now)) {
            return;
        }
        let current = tx.borrow();
        if !current.synced {
            return; // nothing handed out yet, nothing to keep
        }
        let held = current.services.clone();
        drop(current);
        known.hold = Some(Hold { until, held });
    }
    api.metrics().consul_resync_holds.inc();
    tracing::info!(
        hold = ?hold_for,
        "consul answers again after a failure: instances it no longer lists are kept meanwhile, so sidecars re-registering with a restarted Consul are not dropped"
    );
    let (tx, shared) = (tx.clone(), Arc::clone(shared));
    tokio::spawn(async move {
        tokio::time::sleep_until(until).await;
        publish(&tx, &shared);
    });
}

async fn watch_services(api: ConsulApi, tx: watch::Sender<Arc<CatalogState>>) {
    let shared: Shared = Arc::default();
    // Dropped (and so aborted) with this task.
    let mut watchers: BTreeMap<String, AbortOnDrop> = BTreeMap::new();
    let (mut index, mut failures) = (0u64, 0u32);
    loop {
        let names: BTreeMap<String, serde_json::Value> =
            match api.get("/v1/catalog/services", index).await {
                Ok((names, next)) => {
                    if failures > 0 || went_backwards(index, next) {
                        hold_removals(&api, &tx, &shared);
                    }
                    (index, failures) = (next, 0);
                    names
                }
                Err(error) => {
                    // The next answer may come from a restarted or another
                    // server, whose index means nothing against ours: a
                    // lower one would block a whole `wait` before it shows.
                    index = 0;
                    api.backoff(&mut failures, &error).await;
                    continue;
                }
            };
        let listed: BTreeSet<String> = names.into_keys().filter(|n| n != CONSUL_SERVICE).collect();
        warn_about_connection_limit(watchers.len(), listed.len());
        watchers.retain(|name, _| listed.contains(name));
        if let Ok(mut known) = shared.lock() {
            known.services.retain(|name, _| listed.contains(name));
            known.listed = Some(listed.clone());
        }
        for name in listed {
            watchers.entry(name.clone()).or_insert_with(|| {
                let watch = watch_health(api.clone(), name, Arc::clone(&shared), tx.clone());
                AbortOnDrop(tokio::spawn(watch))
            });
        }
        api.metrics().consul_watches.set(1 + watchers.len() as i64);
        publish(&tx, &shared);
    }
}

/// Whether Consul's index went backwards (the next index is reset to 0,
/// see [`api`]): the server answering lost state, or is another one.
fn went_backwards(index: u64, next: u64) -> bool {
    index != 0 && next == 0
}

/// Says, once per crossing, that Consul's default per-client connection
/// limit is about to refuse watches (they would fail and retry forever).
fn warn_about_connection_limit(before: usize, now: usize) {
    // The service list, the watches, and a few idle connections.
    let threshold = CONSUL_DEFAULT_CONN_LIMIT - 20;
    if now >= threshold && before < threshold {
        tracing::warn!(
            services = now,
            "each watched Consul service holds one HTTP connection open; Consul refuses more than \
             {CONSUL_DEFAULT_CONN_LIMIT} per client by default: set `limits {{ http_max_conns_per_client = {} }}` \
             (or more) on the agent",
            (now * 2).max(1024)
        );
    }
}

async fn watch_health(
    api: ConsulApi,
    name: String,
    shared: Shared,
    tx: watch::Sender<Arc<CatalogState>>,
) {
    let path = format!("/v1/health/service/{}?passing=true", escape(&name));
    let (mut index, mut failures) = (0u64, 0u32);
    loop {
        let entries: Vec<api::HealthEntry> = match api.get(&path, index).await {
            Ok((entries, next)) => {
                if failures > 0 || went_backwards(index, next) {
                    hold_removals(&api, &tx, &shared);
                }
                (index, failures) = (next, 0);
                entries
            }
            Err(error) => {
                index = 0; // as for the service list
                api.backoff(&mut failures, &error).await;
                continue;
            }
        };
        let (endpoints, unusable): (Vec<Endpoint>, Vec<Endpoint>) = entries
            .into_iter()
            .map(|entry| entry.into_endpoint(api.zone_meta_key()))
            .partition(|e| usable_address(&e.address));
        for endpoint in unusable {
            // Logged per Consul change, not per poll: unchanged answers block.
            tracing::warn!(service = %name, address = %endpoint.address, "instance skipped: its Consul address is not host:port");
        }
        let changed = match shared.lock() {
            Ok(mut known) => {
                if known.listed.as_ref().is_some_and(|l| !l.contains(&name)) {
                    return; // deregistered meanwhile; this watch is being stopped
                }
                let before = known.services.insert(name.clone(), endpoints.clone());
                // Unchanged answers (a `wait` running out) cost no publish.
                before.as_ref() != Some(&endpoints)
            }
            Err(_) => false,
        };
        if changed {
            publish(&tx, &shared);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(address: &str) -> Endpoint {
        Endpoint {
            address: address.to_owned(),
            weight: 1,
            tags: vec![],
            meta: BTreeMap::new(),
            zone: None,
        }
    }

    #[test]
    fn synced_only_once_every_listed_service_answered() {
        let (tx, rx) = watch::channel(Arc::new(CatalogState::default()));
        let shared: Shared = Arc::default();
        publish(&tx, &shared);
        assert!(!rx.borrow().synced, "nothing listed yet");
        if let Ok(mut known) = shared.lock() {
            known.listed = Some(["api".to_owned(), "web".to_owned()].into());
            known
                .services
                .insert("api".into(), vec![endpoint("127.0.0.1:1")]);
        }
        publish(&tx, &shared);
        assert!(!rx.borrow().synced, "web has not answered");
        assert!(
            rx.borrow().services.is_empty(),
            "a partial state is not published"
        );
        if let Ok(mut known) = shared.lock() {
            known.services.insert("web".into(), vec![]);
        }
        publish(&tx, &shared);
        assert!(rx.borrow().synced);
        assert_eq!(rx.borrow().healthy("api").len(), 1);
        if let Ok(mut known) = shared.lock() {
            known.listed = Some(["api".into(), "web".into(), "db".into()].into());
        }
        publish(&tx, &shared);
        assert!(
            rx.borrow().synced,
            "once synced, a new service does not unsync"
        );
    }
}
