//! Routing by authority, route rules and splits, HTTP/2, inbound, and
//! snapshot reloads.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tether_e2e::{assert_eventually, metric, Backend, Client, H2Connection, Proxy};

fn one_service(name: &str, endpoints: &[&Backend]) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|b| format!("{{ address: \"{}\" }}", b.address()))
        .collect();
    format!(
        "services:\n  {name}:\n    endpoints: [ {} ]\n",
        list.join(", ")
    )
}

#[tokio::test]
async fn routes_by_host_in_every_spelling() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(&one_service("api", &[&api])).await;
    let client = Client::http1();
    for host in ["api", "api:80", "api.mesh", "api.mesh:15001", "API"] {
        let reply = client.get(proxy.outbound, host, "/hello").await;
        assert_eq!(reply.status, 200, "host {host}: {reply:?}");
        assert_eq!(reply.header("x-backend"), "api");
        assert_eq!(
            reply.header("x-host"),
            host,
            "the original Host reaches the backend"
        );
    }
    assert_eq!(api.hits(), 5);
}

#[tokio::test]
async fn unknown_service_is_503_that_names_it() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(&one_service("api", &[&api])).await;
    let reply = Client::http1().get(proxy.outbound, "nope", "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("tether-error"), "unknown-service");
    assert!(reply.body.contains("`nope`"), "{}", reply.body);
    assert_eq!(api.hits(), 0);
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"tether_proxy_errors_total{direction="outbound",reason="unknown-service",service="unknown"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn service_without_endpoints_is_503_no_endpoints() {
    let proxy = Proxy::start("services:\n  api: {}\n").await;
    let reply = Client::http1().get(proxy.outbound, "api", "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("tether-error"), "no-endpoints");
}

#[tokio::test]
async fn http2_multiplexes_many_streams_over_one_connection() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(&one_service("api", &[&api])).await;
    let connection = H2Connection::connect(proxy.outbound).await;
    let requests = (0..64).map(|i| {
        let connection = connection.clone();
        async move { connection.get("api.mesh", &format!("/stream/{i}")).await }
    });
    let replies = futures_join(requests).await;
    assert!(replies.iter().all(|r| r.status == 200), "{replies:?}");
    assert_eq!(api.hits(), 64);
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"tether_connections_total{direction="outbound"}"#
        ),
        Some(1.0),
        "all 64 streams share one downstream connection:\n{metrics}"
    );
}

#[tokio::test]
async fn inbound_forwards_to_the_local_app() {
    let app = Backend::start("app").await;
    let proxy = Proxy::builder("services: {}\n").app(app.addr).start().await;
    let reply = Client::http1()
        .send(
            Method::POST,
            proxy.inbound,
            "api",
            "/in",
            Bytes::from_static(b"12345"),
            &[],
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-backend"), "app");
    assert_eq!(reply.header("x-body-len"), "5");
}

#[tokio::test]
async fn route_rules_and_weighted_split_send_traffic_where_configured() {
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    let snapshot = format!(
        r#"
services:
  api:
    endpoints:
      - {{ address: "{}", tags: [v1] }}
      - {{ address: "{}", meta: {{ version: "2" }} }}
    subsets: {{ v1: {{ tags: [v1] }}, v2: {{ meta: {{ version: "2" }} }} }}
    split: [ {{ subset: v1, weight: 90 }}, {{ subset: v2, weight: 10 }} ]
    routes:
      - match: {{ path_prefix: /admin, headers: {{ x-canary: "1" }} }}
        split: [ {{ subset: v2, weight: 100 }} ]
"#,
        v1.address(),
        v2.address()
    );
    let proxy = Proxy::start(&snapshot).await;
    let client = Client::http1();
    for _ in 0..20 {
        let reply = client
            .send(
                Method::GET,
                proxy.outbound,
                "api",
                "/admin/x",
                Bytes::new(),
                &[("x-canary", "1")],
            )
            .await;
        assert_eq!(reply.header("x-backend"), "v2");
    }
    let before = (v1.hits(), v2.hits());
    let total = 1000;
    for _ in 0..total {
        client.get(proxy.outbound, "api", "/admin/x").await; // no header: default split
    }
    let v2_share = (v2.hits() - before.1) as f64 / total as f64;
    // 10 % ± 4 points: binomial sd at n=1000 is ~0.95 points.
    assert!((0.06..=0.14).contains(&v2_share), "v2 got {v2_share}");
}

#[tokio::test]
async fn snapshot_edits_apply_without_dropping_connections() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = Proxy::start(&one_service("api", &[&a])).await;
    let client = Client::http1();
    assert_eq!(
        client
            .get(proxy.outbound, "api", "/")
            .await
            .header("x-backend"),
        "a"
    );
    let version = proxy.config_version().await;
    proxy.write_snapshot(&one_service("api", &[&b]));
    assert_eventually!(
        Duration::from_secs(5),
        || async { proxy.config_version().await != version },
        "new snapshot never applied"
    );
    // The same pooled client connection keeps working and now reaches b.
    let reply = client.get(proxy.outbound, "api", "/").await;
    assert_eq!(reply.header("x-backend"), "b");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"tether_connections_total{direction="outbound"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_bad_edit_keeps_the_last_good_snapshot() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&one_service("api", &[&a])).await;
    let version = proxy.config_version().await;
    proxy.write_snapshot("services:\n  api:\n    endpoints: [ { adress: \"x\" } ]\n");
    assert_eventually!(
        Duration::from_secs(5),
        || async { metric(&proxy.metrics().await, "tether_config_errors_total") == Some(1.0) },
        "bad edit not counted"
    );
    assert!(
        proxy.log().contains("snapshot.yaml:3:20"),
        "error names file:line:col:\n{}",
        proxy.log()
    );
    assert_eq!(proxy.config_version().await, version);
    assert_eq!(
        Client::http1().get(proxy.outbound, "api", "/").await.status,
        200
    );
}

async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    futures_util::future::join_all(futures).await
}
