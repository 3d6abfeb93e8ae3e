//! Seeing the mesh: `tether-control explain` as a process, from a mesh.yaml
//! and against a running control plane (its output and exit codes), and a
//! proxy's admin `GET /tap` (and `tether-proxy tap`) under bounded load:
//! sampled events with the right fields, header values never shown, at
//! most four taps, and a tap that never reads does not stall the proxy
//! (its events are dropped and counted).

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use tether_e2e::control::{control_bin, ControlPlane};
use tether_e2e::proxy::proxy_bin;
use tether_e2e::{metric, Backend, Client, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Routes, a split and authorization rules. Line numbers matter: the
/// tests assert `FILE:LINE` of `routes[0]` (line 20) and of
/// `authorization.rules[2]` (line 29).
const MESH: &str = r#"mesh:
  catalog:
    static:
      services:
        web: [ { address: "127.0.0.1:7001" } ]
        ops: [ { address: "127.0.0.1:7201" } ]
        api:
          - { address: "127.0.0.1:7101", tags: [v1] }
          - { address: "127.0.0.1:7102", tags: [v2] }
services:
  api:
    policy: { timeout: 4s, retries: { attempts: 3 } }
    subsets:
      v1: { tags: [v1] }
      v2: { tags: [v2] }
    split:
      - { subset: v1, weight: 80 }
      - { subset: v2, weight: 20 }
    routes:
      - match: { path_prefix: /beta, headers: { x-beta: "1" } }
        split: [ { subset: v2, weight: 100 } ]
        timeout: 1s
    fault: { abort: { status: 503, percent: 5 } }
authorization:
  default: deny
  rules:
    - { to: web, from: ["*"] }
    - { to: api, from: [ops] }
    - to: api
      from: [web]
      methods: [GET]
      paths: ["/v1/*", "/beta*"]
"#;

fn explain(args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(control_bin())
        .arg("explain")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run tether-control explain: {e}"));
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn mesh_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, MESH).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

#[test]
fn explain_from_a_mesh_yaml_names_the_route_split_and_rule_with_exit_codes() {
    let (_dir, file) = mesh_file();
    let base = ["--config", &file, "--from", "web", "--to", "api"];
    let with = |more: &[&str]| {
        let args: Vec<&str> = base.iter().chain(more).copied().collect();
        explain(&args)
    };

    let (code, out, err) = with(&["--path", "/beta/x", "--header", "x-beta=1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("services.api.routes[0] ({file}:20)")),
        "{out}"
    );
    assert!(out.contains("timeout: 1s"), "{out}");
    assert!(
        out.contains("v2") && out.contains("127.0.0.1:7102"),
        "{out}"
    );
    assert!(
        out.contains(&format!("ALLOWED by authorization.rules[2] at {file}:29")),
        "{out}"
    );
    assert!(out.contains("fault injection:    {\"abort\""), "{out}");
    assert!(
        out.contains("verdict: allowed and routed (exit 0)"),
        "{out}"
    );

    // Without the header: the default split, 80/20.
    let (code, out, _) = with(&["--path", "/v1/users", "--json"]);
    assert_eq!(code, 0, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["route"]["route"], serde_json::Value::Null);
    assert_eq!(json["route"]["split"][0]["subset"], "v1");
    assert_eq!(json["route"]["split"][0]["percent"], 80.0);
    assert_eq!(json["route"]["split"][1]["endpoints"][0], "127.0.0.1:7102");
    assert_eq!(json["policy"]["retries"]["attempts"], 3);
    assert_eq!(json["authorization"]["config_index"], 2);

    // Denied: no rule lets web POST.
    let (code, out, _) = with(&["--method", "POST", "--path", "/v1/users"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("DENIED no rule allows it (default: deny)"),
        "{out}"
    );

    // Unroutable: no such service.
    let (code, out, _) = explain(&["--config", &file, "--from", "web", "--to", "nope"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("tether-error: unknown-service"), "{out}");

    // Usage errors: exit 2, with the reason.
    let (code, _, err) = explain(&["--from", "web", "--to", "api"]);
    assert_eq!(code, 2);
    assert!(err.contains("--config mesh.yaml or --control"), "{err}");
    let (code, _, err) = with(&["--header", "no-equals-sign"]);
    assert_eq!(code, 2);
    assert!(err.contains("expected NAME=VALUE"), "{err}");
}

#[tokio::test]
async fn explain_against_a_running_control_plane_uses_its_current_snapshots() {
    let plane = ControlPlane::start(MESH).await;
    let (_dir, file) = mesh_file();
    let url = plane.url();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        explain(&[
            "--control",
            &url,
            "--config",
            &file,
            "--from",
            "web",
            "--to",
            "api",
            "--path",
            "/beta",
            "--header",
            "x-beta=1",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("services.api.routes[0] ("), "{out}");
    assert!(out.contains("ALLOWED by authorization.rules[2]"), "{out}");
    assert!(out.contains("rollout:            none"), "{out}");
    // The control plane's versions, not 0.
    let versions = out.lines().find(|l| l.contains("snapshots:")).unwrap();
    assert!(!versions.contains("versions 0 /"), "{versions}");

    let url = plane.url();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        explain(&[
            "--control",
            &url,
            "--from",
            "ops",
            "--to",
            "api",
            "--method",
            "DELETE",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    // Without the file the rule is named by its place among api's rules.
    assert!(out.contains("ALLOWED by rule 0 for api"), "{out}");

    let (code, _, err) = explain(&[
        "--control",
        "https://127.0.0.1:1",
        "--from",
        "a",
        "--to",
        "b",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("plain http://"), "{err}");
}

/// Opens `GET /tap?query` on `admin`, through a socket with a small
/// receive buffer when `slow`; returns the stream after the response head.
async fn open_tap(admin: SocketAddr, query: &str, slow: bool) -> (u16, TcpStream) {
    let socket = TcpSocket::new_v4().unwrap();
    if slow {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    let mut stream = socket.connect(admin).await.unwrap();
    let head = format!("GET /tap?{query} HTTP/1.1\r\nhost: admin\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("a response head")
            .unwrap();
        assert!(n > 0, "closed before a response head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, stream)
}

/// The JSON events read from a tap until `want` of them came or `within`
/// passed (chunk-size lines skipped).
async fn read_events(
    stream: &mut TcpStream,
    want: usize,
    within: Duration,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    let mut text = String::new();
    let mut events = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while events.len() < want && Instant::now() < deadline {
        let read = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
        if let Ok(Ok(n)) = read {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        while let Some(end) = text.find('\n') {
            let line: String = text.drain(..=end).collect();
            // Chunk-size lines (hex digits) may parse as numbers: objects only.
            match serde_json::from_str::<serde_json::Value>(line.trim()) {
                Ok(event) if event.is_object() => events.push(event),
                _ => {}
            }
        }
    }
    events
}

async fn get(client: &Client, to: SocketAddr, path: &str) -> u16 {
    client
        .send(
            Method::GET,
            to,
            "api",
            path,
            Bytes::new(),
            &[("authorization", "Bearer s3cret-token")],
        )
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn tap_streams_sampled_redacted_events_and_a_slow_tap_never_stalls_the_proxy() {
    let backend = Backend::start("api").await;
    let snapshot = format!(
        "services:\n  api:\n    endpoints: [ {{ address: \"{}\" }} ]\n",
        backend.address()
    );
    let proxy = Proxy::builder(&snapshot).app(backend.addr).start().await;
    let client = Client::http1();

    // A tap of outbound /v1 requests with header names.
    let (status, mut tap) = open_tap(
        proxy.admin,
        "direction=outbound&path_prefix=/v1&headers=names&rate=100",
        false,
    )
    .await;
    assert_eq!(status, 200);
    for i in 0..20 {
        assert_eq!(
            get(&client, proxy.outbound, &format!("/v1/items/{i}")).await,
            200
        );
        assert_eq!(get(&client, proxy.outbound, "/other").await, 200);
    }
    let events = read_events(&mut tap, 20, Duration::from_secs(10)).await;
    assert_eq!(events.len(), 20, "{events:?}");
    for event in &events {
        assert_eq!(event["direction"], "outbound", "{event}");
        assert_eq!(event["service"], "api");
        assert_eq!(event["method"], "GET");
        assert_eq!(event["status"], 200);
        assert_eq!(event["upstream"], backend.address());
        assert!(event["path"].as_str().unwrap().starts_with("/v1/items/"));
        assert!(event["latency_ms"].as_f64().unwrap() >= 0.0);
        let headers = event["headers"].as_array().unwrap();
        assert!(headers.iter().any(|h| h == "authorization"), "{event}");
        assert!(!event.to_string().contains("s3cret"), "values never tapped");
    }

    // Inbound, through `tether-proxy tap` (the CLI): the app is the upstream.
    let admin = proxy.admin.to_string();
    let cli = tokio::task::spawn_blocking(move || {
        Command::new(proxy_bin())
            .args([
                "tap",
                "--admin",
                &admin,
                "--direction",
                "inbound",
                "--count",
                "3",
            ])
            .output()
    });
    let sent = Instant::now();
    while !cli.is_finished() && sent.elapsed() < Duration::from_secs(20) {
        assert_eq!(get(&client, proxy.inbound, "/in").await, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = cli.await.unwrap().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert_eq!(printed.lines().count(), 3, "{printed}");
    for line in printed.lines() {
        // The proxy's own service (no --service here: `tether-proxy`).
        assert!(
            line.contains("inbound  tether-proxy GET api/in → 200"),
            "{line}"
        );
        assert!(
            line.contains(&format!("upstream={}", backend.addr)),
            "{line}"
        );
    }

    // At most four taps: this one (now without its reader) and three more,
    // one of which never reads; a fifth is refused.
    let (_, slow) = open_tap(proxy.admin, "rate=100", true).await;
    let (_, _second) = open_tap(proxy.admin, "rate=1", false).await;
    let (_, _third) = open_tap(proxy.admin, "rate=1", false).await;
    let (status, _) = open_tap(proxy.admin, "", false).await;
    assert_eq!(status, 429, "a fifth tap is refused");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(&metrics, "tether_tap_clients"),
        Some(4.0),
        "{metrics}"
    );

    // Bounded load while `slow` (and `tap`) never read: every request is
    // answered, and the taps' events are dropped and counted instead.
    let started = Instant::now();
    let mut served = 0;
    let mut dropped = 0.0;
    while started.elapsed() < Duration::from_secs(60) && served < 20_000 {
        for _ in 0..200 {
            assert_eq!(get(&client, proxy.outbound, "/v1/load").await, 200);
            served += 1;
        }
        dropped = metric(&proxy.metrics().await, "tether_tap_events_dropped_total").unwrap_or(0.0);
        if dropped > 0.0 {
            break;
        }
    }
    let text = proxy.metrics().await;
    let tap_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("tether_tap"))
        .collect();
    assert!(
        dropped > 0.0,
        "no drop after {served} requests in {:?}: {tap_lines:?}",
        started.elapsed()
    );
    // Still serving promptly with the slow taps open.
    let quick = Instant::now();
    for _ in 0..50 {
        assert_eq!(get(&client, proxy.outbound, "/v1/after").await, 200);
    }
    assert!(
        quick.elapsed() < Duration::from_secs(10),
        "{:?}",
        quick.elapsed()
    );

    // Closing taps frees their places.
    drop((slow, tap));
    tether_e2e::assert_eventually!(
        Duration::from_secs(10),
        || async { metric(&proxy.metrics().await, "tether_tap_clients") == Some(2.0) },
        "closed taps are gone"
    );
}
