//! `tether-control` on a real Consul dev agent: what is registered, healthy,
//! tagged and weighted in Consul is what proxies get, within a second, and
//! a Consul outage changes nothing that proxies hold.

use std::time::{Duration, Instant};

use http::StatusCode;
use tether_api::Endpoint;
use tether_e2e::assert_eventually;
use tether_e2e::consul::{Consul, Instance};
use tether_e2e::control::ControlPlane;

fn mesh(consul: &Consul) -> String {
    mesh_with(consul, "")
}

/// mesh.yaml with `extra` added to the Consul settings (`, key: value`).
fn mesh_with(consul: &Consul, extra: &str) -> String {
    format!(
        "mesh:\n  catalog:\n    consul: {{ address: \"{}\", datacenter: dc1{extra} }}\nservices:\n  web: {{}}\n  api:\n    policy: {{ timeout: 2s }}\n",
        consul.url()
    )
}

fn api(id: &str, port: u16) -> Instance<'_> {
    Instance {
        id,
        name: "api",
        address: Some("127.0.0.1"),
        port,
        ttl_check: true,
        ..Instance::default()
    }
}

/// `api`'s endpoints in `web`'s snapshot, sorted by address.
async fn api_endpoints(plane: &ControlPlane) -> Vec<Endpoint> {
    let mut endpoints = plane
        .snapshot("web")
        .await
        .services
        .get("api")
        .map(|s| s.endpoints.clone())
        .unwrap_or_default();
    endpoints.sort_by(|a, b| a.address.cmp(&b.address));
    endpoints
}

async fn addresses(plane: &ControlPlane) -> Vec<String> {
    api_endpoints(plane)
        .await
        .into_iter()
        .map(|e| e.address)
        .collect()
}

/// Consul with two `api` instances and a control plane that has seen both.
async fn two_instances() -> (Consul, ControlPlane) {
    two_instances_with("").await
}

/// [`two_instances`], with `extra` Consul settings.
async fn two_instances_with(extra: &str) -> (Consul, ControlPlane) {
    let consul = Consul::start().await;
    consul.register(&api("api-1", 18081)).await;
    consul.register(&api("api-2", 18082)).await;
    let plane = ControlPlane::start(&mesh_with(&consul, extra)).await;
    assert_eventually!(
        Duration::from_secs(5),
        || async { addresses(&plane).await.len() == 2 },
        "both instances never reached the snapshot; log:\n{}",
        plane.log()
    );
    (consul, plane)
}

#[tokio::test]
async fn instances_reach_the_snapshot_with_tags_meta_weights_and_policy() {
    let consul = Consul::start().await;
    let tagged = Instance {
        tags: &["v1", "blue"],
        meta: &[("version", "1")],
        weight: Some(5),
        ..api("api-1", 18081)
    };
    consul.register(&tagged).await;
    // No Service.Address: the node's address is used.
    consul
        .register(&Instance {
            address: None,
            ..api("api-2", 18082)
        })
        .await;
    let plane = ControlPlane::start(&mesh(&consul)).await;
    // Ready means the catalog was read in full: no empty first snapshot.
    let endpoints = api_endpoints(&plane).await;
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    assert_eq!(endpoints[0].address, "127.0.0.1:18081");
    assert_eq!(endpoints[0].tags, vec!["v1".to_owned(), "blue".to_owned()]);
    assert_eq!(
        endpoints[0].meta.get("version").map(String::as_str),
        Some("1")
    );
    assert_eq!(endpoints[0].weight, 5);
    assert_eq!(endpoints[1].address, "127.0.0.1:18082");
    assert_eq!(endpoints[1].weight, 1);
    let snapshot = plane.snapshot("api").await;
    assert_eq!(snapshot.service.as_deref(), Some("api"));
    assert_eq!(
        snapshot.services["api"].policy.timeout,
        Duration::from_secs(2)
    );
    assert!(
        !snapshot.services.contains_key("consul"),
        "Consul itself is no upstream"
    );
}

#[tokio::test]
async fn an_instance_with_an_unusable_address_is_skipped() {
    let consul = Consul::start().await;
    consul.register(&api("api-1", 18081)).await;
    // Consul accepts any string; a proxy would refuse the whole snapshot.
    let bad = Instance {
        address: Some("not an address"),
        ..api("api-2", 18082)
    };
    consul.register(&bad).await;
    let plane = ControlPlane::start(&mesh(&consul)).await;
    assert_eq!(addresses(&plane).await, ["127.0.0.1:18081"]);
    assert_eventually!(
        Duration::from_secs(1),
        || async { plane.log().contains("instance skipped") },
        "the skipped instance was not logged"
    );
}

#[tokio::test]
async fn a_deregistered_instance_leaves_the_snapshot_within_a_second() {
    let (consul, plane) = two_instances().await;
    let before = plane.snapshot("web").await.version;
    let deregistered = Instant::now();
    consul.deregister("api-2").await;
    assert_eventually!(
        Duration::from_secs(1),
        || async { addresses(&plane).await == ["127.0.0.1:18081"] },
        "api-2 still in the snapshot 1 s after deregistration"
    );
    assert!(plane.snapshot("web").await.version > before);
    eprintln!("deregistration propagated in {:?}", deregistered.elapsed());
}

#[tokio::test]
async fn a_critical_check_drops_the_instance_until_it_passes_again() {
    let (consul, plane) = two_instances().await;
    consul.check("api-1", false).await;
    assert_eventually!(
        Duration::from_secs(1),
        || async { addresses(&plane).await == ["127.0.0.1:18082"] },
        "a critical instance is still served"
    );
    consul.check("api-1", true).await;
    assert_eventually!(
        Duration::from_secs(1),
        || async { addresses(&plane).await.len() == 2 },
        "a passing instance did not come back"
    );
}

#[tokio::test]
async fn a_long_poll_wakes_on_a_consul_change() {
    let (consul, plane) = two_instances().await;
    let current = plane.snapshot("web").await.version;
    let started = Instant::now();
    let (reply, ()) = tokio::join!(plane.poll("web", current, "30s"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        consul.register(&api("api-3", 18083)).await;
    });
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woke only after {:?}",
        started.elapsed()
    );
    assert!(reply.body.contains("127.0.0.1:18083"), "{}", reply.body);
    let unchanged = plane.snapshot("web").await.version;
    let reply = plane.poll("web", unchanged, "1s").await;
    assert_eq!(
        reply.status,
        StatusCode::NOT_MODIFIED,
        "nothing changed, so no new version"
    );
}

#[tokio::test]
async fn services_come_and_go_with_the_catalog() {
    let (consul, plane) = two_instances().await;
    let db = Instance {
        name: "db",
        ..api("db-1", 15432)
    };
    consul.register(&db).await;
    assert_eventually!(
        Duration::from_secs(1),
        || async { plane.snapshot("web").await.services.contains_key("db") },
        "a service only in Consul never appeared"
    );
    assert_eq!(plane.snapshot("db").await.service.as_deref(), Some("db"));
    consul.deregister("db-1").await;
    assert_eventually!(
        Duration::from_secs(1),
        || async { !plane.snapshot("web").await.services.contains_key("db") },
        "a service gone from Consul is still served"
    );
    assert_eq!(
        plane.poll("db", 0, "0s").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_last_snapshot_is_served_while_consul_is_down() {
    let (mut consul, plane) = two_instances().await;
    let before = plane.snapshot("web").await;
    consul.stop();
    assert_eventually!(
        Duration::from_secs(10),
        || async {
            plane
                .metric("tether_control_consul_watch_errors_total")
                .await
                > 0.0
        },
        "the control plane never noticed Consul was gone"
    );
    assert!(
        plane.is_ready().await,
        "still ready: it serves the last snapshot"
    );
    let after = plane.snapshot("web").await;
    assert_eq!(after, before, "same content, same version");
    let reply = plane.poll("web", before.version, "1s").await;
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
}

/// Stops `consul` and starts an empty one on the same HTTP port, once the
/// control plane has noticed the outage.
async fn restart_empty(consul: &mut Consul, plane: &ControlPlane) -> Consul {
    consul.stop();
    assert_eventually!(
        Duration::from_secs(10),
        || async {
            plane
                .metric("tether_control_consul_watch_errors_total")
                .await
                > 0.0
        },
        "the control plane never noticed Consul was gone"
    );
    Consul::start_on(consul.http.port()).await
}

#[tokio::test]
async fn a_consul_that_restarts_empty_does_not_empty_the_snapshot() {
    let (mut consul, plane) = two_instances_with(", resync_hold: 10m").await;
    let consul = restart_empty(&mut consul, &plane).await;
    // api-1 registers again (as a sidecar does), api-3 is new, api-2 is late.
    consul.register(&api("api-1", 18081)).await;
    consul.register(&api("api-3", 18083)).await;
    assert_eventually!(
        Duration::from_secs(20),
        || async {
            addresses(&plane).await == ["127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"]
        },
        "during the hold: new instances added, none removed; got {:?}; log:\n{}",
        addresses(&plane).await,
        plane.log()
    );
    assert_eq!(
        plane
            .metric("tether_control_consul_resync_holds_total")
            .await,
        1.0,
        "one hold for one outage, however many watches recovered"
    );
    let before = plane.snapshot("web").await;
    let reply = plane.poll("web", before.version, "1s").await;
    assert_eq!(
        reply.status,
        StatusCode::NOT_MODIFIED,
        "nothing changes while the hold runs and Consul is quiet"
    );
}

#[tokio::test]
async fn instances_consul_lost_are_dropped_when_the_hold_ends() {
    let (mut consul, plane) = two_instances_with(", resync_hold: 2s").await;
    let consul = restart_empty(&mut consul, &plane).await;
    consul.register(&api("api-1", 18081)).await;
    assert_eventually!(
        Duration::from_secs(30),
        || async { addresses(&plane).await == ["127.0.0.1:18081"] },
        "api-2 never left after the hold; got {:?}; log:\n{}",
        addresses(&plane).await,
        plane.log()
    );
    assert!(
        plane
            .metric("tether_control_consul_resync_holds_total")
            .await
            >= 1.0,
        "the restart started a hold"
    );
}

#[tokio::test]
async fn without_a_hold_a_restarted_consul_is_taken_as_it_answers() {
    let (mut consul, plane) = two_instances_with(", resync_hold: 0s").await;
    let consul = restart_empty(&mut consul, &plane).await;
    consul.register(&api("api-3", 18083)).await;
    assert_eventually!(
        Duration::from_secs(30),
        || async { addresses(&plane).await == ["127.0.0.1:18083"] },
        "got {:?}",
        addresses(&plane).await
    );
    assert_eq!(
        plane
            .metric("tether_control_consul_resync_holds_total")
            .await,
        0.0
    );
}

#[tokio::test]
async fn nothing_is_served_until_consul_has_been_read() {
    let port = tether_e2e::free_port();
    let mesh = format!(
        "mesh:\n  catalog:\n    consul: {{ address: \"http://127.0.0.1:{port}\" }}\nservices:\n  web: {{}}\n  api: {{}}\n"
    );
    let plane = ControlPlane::start_unready(&mesh).await;
    assert_eventually!(
        Duration::from_secs(5),
        || async {
            plane
                .metric("tether_control_consul_watch_errors_total")
                .await
                > 0.0
        },
        "no Consul errors counted"
    );
    assert!(!plane.is_ready().await, "ready without a catalog");
    let reply = plane.poll("web", 0, "0s").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "an empty snapshot must not be served"
    );
    let consul = Consul::start_on(port).await;
    consul.register(&api("api-1", 18081)).await;
    assert_eventually!(
        Duration::from_secs(15),
        || plane.is_ready(),
        "not ready after Consul came up; log:\n{}",
        plane.log()
    );
    assert_eventually!(
        Duration::from_secs(1),
        || async { addresses(&plane).await == ["127.0.0.1:18081"] },
        "the instance registered at start-up never arrived"
    );
}
