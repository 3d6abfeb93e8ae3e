//! Snapshots: computed per proxy service from config + catalog, versioned,
//! and published to long-polls through one `watch` channel.
//!
//! A new version is made only when a service's computed content changes.
//! Versions come from the wall clock, `max(previous + 1, unix millis)`, so
//! they keep growing across control-plane restarts, and they are Lamport
//! clocks across replicas: every long-poll shows the version its proxy
//! holds ([`Snapshots::observe`]), so the next version this replica makes
//! is higher than any version a proxy brought over from another replica,
//! and a replica answers only with a higher version than the proxy's
//! ([`Snapshots::newer_than`]): a proxy never goes backwards when it
//! switches replicas.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tether_api::{
    Authorization, AuthorizationRule, InboundRateLimit, MeshSettings, ServiceSnapshot, Snapshot,
};
use tokio::sync::watch;

use crate::catalog::CatalogState;
use crate::config::MeshConfig;
use crate::metrics::ControlMetrics;

mod delta;

pub use delta::{Kind, HISTORY, MAX_STEPS};

/// What every service's snapshot shares: all services with endpoints and
/// policy, computed and encoded once per change, however many services and
/// proxies there are.
#[derive(Debug)]
pub struct Shared {
    services: BTreeMap<String, ServiceSnapshot>,
    /// Counts the shared parts made: deltas find the names touched since
    /// an older one by it ([`delta`]).
    generation: u64,
    /// `services` as JSON: sent as is inside every service's snapshot that
    /// holds the whole mesh.
    json: Bytes,
    /// Each service as a `"name":{…}` member, encoded once for the
    /// snapshots that hold only some services (`upstreams`), on first use.
    members: OnceLock<BTreeMap<String, Bytes>>,
}

impl Shared {
    fn new(services: BTreeMap<String, ServiceSnapshot>, generation: u64) -> Self {
        let json = serde_json::to_vec(&services).unwrap_or_else(|_| b"{}".to_vec());
        Self {
            services,
            generation,
            json: Bytes::from(json),
            members: OnceLock::new(),
        }
    }

    fn members(&self) -> &BTreeMap<String, Bytes> {
        self.members.get_or_init(|| {
            self.services
                .iter()
                .filter_map(|(name, service)| {
                    let mut member = serde_json::to_vec(name).ok()?;
                    member.push(b':');
                    member.extend(serde_json::to_vec(service).ok()?);
                    Some((name.clone(), Bytes::from(member)))
                })
                .collect()
        })
    }
}

/// One service's snapshot: a small header of its own plus the shared part.
#[derive(Debug)]
pub struct Published {
    /// Version, service name, mesh settings, authorization (`services` empty).
    pub header: Snapshot,
    shared: Arc<Shared>,
    /// The services this proxy holds (`crate::scope`); `None`: all.
    scope: Option<Arc<BTreeSet<String>>>,
    /// The wire JSON up to the shared part, encoded by the first long-poll
    /// that sends it.
    head: OnceLock<Bytes>,
    /// The versions of this service before this one, for deltas from them.
    history: Vec<delta::Past>,
    /// Deltas to this version, encoded once per base.
    deltas: delta::DeltaCache,
}

/// Closes the object the head opened, after the shared part.
const TAIL: &[u8] = b"}";

impl Published {
    /// The version.
    pub fn version(&self) -> u64 {
        self.header.version
    }

    /// The snapshot's wire JSON in three chunks: this service's head, the
    /// mesh-wide part every service shares (the same bytes for all of
    /// them, a refcount each) and the closing brace. Sent as they are,
    /// never joined: a mesh of 1,000 services × 5 instances is ~1 MiB of
    /// JSON, which a copy per subscribed service would multiply.
    ///
    /// A snapshot that holds only some services (`upstreams`) is sent as
    /// its head, then each of its services' members (encoded once per
    /// change and shared by every snapshot that holds them), then the
    /// braces: its size follows its own dependencies, not the mesh's.
    pub fn wire(&self) -> Vec<Bytes> {
        let head = self.head.get_or_init(|| self.encode_head(true)).clone();
        self.wire_with(head)
    }

    /// [`Self::wire`] for a proxy that does not merge deltas: an older one,
    /// which would refuse the `partial` field (`deny_unknown_fields`), so
    /// it is left out (such a proxy cannot discover services on demand
    /// anyway). Its head is encoded per answer: only proxies older than
    /// this control plane come here, during an upgrade.
    pub fn legacy_wire(&self) -> Vec<Bytes> {
        if self.scope.is_none() {
            return self.wire();
        }
        self.wire_with(self.encode_head(false))
    }

    fn wire_with(&self, head: Bytes) -> Vec<Bytes> {
        let Some(scope) = &self.scope else {
            return vec![head, self.shared.json.clone(), Bytes::from_static(TAIL)];
        };
        let members = self.shared.members();
        let mut chunks = Vec::with_capacity(scope.len() * 2 + 3);
        chunks.push(head);
        chunks.push(Bytes::from_static(b"{"));
        let mut first = true;
        for member in scope.iter().filter_map(|name| members.get(name)) {
            if !first {
                chunks.push(Bytes::from_static(b","));
            }
            first = false;
            chunks.push(member.clone());
        }
        chunks.push(Bytes::from_static(b"}"));
        chunks.push(Bytes::from_static(TAIL));
        chunks
    }

    /// The wire JSON in one buffer (for tests and tools; the server sends
    /// [`Self::wire`]).
    pub fn to_json(&self) -> Bytes {
        Bytes::from(self.wire().concat())
    }

    /// `{"version":…,…,"services":` — the header's fields, then the key
    /// whose value is the shared part.
    fn encode_head(&self, with_partial: bool) -> Bytes {
        #[derive(serde::Serialize)]
        struct Head<'a> {
            version: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            service: Option<&'a str>,
            mesh: &'a MeshSettings,
            #[serde(skip_serializing_if = "Option::is_none")]
            authorization: Option<&'a Authorization>,
            #[serde(skip_serializing_if = "Option::is_none")]
            inbound_rate_limit: Option<&'a InboundRateLimit>,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            partial: bool,
        }
        let h = &self.header;
        let head = Head {
            version: h.version,
            service: h.service.as_deref(),
            mesh: &h.mesh,
            authorization: h.authorization.as_ref(),
            inbound_rate_limit: h.inbound_rate_limit.as_ref(),
            partial: with_partial && self.scope.is_some(),
        };
        // An object with at least `version` and `mesh`: `{…}`. Its closing
        // brace makes way for the shared part.
        let mut json = serde_json::to_vec(&head).unwrap_or_else(|_| b"{}".to_vec());
        json.pop();
        if json.len() > 1 {
            json.push(b',');
        }
        json.extend_from_slice(b"\"services\":");
        Bytes::from(json)
    }

    /// The full snapshot (for tests and tools; the server sends [`Self::to_json`]).
    pub fn snapshot(&self) -> Snapshot {
        let services = match &self.scope {
            None => self.shared.services.clone(),
            Some(scope) => self
                .shared
                .services
                .iter()
                .filter(|(name, _)| scope.contains(*name))
                .map(|(name, service)| (name.clone(), service.clone()))
                .collect(),
        };
        Snapshot {
            services,
            partial: self.scope.is_some(),
            ..self.header.clone()
        }
    }

    /// Whether this snapshot would carry the same services as one holding
    /// `scope` of `shared`: the same shared part, or (holding only some
    /// services) the same content for each of them.
    fn same_services(&self, shared: &Arc<Shared>, scope: &Option<Arc<BTreeSet<String>>>) -> bool {
        if self.scope.as_deref() != scope.as_deref() {
            return false;
        }
        if Arc::ptr_eq(&self.shared, shared) {
            return true;
        }
        scope.as_ref().is_some_and(|names| {
            names
                .iter()
                .all(|n| self.shared.services.get(n) == shared.services.get(n))
        })
    }
}

/// Every service's current snapshot.
pub struct Snapshots {
    current: ArcSwap<BTreeMap<String, Arc<Published>>>,
    /// The latest shared part (a snapshot that holds only some services
    /// may keep an older one whose services it holds did not change).
    latest: Mutex<Option<Arc<Shared>>>,
    changed: watch::Sender<u64>,
    last_version: Mutex<u64>,
    /// Set by the first [`Snapshots::update`]: until then nothing is served.
    ready: AtomicBool,
    metrics: ControlMetrics,
    /// Services proxies asked for on demand (`want=`).
    wants: crate::wants::Wants,
    /// Per service, wakes its long-polls ([`Snapshots::subscribe_service`]).
    by_service: Mutex<std::collections::HashMap<String, watch::Sender<u64>>>,
    /// The names each recent shared part touched ([`delta`]).
    steps: Mutex<delta::Steps>,
    /// This replica's id in delta answers (random per process).
    replica: u64,
}

impl Snapshots {
    /// An empty store.
    pub fn new(metrics: ControlMetrics) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(BTreeMap::new()),
            latest: Mutex::new(None),
            changed: watch::channel(0).0,
            last_version: Mutex::new(0),
            ready: AtomicBool::new(false),
            metrics,
            wants: crate::wants::Wants::default(),
            by_service: Mutex::default(),
            steps: Mutex::default(),
            // Never 0: a proxy asks for a full snapshot with `delta=0`.
            replica: rand::random::<u64>().max(1),
        })
    }

    /// The services proxies asked for on demand.
    pub fn wants(&self) -> &crate::wants::Wants {
        &self.wants
    }

    /// Whether snapshots have been computed from a complete catalog.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The snapshot of `service`, if the service is known.
    pub fn get(&self, service: &str) -> Option<Arc<Published>> {
        self.current.load().get(service).cloned()
    }

    /// Current version per service.
    pub fn versions(&self) -> BTreeMap<String, u64> {
        self.current
            .load()
            .iter()
            .map(|(k, v)| (k.clone(), v.version()))
            .collect()
    }

    /// Every service's endpoint addresses (the catalog's healthy
    /// instances), from the part all snapshots share.
    pub fn endpoints(&self) -> BTreeMap<String, Vec<String>> {
        self.current
            .load()
            .values()
            .next()
            .map(|published| {
                published
                    .shared
                    .services
                    .iter()
                    .map(|(name, s)| {
                        let addresses = s.endpoints.iter().map(|e| e.address.clone());
                        (name.clone(), addresses.collect())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Wakes when any snapshot changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wakes when `service`'s snapshot changes or goes away (not when
    /// another service's does: a change to one service wakes only the
    /// long-polls of the services whose snapshots it changed, not every
    /// open poll).
    pub fn subscribe_service(&self, service: &str) -> watch::Receiver<u64> {
        let mut by_service = self
            .by_service
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match by_service.get(service) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = watch::channel(0);
                by_service.insert(service.to_owned(), sender);
                receiver
            }
        }
    }

    /// Wakes the long-polls of `names`.
    fn wake(&self, names: &[&str]) {
        let by_service = self
            .by_service
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for name in names {
            if let Some(sender) = by_service.get(*name) {
                sender.send_modify(|n| *n += 1);
            }
        }
    }

    /// Recomputes every service's snapshot; bumps versions only where the
    /// content changed. The shared part is compared and encoded once.
    pub fn update(&self, config: &MeshConfig, catalog: &CatalogState) {
        let previous = self.current.load_full();
        let services = compute_services(config, catalog);
        let mut latest = self
            .latest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let empty = BTreeMap::new();
        let old = latest.as_ref().map_or(&empty, |old| &old.services);
        let touched = delta::touched(old, &services);
        let shared = match latest.as_ref() {
            Some(old) if touched.is_empty() => Arc::clone(old),
            _ => {
                let generation = latest.as_ref().map_or(1, |old| old.generation + 1);
                self.steps
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(generation, touched);
                Arc::new(Shared::new(services, generation))
            }
        };
        *latest = Some(Arc::clone(&shared));
        drop(latest);
        let mut next = BTreeMap::new();
        let mut changed = 0;
        let mut woken: Vec<&str> = Vec::new();
        for name in shared.services.keys() {
            let mut header = header(config, name);
            let scope = crate::scope::upstreams(config, name, &shared.services);
            let scope = crate::scope::with_wanted(
                config,
                name,
                scope,
                &self.wants.of(name),
                &shared.services,
            )
            .map(Arc::new);
            match previous.get(name) {
                Some(old)
                    if old.same_services(&shared, &scope) && same_content(&old.header, &header) =>
                {
                    next.insert(name.clone(), old.rebased(&shared));
                }
                _ => {
                    header.version = self.next_version();
                    next.insert(
                        name.clone(),
                        Arc::new(Published {
                            header,
                            shared: Arc::clone(&shared),
                            scope,
                            head: OnceLock::new(),
                            history: delta::history_after(previous.get(name).map(|p| &**p)),
                            deltas: delta::DeltaCache::default(),
                        }),
                    );
                    changed += 1;
                    woken.push(name);
                }
            }
        }
        woken.extend(
            previous
                .keys()
                .filter(|k| !next.contains_key(*k))
                .map(String::as_str),
        );
        let removed = previous.keys().any(|k| !next.contains_key(k));
        let first = !self.ready.load(Ordering::Acquire);
        if changed > 0 || removed || first {
            self.metrics.snapshot_updates.inc_by(changed);
            self.current.store(Arc::new(next));
            self.ready.store(true, Ordering::Release);
            self.changed.send_modify(|n| *n += 1);
            self.wake(&woken);
            tracing::info!(
                changed,
                services = shared.services.len(),
                "snapshots updated"
            );
        }
    }

    fn next_version(&self) -> u64 {
        let now = unix_millis();
        let Ok(mut last) = self.last_version.lock() else {
            return now;
        };
        *last = (*last + 1).max(now);
        *last
    }

    /// Takes note of a version a proxy holds (a Lamport clock's receive):
    /// the next version made here is higher. A version further ahead of
    /// this replica's clock than [`MAX_CLOCK_AHEAD`] is ignored: it comes
    /// from a replica whose clock is wrong, and following it would drag
    /// every version made here into the future.
    pub fn observe(&self, held: u64) {
        if held == 0 || from_the_future(held, unix_millis()) {
            return;
        }
        if let Ok(mut last) = self.last_version.lock() {
            *last = (*last).max(held);
        }
    }

    /// Whether `current` should replace `held` at a proxy: it is higher,
    /// or `held` is from the future (a replica with a clock far ahead made
    /// it; waiting for this replica's versions to pass it would leave the
    /// proxy without changes that long).
    pub fn newer_than(current: u64, held: u64) -> bool {
        current > held || from_the_future(held, unix_millis())
    }
}

/// How far ahead of this replica's clock a proxy's version may be and
/// still be taken as the ordinary skew between replicas' clocks (NTP keeps
/// them within milliseconds; a minute is a broken clock).
pub const MAX_CLOCK_AHEAD: u64 = 60_000;

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn from_the_future(version: u64, now: u64) -> bool {
    version > now.saturating_add(MAX_CLOCK_AHEAD)
}

fn same_content(old: &Snapshot, new: &Snapshot) -> bool {
    Snapshot {
        version: 0,
        ..old.clone()
    } == *new
}

/// Every service (configured or in the catalog) with endpoints and policy.
pub(crate) fn compute_services(
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
                    outbound_port: c.outbound_port,
                    policy: c.policy.clone(),
                    endpoints,
                    subsets: c.subsets.clone(),
                    split: c.split.clone(),
                    routes: c.routes.clone(),
                    fault: c.fault.clone(),
                    rate_limit: c.rate_limit.as_ref().and_then(|r| r.outbound.clone()),
                    mirror: c.mirror.clone(),
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

/// The per-service part of `service`'s snapshot (version 0: set by the store).
pub fn header(config: &MeshConfig, service: &str) -> Snapshot {
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
            outbound_policy: config.outbound_policy,
        },
        services: BTreeMap::new(),
        authorization,
        inbound_rate_limit: config
            .services
            .get(service)
            .and_then(|s| s.rate_limit.as_ref())
            .and_then(|r| r.inbound.clone()),
        partial: false,
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
                zone: None,
            })
            .collect();
        CatalogState::synced([("api".to_owned(), endpoints)].into_iter().collect())
    }

    #[test]
    fn versions_are_ordered_across_replicas() {
        let store = Snapshots::new(ControlMetrics::new());
        let now = unix_millis();
        // A proxy brings a version made by a replica a second ahead: the
        // next version made here is higher still.
        store.observe(now + 1_000);
        assert!(store.next_version() > now + 1_000);
        // A version from a broken clock is not followed...
        store.observe(now + 10 * MAX_CLOCK_AHEAD);
        assert!(store.next_version() < now + 10 * MAX_CLOCK_AHEAD);
        // ...and is replaced by whatever this replica has.
        assert!(Snapshots::newer_than(now, now + 10 * MAX_CLOCK_AHEAD));
        assert!(Snapshots::newer_than(now + 1, now));
        assert!(!Snapshots::newer_than(now, now));
        assert!(!Snapshots::newer_than(now - 5, now));
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
            store
                .get("api")
                .map(|s| s.snapshot().services["api"].endpoints.len()),
            Some(2)
        );
        let wire = store.get("web").map(|s| s.to_json()).unwrap_or_default();
        let json: tether_api::Snapshot = serde_json::from_slice(&wire)
            .unwrap_or_else(|e| panic!("the wire JSON is a Snapshot: {e}"));
        assert_eq!(json.services["api"].endpoints.len(), 2);
        assert_eq!(json.service.as_deref(), Some("web"));
    }

    #[test]
    fn every_service_sends_the_same_bytes_of_the_shared_part() {
        let store = Snapshots::new(ControlMetrics::new());
        let c = config("services:\n  web: {}\n  api: {}\n");
        store.update(&c, &catalog(&["127.0.0.1:1"]));
        let (Some(web), Some(api)) = (store.get("web"), store.get("api")) else {
            panic!("both services have snapshots");
        };
        let (web, api) = (web.wire(), api.wire());
        assert_eq!(
            web[1].as_ptr(),
            api[1].as_ptr(),
            "one copy of the mesh, shared"
        );
        assert_ne!(web[0], api[0], "each service has its own head");
        let json: tether_api::Snapshot = serde_json::from_slice(&api.concat())
            .unwrap_or_else(|e| panic!("the chunks make one Snapshot: {e}"));
        assert_eq!(json.service.as_deref(), Some("api"));
        assert_eq!(json.services["api"].endpoints.len(), 1);
    }

    #[test]
    fn authorization_holds_the_rules_for_the_service_only() {
        let c = config("services:\n  web: {}\n  api: {}\nauthorization:\n  default: deny\n  rules:\n    - { to: api, from: [web], methods: [GET] }\n    - { to: web, from: [api] }\n");
        let api = header(&c, "api");
        let rules = api.authorization.map(|a| a.rules).unwrap_or_default();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].from, vec!["web".to_owned()]);
    }

    #[test]
    fn a_tcp_service_carries_its_outbound_port_on_the_wire() {
        let store = Snapshots::new(ControlMetrics::new());
        let c = config("services:\n  web: {}\n  db: { protocol: tcp, outbound_port: 15306 }\n");
        store.update(&c, &catalog(&[]));
        let wire = store.get("web").map(|s| s.to_json()).unwrap_or_default();
        let json: tether_api::Snapshot = serde_json::from_slice(&wire)
            .unwrap_or_else(|e| panic!("the wire JSON is a Snapshot: {e}"));
        assert_eq!(json.services["db"].outbound_port, Some(15306));
        assert_eq!(json.services["db"].protocol, tether_api::Protocol::Tcp);
        assert_eq!(json.services["web"].outbound_port, None);
    }

    #[test]
    fn rate_limits_travel_outbound_to_callers_and_inbound_to_the_service_only() {
        let store = Snapshots::new(ControlMetrics::new());
        let c = config("services:\n  web: {}\n  api:\n    fault: { abort: { status: 503, percent: 50 } }\n    rate_limit:\n      outbound: { requests_per_second: 20, burst: 5 }\n      inbound: { requests_per_second: 5, per_caller: true }\n");
        store.update(&c, &catalog(&["127.0.0.1:1"]));
        let parse = |service: &str| -> tether_api::Snapshot {
            let wire = store.get(service).map(|s| s.to_json()).unwrap_or_default();
            serde_json::from_slice(&wire).unwrap_or_else(|e| panic!("a Snapshot: {e}"))
        };
        let (web, api) = (parse("web"), parse("api"));
        assert_eq!(
            web.services["api"].rate_limit.as_ref().map(|r| r.burst),
            Some(Some(5))
        );
        assert!(web.services["api"].fault.is_some());
        assert_eq!(web.inbound_rate_limit, None, "web admits everything");
        assert!(api.inbound_rate_limit.is_some_and(|l| l.per_caller));
    }

    #[test]
    fn mirrors_locality_and_static_zones_reach_the_wire() {
        let store = Snapshots::new(ControlMetrics::new());
        let c = config("mesh:\n  catalog:\n    static:\n      services:\n        api: [ { address: \"127.0.0.1:1\", zone: a, tags: [v2] } ]\nservices:\n  api:\n    subsets: { v2: { tags: [v2] } }\n    mirror: { subset: v2, percent: 5 }\n    policy: { locality: { enabled: true } }\n    routes:\n      - split: [ { subset: v2, weight: 1 } ]\n        mirror: { subset: v2, max_in_flight: 2 }\n");
        let crate::config::CatalogConfig::Static { services } = &c.catalog else {
            panic!("a static catalog");
        };
        store.update(&c, &CatalogState::synced(services.clone()));
        let wire = store.get("api").map(|s| s.to_json()).unwrap_or_default();
        let json: tether_api::Snapshot = serde_json::from_slice(&wire)
            .unwrap_or_else(|e| panic!("the wire JSON is a Snapshot: {e}"));
        let api = &json.services["api"];
        assert_eq!(api.mirror.as_ref().map(|m| m.percent), Some(5.0));
        assert_eq!(
            api.routes[0].mirror.as_ref().map(|m| m.max_in_flight),
            Some(2)
        );
        assert!(api.policy.locality.enabled);
        assert_eq!(api.endpoints[0].zone.as_deref(), Some("a"));
        let text = String::from_utf8_lossy(&wire);
        assert_eq!(
            text.matches("\"zone\"").count(),
            1,
            "absent where unset: {text}"
        );
    }

    #[test]
    fn a_proxy_holds_its_upstreams_and_changes_elsewhere_leave_its_version() {
        let store = Snapshots::new(ControlMetrics::new());
        let mesh = |api_timeout: &str, db_timeout: &str| {
            config(&format!("services:\n  web:\n    upstreams: [api]\n  api:\n    policy: {{ timeout: {api_timeout} }}\n    mirror: {{ service: shadow, percent: 1 }}\n  shadow: {{}}\n  db:\n    policy: {{ timeout: {db_timeout} }}\n"))
        };
        store.update(&mesh("1s", "1s"), &catalog(&["127.0.0.1:1"]));
        let parse = |service: &str| -> tether_api::Snapshot {
            let wire = store.get(service).map(|s| s.to_json()).unwrap_or_default();
            serde_json::from_slice(&wire).unwrap_or_else(|e| panic!("a Snapshot: {e}"))
        };
        let web = parse("web");
        assert_eq!(
            web.services.keys().collect::<Vec<_>>(),
            ["api", "shadow"],
            "its upstream and what that mirrors to"
        );
        assert_eq!(store.get("web").map(|p| p.snapshot()), Some(web.clone()));
        assert_eq!(
            parse("db").services.len(),
            4,
            "no declaration: the whole mesh"
        );
        // db changes: web's snapshot does not.
        store.update(&mesh("1s", "2s"), &catalog(&["127.0.0.1:1"]));
        assert_eq!(parse("web").version, web.version);
        assert_ne!(parse("db").version, 0);
        // api changes: web's does.
        store.update(&mesh("3s", "2s"), &catalog(&["127.0.0.1:1"]));
        let changed = parse("web");
        assert!(changed.version > web.version);
        assert_eq!(
            changed.services["api"].policy.timeout,
            std::time::Duration::from_secs(3)
        );
        let empty = |text: &str| text.len();
        let all = store.get("db").map(|p| p.to_json()).unwrap_or_default();
        let own = store.get("web").map(|p| p.to_json()).unwrap_or_default();
        assert!(empty(&String::from_utf8_lossy(&own)) < empty(&String::from_utf8_lossy(&all)));
    }
}
