//! `tether-control` on a Consul dev agent with its default connection limit
//! (`limits.http_max_conns_per_client = 200`) and 1,000 services: it gets
//! ready with every service in its snapshots, never holds more than a
//! fixed handful of connections to Consul, and single changes of each kind
//! (a new instance, a failed check, a re-registration on another port, a
//! node's new address, an instance without checks) reach the snapshot.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tether_e2e::consul::Consul;
use tether_e2e::control::ControlPlane;
use tether_e2e::sockets::connections_to;
use tether_e2e::{assert_eventually, eventually};

/// Services registered: five times what one blocking query per service
/// could watch under Consul's default limit.
const SERVICES: usize = 1_000;
/// Nodes they are spread over (catalog registrations, as for external
/// services: no agent runs on them).
const NODES: usize = 10;
/// The watcher's bound: three blocking queries and eight readers
/// (`control-plane/src/catalog/consul/mod.rs`, `MAX_CONNECTIONS`).
const MAX_CONNECTIONS: usize = 11;
/// Consul's catalog transactions take at most this many operations.
const TXN_OPS: usize = 128;
/// A single change must show within this (it takes well under a second;
/// the margin is for a loaded CI machine).
const PROPAGATION: Duration = Duration::from_secs(10);

fn name(i: usize) -> String {
    format!("svc-{i:04}")
}

fn node(i: usize) -> String {
    format!("node-{}", i % NODES)
}

fn node_op(node: &str, address: &str) -> Value {
    json!({ "Node": { "Verb": "set", "Node": { "Node": node, "Address": address } } })
}

/// An instance of `service` on `node`; `address: None` leaves
/// `Service.Address` empty (the node's is used).
fn instance_op(node: &str, service: &str, id: &str, address: Option<&str>, port: u16) -> Value {
    json!({ "Service": { "Verb": "set", "Node": node, "Service": {
        "ID": id, "Service": service, "Address": address.unwrap_or(""), "Port": port } } })
}

fn check_op(node: &str, id: &str, status: &str) -> Value {
    json!({ "Check": { "Verb": "set", "Check": {
        "Node": node, "CheckID": format!("chk:{id}"), "Name": "probe", "Status": status, "ServiceID": id } } })
}

/// Registers `SERVICES` services, one instance each (with a passing check),
/// over `NODES` nodes, in a few dozen transactions.
async fn register_all(consul: &Consul) {
    let mut ops: Vec<Value> = (0..NODES).map(|n| node_op(&node(n), "127.0.0.1")).collect();
    for i in 0..SERVICES {
        let id = format!("{}-a", name(i));
        ops.push(instance_op(
            &node(i),
            &name(i),
            &id,
            Some("127.0.0.1"),
            30_000 + i as u16,
        ));
        ops.push(check_op(&node(i), &id, "passing"));
    }
    for batch in ops.chunks(TXN_OPS) {
        consul.txn(batch).await;
    }
}

/// The endpoint addresses of `service` in `web`'s snapshot, sorted.
async fn addresses(plane: &ControlPlane, service: &str) -> Vec<String> {
    let snapshot = plane.snapshot("web").await;
    let mut out: Vec<String> = snapshot
        .services
        .get(service)
        .map(|s| s.endpoints.iter().map(|e| e.address.clone()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Waits until `service`'s addresses are `want`, keeping the most
/// connections seen in `max_seen`; returns how long it took.
async fn propagated(
    plane: &ControlPlane,
    consul: &Consul,
    max_seen: &mut usize,
    service: &str,
    want: &[&str],
    what: &str,
) -> Duration {
    let started = Instant::now();
    let pid = plane
        .pid()
        .unwrap_or_else(|| panic!("control plane not running"));
    let (mut last, mut arrived) = (Vec::new(), false);
    while started.elapsed() < PROPAGATION {
        *max_seen = (*max_seen).max(connections_to(pid, consul.http.port()));
        last = addresses(plane, service).await;
        if last == want {
            arrived = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        arrived,
        "{what}: {service} never became {want:?} (last {last:?}); log:\n{}",
        plane.log()
    );
    let took = started.elapsed();
    eprintln!("{what}: {took:?}");
    took
}

#[tokio::test]
async fn a_thousand_services_on_default_limits_with_a_bounded_number_of_connections() {
    let consul = Consul::start().await;
    let started = Instant::now();
    register_all(&consul).await;
    eprintln!("registered {SERVICES} services in {:?}", started.elapsed());
    let mesh = format!(
        "mesh:\n  catalog:\n    consul: {{ address: \"{}\" }}\nservices:\n  web: {{}}\n",
        consul.url()
    );
    let started = Instant::now();
    let plane = ControlPlane::start_unready(&mesh).await;
    let pid = plane
        .pid()
        .unwrap_or_else(|| panic!("control plane not running"));
    let port = consul.http.port();
    let mut max_seen = 0;
    let ready = eventually(Duration::from_secs(30), || {
        max_seen = max_seen.max(connections_to(pid, port));
        plane.is_ready()
    })
    .await;
    assert!(
        ready,
        "never ready with {SERVICES} services; log:\n{}",
        plane.log()
    );
    eprintln!("ready in {:?}", started.elapsed());

    let snapshot = plane.snapshot("web").await;
    let missing: Vec<String> = (0..SERVICES)
        .map(name)
        .filter(|n| snapshot.services.get(n).map(|s| s.endpoints.len()) != Some(1))
        .collect();
    assert!(
        missing.is_empty(),
        "{} services missing or without their instance, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        connections_to(pid, port) > 0,
        "no connection to Consul seen: the count itself is broken"
    );

    // A new instance (with its check): its check appears.
    let target = name(500);
    let (n500, id_b) = (node(500), format!("{target}-b"));
    consul
        .txn(&[
            instance_op(&n500, &target, &id_b, Some("127.0.0.2"), 40_000),
            check_op(&n500, &id_b, "passing"),
        ])
        .await;
    propagated(
        &plane,
        &consul,
        &mut max_seen,
        &target,
        &["127.0.0.1:30500", "127.0.0.2:40000"],
        "instance added",
    )
    .await;

    // Its check fails: only the check index moves.
    consul.txn(&[check_op(&n500, &id_b, "critical")]).await;
    propagated(
        &plane,
        &consul,
        &mut max_seen,
        &target,
        &["127.0.0.1:30500"],
        "check failed",
    )
    .await;

    // Re-registered on another port, its check untouched: only the service
    // index moves, and nothing says which service (a sweep finds it).
    let other = name(777);
    consul
        .txn(&[instance_op(
            &node(777),
            &other,
            &format!("{other}-a"),
            Some("127.0.0.1"),
            41_777,
        )])
        .await;
    propagated(
        &plane,
        &consul,
        &mut max_seen,
        &other,
        &["127.0.0.1:41777"],
        "address changed",
    )
    .await;

    // An instance without a check and without an address of its own, on a
    // new node; then that node's address changes (only the node index moves).
    let third = name(123);
    consul
        .txn(&[
            node_op("node-extra", "127.0.0.3"),
            instance_op("node-extra", &third, "extra-1", None, 42_000),
        ])
        .await;
    propagated(
        &plane,
        &consul,
        &mut max_seen,
        &third,
        &["127.0.0.1:30123", "127.0.0.3:42000"],
        "instance without checks added",
    )
    .await;
    consul.txn(&[node_op("node-extra", "127.0.0.4")]).await;
    propagated(
        &plane,
        &consul,
        &mut max_seen,
        &third,
        &["127.0.0.1:30123", "127.0.0.4:42000"],
        "node address changed",
    )
    .await;

    max_seen = max_seen.max(connections_to(pid, port));
    eprintln!("most connections to Consul seen: {max_seen}");
    assert!(
        max_seen <= MAX_CONNECTIONS,
        "{max_seen} connections to Consul at once, more than the bound of {MAX_CONNECTIONS}"
    );
    let gauge = plane.metric("tether_control_consul_connections").await;
    assert!(
        (1.0..=MAX_CONNECTIONS as f64).contains(&gauge),
        "tether_control_consul_connections = {gauge}"
    );
    assert!(plane.metric("tether_control_consul_sweeps_total").await >= 2.0);
    assert_eventually!(
        Duration::from_secs(5),
        || async { plane.is_ready().await },
        "not ready at the end"
    );
}
