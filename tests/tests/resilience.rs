//! Retries, budgets, timeouts, concurrency limits and outlier ejection.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tether_e2e::{assert_eventually, free_port, metric, Backend, Behavior, Client, Proxy};

fn service(policy: &str, endpoints: &[String]) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .collect();
    format!(
        "services:\n  api:\n    policy: {policy}\n    endpoints: [ {} ]\n",
        list.join(", ")
    )
}

#[tokio::test]
async fn a_retry_turns_a_503_into_a_success() {
    let api = Backend::with(
        "api",
        Behavior {
            fail_first: 1,
            ..Behavior::default()
        },
    )
    .await;
    let proxy = Proxy::start(&service(
        "{ retries: { attempts: 2, backoff: { base: 1ms, max: 5ms } } }",
        &[api.address()],
    ))
    .await;
    let reply = Client::http1().get(proxy.outbound, "api", "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("tether-attempts"), "2");
    assert_eq!(api.hits(), 2);
    assert_eq!(
        metric(
            &proxy.metrics().await,
            r#"tether_retries_total{service="api"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_retry_turns_a_refused_connection_into_a_success() {
    let good = Backend::start("good").await;
    let refused = format!("127.0.0.1:{}", free_port()); // nothing listens here
    let policy = "{ load_balancer: round-robin, retries: { attempts: 2, backoff: { base: 1ms, max: 5ms } }, circuit_breaker: { consecutive_failures: 0 } }";
    let proxy = Proxy::start(&service(policy, &[refused, good.address()])).await;
    let client = Client::http1();
    // A POST too: nothing reached the upstream, so any method is safe to retry.
    for method in [Method::GET, Method::POST, Method::GET, Method::POST] {
        let reply = client
            .send(
                method,
                proxy.outbound,
                "api",
                "/",
                Bytes::from_static(b"body"),
                &[],
            )
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(
            reply.header("x-body-len"),
            "4",
            "the body is replayed whole"
        );
    }
    assert_eq!(good.hits(), 4);
}

#[tokio::test]
async fn retries_stay_within_the_budget_when_everything_fails() {
    let api = Backend::with(
        "api",
        Behavior {
            status: 503,
            ..Behavior::default()
        },
    )
    .await;
    let policy = "{ retries: { attempts: 3, backoff: { base: 1ms, max: 1ms }, budget: { ratio: 0.1, min_per_second: 1, ttl: 10s } }, circuit_breaker: { consecutive_failures: 0 } }";
    let proxy = Proxy::start(&service(policy, &[api.address()])).await;
    let client = Client::http1();
    let requests = 100;
    let mut skipped = 0;
    for _ in 0..requests {
        let reply = client.get(proxy.outbound, "api", "/").await;
        assert_eq!(reply.status, 503);
        if reply.header("tether-retry-skipped") == "budget-exhausted" {
            skipped += 1;
        }
    }
    let retries = metric(
        &proxy.metrics().await,
        r#"tether_retries_total{service="api"}"#,
    )
    .unwrap_or(0.0);
    // Without a budget: 300 retries. With 10 % of 100 requests plus a
    // reserve of 1/s × 10 s: at most ~20.
    assert!(retries <= 25.0, "retries {retries}");
    assert_eq!(api.hits(), requests + retries as usize);
    assert!(
        skipped >= 75,
        "budget exhaustion is reported in tether-retry-skipped ({skipped})"
    );
}

#[tokio::test]
async fn post_is_not_retried_after_it_reached_the_upstream() {
    let api = Backend::with(
        "api",
        Behavior {
            fail_first: 1,
            ..Behavior::default()
        },
    )
    .await;
    let proxy = Proxy::start(&service("{ retries: { attempts: 2 } }", &[api.address()])).await;
    let reply = Client::http1()
        .send(
            Method::POST,
            proxy.outbound,
            "api",
            "/",
            Bytes::from_static(b"x"),
            &[],
        )
        .await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("tether-retry-skipped"), "non-idempotent");
    assert_eq!(api.hits(), 1);
}

#[tokio::test]
async fn a_body_over_the_replay_buffer_is_not_retried_and_says_so() {
    let api = Backend::with(
        "api",
        Behavior {
            fail_first: 1,
            ..Behavior::default()
        },
    )
    .await;
    let policy =
        "{ retries: { attempts: 2, replay_buffer_bytes: 1024, retry_non_idempotent: true } }";
    let proxy = Proxy::start(&service(policy, &[api.address()])).await;
    let big = Bytes::from(vec![b'x'; 4096]);
    let reply = Client::http1()
        .send(Method::PUT, proxy.outbound, "api", "/", big, &[])
        .await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("tether-retry-skipped"), "body-not-replayable");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"tether_retries_skipped_total{reason="body-not-replayable",service="api"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_request_timeout_answers_504() {
    let api = Backend::with(
        "api",
        Behavior {
            delay: Duration::from_secs(3),
            ..Behavior::default()
        },
    )
    .await;
    let policy = "{ timeout: 200ms, retries: { attempts: 0, per_try_timeout: 10s } }";
    let proxy = Proxy::start(&service(policy, &[api.address()])).await;
    let reply = Client::http1().get(proxy.outbound, "api", "/").await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.header("tether-error"), "timeout");
}

/// Without `per_try_timeout` a try is bounded only by the request's
/// `timeout` (it once defaulted to 1 s, so a 1.5 s answer under `timeout:
/// 5s` came back `504 timeout`), with or without retries.
#[tokio::test]
async fn without_a_per_try_timeout_a_slow_answer_within_the_timeout_succeeds() {
    let api = Backend::with(
        "api",
        Behavior {
            delay: Duration::from_millis(1500),
            ..Behavior::default()
        },
    )
    .await;
    let client = Client::http1();
    for attempts in [0, 2] {
        let policy = format!("{{ timeout: 5s, retries: {{ attempts: {attempts} }} }}");
        let proxy = Proxy::start(&service(&policy, &[api.address()])).await;
        let reply = client.get(proxy.outbound, "api", "/").await;
        assert_eq!(reply.status, 200, "attempts {attempts}: {reply:?}");
        assert_eq!(reply.header("tether-attempts"), "", "one try only");
    }
    assert_eq!(api.hits(), 2, "no try was cut short and retried");
}

#[tokio::test]
async fn the_per_try_timeout_retries_on_another_endpoint() {
    let slow = Backend::with(
        "slow",
        Behavior {
            delay: Duration::from_secs(3),
            ..Behavior::default()
        },
    )
    .await;
    let fast = Backend::start("fast").await;
    let policy = "{ load_balancer: round-robin, timeout: 5s, retries: { attempts: 1, per_try_timeout: 200ms, backoff: { base: 1ms, max: 1ms } } }";
    let proxy = Proxy::start(&service(policy, &[slow.address(), fast.address()])).await;
    let client = Client::http1();
    for _ in 0..4 {
        let reply = client.get(proxy.outbound, "api", "/").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("x-backend"), "fast");
    }
    assert!(
        slow.hits() >= 1,
        "the slow endpoint was tried and timed out"
    );
}

#[tokio::test]
async fn the_connect_timeout_fires_against_a_full_accept_queue() {
    // A listener that never accepts, its backlog filled: further SYNs are
    // dropped, so a connect hangs until the proxy's connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
    socket
        .bind("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = socket.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let _listener = socket.listen(0).unwrap_or_else(|e| panic!("{e}"));
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let connect = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
            fillers.push(s);
        }
    }
    let policy = "{ connect_timeout: 150ms, timeout: 5s, retries: { attempts: 0 } }";
    let proxy = Proxy::start(&service(policy, &[addr.to_string()])).await;
    let started = std::time::Instant::now();
    let reply = Client::http1().get(proxy.outbound, "api", "/").await;
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.header("tether-error"), "upstream-connect");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered by the connect timeout, not the request timeout"
    );
}

#[tokio::test]
async fn the_concurrency_limit_fails_fast_when_full() {
    let api = Backend::with(
        "api",
        Behavior {
            delay: Duration::from_millis(500),
            ..Behavior::default()
        },
    )
    .await;
    let policy = "{ circuit_breaker: { max_requests: 1, max_pending_requests: 0 } }";
    let proxy = Proxy::start(&service(policy, &[api.address()])).await;
    let client = Client::http1();
    let outbound = proxy.outbound;
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.get(outbound, "api", "/").await }
    });
    let api_ref = &api;
    assert_eventually!(
        Duration::from_secs(5),
        || async move { api_ref.hits() == 1 },
        "first request never arrived"
    );
    let started = std::time::Instant::now();
    let second = client.get(outbound, "api", "/").await;
    assert_eq!(second.status, 503);
    assert_eq!(second.header("tether-error"), "overloaded");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "refused without waiting"
    );
    assert_eq!(first.await.map(|r| r.status.as_u16()).ok(), Some(200));
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_later_restored() {
    let bad = Backend::with(
        "bad",
        Behavior {
            status: 500,
            ..Behavior::default()
        },
    )
    .await;
    let good = Backend::start("good").await;
    let policy = "{ load_balancer: round-robin, retries: { attempts: 0 }, circuit_breaker: { consecutive_failures: 3, base_ejection: 1s, max_ejection_percent: 50 } }";
    let proxy = Proxy::start(&service(policy, &[bad.address(), good.address()])).await;
    let client = Client::http1();
    for _ in 0..6 {
        client.get(proxy.outbound, "api", "/").await;
    }
    assert_eq!(bad.hits(), 3, "ejected after 3 failures in a row");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"tether_endpoint_ejections_total{service="api"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(proxy
        .admin_get("/endpoints")
        .await
        .contains("\"ejected\": true"));
    for _ in 0..10 {
        assert_eq!(
            client
                .get(proxy.outbound, "api", "/")
                .await
                .header("x-backend"),
            "good"
        );
    }
    assert_eq!(bad.hits(), 3, "no traffic while ejected");
    bad.set(|b| b.status = 200);
    assert_eventually!(
        Duration::from_secs(5),
        || async {
            client
                .get(proxy.outbound, "api", "/")
                .await
                .header("x-backend")
                == "bad"
        },
        "endpoint never restored"
    );
}

#[tokio::test]
async fn never_ejects_more_than_max_ejection_percent() {
    let a = Backend::with(
        "a",
        Behavior {
            status: 500,
            ..Behavior::default()
        },
    )
    .await;
    let b = Backend::with(
        "b",
        Behavior {
            status: 500,
            ..Behavior::default()
        },
    )
    .await;
    let policy = "{ load_balancer: round-robin, retries: { attempts: 0 }, circuit_breaker: { consecutive_failures: 2, base_ejection: 30s, max_ejection_percent: 50 } }";
    let proxy = Proxy::start(&service(policy, &[a.address(), b.address()])).await;
    let client = Client::http1();
    for _ in 0..20 {
        assert_eq!(client.get(proxy.outbound, "api", "/").await.status, 500);
    }
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"tether_endpoint_ejections_total{service="api"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
}

/// `instances` backends that all answer 503 until they recover: ejection
/// takes them out (all of them, down to panic mode), yet the service never
/// answers by itself, and once they recover requests succeed at once.
async fn every_instance_fails_then_recovers(instances: usize, max_ejection_percent: u32) {
    let mut backends = Vec::new();
    for i in 0..instances {
        let behavior = Behavior {
            status: 503,
            ..Behavior::default()
        };
        backends.push(Backend::with(&format!("api-{i}"), behavior).await);
    }
    let addresses: Vec<String> = backends.iter().map(Backend::address).collect();
    let policy = format!("{{ load_balancer: round-robin, retries: {{ attempts: 0 }}, circuit_breaker: {{ consecutive_failures: 3, base_ejection: 30s, max_ejection_percent: {max_ejection_percent} }} }}");
    let proxy = Proxy::start(&service(&policy, &addresses)).await;
    let client = Client::http1();
    // 3 failures eject an endpoint; twice that per instance ejects all.
    for _ in 0..6 * instances {
        let reply = client.get(proxy.outbound, "api", "/").await;
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(
            reply.header("tether-error"),
            "",
            "the upstream answered: {reply:?}"
        );
        assert!(reply.header("x-backend").starts_with("api-"), "{reply:?}");
    }
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"tether_endpoint_ejections_total{service="api"}"#
        ),
        Some(instances as f64),
        "every instance ejected: {metrics}"
    );
    assert!(
        metric(&metrics, r#"tether_lb_panic_total{service="api"}"#).is_some_and(|n| n >= 1.0),
        "nothing left to pick: panic mode balances over all: {metrics}"
    );
    for backend in &backends {
        backend.set(|b| b.status = 200);
    }
    // Recovered: the very next requests succeed, on every instance, long
    // before the 30 s ejection runs out.
    let mut reached = std::collections::HashSet::new();
    for _ in 0..2 * instances {
        let reply = client.get(proxy.outbound, "api", "/").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        reached.insert(reply.header("x-backend").to_owned());
    }
    assert_eq!(reached.len(), instances, "{reached:?}");
}

#[tokio::test]
async fn a_single_instance_is_never_ejected_into_no_endpoints() {
    // The default max_ejection_percent (50) still ejects "at least one".
    every_instance_fails_then_recovers(1, 50).await;
}

#[tokio::test]
async fn two_ejected_instances_recover_without_waiting_out_the_ejection() {
    every_instance_fails_then_recovers(2, 100).await;
}

#[tokio::test]
async fn five_ejected_instances_recover_without_waiting_out_the_ejection() {
    every_instance_fails_then_recovers(5, 100).await;
}

#[tokio::test]
async fn one_bad_instance_of_five_is_ejected_without_panic() {
    let bad = Backend::with(
        "bad",
        Behavior {
            status: 503,
            ..Behavior::default()
        },
    )
    .await;
    let mut good = Vec::new();
    for i in 0..4 {
        good.push(Backend::start(&format!("good-{i}")).await);
    }
    let mut addresses = vec![bad.address()];
    addresses.extend(good.iter().map(Backend::address));
    let policy = "{ load_balancer: round-robin, retries: { attempts: 0 }, circuit_breaker: { consecutive_failures: 3, base_ejection: 30s } }";
    let proxy = Proxy::start(&service(policy, &addresses)).await;
    let client = Client::http1();
    for _ in 0..20 {
        client.get(proxy.outbound, "api", "/").await;
    }
    assert_eq!(bad.hits(), 3, "ejected after 3 failures");
    for _ in 0..20 {
        let reply = client.get(proxy.outbound, "api", "/").await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert_eq!(bad.hits(), 3, "4 of 5 available: no panic, no traffic");
    assert_eq!(
        metric(
            &proxy.metrics().await,
            r#"tether_lb_panic_total{service="api"}"#
        ),
        Some(0.0)
    );
}
