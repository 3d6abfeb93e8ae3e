//! The topology page (`/ui` on the control plane's admin listener) in a
//! real headless Chromium, driven by Playwright (`tests/ui/topology.test.mjs`,
//! run with `node`), against a real mesh under bounded load:
//! web → api (two instances behind their sidecars) → db.
//!
//! Phases, each one run of the script: `healthy` (the nodes and edges are
//! drawn, the numbers move, the filter and the table work), `broken` (api's
//! second instance answers 500: api's success rate drops and that instance
//! shows as ejected), `refused` (a proxy refuses a snapshot: it shows in the
//! problems panel and the proxies table). A second test (`scale`) draws
//! 200 services from synthetic statistics: no overlap, bounded size, the
//! filter. Screenshots go to `target/ui-artifacts/`.
//!
//! Needs `node`, `npm ci --prefix tests/ui` (playwright-core) and Debian's
//! `chromium`: a missing one FAILS the test with what to install.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tether_e2e::control::ControlPlane;
use tether_e2e::{free_port, Backend, Client, Proxy, ProxyBuilder, TestPki};

/// Between two requests of each load stream: ~25 rps per stream.
const LOAD_PERIOD: Duration = Duration::from_millis(40);
/// Most requests a stream sends, whatever happens (bounds the test).
const LOAD_MAX_REQUESTS: usize = 6_000;
/// Longest one phase of the browser script may take (it has its own,
/// shorter deadline; this one catches a hung browser).
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Chromium to drive: `TETHER_CHROMIUM` or Debian's `/usr/bin/chromium`.
fn chromium() -> PathBuf {
    std::env::var_os("TETHER_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Fails (never skips) with what to install when a part is missing.
fn require_browser_tools() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "the UI browser tests need Node.js: `apt-get install -y nodejs npm` ({node:?})"
    );
    let playwright = repo_root().join("tests/ui/node_modules/playwright-core");
    assert!(
        playwright.is_dir(),
        "the UI browser tests need playwright-core in {}: run `npm ci --prefix tests/ui`",
        playwright.display()
    );
    let chromium = chromium();
    assert!(
        chromium.exists(),
        "the UI browser tests need Chromium at {} (`apt-get install -y chromium`, or set TETHER_CHROMIUM)",
        chromium.display()
    );
}

fn artifacts() -> PathBuf {
    repo_root().join("target/ui-artifacts")
}

/// Removes the artifacts of `phases` (screenshots of an earlier run
/// mislead); the other test's stay (tests run in parallel).
fn fresh_artifacts(phases: &[&str]) {
    let dir = artifacts();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if phases.iter().any(|p| name.starts_with(p)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Runs one phase of the browser script against `admin`; panics with its
/// output unless it exits 0.
async fn browser(admin: SocketAddr, phase: &str, plane: &ControlPlane) {
    let script = repo_root().join("tests/ui/topology.test.mjs");
    let log_path = artifacts().join(format!("{phase}.log"));
    let log = std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new("node")
        .arg(&script)
        .arg(format!("http://{admin}"))
        .arg(phase)
        .env("TETHER_CHROMIUM", chromium())
        .env("TETHER_UI_ARTIFACTS", artifacts())
        .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node {}: {e}", script.display()));
    let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("browser phase `{phase}` hung for {PHASE_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    println!("browser phase `{phase}`:\n{output}");
    assert!(
        status.success(),
        "browser phase `{phase}` failed ({status}):\n{output}\ncontrol plane log:\n{}",
        plane.log()
    );
}
/// Sends GETs for `host` through `outbound` every [`LOAD_PERIOD`] until
/// `stop` or [`LOAD_MAX_REQUESTS`].
fn load(
    outbound: SocketAddr,
    host: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let client = Client::http1();
        let mut sent = 0;
        while sent < LOAD_MAX_REQUESTS && !stop.load(Ordering::Relaxed) {
            let _ = client
                .try_send(
                    http::Method::GET,
                    outbound,
                    host,
                    "/",
                    bytes::Bytes::new(),
                    &[],
                )
                .await;
            sent += 1;
            tokio::time::sleep(LOAD_PERIOD).await;
        }
        sent
    })
}

fn mesh(trust_domain: &str, api: &[&Proxy], db: &[&Proxy]) -> String {
    let list = |proxies: &[&Proxy]| {
        proxies
            .iter()
            .map(|p| format!("{{ address: \"{}\" }}", p.inbound))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "mesh:\n  trust_domain: {trust_domain}\n  catalog:\n    static:\n      services:\n        api: [ {} ]\n        db: [ {} ]\nservices:\n  web: {{}}\n  audit: {{}}\n  api:\n    policy: {{ load_balancer: round-robin, retries: {{ attempts: 0 }}, circuit_breaker: {{ consecutive_failures: 20, base_ejection: 3s }} }}\n  db: {{}}\n",
        list(api),
        list(db)
    )
}

fn sidecar(plane: &ControlPlane, service: &str, id: &str) -> ProxyBuilder {
    Proxy::subscribed(&plane.url(), service)
        .arg("--proxy-id")
        .arg(id)
        .arg("--stats-interval")
        .arg("500ms")
}

#[tokio::test]
async fn the_topology_page_shows_the_live_mesh_its_failures_and_refusals() {
    require_browser_tools();
    fresh_artifacts(&["healthy", "broken", "refused"]);
    let (api_a, api_b, db) = (
        Backend::start("api-a").await,
        Backend::start("api-b").await,
        Backend::start("db").await,
    );
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let plane = ControlPlane::start_with_args(&mesh("tether.local", &[], &[]), |_| {
        vec!["--admin".into(), admin.to_string()]
    })
    .await;
    println!("topology page: http://{admin}/ui");
    let web = sidecar(&plane, "web", "web-1").start().await;
    let api1 = sidecar(&plane, "api", "api-1")
        .app(api_a.addr)
        .start()
        .await;
    let api2 = sidecar(&plane, "api", "api-2")
        .app(api_b.addr)
        .start()
        .await;
    let db1 = sidecar(&plane, "db", "db-1").app(db.addr).start().await;
    // Holds a certificate in tether.local: refuses a snapshot of another
    // trust domain (its certificate, valid 1 h, also shows as expiring).
    let pki = TestPki::new();
    let _audit = sidecar(&plane, "audit", "audit-1")
        .identity(&pki.issue("audit"), &pki.bundle())
        .start()
        .await;
    let good = mesh("tether.local", &[&api1, &api2], &[&db1]);
    plane.write_config(&good);
    // Wait on the proxies' own endpoint lists, not on requests: a request
    // sent before the endpoints arrive fails and would count in the window.
    let (api_1, api_2, db_1) = (
        api1.inbound.to_string(),
        api2.inbound.to_string(),
        db1.inbound.to_string(),
    );
    tether_e2e::assert_eventually!(
        Duration::from_secs(10),
        || async {
            let web_sees = web.admin_get("/endpoints").await;
            web_sees.contains(&api_1)
                && web_sees.contains(&api_2)
                && api1.admin_get("/endpoints").await.contains(&db_1)
        },
        "the proxies never got the endpoints; log:\n{}",
        plane.log()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let streams = [
        load(web.outbound, "api", Arc::clone(&stop)),
        load(api1.outbound, "db", Arc::clone(&stop)),
    ];
    browser(admin, "healthy", &plane).await;

    // api's second instance fails every request from now on.
    api_b.set(|b| b.status = 500);
    browser(admin, "broken", &plane).await;
    assert!(
        api_a.hits() > 0 && api_b.hits() > 0,
        "both api instances should have had traffic: {} and {}",
        api_a.hits(),
        api_b.hits()
    );

    // A trust domain audit's certificate is not in: audit refuses it.
    plane.write_config(&good.replace("trust_domain: tether.local", "trust_domain: other.local"));
    browser(admin, "refused", &plane).await;

    stop.store(true, Ordering::Relaxed);
    for stream in streams {
        let sent = stream.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(sent > 0, "a load stream sent nothing");
    }
    let screenshot = artifacts().join("refused.png");
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot at {}",
        screenshot.display()
    );
}

/// Services of the synthetic mesh: 10 front ends call 4 of 40 mid-tier
/// services each, which call 4 of 150 back ends each.
const FRONT: usize = 10;
const MID: usize = 40;
const SCALE_SERVICES: usize = 200;
/// The back end whose callers see failures.
const FAILING: usize = 77;

fn scale_name(i: usize) -> String {
    format!("svc-{i:03}")
}

/// What `svc-i` calls in the synthetic mesh.
fn scale_callees(i: usize) -> Vec<usize> {
    if i < FRONT {
        (0..4).map(|k| FRONT + (i * 4 + k) % MID).collect()
    } else if i < FRONT + MID {
        (0..4)
            .map(|k| FRONT + MID + ((i - FRONT) * 4 + k) % (SCALE_SERVICES - FRONT - MID))
            .collect()
    } else {
        Vec::new()
    }
}

#[tokio::test]
async fn the_topology_page_stays_legible_with_two_hundred_services() {
    require_browser_tools();
    let mut yaml = String::from("mesh:\n  catalog:\n    static:\n      services:\n");
    for i in 0..SCALE_SERVICES {
        yaml.push_str(&format!(
            "        {}: [ {{ address: \"127.0.0.1:{}\" }} ]\n",
            scale_name(i),
            1000 + i
        ));
    }
    yaml.push_str("services:\n");
    for i in 0..SCALE_SERVICES {
        yaml.push_str(&format!("  {}: {{}}\n", scale_name(i)));
    }
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let plane =
        ControlPlane::start_with_args(&yaml, |_| vec!["--admin".into(), admin.to_string()]).await;
    // Every service's proxy reports what it sent over its first 5 s.
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        - 5_000;
    for i in 0..SCALE_SERVICES {
        let upstreams = scale_callees(i)
            .into_iter()
            .map(|callee| {
                let requests = 50 + (i as u64 * 7 + callee as u64) % 200;
                let failures = if callee == FAILING { requests / 10 } else { 0 };
                let mut latency_buckets = vec![0; tether_api::LATENCY_BUCKET_COUNT];
                latency_buckets[3 + (callee % 4)] = requests;
                tether_api::UpstreamCounters {
                    service: scale_name(callee),
                    subset: None,
                    requests,
                    failures,
                    latency_buckets,
                }
            })
            .collect();
        let report = tether_api::StatsReport {
            proxy_id: format!("{}-1", scale_name(i)),
            service: scale_name(i),
            counters_since_unix_ms: started,
            upstreams,
            proxy_version: Some("0.1.0".into()),
            ..tether_api::StatsReport::default()
        };
        let body = serde_json::to_string(&report).unwrap_or_else(|e| panic!("{e}"));
        let (status, answer) = plane.post(tether_api::STATS_PATH, &body).await;
        assert_eq!(status, 204, "{answer}");
    }
    fresh_artifacts(&["scale"]);
    browser(admin, "scale", &plane).await;
}
