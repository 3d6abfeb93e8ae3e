//! Traffic management (#14): mirroring (copies to a subset or another
//! service, fire and forget, bounded) and locality-aware balancing (stay in
//! the proxy's zone, spill when its endpoints fail), through the real proxy
//! to real backends.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use tether_e2e::{assert_eventually, free_port, metric, Backend, Behavior, Client, Proxy};

/// Sequential requests of one load step: bounded, and enough for a 50 %
/// share to land within ±15 points (sd ≈ 2.5 points at n = 400).
const REQUESTS: usize = 400;

fn mirror_metric(metrics: &str, service: &str, outcome: &str) -> f64 {
    let series =
        format!(r#"tether_mirror_requests_total{{outcome="{outcome}",service="{service}"}}"#);
    metric(metrics, &series).unwrap_or(0.0)
}

#[tokio::test]
async fn half_the_requests_are_copied_to_the_shadow_subset_with_the_mirror_header() {
    let primary = Backend::start("v1").await;
    let shadow = Backend::start("v2").await;
    let once = Backend::start("once").await;
    let snapshot = format!(
        r#"
services:
  api:
    endpoints:
      - {{ address: "{primary}", tags: [v1] }}
      - {{ address: "{shadow}", tags: [v2] }}
    subsets: {{ v1: {{ tags: [v1] }}, v2: {{ tags: [v2] }} }}
    split: [ {{ subset: v1, weight: 1 }} ]
    mirror: {{ subset: v2, percent: 50 }}
    routes:
      - match: {{ path_prefix: /upload }}
        split: [ {{ subset: v1, weight: 1 }} ]
        mirror: {{ subset: v2 }}
  once:
    policy: {{ retries: {{ attempts: 0 }} }}
    endpoints: [ {{ address: "{once}" }} ]
    mirror: {{ service: shadow }}
  shadow:
    endpoints: [ {{ address: "{shadow}" }} ]
"#,
        primary = primary.address(),
        shadow = shadow.address(),
        once = once.address(),
    );
    let proxy = Proxy::start(&snapshot).await;
    let client = Client::http1();
    for _ in 0..REQUESTS {
        let reply = client.get(proxy.outbound, "api", "/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("x-backend"),
            "v1",
            "the caller sees the primary only"
        );
    }
    // The route's mirror replaces the service's: every upload is copied,
    // its buffered body with it.
    for _ in 0..20 {
        let reply = client
            .send(
                Method::POST,
                proxy.outbound,
                "api",
                "/upload",
                Bytes::from_static(b"12345"),
                &[],
            )
            .await;
        assert_eq!(reply.header("x-backend"), "v1");
    }
    // Without retries nothing is buffered: bodiless requests are still
    // copied (to another service), requests with a body are skipped.
    for _ in 0..10 {
        assert_eq!(client.get(proxy.outbound, "once", "/").await.status, 200);
        let post = client
            .send(
                Method::POST,
                proxy.outbound,
                "once",
                "/",
                Bytes::from_static(b"abc"),
                &[],
            )
            .await;
        assert_eq!(post.status, 200);
    }
    assert_eventually!(
        Duration::from_secs(10),
        || async {
            let metrics = proxy.metrics().await;
            let answered =
                mirror_metric(&metrics, "api", "sent") + mirror_metric(&metrics, "once", "sent");
            answered as usize == shadow.hits() && shadow.hits() == shadow.mirrored()
        },
        "every copy that reached the shadow was answered and counted:\n{}",
        proxy.metrics().await
    );
    let metrics = proxy.metrics().await;
    let copied = shadow.mirrored() - 20 - 10;
    assert!(
        (REQUESTS * 35 / 100..=REQUESTS * 65 / 100).contains(&copied),
        "50 % of {REQUESTS} mirrored: the shadow got {copied}"
    );
    assert_eq!(
        shadow.hits(),
        shadow.mirrored(),
        "the shadow got copies only"
    );
    assert_eq!(primary.hits(), REQUESTS + 20, "the primary got everything");
    assert_eq!(
        shadow.mirrored_bytes(),
        20 * 5,
        "upload bodies were copied whole"
    );
    assert_eq!(
        mirror_metric(&metrics, "api", "sent") as usize,
        copied + 20,
        "{metrics}"
    );
    assert_eq!(mirror_metric(&metrics, "once", "sent"), 10.0, "{metrics}");
    assert_eq!(
        mirror_metric(&metrics, "once", "skipped"),
        10.0,
        "{metrics}"
    );
    assert_eq!(mirror_metric(&metrics, "api", "failed"), 0.0, "{metrics}");
}

/// The median of `samples`.
fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

#[tokio::test]
async fn a_slow_or_dead_mirror_neither_slows_nor_fails_the_primary_and_excess_copies_drop() {
    let primary = Backend::start("primary").await;
    let slow = Backend::with(
        "slow",
        Behavior {
            delay: Duration::from_secs(2),
            ..Behavior::default()
        },
    )
    .await;
    let web = Backend::start("web").await;
    let dead = free_port();
    let snapshot = format!(
        r#"
services:
  api:
    endpoints:
      - {{ address: "{primary}", tags: [v1] }}
      - {{ address: "{slow}", tags: [v2] }}
    subsets: {{ v1: {{ tags: [v1] }}, v2: {{ tags: [v2] }} }}
    split: [ {{ subset: v1, weight: 1 }} ]
    mirror: {{ subset: v2, max_in_flight: 4, timeout: 5s }}
  web:
    endpoints: [ {{ address: "{web}" }} ]
    mirror: {{ service: gone }}
  gone:
    endpoints: [ {{ address: "127.0.0.1:{dead}" }} ]
"#,
        primary = primary.address(),
        slow = slow.address(),
        web = web.address(),
    );
    let proxy = Proxy::start(&snapshot).await;
    let client = Client::http1();
    let mut latencies = Vec::with_capacity(2 * 100);
    for host in ["api", "web"] {
        for _ in 0..100 {
            let started = Instant::now();
            let reply = client.get(proxy.outbound, host, "/").await;
            latencies.push(started.elapsed());
            assert_eq!(reply.status, 200, "{host}: {reply:?}");
            assert_eq!(reply.header("x-backend"), host.replace("api", "primary"));
        }
    }
    // The mirror takes 2 s (or fails) per copy; the primary does not wait.
    let p50 = median(latencies);
    assert!(
        p50 < Duration::from_millis(100),
        "primary p50 {p50:?} under a 2 s mirror"
    );
    assert_eq!(primary.hits() + web.hits(), 200);
    let metrics = proxy.metrics().await;
    let dropped = mirror_metric(&metrics, "api", "dropped");
    // 100 requests in well under 2 s with 4 copies allowed at once: most
    // are dropped (any that arrive after a copy finished may be sent).
    assert!(dropped >= 50.0, "dropped {dropped}:\n{metrics}");
    assert!(
        slow.hits() <= 100 - dropped as usize,
        "{} copies reached the slow shadow",
        slow.hits()
    );
    assert_eventually!(
        Duration::from_secs(10),
        || async {
            let metrics = proxy.metrics().await;
            let failed = mirror_metric(&metrics, "web", "failed");
            failed >= 50.0 && failed + mirror_metric(&metrics, "web", "dropped") == 100.0
        },
        "every copy to the dead service failed (or was dropped) and was counted:\n{}",
        proxy.metrics().await
    );
    assert_eventually!(
        Duration::from_secs(10),
        || async {
            let metrics = proxy.metrics().await;
            mirror_metric(&metrics, "api", "sent") + dropped == 100.0
        },
        "the slow copies finish within their timeout and count as sent:\n{}",
        proxy.metrics().await
    );
}

#[tokio::test]
async fn requests_stay_in_the_proxy_s_zone_and_spill_when_its_endpoints_fail() {
    let a1 = Backend::start("a1").await;
    let a2 = Backend::start("a2").await;
    let b1 = Backend::start("b1").await;
    let b2 = Backend::start("b2").await;
    let snapshot = format!(
        r#"
services:
  api:
    policy:
      load_balancer: round-robin
      locality: {{ enabled: true, min_local_healthy_percent: 50 }}
      circuit_breaker: {{ consecutive_failures: 1, max_ejection_percent: 100 }}
    endpoints:
      - {{ address: "{}", zone: a }}
      - {{ address: "{}", zone: a }}
      - {{ address: "{}", zone: b }}
      - {{ address: "{}", zone: b }}
"#,
        a1.address(),
        a2.address(),
        b1.address(),
        b2.address()
    );
    let proxy = Proxy::builder(&snapshot)
        .arg("--zone")
        .arg("a")
        .start()
        .await;
    let client = Client::http1();
    for _ in 0..100 {
        assert_eq!(client.get(proxy.outbound, "api", "/").await.status, 200);
    }
    assert_eq!(a1.hits() + a2.hits(), 100, "all in zone a");
    assert_eq!(b1.hits() + b2.hits(), 0);
    let spill = r#"tether_locality_spillover_total{service="api"}"#;
    assert_eq!(metric(&proxy.metrics().await, spill).unwrap_or(0.0), 0.0);
    // Zone a goes away: its endpoints fail, are ejected, and requests
    // spill to zone b.
    drop((a1, a2));
    let mut ok = 0;
    for _ in 0..100 {
        if client.get(proxy.outbound, "api", "/").await.status == 200 {
            ok += 1;
        }
    }
    assert!(ok >= 95, "{ok} of 100 answered after zone a went away");
    assert!(
        b1.hits() + b2.hits() >= 95,
        "zone b took over: {}",
        b1.hits() + b2.hits()
    );
    let spilled = metric(&proxy.metrics().await, spill).unwrap_or(0.0);
    assert!(spilled >= 95.0, "spills counted: {spilled}");
}

#[tokio::test]
async fn a_proxy_without_a_zone_balances_over_every_zone() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let snapshot = format!(
        "services:\n  api:\n    policy: {{ load_balancer: round-robin, locality: {{ enabled: true }} }}\n    endpoints: [ {{ address: \"{}\", zone: a }}, {{ address: \"{}\", zone: b }} ]\n",
        a.address(),
        b.address()
    );
    let proxy = Proxy::start(&snapshot).await;
    let client = Client::http1();
    for _ in 0..40 {
        assert_eq!(client.get(proxy.outbound, "api", "/").await.status, 200);
    }
    assert_eq!(
        [a.hits(), b.hits()],
        [20, 20],
        "round-robin over both zones"
    );
}

#[tokio::test]
async fn zones_and_mirrors_flow_from_mesh_yaml_through_the_control_plane() {
    let local = Backend::start("local").await;
    let remote = Backend::start("remote").await;
    let shadow = Backend::start("shadow").await;
    let mesh = format!(
        r#"
mesh:
  catalog:
    static:
      services:
        api: [ {{ address: "{}", zone: a }}, {{ address: "{}", zone: b }} ]
        api-shadow: [ {{ address: "{}" }} ]
defaults:
  locality: {{ enabled: true }}
services:
  web: {{}}
  api:
    mirror: {{ service: api-shadow }}
"#,
        local.address(),
        remote.address(),
        shadow.address()
    );
    let plane = tether_e2e::control::ControlPlane::start(&mesh).await;
    let web = Proxy::subscribed(&plane.url(), "web")
        .arg("--zone")
        .arg("a")
        .start()
        .await;
    let client = Client::http1();
    for _ in 0..50 {
        let reply = client.get(web.outbound, "api", "/").await;
        assert_eq!(reply.header("x-backend"), "local", "zone a only");
    }
    assert_eq!(remote.hits(), 0);
    assert_eventually!(
        Duration::from_secs(10),
        || async { shadow.mirrored() == 50 },
        "every request copied to api-shadow: {} of 50",
        shadow.mirrored()
    );
}

#[tokio::test]
async fn consul_service_meta_gives_the_zone_under_the_configured_key() {
    use tether_e2e::consul::{Consul, Instance};
    let consul = Consul::start().await;
    let instance = |id, port, meta| Instance {
        id,
        name: "api",
        address: Some("127.0.0.1"),
        port,
        meta,
        ttl_check: false,
        ..Instance::default()
    };
    consul
        .register(&instance("api-1", 18091, &[("zone", "a")]))
        .await;
    consul
        .register(&instance("api-2", 18092, &[("az", "b")]))
        .await;
    let mesh = |key: &str| {
        format!(
            "mesh:\n  catalog:\n    consul: {{ address: \"{}\", datacenter: dc1{key} }}\nservices:\n  web: {{}}\n",
            consul.url()
        )
    };
    let plane = tether_e2e::control::ControlPlane::start(&mesh("")).await;
    let zones = || async {
        let snapshot = plane.snapshot("web").await;
        let mut endpoints = snapshot
            .services
            .get("api")
            .map(|s| s.endpoints.clone())
            .unwrap_or_default();
        endpoints.sort_by(|a, b| a.address.cmp(&b.address));
        endpoints.into_iter().map(|e| e.zone).collect::<Vec<_>>()
    };
    assert_eventually!(
        Duration::from_secs(5),
        || async { zones().await == [Some("a".to_owned()), None] },
        "the default key `zone` is read: {:?}",
        zones().await
    );
    plane.write_config(&mesh(", zone_meta_key: az"));
    assert_eventually!(
        Duration::from_secs(10),
        || async { zones().await == [None, Some("b".to_owned())] },
        "`zone_meta_key: az` is read instead: {:?}",
        zones().await
    );
}

#[tokio::test]
async fn a_mirrored_copy_joins_the_caller_s_trace_marked_as_a_mirror() {
    use tether_e2e::jaeger::{spans, Jaeger};
    let jaeger = Jaeger::start().await;
    let tracing = format!(
        "mesh:\n  tracing: {{ otlp_endpoint: \"{}\", sample_ratio: 1.0 }}\n",
        jaeger.otlp_grpc
    );
    let sidecar = |service: &'static str, app: &Backend| {
        Proxy::builder(&format!("service: {service}\n{tracing}services: {{}}\n"))
            .app(app.addr)
            .arg("--service")
            .arg(service)
            .start()
    };
    let (api_app, shadow_app) = (Backend::start("api").await, Backend::start("shadow").await);
    let api = sidecar("api", &api_app).await;
    let shadow = sidecar("api-shadow", &shadow_app).await;
    let web = Proxy::builder(&format!(
        "service: web\n{tracing}services:\n  api:\n    endpoints: [ {{ address: \"{}\", tags: [v1] }}, {{ address: \"{}\", tags: [v2] }} ]\n    subsets: {{ v1: {{ tags: [v1] }}, v2: {{ tags: [v2] }} }}\n    split: [ {{ subset: v1, weight: 1 }} ]\n    mirror: {{ subset: v2 }}\n",
        api.inbound, shadow.inbound
    ))
    .arg("--service")
    .arg("web")
    .start()
    .await;
    let trace_id = "6bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let reply = Client::http1()
        .send(
            Method::GET,
            web.outbound,
            "api",
            "/",
            Bytes::new(),
            &[("traceparent", &traceparent)],
        )
        .await;
    assert_eq!(reply.header("x-backend"), "api");
    let trace = jaeger
        .trace(trace_id, 3)
        .await
        .unwrap_or_else(|| panic!("trace {trace_id} never had its 3 spans in Jaeger"));
    let all = spans(&trace);
    let find = |service: &str| {
        all.iter()
            .find(|s| s.service == service)
            .unwrap_or_else(|| panic!("no {service} span"))
    };
    let (web_span, api_span, copy) = (find("web"), find("api"), find("api-shadow"));
    assert_eq!(api_span.parent(), Some(web_span.id()));
    assert_eq!(
        copy.parent(),
        Some(web_span.id()),
        "the copy is in the caller's trace"
    );
    assert_eq!(copy.tag("tether.mirror").as_deref(), Some("true"));
    assert_eq!(
        api_span.tag("tether.mirror"),
        None,
        "the original is no mirror"
    );
    assert_eq!(shadow_app.mirrored(), 1);
}
