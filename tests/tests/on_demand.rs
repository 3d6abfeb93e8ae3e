//! Proxies hold what they call: a proxy of a service that declares its
//! upstreams holds only those, finds a service it was not given when its
//! app first calls it (on-demand discovery: the request waits for it and
//! succeeds), never gets one authorization does not let it call, and does
//! not grow when 1,000 unrelated services join the mesh.

use std::time::{Duration, Instant};

use tether_e2e::control::ControlPlane;
use tether_e2e::{assert_eventually, metric, Backend, Client, Proxy};

fn mesh(api: &Backend, billing: &Backend, rules: &str, extra_catalog: &str) -> String {
    format!(
        "mesh:\n  catalog:\n    static:\n      services:\n        api: [ {{ address: \"{}\" }} ]\n        billing: [ {{ address: \"{}\" }} ]\n        ledger: [ {{ address: \"{}\" }} ]\n{extra_catalog}services:\n  web:\n    upstreams: [api]\n  api: {{}}\n  billing: {{}}\n  ledger: {{}}\n{rules}",
        api.addr, billing.addr, billing.addr
    )
}

/// The service names in the proxy's `/config`.
async fn held(proxy: &Proxy) -> Vec<String> {
    let body = proxy.admin_get("/config").await;
    let config: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    config["services"]
        .as_object()
        .map(|s| s.keys().cloned().collect())
        .unwrap_or_default()
}

async fn web_ready(plane: &ControlPlane, wait: &str) -> Proxy {
    let web = Proxy::subscribed(&plane.url(), "web")
        .arg("--discovery-wait")
        .arg(wait)
        .start()
        .await;
    assert_eventually!(
        Duration::from_secs(15),
        || async { Client::http1().get(web.outbound, "api", "/").await.status == 200 },
        "web never reached api; log:\n{}",
        web.log()
    );
    web
}

#[tokio::test]
async fn a_proxy_holds_what_it_calls_and_finds_the_rest_on_demand() {
    let api = Backend::start("api").await;
    let billing = Backend::start("billing").await;
    let plane = ControlPlane::start(&mesh(&api, &billing, "", "")).await;
    let web = web_ready(&plane, "3s").await;
    assert_eq!(held(&web).await, ["api"]);
    // The snapshot says it is partial, except to a proxy that does not
    // merge deltas (an older one, which would refuse the field).
    assert!(plane.snapshot("web").await.partial);
    let legacy = plane.poll("web", 0, "0s").await.body;
    assert!(!legacy.contains("partial"), "{legacy}");
    assert_eq!(plane.legacy_snapshot("web").await.services.len(), 1);

    // The first request to billing waits for it and succeeds.
    let reply = Client::http1().get(web.outbound, "billing", "/").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, web.log());
    assert_eq!(billing.hits(), 1);
    assert_eq!(held(&web).await, ["api", "billing"]);
    let metrics = web.metrics().await;
    assert_eq!(
        metric(&metrics, "tether_on_demand_total{outcome=\"found\"}"),
        Some(1.0)
    );

    // A name the mesh does not have: unknown-service, then at once while held.
    let reply = Client::http1().get(web.outbound, "nosuch", "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("tether-error"), "unknown-service");
    let started = Instant::now();
    let reply = Client::http1().get(web.outbound, "nosuch", "/").await;
    assert_eq!(reply.status, 503);
    assert!(started.elapsed() < Duration::from_secs(1));
    let metrics = web.metrics().await;
    assert_eq!(
        metric(&metrics, "tether_on_demand_total{outcome=\"held-missing\"}"),
        Some(1.0)
    );

    // 1,000 services web does not call join the mesh: web's snapshot stays
    // as it is (no new version, nothing sent), and so does its memory.
    let version = web.config_version().await;
    let rss = web.rss_kib();
    let mut extra = String::new();
    for i in 0..1000 {
        extra.push_str(&format!(
            "        unrelated-{i}: [ {{ address: \"127.0.0.1:{}\" }} ]\n",
            10_000 + i
        ));
    }
    plane.write_config(&mesh(&api, &billing, "", &extra));
    assert_eventually!(
        Duration::from_secs(15),
        || async { plane.get("/v1/status").await.contains("unrelated-999") },
        "the control plane never took the 1,000 services; log:\n{}",
        plane.log()
    );
    // Traffic goes on; then the proxy is as it was.
    for _ in 0..20 {
        assert_eq!(
            Client::http1().get(web.outbound, "api", "/").await.status,
            200
        );
    }
    assert_eq!(web.config_version().await, version);
    assert_eq!(held(&web).await, ["api", "billing"]);
    let grown = web.rss_kib().saturating_sub(rss);
    assert!(
        grown < 1024,
        "web's RSS grew by {grown} KiB when 1,000 services it does not call joined"
    );
}

#[tokio::test]
async fn only_services_authorization_allows_are_found_on_demand() {
    let api = Backend::start("api").await;
    let billing = Backend::start("billing").await;
    let deny = "authorization:\n  default: deny\n  rules:\n    - { to: api, from: [web] }\n";
    let plane = ControlPlane::start(&mesh(&api, &billing, deny, "")).await;
    let web = web_ready(&plane, "3s").await;

    // ledger exists but web may not call it: never brought.
    let reply = Client::http1().get(web.outbound, "ledger", "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("tether-error"), "unknown-service");
    assert_eq!(held(&web).await, ["api"]);

    // billing newly allowed: the first request to it succeeds.
    let allowed = format!("{deny}    - {{ to: billing, from: [web] }}\n");
    plane.write_config(&mesh(&api, &billing, &allowed, ""));
    // The control plane re-reads mesh.yaml within a second; the request
    // waits for discovery up to 3 s either way.
    let reply = Client::http1().get(web.outbound, "billing", "/").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, web.log());
    assert_eq!(billing.hits(), 1);
    assert_eq!(held(&web).await, ["api", "billing"]);
    let metrics = web.metrics().await;
    assert_eq!(
        metric(&metrics, "tether_on_demand_total{outcome=\"not-found\"}"),
        Some(1.0)
    );
}
