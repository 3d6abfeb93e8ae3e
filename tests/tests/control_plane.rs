//! Proxies on a real control plane (static catalog): endpoints and policy
//! flow from mesh.yaml to every sidecar, edits apply, broken edits are kept
//! out, refusals are reported, and nothing stops serving when the control
//! plane goes away. (Consul as the catalog: tests/tests/consul.rs.)

use std::time::Duration;

use tether_e2e::control::ControlPlane;
use tether_e2e::{assert_eventually, metric, Backend, Client, Proxy, TestPki};

fn mesh(api: &[&Backend], timeout: &str) -> String {
    let list: Vec<String> = api
        .iter()
        .map(|b| format!("{{ address: \"{}\" }}", b.address()))
        .collect();
    format!(
        "mesh:\n  catalog:\n    static:\n      services:\n        api: [ {} ]\nservices:\n  web: {{}}\n  api:\n    policy: {{ timeout: {timeout}, load_balancer: round-robin }}\n",
        list.join(", ")
    )
}

async fn status(plane: &ControlPlane) -> tether_api::StatusResponse {
    serde_json::from_str(&plane.get("/v1/status").await).unwrap_or_default()
}

async fn api_timeout(proxy: &Proxy) -> String {
    let config: serde_json::Value =
        serde_json::from_str(&proxy.admin_get("/config").await).unwrap_or_default();
    config["services"]["api"]["policy"]["timeout"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn endpoints_and_policy_flow_from_mesh_yaml_to_the_sidecar() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let plane = ControlPlane::start(&mesh(&[&a, &b], "5s")).await;
    let web = Proxy::subscribed(&plane.url(), "web").start().await;
    let client = Client::http1();
    for _ in 0..10 {
        assert_eq!(client.get(web.outbound, "api", "/").await.status, 200);
    }
    assert_eq!(
        (a.hits(), b.hits()),
        (5, 5),
        "both instances from the catalog, round-robin"
    );
    assert_eq!(
        metric(&web.metrics().await, "tether_control_plane_connected"),
        Some(1.0)
    );
    let status = status(&plane).await;
    let proxy = status
        .proxies
        .iter()
        .find(|p| p.report.service == "web")
        .unwrap_or_else(|| panic!("{status:?}"));
    assert_eq!(
        Some(&proxy.report.applied_version),
        status.versions.get("web"),
        "applied = current"
    );
    assert!(proxy.connected, "its long-poll is open");
}

#[tokio::test]
async fn an_edit_takes_effect_and_a_broken_edit_is_kept_out() {
    let a = Backend::start("a").await;
    let plane = ControlPlane::start(&mesh(&[&a], "5s")).await;
    let web = Proxy::subscribed(&plane.url(), "web").start().await;
    assert_eq!(api_timeout(&web).await, "5s");
    plane.write_config(&mesh(&[&a], "2s"));
    assert_eventually!(
        Duration::from_secs(5),
        || async { api_timeout(&web).await == "2s" },
        "new timeout never reached the proxy"
    );
    let version = web.config_version().await;
    plane.write_config("services:\n  api:\n    policy: { timeout: 1s, retries: { atempts: 3 } }\n");
    assert_eventually!(
        Duration::from_secs(5),
        || async {
            metric(
                &plane.get("/metrics").await,
                "tether_control_config_reload_errors_total",
            ) == Some(1.0)
        },
        "broken edit not counted"
    );
    assert!(
        plane.log().contains("mesh.yaml:3:"),
        "error names line:col:\n{}",
        plane.log()
    );
    assert!(
        plane.log().contains("unknown field `atempts`"),
        "{}",
        plane.log()
    );
    assert_eq!(
        web.config_version().await,
        version,
        "the proxy keeps the last good snapshot"
    );
    assert_eq!(
        Client::http1().get(web.outbound, "api", "/").await.status,
        200
    );
}

#[tokio::test]
async fn routing_survives_the_control_plane_and_a_proxy_restart() {
    let a = Backend::start("a").await;
    let mut plane = ControlPlane::start(&mesh(&[&a], "5s")).await;
    let mut web = Proxy::subscribed(&plane.url(), "web").start().await;
    let client = Client::http1();
    assert_eq!(client.get(web.outbound, "api", "/").await.status, 200);
    plane.stop();
    assert_eventually!(
        Duration::from_secs(10),
        || async { metric(&web.metrics().await, "tether_control_plane_connected") == Some(0.0) },
        "proxy never noticed the control plane was gone"
    );
    assert_eq!(
        client.get(web.outbound, "api", "/").await.status,
        200,
        "routing goes on"
    );
    web.restart();
    assert_eventually!(
        Duration::from_secs(10),
        || async { web.is_ready().await },
        "restarted proxy not ready from its state dir:\n{}",
        web.log()
    );
    assert_eq!(
        Client::http1().get(web.outbound, "api", "/").await.status,
        200,
        "served from the state dir"
    );
    // Back, with a change made while it was down: the proxy catches up.
    let b = Backend::start("b").await;
    plane.write_config(&mesh(&[&b], "5s"));
    plane.restart().await;
    assert_eventually!(
        Duration::from_secs(15),
        || async {
            Client::http1()
                .get(web.outbound, "api", "/")
                .await
                .header("x-backend")
                == "b"
        },
        "proxy never resubscribed"
    );
}

#[tokio::test]
async fn a_refused_snapshot_is_reported_and_never_shown_as_applied() {
    let a = Backend::start("a").await;
    let plane = ControlPlane::start(&mesh(&[&a], "5s")).await;
    // web holds a certificate in tether.local (identity files, so the api
    // backend can stay plaintext: web's mTLS is to mesh endpoints only).
    let pki = TestPki::new();
    let web = Proxy::subscribed(&plane.url(), "web")
        .identity(&pki.issue("web"), &pki.bundle())
        .start()
        .await;
    let good = web.config_version().await;
    // Valid for the control plane, refused by the proxy: a trust domain
    // its certificate is not in, so it could verify no peer.
    plane.write_config(&format!(
        "mesh:\n  trust_domain: other.local\n{}",
        mesh(&[&a], "5s").trim_start_matches("mesh:\n")
    ));
    assert_eventually!(
        Duration::from_secs(5),
        || async {
            status(&plane)
                .await
                .proxies
                .iter()
                .any(|p| p.report.rejected_version.is_some())
        },
        "refusal never reported"
    );
    let status = status(&plane).await;
    let proxy = &status.proxies[0];
    assert_eq!(
        proxy.report.applied_version, good,
        "the refused version is not shown as applied"
    );
    assert!(
        proxy
            .report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("trust_domain is `other.local`")),
        "{:?}",
        proxy.report
    );
    assert_ne!(
        status.versions.get("web"),
        Some(&good),
        "the control plane did move on"
    );
    assert_eq!(
        web.config_version().await,
        good,
        "the old snapshot stays in force"
    );
    assert_eq!(
        metric(
            &plane.get("/metrics").await,
            "tether_control_proxy_rejections_total"
        ),
        Some(1.0)
    );
}

/// The services in a proxy's `/config`, sorted.
async fn held(proxy: &Proxy) -> Vec<String> {
    let config: serde_json::Value =
        serde_json::from_str(&proxy.admin_get("/config").await).unwrap_or_default();
    let mut names: Vec<String> = config["services"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn a_proxy_holds_only_what_it_may_call_and_learns_new_rules_live() {
    let (api, db) = (Backend::start("api").await, Backend::start("db").await);
    let mesh = |web_rules: &str| {
        format!(
            "mesh:\n  upstream_scope: authorized\n  catalog:\n    static:\n      services:\n        api: [ {{ address: \"{}\" }} ]\n        db: [ {{ address: \"{}\" }} ]\nservices:\n  web: {{}}\n  api: {{}}\n  db: {{}}\nauthorization:\n  default: deny\n  rules:\n    - {{ to: api, from: [web] }}\n    - {{ to: db, from: [api{web_rules}] }}\n",
            api.address(),
            db.address()
        )
    };
    let plane = ControlPlane::start(&mesh("")).await;
    let web = Proxy::subscribed(&plane.url(), "web").start().await;
    let client = Client::http1();
    assert_eq!(held(&web).await, ["api"], "web may call api only");
    assert_eq!(client.get(web.outbound, "api", "/").await.status, 200);
    let refused = client.get(web.outbound, "db", "/").await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(
        refused
            .headers
            .get("tether-error")
            .and_then(|v| v.to_str().ok()),
        Some("unknown-service")
    );
    assert_eq!(db.hits(), 0);
    // A rule that lets web call db brings db to web's sidecar.
    plane.write_config(&mesh(", web"));
    assert_eventually!(
        Duration::from_secs(5),
        || async { held(&web).await == ["api", "db"] },
        "db never reached web's sidecar after the rule allowed it"
    );
    assert_eq!(client.get(web.outbound, "db", "/").await.status, 200);
}
