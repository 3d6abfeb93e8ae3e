//! Automatic registration in Consul (`--consul-agent`): the proxy registers
//! its instance with a real agent, keeps its TTL check in step with the
//! app's health, deregisters first on SIGTERM while still serving, comes
//! back after an agent restart, and serves even when no agent answers.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::Value;
use tether_e2e::consul::Consul;
use tether_e2e::control::ControlPlane;
use tether_e2e::{assert_eventually, free_port, Backend, Client, Proxy, ProxyBuilder};
use tokio::net::TcpListener;

/// Fast checks so the tests see changes quickly (TTL: 3 × this).
const CHECK_INTERVAL: &str = "500ms";

/// A proxy fronting `app`, registering as `api` / `id` with `agent`.
fn registering(app: SocketAddr, agent: &str, id: &str) -> ProxyBuilder {
    Proxy::builder("services: {}\n")
        .app(app)
        .arg("--service")
        .arg("api")
        .arg("--consul-agent")
        .arg(agent)
        .arg("--consul-service-id")
        .arg(id)
        .arg("--consul-check-interval")
        .arg(CHECK_INTERVAL)
}

/// `GET path` on the agent's API as JSON (`Null` when it does not answer 200).
async fn agent_json(consul: &Consul, path: &str) -> Value {
    Client::http1()
        .try_send(Method::GET, consul.http, "consul", path, Bytes::new(), &[])
        .await
        .ok()
        .filter(|reply| reply.status == 200)
        .and_then(|reply| serde_json::from_str(&reply.body).ok())
        .unwrap_or(Value::Null)
}

/// The instance as the agent lists it.
async fn service(consul: &Consul, id: &str) -> Option<Value> {
    let services = agent_json(consul, "/v1/agent/services").await;
    services.get(id).cloned()
}

/// The status of the instance's TTL check (`passing`, `critical`).
async fn check_status(consul: &Consul, id: &str) -> Option<String> {
    let checks = agent_json(consul, "/v1/agent/checks").await;
    checks[format!("tether:{id}")]["Status"]
        .as_str()
        .map(str::to_owned)
}

/// The output of the instance's TTL check (the sidecar's probe note).
async fn check_output(consul: &Consul, id: &str) -> String {
    let checks = agent_json(consul, "/v1/agent/checks").await;
    checks[format!("tether:{id}")]["Output"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn is_passing(consul: &Consul, id: &str) -> bool {
    check_status(consul, id).await.as_deref() == Some("passing")
}

async fn is_critical(consul: &Consul, id: &str) -> bool {
    check_status(consul, id).await.as_deref() == Some("critical")
}

#[tokio::test]
async fn the_proxy_registers_with_tags_meta_and_a_passing_check() {
    let consul = Consul::start().await;
    let app = Backend::start("app").await;
    let proxy = registering(app.addr, &consul.url(), "api-1")
        .arg("--consul-tags")
        .arg("v1,canary")
        .arg("--consul-meta")
        .arg("zone=a,team=payments")
        .arg("--app-health-path")
        .arg("/healthz")
        .start()
        .await;
    assert_eventually!(
        Duration::from_secs(15),
        || is_passing(&consul, "api-1"),
        "the instance never got a passing check; log:\n{}",
        proxy.log()
    );
    let instance = service(&consul, "api-1")
        .await
        .unwrap_or_else(|| panic!("api-1 not registered; log:\n{}", proxy.log()));
    assert_eq!(instance["Service"], "api");
    assert_eq!(instance["Port"], proxy.inbound.port());
    assert_eq!(
        instance["Address"], "127.0.0.1",
        "the inbound listener's address"
    );
    assert_eq!(instance["Tags"], serde_json::json!(["v1", "canary"]));
    assert_eq!(instance["Meta"]["zone"], "a");
    assert_eq!(instance["Meta"]["team"], "payments");
    assert_eq!(
        instance["Meta"]["tether_admin_port"],
        proxy.admin.port().to_string(),
        "where Prometheus scrapes the sidecar"
    );
    let health = Client::http1()
        .get(proxy.admin, "admin", "/app-health")
        .await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(
        health.body.contains("GET /healthz answered 200"),
        "{}",
        health.body
    );
    // The app's own health path decides: a 503 turns the check critical.
    app.set(|b| b.status = 503);
    assert_eventually!(
        Duration::from_secs(15),
        || async {
            is_critical(&consul, "api-1").await
                && check_output(&consul, "api-1")
                    .await
                    .contains("answered 503")
        },
        "the check did not follow the app's 503; log:\n{}",
        proxy.log()
    );
    let health = Client::http1()
        .get(proxy.admin, "admin", "/app-health")
        .await;
    assert_eq!(health.status, 503, "{}", health.body);
}

#[tokio::test]
async fn the_check_goes_critical_when_the_app_is_down_and_passing_when_it_is_back() {
    let consul = Consul::start().await;
    let app_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let app = TcpListener::bind(app_addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let proxy = registering(app_addr, &consul.url(), "api-2").start().await;
    assert_eventually!(
        Duration::from_secs(15),
        || is_passing(&consul, "api-2"),
        "never passing with the app up; log:\n{}",
        proxy.log()
    );
    drop(app);
    assert_eventually!(
        Duration::from_secs(15),
        || is_critical(&consul, "api-2"),
        "never critical with the app down; log:\n{}",
        proxy.log()
    );
    let output = agent_json(&consul, "/v1/agent/checks").await["tether:api-2"]["Output"].clone();
    assert!(
        output
            .as_str()
            .is_some_and(|o| o.contains("connect failed")),
        "the check output says why: {output}"
    );
    let _app = TcpListener::bind(app_addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eventually!(
        Duration::from_secs(15),
        || is_passing(&consul, "api-2"),
        "never passing again with the app back; log:\n{}",
        proxy.log()
    );
}

#[tokio::test]
async fn a_sidecar_without_a_snapshot_keeps_its_check_critical_though_the_app_is_up() {
    // The proxy registers with `agent`; its control plane reads a catalog
    // from a second Consul that is not up yet, so it serves no snapshot.
    let agent = Consul::start().await;
    let catalog_port = free_port();
    let plane = ControlPlane::start_unready(&format!(
        "mesh:\n  catalog:\n    consul: {{ address: \"http://127.0.0.1:{catalog_port}\" }}\nservices:\n  api: {{}}\n"
    ))
    .await;
    let app = Backend::start("app").await;
    let proxy = Proxy::subscribed(&plane.url(), "api")
        .app(app.addr)
        .arg("--consul-agent")
        .arg(&agent.url())
        .arg("--consul-service-id")
        .arg("api-6")
        .arg("--consul-check-interval")
        .arg(CHECK_INTERVAL)
        .spawn();
    assert_eventually!(
        Duration::from_secs(15),
        || async {
            is_critical(&agent, "api-6").await
                && check_output(&agent, "api-6").await.contains("no snapshot")
        },
        "registered, but not critical for want of a snapshot: {:?} {:?}; log:\n{}",
        check_status(&agent, "api-6").await,
        check_output(&agent, "api-6").await,
        proxy.log()
    );
    assert!(!proxy.is_ready().await, "ready without a snapshot");
    // The catalog comes up: snapshot, readiness, and only then passing.
    let _catalog = Consul::start_on(catalog_port).await;
    assert_eventually!(
        Duration::from_secs(30),
        || is_passing(&agent, "api-6"),
        "never passing once the sidecar had its snapshot: {:?}; log:\n{}",
        check_output(&agent, "api-6").await,
        proxy.log()
    );
    assert!(proxy.is_ready().await);
}

#[tokio::test]
async fn sigterm_deregisters_first_and_serves_during_the_grace_period() {
    let consul = Consul::start().await;
    let app = Backend::start("app").await;
    let mut proxy = registering(app.addr, &consul.url(), "api-3")
        .arg("--deregister-grace")
        .arg("8s")
        .start()
        .await;
    assert_eventually!(
        Duration::from_secs(15),
        || is_passing(&consul, "api-3"),
        "never registered; log:\n{}",
        proxy.log()
    );
    proxy.signal("TERM");
    assert_eventually!(
        Duration::from_secs(4),
        || async { service(&consul, "api-3").await.is_none() },
        "not deregistered after SIGTERM; log:\n{}",
        proxy.log()
    );
    assert!(
        proxy.wait_exit(Duration::ZERO).await.is_none(),
        "the proxy exited before the grace period; log:\n{}",
        proxy.log()
    );
    // A new connection and request during the grace period is served.
    let reply = Client::http1().get(proxy.inbound, "api", "/").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("x-backend"), "app");
    let status = proxy.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}; log:\n{}",
        proxy.log()
    );
    let log = proxy.log();
    let deregistered = log.find("deregistered from the Consul agent");
    let drained = log.find("drained cleanly");
    assert!(
        deregistered.is_some() && deregistered < drained,
        "deregistration comes before the drain; log:\n{log}"
    );
}

#[tokio::test]
async fn a_restarted_agent_gets_the_registration_back() {
    let mut consul = Consul::start().await;
    let port = consul.http.port();
    let app = Backend::start("app").await;
    let proxy = registering(app.addr, &consul.url(), "api-4").start().await;
    assert_eventually!(
        Duration::from_secs(15),
        || is_passing(&consul, "api-4"),
        "never registered; log:\n{}",
        proxy.log()
    );
    consul.stop();
    drop(consul);
    // A dev agent keeps no state: the new one knows nothing of api-4.
    let consul = Consul::start_on(port).await;
    assert_eventually!(
        Duration::from_secs(20),
        || is_passing(&consul, "api-4"),
        "the restarted agent never got the registration back; log:\n{}",
        proxy.log()
    );
    assert!(proxy.is_ready().await);
}

#[tokio::test]
async fn an_unreachable_agent_does_not_stop_the_proxy_from_serving() {
    let app = Backend::start("app").await;
    let port = free_port();
    let agent = format!("http://127.0.0.1:{port}");
    let proxy = registering(app.addr, &agent, "api-5").start().await;
    let reply = Client::http1().get(proxy.inbound, "api", "/").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eventually!(
        Duration::from_secs(10),
        || async { proxy.log().contains("Consul registration failed") },
        "the failure is logged; log:\n{}",
        proxy.log()
    );
    // Once an agent answers there, the instance registers without a restart.
    let consul = Consul::start_on(port).await;
    assert_eventually!(
        Duration::from_secs(20),
        || is_passing(&consul, "api-5"),
        "never registered once the agent came up; log:\n{}",
        proxy.log()
    );
}
