//! Incremental snapshots on a real control plane and real proxies: a
//! change to one service reaches a subscribed proxy as a delta of that
//! service (the control plane counts its bytes apart), and the proxy ends
//! up holding exactly what a full snapshot gives, for the whole mesh and
//! for a proxy holding only its upstreams across a scope change.

use std::time::Duration;

use tether_e2e::control::ControlPlane;
use tether_e2e::{assert_eventually, metric, Backend, Proxy};

/// Services in the static catalog besides `api`: enough that a full
/// snapshot is many times the size of one service.
const SERVICES: usize = 60;
/// Instances of each.
const INSTANCES: usize = 3;

/// mesh.yaml: `api` (a real backend), `svc-0..SERVICES` with `INSTANCES`
/// instances each except `svc-5` with `svc5` instances; `web` holds the
/// whole mesh, `front` holds `front_upstreams`.
fn mesh(api: &Backend, svc5: usize, front_upstreams: &str) -> String {
    let mut catalog = format!("        api: [ {{ address: \"{}\" }} ]\n", api.address());
    for s in 0..SERVICES {
        let n = if s == 5 { svc5 } else { INSTANCES };
        let list: Vec<String> = (0..n)
            .map(|i| format!("{{ address: \"127.0.0.1:{}\", tags: [v1] }}", 20_000 + i))
            .collect();
        catalog.push_str(&format!("        svc-{s}: [ {} ]\n", list.join(", ")));
    }
    format!(
        "mesh:\n  catalog:\n    static:\n      services:\n{catalog}services:\n  web: {{}}\n  front:\n    upstreams: [{front_upstreams}]\n  api:\n    policy: {{ timeout: 5s }}\n"
    )
}

async fn config(proxy: &Proxy) -> serde_json::Value {
    serde_json::from_str(&proxy.admin_get("/config").await).unwrap_or_default()
}

async fn endpoints(proxy: &Proxy, service: &str) -> usize {
    config(proxy).await["services"][service]["endpoints"]
        .as_array()
        .map_or(0, Vec::len)
}

/// The services a proxy holds, sorted.
async fn held(proxy: &Proxy) -> Vec<String> {
    let mut names: Vec<String> = config(proxy).await["services"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The snapshot a proxy saved in its state directory (what it merged).
fn saved(proxy: &Proxy) -> tether_api::Snapshot {
    let path = proxy.state_dir().join("snapshot.json");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_default()
}

const DELTA_BYTES: &str = "tether_control_snapshot_bytes_sent_total{kind=\"delta\"}";
const DELTAS_SENT: &str = "tether_control_snapshot_responses_total{kind=\"delta\"}";
const DELTAS_APPLIED: &str = "tether_control_plane_deltas_total{result=\"applied\"}";

#[tokio::test]
async fn a_change_to_one_service_reaches_the_proxy_as_a_delta_and_equals_a_full_snapshot() {
    let api = Backend::start("api").await;
    let plane = ControlPlane::start(&mesh(&api, INSTANCES, "api, svc-1")).await;
    let web = Proxy::subscribed(&plane.url(), "web").start().await;
    let front = Proxy::subscribed(&plane.url(), "front").start().await;
    assert_eq!(held(&front).await, ["api", "svc-1"]);
    let full_size = plane.poll("web", 0, "0s").await.body.len();
    let (bytes_before, sent_before) = (
        plane.metric(DELTA_BYTES).await,
        plane.metric(DELTAS_SENT).await,
    );

    // One service changes: web (which holds everything) gets it as a delta.
    plane.write_config(&mesh(&api, INSTANCES - 1, "api, svc-1"));
    assert_eventually!(
        Duration::from_secs(10),
        || async { endpoints(&web, "svc-5").await == INSTANCES - 1 },
        "the change never reached web:\n{}",
        web.log()
    );
    let sent = plane.metric(DELTAS_SENT).await - sent_before;
    let bytes = plane.metric(DELTA_BYTES).await - bytes_before;
    assert!(sent >= 1.0, "no delta was sent");
    assert!(
        bytes < 2048.0 * sent && full_size > 10 * 2048,
        "{sent} deltas of {bytes} B in all; a full snapshot is {full_size} B"
    );
    assert!(metric(&web.metrics().await, DELTAS_APPLIED).unwrap_or(0.0) >= 1.0);
    // What web merged is what a full snapshot gives, and so is what it serves.
    let version = web.config_version().await;
    let full = plane.snapshot("web").await;
    assert_eq!(full.version, version);
    assert_eventually!(
        Duration::from_secs(5),
        || async { saved(&web) == full },
        "what web merged and saved is not the full snapshot"
    );
    let fresh = Proxy::subscribed(&plane.url(), "web").start().await;
    assert_eq!(fresh.config_version().await, version);
    assert_eq!(
        config(&web).await,
        config(&fresh).await,
        "delta-fed = full-fed"
    );

    // front's scope changes: svc-1 out, svc-7 in, as a delta.
    let sent_before = plane.metric(DELTAS_SENT).await;
    plane.write_config(&mesh(&api, INSTANCES - 1, "api, svc-7"));
    assert_eventually!(
        Duration::from_secs(10),
        || async { held(&front).await == ["api", "svc-7"] },
        "front's new scope never reached it:\n{}",
        front.log()
    );
    assert!(plane.metric(DELTAS_SENT).await > sent_before);
    let full = plane.snapshot("front").await;
    assert_eventually!(
        Duration::from_secs(5),
        || async { saved(&front) == full },
        "what front merged and saved is not the full snapshot"
    );
    assert_eq!(endpoints(&front, "svc-7").await, INSTANCES);
    assert!(metric(&front.metrics().await, DELTAS_APPLIED).unwrap_or(0.0) >= 1.0);
    assert_eq!(
        metric(
            &front.metrics().await,
            "tether_control_plane_deltas_total{result=\"refused\"}"
        )
        .unwrap_or(0.0),
        0.0
    );
}
