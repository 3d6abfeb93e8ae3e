//! Traffic management end to end: injected aborts and delays (per service,
//! per route, header-gated, as gRPC statuses), outbound and per-caller
//! inbound rate limits, and retries that honour `Retry-After`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use tether_e2e::{metric, Backend, Behavior, Client, Proxy, TestPki};

/// A snapshot with one service `api` at `backend`, its other keys `extra`
/// (YAML lines indented under the service).
fn api(backend: &Backend, extra: &str) -> String {
    format!(
        "services:\n  api:\n    endpoints: [ {{ address: \"{}\", tags: [v1] }} ]\n{extra}",
        backend.address()
    )
}

async fn get(
    client: &Client,
    proxy: &Proxy,
    path: &str,
    headers: &[(&str, &str)],
) -> tether_e2e::Reply {
    client
        .send(
            Method::GET,
            proxy.outbound,
            "api",
            path,
            Bytes::new(),
            headers,
        )
        .await
}

#[tokio::test]
async fn an_abort_at_half_answers_about_half_and_the_upstream_never_sees_them() {
    let backend = Backend::start("api").await;
    let fault = "    fault: { abort: { status: 503, percent: 50 } }\n";
    let proxy = Proxy::start(&api(&backend, fault)).await;
    let client = Client::http1();
    let total = 400;
    let mut aborted = 0;
    for _ in 0..total {
        let reply = get(&client, &proxy, "/", &[]).await;
        match reply.status.as_u16() {
            200 => assert_eq!(reply.header("x-backend"), "api"),
            503 => {
                assert_eq!(reply.header("tether-error"), "injected-fault", "{reply:?}");
                assert_eq!(
                    reply.header("tether-attempts"),
                    "",
                    "an injected abort is never retried"
                );
                aborted += 1;
            }
            other => panic!("unexpected status {other}: {reply:?}"),
        }
    }
    let share = f64::from(aborted) / f64::from(total);
    // 50 % ± 15 points: the binomial sd at n = 400 is 2.5 points.
    assert!((0.35..=0.65).contains(&share), "aborted share {share}");
    assert_eq!(
        backend.hits(),
        (total - aborted) as usize,
        "aborted requests never left"
    );
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"tether_faults_injected_total{kind="abort",service="api"}"#
        ),
        Some(f64::from(aborted)),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"tether_proxy_errors_total{direction="outbound",reason="injected-fault",service="api"}"#
        ),
        Some(f64::from(aborted))
    );
}

#[tokio::test]
async fn a_delay_holds_every_request_and_counts_within_the_timeout() {
    let backend = Backend::start("api").await;
    // Every request is held 300 ms; on /slow the route's own fault (2 s)
    // replaces it, beyond the route's 500 ms timeout.
    let extra = "    subsets: { v1: { tags: [v1] } }\n    fault: { delay: { duration: 300ms, percent: 100 } }\n    routes:\n      - match: { path_prefix: /slow }\n        split: [ { subset: v1, weight: 1 } ]\n        timeout: 500ms\n        fault: { delay: { duration: 2s, percent: 100 } }\n";
    let proxy = Proxy::start(&api(&backend, extra)).await;
    let client = Client::http1();
    for _ in 0..5 {
        let started = Instant::now();
        let reply = get(&client, &proxy, "/", &[]).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "answered after {:?}",
            started.elapsed()
        );
    }
    let started = Instant::now();
    let reply = get(&client, &proxy, "/slow", &[]).await;
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.header("tether-error"), "timeout");
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "cut at the timeout, not after the delay"
    );
    assert_eq!(backend.hits(), 5, "the timed-out request never left");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"tether_faults_injected_total{kind="delay",service="api"}"#
        ),
        Some(6.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_header_gated_fault_hits_only_requests_with_the_header() {
    let backend = Backend::start("api").await;
    let fault = "    fault: { abort: { status: 418, percent: 100 }, header: x-tether-fault }\n";
    let proxy = Proxy::start(&api(&backend, fault)).await;
    let client = Client::http1();
    for _ in 0..10 {
        let plain = get(&client, &proxy, "/", &[]).await;
        assert_eq!(plain.status, 200, "{plain:?}");
        let asked = get(&client, &proxy, "/", &[("x-tether-fault", "1")]).await;
        assert_eq!(asked.status, 418, "{asked:?}");
        assert_eq!(asked.header("tether-error"), "injected-fault");
    }
    assert_eq!(backend.hits(), 10);
}

#[tokio::test]
async fn an_outbound_rate_limit_passes_about_the_bucket_and_refuses_the_rest() {
    let backend = Backend::start("api").await;
    let limit = "    rate_limit: { requests_per_second: 20, burst: 5 }\n";
    let proxy = Proxy::start(&api(&backend, limit)).await;
    let client = Client::http1();
    let started = Instant::now();
    let (mut passed, mut refused) = (0u32, 0u32);
    for _ in 0..100 {
        let reply = get(&client, &proxy, "/", &[]).await;
        match reply.status.as_u16() {
            200 => passed += 1,
            429 => {
                assert_eq!(reply.header("tether-error"), "rate-limited", "{reply:?}");
                let after: u64 = reply.header("retry-after").parse().unwrap_or(0);
                assert!(
                    after >= 1,
                    "Retry-After in whole seconds, at least 1: {reply:?}"
                );
                refused += 1;
            }
            other => panic!("unexpected status {other}: {reply:?}"),
        }
    }
    // The burst, plus what the bucket refilled (20/s) while the loop ran.
    let refill = (started.elapsed().as_secs_f64() * 20.0).ceil() as u32;
    assert!(
        passed >= 5 && passed <= 5 + refill + 1,
        "{passed} passed in {:?}",
        started.elapsed()
    );
    assert_eq!(
        backend.hits(),
        passed as usize,
        "refused requests never left"
    );
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"tether_rate_limited_total{direction="outbound",service="api"}"#
        ),
        Some(f64::from(refused)),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"tether_endpoint_ejections_total{service="api"}"#
        )
        .unwrap_or(0.0),
        0.0,
        "a local refusal is no upstream failure"
    );
}

#[tokio::test]
async fn grpc_calls_get_faults_and_rate_limits_as_grpc_statuses() {
    let backend = Backend::start("api").await;
    let extra = "    subsets: { v1: { tags: [v1] } }\n    rate_limit: { requests_per_second: 0.01, burst: 1 }\n    routes:\n      - match: { path_prefix: /test.Echo/Fail }\n        split: [ { subset: v1, weight: 1 } ]\n        fault: { abort: { grpc_status: unavailable, percent: 100 } }\n";
    let proxy = Proxy::start(&api(&backend, extra)).await;
    // A gRPC call is known by its content-type; HTTP/1.1 carries the
    // trailers-only answer's grpc-status in its headers just the same.
    let client = Client::http1();
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let call = |path: &'static str| {
        let client = client.clone();
        let outbound = proxy.outbound;
        async move {
            client
                .send(Method::POST, outbound, "api", path, Bytes::new(), &grpc)
                .await
        }
    };
    let aborted = call("/test.Echo/Fail").await;
    assert_eq!(aborted.status, 200, "{aborted:?}");
    assert_eq!(
        aborted.header("grpc-status"),
        "14",
        "UNAVAILABLE: {aborted:?}"
    );
    assert_eq!(aborted.header("tether-error"), "injected-fault");
    // The bucket's one token (an abort takes none), then RESOURCE_EXHAUSTED.
    let first = call("/test.Echo/Unary").await;
    assert_eq!(first.header("x-backend"), "api", "{first:?}");
    let limited = call("/test.Echo/Unary").await;
    assert_eq!(limited.status, 200, "{limited:?}");
    assert_eq!(
        limited.header("grpc-status"),
        "8",
        "RESOURCE_EXHAUSTED: {limited:?}"
    );
    assert_eq!(limited.header("tether-error"), "rate-limited");
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn an_inbound_per_caller_limit_gives_each_caller_its_own_allowance() {
    let pki = TestPki::new();
    let app = Backend::start("api-app").await;
    let api = Proxy::builder(
        "service: api\ninbound_rate_limit: { requests_per_second: 0.01, burst: 3, per_caller: true }\nservices: {}\n",
    )
    .app(app.addr)
    .identity(&pki.issue("api"), &pki.bundle())
    .arg("--service")
    .arg("api")
    .start()
    .await;
    let caller = |name: &'static str| {
        let snapshot = format!(
            "service: {name}\nservices:\n  api:\n    endpoints: [ {{ address: \"{}\" }} ]\n",
            api.inbound
        );
        let identity = pki.issue(name);
        let bundle = pki.bundle();
        async move {
            Proxy::builder(&snapshot)
                .identity(&identity, &bundle)
                .arg("--service")
                .arg(name)
                .start()
                .await
        }
    };
    let (web, batch) = (caller("web").await, caller("batch").await);
    let client = Client::http1();
    for proxy in [&web, &batch] {
        let mut statuses = Vec::new();
        for _ in 0..8 {
            let reply = get(&client, proxy, "/", &[]).await;
            if reply.status == 429 {
                assert_eq!(reply.header("tether-error"), "rate-limited", "{reply:?}");
                assert!(!reply.header("retry-after").is_empty(), "{reply:?}");
            }
            statuses.push(reply.status.as_u16());
        }
        assert_eq!(
            statuses,
            [200, 200, 200, 429, 429, 429, 429, 429],
            "each caller has a bucket of 3"
        );
    }
    assert_eq!(app.hits(), 6);
    let metrics = api.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"tether_rate_limited_total{direction="inbound",service="api"}"#
        ),
        Some(10.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_retry_waits_as_long_as_retry_after_asks_when_it_fits() {
    let backend = Backend::with(
        "api",
        Behavior {
            fail_first: 1,
            headers: vec![("retry-after", "1")],
            ..Behavior::default()
        },
    )
    .await;
    let policy =
        "    policy: { timeout: 5s, retries: { attempts: 2, backoff: { base: 1ms, max: 5ms } } }\n";
    let proxy = Proxy::start(&api(&backend, policy)).await;
    let started = Instant::now();
    let reply = get(&Client::http1(), &proxy, "/", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("tether-attempts"), "2");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "retried after {:?}, not the 1 s asked",
        started.elapsed()
    );
    assert_eq!(backend.hits(), 2);
}

#[tokio::test]
async fn a_retry_after_beyond_the_timeout_returns_the_answer_without_retrying() {
    let backend = Backend::with(
        "api",
        Behavior {
            status: 503,
            headers: vec![("retry-after", "30")],
            ..Behavior::default()
        },
    )
    .await;
    let policy =
        "    policy: { timeout: 2s, retries: { attempts: 2, backoff: { base: 1ms, max: 5ms } } }\n";
    let proxy = Proxy::start(&api(&backend, policy)).await;
    let started = Instant::now();
    let reply = get(&Client::http1(), &proxy, "/", &[]).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(
        reply.header("retry-after"),
        "30",
        "the upstream's answer, as it is"
    );
    assert_eq!(reply.header("tether-retry-skipped"), "retry-after");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(backend.hits(), 1);
    assert_eq!(
        metric(
            &proxy.metrics().await,
            r#"tether_retries_skipped_total{reason="retry-after",service="api"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn faults_and_limits_flow_from_mesh_yaml_through_the_control_plane() {
    let backend = Backend::start("api").await;
    let app = Backend::start("api-app").await;
    let mesh = format!(
        "mesh:\n  catalog:\n    static:\n      services:\n        api: [ {{ address: \"{}\" }} ]\nservices:\n  web: {{}}\n  api:\n    fault: {{ abort: {{ status: 503, percent: 100 }}, header: x-tether-fault }}\n    rate_limit:\n      outbound: {{ requests_per_second: 0.01, burst: 3 }}\n      inbound: {{ requests_per_second: 0.01, burst: 2 }}\n",
        backend.address()
    );
    let plane = tether_e2e::control::ControlPlane::start(&mesh).await;
    let web = Proxy::subscribed(&plane.url(), "web").start().await;
    let api = Proxy::subscribed(&plane.url(), "api")
        .app(app.addr)
        .start()
        .await;
    let client = Client::http1();
    // web → api: the fault on request, then the outbound bucket of 3.
    let asked = get(&client, &web, "/", &[("x-tether-fault", "1")]).await;
    assert_eq!(asked.header("tether-error"), "injected-fault", "{asked:?}");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get(&client, &web, "/", &[]).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // api's own sidecar admits 2 (one bucket: plaintext callers share it).
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let reply = client
            .send(Method::GET, api.inbound, "api", "/", Bytes::new(), &[])
            .await;
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert_eq!((backend.hits(), app.hits()), (3, 2));
}
