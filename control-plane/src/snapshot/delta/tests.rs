use std::path::Path;

use tether_api::{Endpoint, Snapshot, SnapshotUpdate};

use super::super::Snapshots;
use super::*;
use crate::catalog::CatalogState;
use crate::config::MeshConfig;
use crate::metrics::ControlMetrics;

fn config(text: &str) -> MeshConfig {
    crate::config::parse(Path::new("m.yaml"), text).unwrap_or_else(|e| panic!("{e}"))
}

/// A catalog of `services`, each with `instances` endpoints.
fn catalog(services: &[(&str, u16)]) -> CatalogState {
    let services = services
        .iter()
        .map(|(name, instances)| {
            let endpoints = (0..*instances)
                .map(|i| Endpoint {
                    address: format!("127.0.0.1:{}", 1000 + i),
                    weight: 1,
                    tags: vec![],
                    meta: Default::default(),
                    zone: None,
                })
                .collect();
            ((*name).to_owned(), endpoints)
        })
        .collect();
    CatalogState::synced(services)
}

fn full(store: &Snapshots, service: &str) -> Snapshot {
    store
        .get(service)
        .map(|p| p.snapshot())
        .unwrap_or_else(|| panic!("no snapshot of {service}"))
}

/// What a proxy of `service` holding `held` (made here) receives.
fn answer(store: &Snapshots, service: &str, held: u64) -> (Kind, SnapshotUpdate, usize) {
    let current = store
        .get(service)
        .unwrap_or_else(|| panic!("no snapshot of {service}"));
    let (kind, chunks) = store.update_wire(&current, held, store.replica());
    let bytes = chunks.concat();
    let update: SnapshotUpdate = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "not a SnapshotUpdate: {e}: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(update.replica, store.replica());
    assert_eq!(update.full.is_some(), kind == Kind::Full);
    assert_eq!(update.delta.is_some(), kind == Kind::Delta);
    (kind, update, bytes.len())
}

/// Merges `service`'s answer onto `held` and checks it equals the full
/// snapshot; returns the kind and the size.
fn follow(store: &Snapshots, service: &str, held: &mut Snapshot) -> (Kind, usize) {
    let (kind, update, size) = answer(store, service, held.version);
    match (update.full, update.delta) {
        (Some(full), _) => *held = full,
        (_, Some(delta)) => delta.merge_into(held).unwrap_or_else(|e| panic!("{e}")),
        _ => panic!("empty update"),
    }
    assert_eq!(*held, full(store, service), "delta + base = full");
    (kind, size)
}

fn many(n: usize) -> Vec<(String, u16)> {
    (0..n).map(|i| (format!("svc-{i}"), 5)).collect()
}

fn as_refs(services: &[(String, u16)]) -> Vec<(&str, u16)> {
    services.iter().map(|(n, i)| (n.as_str(), *i)).collect()
}

#[test]
fn a_change_to_one_service_is_sent_as_that_service_only() {
    let store = Snapshots::new(ControlMetrics::new());
    let c = config("services:\n  web: {}\n");
    let mut services = many(200);
    store.update(&c, &catalog(&as_refs(&services)));
    let mut held = full(&store, "web");
    let full_size = store
        .get("web")
        .map(|p| p.to_json().len())
        .unwrap_or_default();
    services[7].1 = 4;
    store.update(&c, &catalog(&as_refs(&services)));
    let (kind, size) = follow(&store, "web", &mut held);
    assert_eq!(kind, Kind::Delta);
    assert!(
        size * 50 < full_size,
        "a delta of one service ({size} B) is a fraction of the whole ({full_size} B)"
    );
    assert_eq!(held.services["svc-7"].endpoints.len(), 4);
    // Removed and added.
    services.remove(3);
    services.push(("new".to_owned(), 1));
    store.update(&c, &catalog(&as_refs(&services)));
    let (kind, _) = follow(&store, "web", &mut held);
    assert_eq!(kind, Kind::Delta);
    assert!(!held.services.contains_key("svc-3") && held.services.contains_key("new"));
}

#[test]
fn a_delta_is_encoded_once_and_shared_by_every_subscriber() {
    let store = Snapshots::new(ControlMetrics::new());
    let c = config("services:\n  web: {}\n");
    store.update(&c, &catalog(&[("api", 1)]));
    let base = full(&store, "web").version;
    store.update(&c, &catalog(&[("api", 2)]));
    let current = store.get("web").unwrap_or_else(|| panic!("web"));
    let (_, one) = store.update_wire(&current, base, store.replica());
    let (_, two) = store.update_wire(&current, base, store.replica());
    assert_eq!(one[0].as_ptr(), two[0].as_ptr(), "one encoding, shared");
    assert_eq!(
        Some(one[1].as_ptr()),
        current.shared.members().get("api").map(|m| m.as_ptr()),
        "the service's member is the shared part's bytes"
    );
}

#[test]
fn unknown_old_or_foreign_bases_get_a_full_snapshot() {
    let store = Snapshots::new(ControlMetrics::new());
    let c = config("services:\n  web: {}\n");
    store.update(&c, &catalog(&[("api", 1)]));
    let first = full(&store, "web").version;
    store.update(&c, &catalog(&[("api", 2)]));
    assert_eq!(answer(&store, "web", first).0, Kind::Delta);
    assert_eq!(answer(&store, "web", 0).0, Kind::Full, "holds nothing");
    assert_eq!(
        answer(&store, "web", first + 12345).0,
        Kind::Full,
        "unknown"
    );
    let current = store.get("web").unwrap_or_else(|| panic!("web"));
    let other = store.replica().wrapping_add(1).max(1);
    assert_eq!(
        store.update_wire(&current, first, other).0,
        Kind::Full,
        "a version another replica made"
    );
    for n in 0..HISTORY {
        store.update(&c, &catalog(&[("api", 3 + n as u16)]));
    }
    assert_eq!(answer(&store, "web", first).0, Kind::Full, "too old");
}

#[test]
fn scoped_snapshots_send_their_services_only_and_scope_changes_come_out_right() {
    let store = Snapshots::new(ControlMetrics::new());
    let mesh = |upstreams: &str| {
        config(&format!(
            "services:\n  web:\n    {upstreams}\n  api: {{}}\n  db: {{}}\n  cache: {{}}\n"
        ))
    };
    let mut instances = vec![("api", 1), ("db", 1), ("cache", 1), ("other", 1)];
    store.update(&mesh("upstreams: [api, db]"), &catalog(&instances));
    let mut web = full(&store, "web");
    assert_eq!(web.services.keys().collect::<Vec<_>>(), ["api", "db"]);
    // A change it does not hold: no new version.
    instances[2].1 = 2;
    store.update(&mesh("upstreams: [api, db]"), &catalog(&instances));
    assert_eq!(full(&store, "web").version, web.version);
    let (Some(web_now), Some(db_now)) = (store.get("web"), store.get("db")) else {
        panic!("both");
    };
    assert!(
        Arc::ptr_eq(&web_now.shared, &db_now.shared),
        "a kept version holds the latest shared part, not an old one"
    );
    // A change it holds: that service only.
    instances[0].1 = 3;
    store.update(&mesh("upstreams: [api, db]"), &catalog(&instances));
    let (kind, update, _) = answer(&store, "web", web.version);
    assert_eq!(kind, Kind::Delta);
    let delta = update.delta.unwrap_or_else(|| panic!("a delta"));
    assert_eq!(delta.services.keys().collect::<Vec<_>>(), ["api"]);
    assert!(delta.removed.is_empty());
    follow(&store, "web", &mut web);
    // The scope changes: db out, cache in.
    store.update(&mesh("upstreams: [api, cache]"), &catalog(&instances));
    let (kind, update, _) = answer(&store, "web", web.version);
    assert_eq!(kind, Kind::Delta);
    let delta = update.delta.unwrap_or_else(|| panic!("a delta"));
    assert_eq!(delta.services.keys().collect::<Vec<_>>(), ["cache"]);
    assert_eq!(delta.removed, ["db"]);
    follow(&store, "web", &mut web);
    // From some services to all, and back.
    store.update(&mesh("protocol: http"), &catalog(&instances));
    assert_eq!(follow(&store, "web", &mut web).0, Kind::Delta);
    assert_eq!(web.services.len(), 5);
    instances.remove(3);
    store.update(&mesh("upstreams: [db]"), &catalog(&instances));
    assert_eq!(follow(&store, "web", &mut web).0, Kind::Delta);
    assert_eq!(web.services.keys().collect::<Vec<_>>(), ["db"]);
}

#[test]
fn a_header_change_alone_is_a_delta_without_services() {
    let store = Snapshots::new(ControlMetrics::new());
    let mesh = |domain: &str| {
        config(&format!(
            "mesh:\n  trust_domain: {domain}\nservices:\n  web: {{}}\n"
        ))
    };
    store.update(&mesh("a.local"), &catalog(&[("api", 1)]));
    let mut web = full(&store, "web");
    store.update(&mesh("b.local"), &catalog(&[("api", 1)]));
    let (kind, update, _) = answer(&store, "web", web.version);
    assert_eq!(kind, Kind::Delta);
    assert_eq!(update.delta.map(|d| d.services.len()), Some(0));
    follow(&store, "web", &mut web);
    assert_eq!(web.mesh.trust_domain, "b.local");
}

#[test]
fn steps_answer_only_for_generations_still_remembered() {
    let mut steps = Steps::default();
    for generation in 1..=(MAX_STEPS as u64 + 10) {
        steps.push(generation, vec![format!("s{generation}")]);
    }
    let last = MAX_STEPS as u64 + 10;
    assert_eq!(
        steps.touched(last - 2, last),
        Some([format!("s{}", last - 1), format!("s{last}")].into())
    );
    assert_eq!(steps.touched(9, 11), None, "generation 10 is forgotten");
    assert_eq!(
        steps.touched(10, 11),
        Some(["s11".to_owned()].into()),
        "the oldest remembered"
    );
    assert_eq!(steps.touched(last, last + 1), None, "not made yet");
}

#[test]
fn touched_names_every_service_that_differs() {
    let one = |n: u16| catalog(&[("a", 1), ("b", n), ("c", 1)]);
    let c = config("services: {}\n");
    let (x, y) = (
        crate::snapshot::compute_services(&c, &one(1)),
        crate::snapshot::compute_services(&c, &one(2)),
    );
    assert_eq!(touched(&x, &y), ["b"]);
    let z = crate::snapshot::compute_services(&c, &catalog(&[("b", 1), ("d", 1)]));
    assert_eq!(touched(&x, &z), ["a", "c", "d"]);
    assert!(touched(&x, &x).is_empty());
}
