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
