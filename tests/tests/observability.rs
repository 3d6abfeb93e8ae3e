//! Metrics, access logs and trace-context handling that need no collector.
//! (Traces in a real Jaeger: tests/tracing.rs.)

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use tether_e2e::{assert_eventually, metric, Backend, Behavior, Client, Proxy};

fn snapshot(backend: &Backend) -> String {
    format!(
        "service: web\nservices:\n  api:\n    policy: {{ retries: {{ attempts: 2, backoff: {{ base: 1ms, max: 1ms }} }} }}\n    endpoints: [ {{ address: \"{}\" }} ]\n",
        backend.address()
    )
}

/// `promtool`, from PATH or `PROMTOOL`; its absence fails the test.
fn promtool() -> String {
    let candidate = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let found = Command::new(&candidate)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "promtool not found: install Debian's `prometheus` package (or set PROMTOOL)"
    );
    candidate
}

fn promtool_accepts(text: &str) -> Result<(), String> {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(text.as_bytes()));
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

#[tokio::test]
async fn metrics_count_what_was_sent_and_pass_promtool() {
    let api = Backend::with(
        "api",
        Behavior {
            fail_first: 1,
            ..Behavior::default()
        },
    )
    .await;
    let proxy = Proxy::start(&snapshot(&api)).await;
    let client = Client::http1();
    for _ in 0..5 {
        assert_eq!(client.get(proxy.outbound, "api", "/").await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(client.get(proxy.outbound, "nope", "/").await.status, 503);
    }
    let text = proxy.metrics().await;
    let series = |s: &str| metric(&text, s);
    assert_eq!(
        series(r#"tether_requests_total{direction="outbound",service="api",status_class="2xx"}"#),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        series(
            r#"tether_requests_total{direction="outbound",service="unknown",status_class="5xx"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        series(r#"tether_retries_total{service="api"}"#),
        Some(1.0),
        "the first try got a 503"
    );
    assert_eq!(
        series(r#"tether_request_duration_seconds_count{direction="outbound",service="api"}"#),
        Some(5.0)
    );
    assert_eq!(
        series(r#"tether_connections_total{direction="outbound"}"#),
        Some(1.0)
    );
    assert_eq!(series("tether_config_version"), Some(1.0));
    assert!(text.contains(
        r#"tether_request_duration_seconds_bucket{direction="outbound",service="api",le="0.0001"}"#
    ));
    promtool_accepts(&text)
        .unwrap_or_else(|e| panic!("promtool refused the proxy's metrics:\n{e}\n{text}"));
}

#[tokio::test]
async fn access_log_lines_are_json_with_every_field() {
    let api = Backend::start("api").await;
    let proxy = Proxy::builder(&snapshot(&api))
        .arg("--access-log")
        .start()
        .await;
    let client = Client::http1();
    client
        .get(proxy.outbound, "api", "/v1/users?secret=1")
        .await;
    client.get(proxy.outbound, "nope", "/x").await;
    assert_eventually!(
        Duration::from_secs(5),
        || async { proxy.stdout().lines().count() == 2 },
        "two access log lines"
    );
    let lines: Vec<serde_json::Value> = proxy
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {e}: {l}")))
        .collect();
    let ok = &lines[0];
    assert_eq!(ok["direction"], "outbound");
    assert_eq!(ok["service"], "api");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["authority"], "api");
    assert_eq!(
        ok["path"], "/v1/users",
        "the query string stays out of logs"
    );
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["retries"], 0);
    assert!(ok["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
    assert!(ok["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(lines[1]["error"], "unknown-service");
    assert_eq!(lines[1]["status"], 503);
}

#[tokio::test]
async fn trace_headers_pass_through_untouched_when_tracing_is_off() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(&snapshot(&api)).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = Client::http1()
        .send(
            http::Method::GET,
            proxy.outbound,
            "api",
            "/",
            bytes::Bytes::new(),
            &[("traceparent", traceparent)],
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-traceparent"), traceparent);
}

#[tokio::test]
async fn control_plane_metrics_count_subscribers_and_pass_promtool() {
    let api = Backend::start("api").await;
    let mesh = format!(
        "mesh:\n  catalog:\n    static:\n      services:\n        api: [ {{ address: \"{}\" }} ]\nservices:\n  web: {{}}\n  api: {{}}\n",
        api.address()
    );
    let plane = tether_e2e::control::ControlPlane::start(&mesh).await;
    let web = Proxy::subscribed(&plane.url(), "web").start().await;
    let api_proxy = Proxy::subscribed(&plane.url(), "api").start().await;
    assert_eq!(
        Client::http1().get(web.outbound, "api", "/").await.status,
        200
    );
    assert_eventually!(
        Duration::from_secs(5),
        || async {
            metric(&plane.get("/metrics").await, "tether_control_subscribers") == Some(2.0)
        },
        "two proxies long-polling"
    );
    let text = plane.get("/metrics").await;
    assert_eq!(
        metric(&text, "tether_control_snapshots_served_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "tether_control_snapshot_updates_total"),
        Some(2.0),
        "one version per service"
    );
    assert_eq!(
        metric(&text, "tether_control_config_reload_errors_total"),
        Some(0.0)
    );
    promtool_accepts(&text)
        .unwrap_or_else(|e| panic!("promtool refused the control plane's metrics:\n{e}\n{text}"));
    drop(api_proxy);
}
