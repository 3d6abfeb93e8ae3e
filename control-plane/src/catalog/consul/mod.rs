//! The Consul catalog: three blocking queries tell what changed, and a few
//! readers read the services that did, all over at most
//! [`MAX_CONNECTIONS`] connections however many services there are.
//!
//! - `/v1/catalog/services` (names and tags): a new name, or a name whose
//!   tags changed, is read at once; a name gone is dropped. Any move of its
//!   index is a registration, deregistration or re-registration (address,
//!   port, meta, weights), and nothing in this answer says which service:
//!   so every node's instance list is read (`/v1/catalog/node-services`,
//!   one request per node, a *sweep*), and the services with an instance
//!   changed since their last read (its modify index above the index that
//!   read answered with), added, or gone are read.
//! - `/v1/health/state/any?filter=Status != "passing"` (the checks not
//!   passing, with their services; its index moves with any check): the
//!   services whose checks started or stopped passing are read; a node
//!   check's change reads every service with an instance on that node. An
//!   instance passes when none of its checks and its node's is in this
//!   set, so nothing else about checks can change what is served.
//! - `/v1/catalog/nodes`: a node whose address or meta changed (what its
//!   instances without an address of their own, and their zone, come from)
//!   reads every service with an instance on it.
//!
//! Reads are plain `GET /v1/health/service/<name>` (every instance with its
//! checks, kept when all pass: what `?passing=true` keeps), taken by
//! [`SERVICE_READERS`] readers from a queue where changes go before a sweep
//! ([`queue`]). The service list's first answer (at start and after an
//! error) reads every service: nothing is served until all have answered
//! once. At start that read waits for the check list's and the node list's
//! first answers, so every change after a service's read shows when they
//! answer next (after an error, the last answer before it serves).
//!
//! Why not one blocking query per service (what this did before): each
//! holds a connection for its whole wait, and Consul refuses more than
//! `limits.http_max_conns_per_client` (default 200) per client address, so
//! past ~190 services the rest never answered. Why not HTTP/2: Consul's
//! HTTPS speaks it (Go's default of 250 streams per connection), its plain
//! port does not. Fabio watches `/v1/health/state/any` alone and reads
//! every service on each change; that misses re-registrations and services
//! without checks, which the service and node indexes catch here.
//!
//! **Why a thin client of our own** (on hyper's connection API, already in
//! the build for the server and the `status` command) rather than a Consul
//! crate:
//! - `consulrs` 0.1.0 (its only release) has no `/v1/health/...` endpoints,
//!   and it pulls reqwest 0.11, hyper 0.14 and OpenSSL: a second HTTP and
//!   TLS stack beside hyper 1 and rustls.
//! - `rs-consul` 0.15 would serve (hyper 1, rustls, blocking queries), but
//!   the watcher needs a few GETs; our own code lets us see the raw
//!   `X-Consul-Index` (reset when it goes backwards, never 0), bound every
//!   wait and the number of connections, carry `ServiceMeta`/`Weights` as
//!   they are, and add no dependency.
//!
//! Either way the rest of the control plane only sees the [`Catalog`] trait.

mod api;
mod changes;
mod hold;
mod pool;
mod queue;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_api::Endpoint;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

pub use api::{escape, ConsulApi, ConsulError};
use hold::Hold;
use queue::{Read, ReadQueue, Trigger};

use super::{AbortOnDrop, Catalog, CatalogState};
use crate::config::{usable_address, ConsulConfig};
use crate::metrics::ControlMetrics;

/// Consul's own service, never a mesh upstream.
const CONSUL_SERVICE: &str = "consul";
/// Reads made at once. Each read is one short request; eight read 5,000
/// services in a few seconds on a local agent (BENCHMARKS.md) while
/// staying far below Consul's default 200 connections per client.
pub const SERVICE_READERS: usize = 8;
/// The service list, the check list and the node list.
const BLOCKING_WATCHES: usize = 3;
/// Connections the watcher ever holds to Consul.
pub const MAX_CONNECTIONS: usize = SERVICE_READERS + BLOCKING_WATCHES;
/// Shortest time between two published states: a sweep that finds many
/// services changed (Consul restarted, say) publishes a few times a second
/// rather than once per service, for a delay no one notices.
const PUBLISH_PAUSE: Duration = Duration::from_millis(20);

/// A watched Consul catalog; dropping it stops every watch.
pub struct ConsulCatalog {
    tx: watch::Sender<Arc<CatalogState>>,
    metrics: ControlMetrics,
    _task: AbortOnDrop,
}

impl Drop for ConsulCatalog {
    fn drop(&mut self) {
        self.metrics.consul_watches.set(0);
        self.metrics.consul_reads_queued.set(0);
    }
}

impl ConsulCatalog {
    /// Starts watching the agent in `config` (needs a Tokio runtime).
    pub fn start(config: ConsulConfig, metrics: ControlMetrics) -> Self {
        let (tx, _) = watch::channel(Arc::new(CatalogState::default()));
        let api = ConsulApi::with_connections(config, metrics.clone(), MAX_CONNECTIONS);
        let task = tokio::spawn(watch_catalog(api, tx.clone()));
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
    /// Per node, the instances (healthy or not) the services' last reads
    /// saw there: what a node's change reads again, and what a sweep
    /// compares the node's listing with.
    on_node: changes::OnNode,
    /// Per service, its instances (node, ID) at its last read: what to take
    /// out of `on_node` when it is read again.
    instances: BTreeMap<String, Vec<(String, String)>>,
    /// Each service's `X-Consul-Index` at its last read: a listed instance
    /// changed after it when its modify index is higher; a lower one means
    /// the answer came from a Consul that lost state.
    indexes: BTreeMap<String, u64>,
    /// The nodes of the node list's last answer: what a sweep reads.
    nodes: BTreeSet<String>,
}

type Shared = Arc<Mutex<Known>>;

/// Publishes the current state if it differs from the last one published.
fn publish(tx: &watch::Sender<Arc<CatalogState>>, shared: &Shared) {
    let Ok(mut known) = shared.lock() else { return };
    if !known.synced {
        // Answers are only kept for listed services, so equal counts come
        // first: the full check then runs once, not once per answer.
        known.synced = known.listed.as_ref().is_some_and(|listed| {
            listed.len() == known.services.len()
                && listed.iter().all(|n| known.services.contains_key(n))
        });
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
    let sent = tx.send_if_modified(|current| {
        if current.synced && current.services == *services {
            return false;
        }
        *current = Arc::new(CatalogState::synced(services.clone()));
        true
    });
    if sent {
        // What deploy/scripts/bench-consul-watch.sh times a change by.
        tracing::debug!(services = services.len(), "consul catalog published");
    }
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

/// What every task of one watcher shares.
struct Watcher {
    api: ConsulApi,
    tx: watch::Sender<Arc<CatalogState>>,
    shared: Shared,
    queue: ReadQueue,
    /// Wakes the publisher (see [`PUBLISH_PAUSE`]).
    dirty: Notify,
    /// One permit from each of the check list and the node list once they
    /// first answered: the first full read waits for both, so that every
    /// change after a service's read shows in what they answer next.
    baselines: Semaphore,
}

impl Watcher {
    /// Asks the publisher for a publish soon.
    fn changed(&self) {
        self.dirty.notify_one();
    }

    /// Starts a resync hold (see [`hold_removals`]).
    fn hold_removals(&self) {
        hold_removals(&self.api, &self.tx, &self.shared);
    }

    /// Reads of the services with an instance on one of `nodes`.
    fn services_on(&self, nodes: &BTreeSet<String>) -> Vec<Read> {
        match self.shared.lock() {
            Ok(known) => changes::services_on(&known.on_node, nodes)
                .into_iter()
                .map(Read::Service)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Queues a sweep: every node known (from the node list, and from the
    /// services' reads in case the node list lags behind).
    fn sweep(&self) {
        let nodes: BTreeSet<String> = match self.shared.lock() {
            Ok(known) => known
                .nodes
                .iter()
                .chain(known.on_node.keys())
                .cloned()
                .collect(),
            Err(_) => return,
        };
        self.api.metrics().consul_sweeps.inc();
        self.queue
            .push(nodes.into_iter().map(Read::Node), Trigger::Sweep);
    }
}

async fn watch_catalog(api: ConsulApi, tx: watch::Sender<Arc<CatalogState>>) {
    let queue = ReadQueue::new(api.metrics().consul_reads_queued.clone());
    let watcher = Arc::new(Watcher {
        api,
        tx,
        shared: Arc::default(),
        queue,
        dirty: Notify::new(),
        baselines: Semaphore::new(0),
    });
    watcher
        .api
        .metrics()
        .consul_watches
        .set(BLOCKING_WATCHES as i64);
    // Dropped (and so aborted) with this task.
    let mut tasks = vec![
        AbortOnDrop(tokio::spawn(watch_checks(Arc::clone(&watcher)))),
        AbortOnDrop(tokio::spawn(watch_nodes(Arc::clone(&watcher)))),
        AbortOnDrop(tokio::spawn(publisher(Arc::clone(&watcher)))),
    ];
    for _ in 0..SERVICE_READERS {
        tasks.push(AbortOnDrop(tokio::spawn(reader(Arc::clone(&watcher)))));
    }
    watch_services(&watcher).await;
    drop(tasks);
}

/// Publishes when asked, at most once per [`PUBLISH_PAUSE`].
async fn publisher(watcher: Arc<Watcher>) {
    loop {
        watcher.dirty.notified().await;
        publish(&watcher.tx, &watcher.shared);
        tokio::time::sleep(PUBLISH_PAUSE).await;
    }
}

/// The service list: names to read and drop, and sweeps.
async fn watch_services(watcher: &Watcher) {
    let api = &watcher.api;
    let (mut index, mut failures) = (0u64, 0u32);
    let mut tags: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut baselined = false;
    loop {
        let (names, first, moved) = match api
            .get::<BTreeMap<String, serde_json::Value>>("/v1/catalog/services", index)
            .await
        {
            Ok((names, next)) => {
                if failures > 0 || went_backwards(index, next) {
                    watcher.hold_removals();
                }
                let (first, moved) = (index == 0, index != 0 && next != index);
                (index, failures) = (next, 0);
                (names, first, moved)
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
        let names: BTreeMap<String, serde_json::Value> = names
            .into_iter()
            .filter(|(n, _)| n != CONSUL_SERVICE)
            .collect();
        let listed: BTreeSet<String> = names.keys().cloned().collect();
        // New names, and names whose tags changed (a re-registration we can
        // place), are read before the sweep; a first answer is all sweep.
        let changed: Vec<String> = names
            .iter()
            .filter(|(name, t)| !first && tags.get(*name) != Some(*t))
            .map(|(name, _)| name.clone())
            .collect();
        if let Ok(mut known) = watcher.shared.lock() {
            known.services.retain(|name, _| listed.contains(name));
            known.indexes.retain(|name, _| listed.contains(name));
            let gone: Vec<String> = known
                .instances
                .keys()
                .filter(|name| !listed.contains(*name))
                .cloned()
                .collect();
            for name in gone {
                forget_instances(&mut known, &name);
            }
            known.listed = Some(listed.clone());
        }
        watcher
            .queue
            .push(changed.into_iter().map(Read::Service), Trigger::Change);
        if first {
            if !baselined {
                // Closed never; an error here would only mean reading now.
                if let Ok(both) = watcher.baselines.acquire_many(2).await {
                    both.forget();
                }
                baselined = true;
            }
            // At start and after an error: every service, in full.
            api.metrics().consul_sweeps.inc();
            watcher
                .queue
                .push(listed.into_iter().map(Read::Service), Trigger::Sweep);
        } else if moved {
            watcher.sweep();
        }
        tags = names;
        watcher.changed();
    }
}

/// The checks not passing: services whose checks (or whose nodes' checks)
/// started or stopped passing. The filter keeps the answer small in a
/// healthy mesh: the whole list is ~450 B per check, 7 MB at 15,000.
async fn watch_checks(watcher: Arc<Watcher>) {
    let api = &watcher.api;
    let path = format!(
        "/v1/health/state/any?filter={}",
        escape(r#"Status != "passing""#)
    );
    let (mut index, mut failures) = (0u64, 0u32);
    let mut last: Option<changes::Checks> = None;
    loop {
        let checks = match api.get(&path, index).await {
            Ok((entries, next)) => {
                if failures > 0 || went_backwards(index, next) {
                    watcher.hold_removals();
                }
                let unchanged = index != 0 && next == index;
                (index, failures) = (next, 0);
                if unchanged {
                    continue; // the wait ran out
                }
                changes::checks(entries)
            }
            Err(error) => {
                index = 0; // as for the service list
                api.backoff(&mut failures, &error).await;
                continue;
            }
        };
        // The first answer has nothing to compare with: the service list's
        // first answer reads every service anyway. After an error the last
        // list still tells what changed meanwhile.
        if last.is_none() {
            watcher.baselines.add_permits(1);
        }
        if let Some(before) = &last {
            let (services, nodes) = changes::changed_checks(before, &checks);
            let mut reads: Vec<Read> = services.into_iter().map(Read::Service).collect();
            reads.extend(watcher.services_on(&nodes));
            watcher.queue.push(reads, Trigger::Change);
        }
        last = Some(checks);
    }
}

/// The node list: services with an instance on a node that changed.
async fn watch_nodes(watcher: Arc<Watcher>) {
    let api = &watcher.api;
    let (mut index, mut failures) = (0u64, 0u32);
    let mut last: Option<changes::Nodes> = None;
    loop {
        let nodes = match api.get("/v1/catalog/nodes", index).await {
            Ok((entries, next)) => {
                if failures > 0 || went_backwards(index, next) {
                    watcher.hold_removals();
                }
                let unchanged = index != 0 && next == index;
                (index, failures) = (next, 0);
                if unchanged {
                    continue;
                }
                changes::nodes(entries)
            }
            Err(error) => {
                index = 0;
                api.backoff(&mut failures, &error).await;
                continue;
            }
        };
        if let Ok(mut known) = watcher.shared.lock() {
            known.nodes = nodes.keys().cloned().collect();
        }
        match &last {
            Some(before) => {
                let changed = changes::changed_nodes(before, &nodes);
                watcher
                    .queue
                    .push(watcher.services_on(&changed), Trigger::Change);
                // A new node's instances, registered in the same breath,
                // may have moved the service index before the node list
                // showed the node to a sweep.
                let new = nodes.keys().filter(|n| !before.contains_key(*n));
                watcher
                    .queue
                    .push(new.cloned().map(Read::Node), Trigger::Change);
            }
            None => watcher.baselines.add_permits(1),
        }
        last = Some(nodes);
    }
}

/// Whether Consul's index went backwards (the next index is reset to 0,
/// see [`api`]): the server answering lost state, or is another one.
fn went_backwards(index: u64, next: u64) -> bool {
    index != 0 && next == 0
}

/// One reader: makes the reads the queue hands it, one at a time.
async fn reader(watcher: Arc<Watcher>) {
    let api = &watcher.api;
    let mut failures = 0u32;
    loop {
        let (read, trigger) = watcher.queue.next().await;
        let result = match &read {
            Read::Service(name) => read_service(&watcher, name, failures > 0).await,
            Read::Node(node) => read_node(&watcher, node, failures > 0).await,
        };
        match result {
            Ok(true) => {
                failures = 0;
                api.metrics()
                    .consul_reads
                    .with_label_values(&[read.label()])
                    .inc();
            }
            Ok(false) => {} // nothing asked of Consul
            Err(error) => {
                // Again, in its lane, after this reader's backoff (the
                // others go on meanwhile).
                watcher.queue.push([read], trigger);
                api.backoff(&mut failures, &error).await;
            }
        }
    }
}

/// Reads one service and stores it; `Ok(false)` when it is no longer
/// listed (not read).
async fn read_service(
    watcher: &Watcher,
    name: &str,
    recovering: bool,
) -> Result<bool, ConsulError> {
    let listed = watcher
        .shared
        .lock()
        .is_ok_and(|k| k.listed.as_ref().is_some_and(|l| l.contains(name)));
    if !listed {
        return Ok(false); // deregistered meanwhile
    }
    let path = format!("/v1/health/service/{}", escape(name));
    let (entries, index) = watcher.api.read::<Vec<api::HealthEntry>>(&path).await?;
    apply(watcher, name, entries, index, recovering);
    Ok(true)
}

/// Lists one node's instances and queues the services changed there since
/// their last read.
async fn read_node(watcher: &Watcher, node: &str, recovering: bool) -> Result<bool, ConsulError> {
    let path = format!("/v1/catalog/node-services/{}", escape(node));
    let (listing, _) = watcher.api.read::<api::NodeServices>(&path).await?;
    if recovering {
        // Consul answers again: what this reader reads next may be less
        // than Consul will soon hold (see `apply`).
        watcher.hold_removals();
    }
    let listing = listing.services.unwrap_or_default();
    let changed = match watcher.shared.lock() {
        Ok(known) => changes::changed_on_node(&listing, known.on_node.get(node), &known.indexes),
        Err(_) => return Ok(true),
    };
    watcher
        .queue
        .push(changed.into_iter().map(Read::Service), Trigger::Change);
    Ok(true)
}

/// Takes a service's instances out of `on_node` (and `instances`).
fn forget_instances(known: &mut Known, name: &str) {
    for (node, id) in known.instances.remove(name).unwrap_or_default() {
        if let Some(seen) = known.on_node.get_mut(&node) {
            seen.remove(&id);
            if seen.is_empty() {
                known.on_node.remove(&node);
            }
        }
    }
}

/// Stores one service's answer and asks for a publish if it changed.
fn apply(
    watcher: &Watcher,
    name: &str,
    entries: Vec<api::HealthEntry>,
    index: u64,
    recovered: bool,
) {
    let api = &watcher.api;
    let instances: Vec<(String, String)> = entries
        .iter()
        .map(|e| (e.node().to_owned(), e.id().to_owned()))
        .collect();
    let (endpoints, unusable): (Vec<Endpoint>, Vec<Endpoint>) = entries
        .into_iter()
        .filter(api::HealthEntry::passing)
        .map(|entry| entry.into_endpoint(api.zone_meta_key()))
        .partition(|e| usable_address(&e.address));
    let backwards = watcher
        .shared
        .lock()
        .is_ok_and(|k| k.indexes.get(name).is_some_and(|&before| index < before));
    if recovered || backwards {
        // As for the blocking queries: a Consul answering again, or one
        // that lost state, may answer with less than it will soon hold.
        watcher.hold_removals();
    }
    let changed = match watcher.shared.lock() {
        Ok(mut known) => {
            if !known.listed.as_ref().is_some_and(|l| l.contains(name)) {
                return; // deregistered meanwhile
            }
            forget_instances(&mut known, name);
            for (node, id) in &instances {
                known
                    .on_node
                    .entry(node.clone())
                    .or_default()
                    .insert(id.clone(), name.to_owned());
            }
            known.instances.insert(name.to_owned(), instances);
            known.indexes.insert(name.to_owned(), index);
            let before = known.services.insert(name.to_owned(), endpoints.clone());
            // Unchanged answers (most of a sweep) cost no publish.
            before.as_ref() != Some(&endpoints)
        }
        Err(_) => false,
    };
    if changed {
        for endpoint in unusable {
            // Logged per change, not per read: a sweep re-reads everything.
            tracing::warn!(service = %name, address = %endpoint.address, "instance skipped: its Consul address is not host:port");
        }
        watcher.changed();
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
