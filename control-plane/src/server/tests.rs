//! The API's behaviour on a paused clock: long-poll timing, readiness,
//! unknown services, and reports.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use http_body_util::BodyExt;
use tether_api::Endpoint;

use super::*;
use crate::catalog::CatalogState;
use crate::config::MeshConfig;

fn config() -> MeshConfig {
    crate::config::parse(Path::new("mesh.yaml"), "services:\n  web: {}\n  api: {}\n")
        .unwrap_or_else(|e| panic!("{e}"))
}

fn catalog(ports: &[u16]) -> CatalogState {
    let endpoints = ports
        .iter()
        .map(|port| Endpoint {
            address: format!("127.0.0.1:{port}"),
            weight: 1,
            tags: vec![],
            meta: BTreeMap::new(),
            zone: None,
        })
        .collect();
    CatalogState::synced([("api".to_owned(), endpoints)].into())
}

fn api() -> (Api, Arc<Snapshots>) {
    let metrics = ControlMetrics::new();
    let snapshots = Snapshots::new(metrics.clone());
    (Api::new(Arc::clone(&snapshots), metrics), snapshots)
}

async fn body(response: Rsp) -> (StatusCode, String) {
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn poll(api: &Api, service: &str, params: &str) -> (StatusCode, String) {
    body(api.snapshot(service, Some(params), Some("web-1")).await).await
}

fn version(json: &str) -> u64 {
    serde_json::from_str::<tether_api::Snapshot>(json)
        .map(|s| s.version)
        .unwrap_or_else(|e| panic!("not a snapshot ({e}): {json}"))
}

#[tokio::test(start_paused = true)]
async fn nothing_is_served_before_the_catalog_is_read() {
    let (api, snapshots) = api();
    let (status, text) = poll(&api, "web", "version=0").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("catalog"), "{text}");
    snapshots.update(&config(), &catalog(&[1]));
    assert_eq!(poll(&api, "web", "version=0").await.0, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_long_poll_answers_at_once_for_news_and_waits_for_a_change() {
    let (api, snapshots) = api();
    snapshots.update(&config(), &catalog(&[1]));
    let (status, json) = poll(&api, "web", "version=0&wait=30s").await;
    assert_eq!(status, StatusCode::OK);
    let first = version(&json);

    let waiting = {
        let api = api.clone();
        tokio::spawn(async move { poll(&api, "web", &format!("version={first}&wait=30s")).await })
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!waiting.is_finished(), "answered with nothing new");
    assert_eq!(api.metrics.subscribers.get(), 1, "the open poll is counted");
    snapshots.update(&config(), &catalog(&[1, 2]));
    let (status, json) = waiting.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, StatusCode::OK);
    assert!(version(&json) > first);
    assert_eq!(api.metrics.subscribers.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn unchanged_inputs_keep_the_poll_waiting_until_304_and_wait_is_capped() {
    let (api, snapshots) = api();
    snapshots.update(&config(), &catalog(&[1]));
    let current = version(&poll(&api, "api", "version=0").await.1);
    let waiting = {
        let api = api.clone();
        tokio::spawn(async move { poll(&api, "api", &format!("version={current}&wait=10m")).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    snapshots.update(&config(), &catalog(&[1]));
    let started = tokio::time::Instant::now();
    let (status, _) = waiting.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(started.elapsed() + Duration::from_secs(1), MAX_WAIT);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_service_is_a_404_that_says_so() {
    let (api, snapshots) = api();
    snapshots.update(&config(), &catalog(&[1]));
    let (status, text) = poll(&api, "ghost", "version=0").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(text.contains("unknown service `ghost`"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_refused_version_is_never_shown_as_applied() {
    let (api, _) = api();
    let applied = r#"{"proxy_id":"web-1","service":"web","applied_version":5}"#;
    assert_eq!(
        api.record(applied.as_bytes()).status(),
        StatusCode::NO_CONTENT
    );
    let refused = r#"{"proxy_id":"web-1","service":"web","applied_version":5,"rejected_version":6,"error":"bad route"}"#;
    assert_eq!(
        api.record(refused.as_bytes()).status(),
        StatusCode::NO_CONTENT
    );
    let status = api.status();
    let report = &status.proxies[0].report;
    assert_eq!(
        (report.applied_version, report.rejected_version),
        (5, Some(6))
    );
    assert_eq!(api.metrics.proxy_rejections.get(), 1);
    assert_eq!(api.record(b"{}").status(), StatusCode::BAD_REQUEST);
}

fn rollouts() -> Arc<crate::rollout::Rollouts> {
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(config()));
    crate::rollout::Rollouts::load(Arc::default(), rx, None, ControlMetrics::new())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn stats_report(service: &str) -> tether_api::StatsReport {
    tether_api::StatsReport {
        proxy_id: format!("{service}-1"),
        service: service.into(),
        counters_since_unix_ms: 0,
        upstreams: vec![],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_proxy_reports_stats_only_for_its_own_service() {
    let (api, _) = api();
    let rollouts = rollouts();
    let web = Caller::Service(Arc::new(
        tether_certs::SpiffeId::service("tether.local", "web").unwrap_or_else(|e| panic!("{e}")),
    ));
    let (status, _) = body(api.record_stats(&rollouts, stats_report("web"), &web)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, message) = body(api.record_stats(&rollouts, stats_report("api"), &web)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{message}");
    let (status, _) =
        body(api.record_stats(&rollouts, stats_report("api"), &Caller::Anonymous)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        rollouts.stats().latest().len(),
        1,
        "only web's report is kept"
    );
    assert_eq!(api.metrics.stats_reports.get(), 1);
}

#[tokio::test]
async fn rollouts_change_only_from_a_loopback_peer() {
    let (api, _) = api();
    let local = Peer("127.0.0.1:40000".parse().unwrap_or_else(|e| panic!("{e}")));
    let local6 = Peer("[::1]:40000".parse().unwrap_or_else(|e| panic!("{e}")));
    let remote = Peer("10.1.2.3:40000".parse().unwrap_or_else(|e| panic!("{e}")));
    assert!(api.refuse_rollout_change(Some(&local)).is_none());
    assert!(api.refuse_rollout_change(Some(&local6)).is_none());
    let Some(refusal) = api.refuse_rollout_change(Some(&remote)) else {
        panic!("a remote peer may not change rollouts");
    };
    assert_eq!(body(refusal).await.0, StatusCode::FORBIDDEN);
    assert!(api.refuse_rollout_change(None).is_some());
    assert_eq!(
        api.metrics
            .api_unauthorized
            .with_label_values(&["rollout"])
            .get(),
        2
    );
}

#[tokio::test]
async fn the_topology_page_and_its_json_are_served_from_the_binary() {
    let (api, snapshots) = api();
    let api = api.with_rollouts(rollouts());
    snapshots.update(&config(), &catalog(&[1, 2]));
    for path in ["/ui", "/ui/", "/ui/app.js", "/ui/style.css", "/v1/topology"] {
        assert!(ui::serves(path), "{path}");
    }
    assert!(!ui::serves("/ui/other.js"));
    let page = api.ui("/ui", None);
    assert_eq!(
        page.headers()[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    assert!(page.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .is_ok_and(|csp| csp.starts_with("default-src 'self'")));
    let (status, html) = body(page).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("/ui/app.js") && !html.contains("https://"));

    let mut report = stats_report("web");
    // A proxy that started a second ago: its counts are all the window's.
    report.counters_since_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        - 1_000;
    report.upstreams = vec![tether_api::UpstreamCounters {
        service: "api".into(),
        requests: 10,
        latency_buckets: vec![0; tether_api::LATENCY_BUCKET_COUNT],
        ..Default::default()
    }];
    let rollouts = api.rollouts.clone().unwrap_or_else(|| unreachable!());
    let (status, _) = body(api.record_stats(&rollouts, report, &Caller::Plaintext)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, json) = body(api.ui("/v1/topology", Some("window=10s"))).await;
    assert_eq!(status, StatusCode::OK);
    let topology: tether_api::Topology =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(topology.window_seconds, 10);
    let names: Vec<&str> = topology.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["web", "api"], "by layer");
    assert_eq!(topology.services[1].instances.len(), 2, "the catalog's");
    assert_eq!(topology.edges.len(), 1);
    assert_eq!(topology.edges[0].figures.requests, 10);
}

#[tokio::test(start_paused = true)]
async fn a_proxy_that_asks_for_deltas_gets_one_and_the_bytes_are_counted_by_kind() {
    let (api, snapshots) = api();
    snapshots.update(&config(), &catalog(&[1]));
    let replica = snapshots.replica();
    let update = |json: &str| -> tether_api::SnapshotUpdate {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not an update ({e}): {json}"))
    };
    // Holding nothing: the full snapshot, in an update naming this replica.
    let (status, json) = poll(&api, "web", "version=0&delta=0").await;
    assert_eq!(status, StatusCode::OK);
    let first = update(&json);
    assert_eq!(first.replica, replica);
    let mut held = first.full.unwrap_or_else(|| panic!("full: {json}"));
    snapshots.update(&config(), &catalog(&[1, 2]));
    let (_, json) = poll(
        &api,
        "web",
        &format!("version={}&delta={replica}", held.version),
    )
    .await;
    let delta = update(&json)
        .delta
        .unwrap_or_else(|| panic!("delta: {json}"));
    assert_eq!(delta.base, held.version);
    delta
        .merge_into(&mut held)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(Some(held), snapshots.get("web").map(|p| p.snapshot()));
    // An old proxy (no `delta=`) still gets a plain snapshot.
    let (_, json) = poll(&api, "web", "version=0").await;
    assert!(version(&json) > 0);
    let text = String::from_utf8_lossy(&api.metrics.render()).into_owned();
    let value = |series: &str| crate::metrics::tests_value(&text, series);
    assert_eq!(
        value("tether_control_snapshot_responses_total{kind=\"delta\"}"),
        1.0
    );
    assert_eq!(
        value("tether_control_snapshot_responses_total{kind=\"full\"}"),
        2.0
    );
    let (full, delta) = (
        value("tether_control_snapshot_bytes_sent_total{kind=\"full\"}"),
        value("tether_control_snapshot_bytes_sent_total{kind=\"delta\"}"),
    );
    assert!(delta > 0.0 && full > delta, "full {full}, delta {delta}");
}
