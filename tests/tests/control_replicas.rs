//! Two control-plane replicas behind the proxies: one killed under load
//! costs no request, proxies switch to the other and keep receiving
//! changes, their versions never go backwards, a proxy started while one
//! replica is down gets its certificate and snapshot from the other, and
//! `tether-control status` shows every proxy whichever replica it talks to.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tether_e2e::consul::{Consul, Instance};
use tether_e2e::control::ControlPlane;
use tether_e2e::pki::TRUST_DOMAIN;
use tether_e2e::{assert_eventually, Backend, Client, Proxy};

fn consul_mesh(consul: &Consul) -> String {
    format!(
        "mesh:\n  catalog:\n    consul: {{ address: \"{}\", datacenter: dc1 }}\nservices:\n  web: {{}}\n  api:\n    policy: {{ timeout: 2s }}\n",
        consul.url()
    )
}

fn api<'a>(id: &'a str, backend: &Backend) -> Instance<'a> {
    Instance {
        id,
        name: "api",
        address: Some("127.0.0.1"),
        port: backend.addr.port(),
        ttl_check: true,
        ..Instance::default()
    }
}

/// Requests to api through `web` one after another until `stop`: (ok, failed).
fn steady_load(web: &Proxy, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, usize)> {
    let outbound = web.outbound;
    tokio::spawn(async move {
        let ok = AtomicUsize::new(0);
        let mut failed = 0;
        let mut sent = 0;
        // Bounded: at most 20,000 requests, whatever `stop` does.
        while !stop.load(Ordering::Relaxed) && sent < 20_000 {
            sent += 1;
            let reply = Client::http1()
                .try_send(
                    http::Method::GET,
                    outbound,
                    "api",
                    "/",
                    bytes::Bytes::new(),
                    &[],
                )
                .await;
            match reply {
                Ok(r) if r.status == 200 => {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                _ => failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (ok.into_inner(), failed)
    })
}

/// Which of `planes` has an open long-poll from `proxy_id` (`/v1/status`).
async fn serving(planes: &[&ControlPlane], proxy_id: &str) -> Option<usize> {
    for (i, plane) in planes.iter().enumerate() {
        if !plane.is_running() {
            continue;
        }
        let Some((200, body)) = plane.try_get("/v1/status").await else {
            continue;
        };
        let status: tether_api::StatusResponse = serde_json::from_str(&body).ok()?;
        if status
            .proxies
            .iter()
            .any(|p| p.report.proxy_id == proxy_id && p.connected)
        {
            return Some(i);
        }
    }
    None
}

#[tokio::test]
async fn a_replica_killed_under_load_fails_no_request_and_changes_keep_coming() {
    let consul = Consul::start().await;
    let one = Backend::start("api-1").await;
    let two = Backend::start("api-2").await;
    consul.register(&api("api-1", &one)).await;
    let a = ControlPlane::start(&consul_mesh(&consul)).await;
    let b = a.replica().await;
    let mut planes = [a, b];
    let web = Proxy::subscribed(&format!("{},{}", planes[0].url(), planes[1].url()), "web")
        .arg("--proxy-id")
        .arg("web-1")
        .start()
        .await;
    assert_eventually!(
        Duration::from_secs(15),
        || async { Client::http1().get(web.outbound, "api", "/").await.status == 200 },
        "web never reached api; log:\n{}",
        web.log()
    );
    assert_eventually!(
        Duration::from_secs(10),
        || async { serving(&[&planes[0], &planes[1]], "web-1").await.is_some() },
        "no replica shows web-1 polling"
    );
    let first = serving(&[&planes[0], &planes[1]], "web-1")
        .await
        .unwrap_or(0);
    let before = web.config_version().await;
    assert!(before > 0);

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(&web, Arc::clone(&stop));
    // Some load before the kill.
    assert_eventually!(
        Duration::from_secs(10),
        || async { one.hits() > 50 },
        "no load reached api-1"
    );
    planes[first].stop();
    let other = 1 - first;
    // The proxy moves to the other replica...
    assert_eventually!(
        Duration::from_secs(15),
        || async { serving(&[&planes[0], &planes[1]], "web-1").await == Some(other) },
        "web-1 never polled the surviving replica; web log:\n{}",
        web.log()
    );
    // ...and a change made after the kill reaches it from there.
    consul.register(&api("api-2", &two)).await;
    assert_eventually!(
        Duration::from_secs(15),
        || async { two.hits() > 100 },
        "the instance registered after the kill never got traffic; web log:\n{}",
        web.log()
    );
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(ok > 100, "only {ok} requests succeeded");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    let after = web.config_version().await;
    assert!(
        after > before,
        "the version went from {before} to {after} across the switch"
    );
    let status = planes[other].get("/v1/status").await;
    assert!(status.contains("\"web-1\""), "{status}");
    drop(planes);
}

/// mesh.yaml for the CA test: web may call api, api's instance is its
/// sidecar's inbound listener.
fn ca_mesh(api_inbound: Option<std::net::SocketAddr>) -> String {
    let api = api_inbound
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .unwrap_or_default();
    format!(
        "mesh:\n  trust_domain: {TRUST_DOMAIN}\n  catalog:\n    static:\n      services:\n        api: [ {api} ]\nservices:\n  web: {{}}\n  api: {{}}\nauthorization:\n  default: deny\n  rules:\n    - {{ to: api, from: [web] }}\n"
    )
}

#[tokio::test]
async fn a_proxy_started_while_one_replica_is_down_is_served_by_the_other() {
    let app = Backend::start("api").await;
    let mut a = ControlPlane::start_with_ca(&ca_mesh(None), "1h").await;
    // Tokens made before the CA directory is copied to the replica.
    let api_token = a.token_file("api");
    let web_token = a.token_file("web");
    let b = a.replica().await;
    let urls = format!("{},{}", a.url(), b.url());
    let bundle = b.bundle();
    let sidecar = |service: &str, token: &std::path::Path| {
        Proxy::subscribed(&urls, service)
            .arg("--trust-bundle")
            .arg(&bundle.display().to_string())
            .arg("--token-file")
            .arg(&token.display().to_string())
            .arg("--proxy-id")
            .arg(&format!("{service}-1"))
    };
    let api = sidecar("api", &api_token).app(app.addr).start().await;
    a.write_config(&ca_mesh(Some(api.inbound)));
    b.write_config(&ca_mesh(Some(api.inbound)));
    // Replica a is down before web's first start: web's certificate and
    // snapshot come from b.
    a.stop();
    let web = sidecar("web", &web_token).start().await;
    assert_eventually!(
        Duration::from_secs(20),
        || async { Client::http1().get(web.outbound, "api", "/").await.status == 200 },
        "web never reached api over mTLS with one replica down; web log:\n{}\nb log:\n{}",
        web.log(),
        b.log()
    );
    // `status` over both replicas: every proxy, the one down named.
    let out = std::process::Command::new(tether_e2e::control::control_bin())
        .args(["status", "--control-plane", &urls, "--trust-bundle"])
        .arg(&bundle)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("web-1").contains(&b.addr.to_string()), "{table}");
    assert!(line("api-1").contains(" yes "), "{table}");
    assert!(
        table.contains(&format!("replica {} not asked", a.url())),
        "{table}"
    );
}
