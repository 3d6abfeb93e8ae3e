//! WebSocket and other HTTP/1.1 upgrades through two sidecars over mTLS:
//! client → web's sidecar (outbound) → mTLS → api's sidecar (inbound) →
//! app. Authorization at the upgrade request, large messages both ways,
//! the close handshake, half-close, metrics, the idle timeout, snapshot
//! reloads and the drain.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tether_e2e::{assert_eventually, metric, Proxy, TestPki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Longest wait for anything in these tests (a bound, never a sleep).
const WAIT: Duration = Duration::from_secs(20);

const ALLOW_WEB_V1: &str = "authorization:\n  default: deny\n  rules:\n    - { from: [web], methods: [GET], paths: [\"/v1/*\"] }\n";

fn api_snapshot(authorization: &str) -> String {
    format!("service: api\nservices: {{}}\n{authorization}")
}

fn web_snapshot(api: SocketAddr, policy: &str) -> String {
    format!("service: web\nservices:\n  api:\n    policy: {policy}\n    endpoints: [ {{ address: \"{api}\" }} ]\n")
}

/// An app that answers WebSocket upgrades by echoing every message (and
/// the close handshake), and `Upgrade: echo` by a raw byte echo that ends
/// after the client half-closes.
struct App {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl App {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        Self { addr, task }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: TcpStream) {
    let mut head = [0u8; 4096];
    let Ok(n) = stream.peek(&mut head).await else {
        return;
    };
    let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
    if head.contains("upgrade: echo") {
        raw_echo(stream).await;
        return;
    }
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    // tungstenite answers a close itself; the stream then ends.
    while let Some(Ok(message)) = ws.next().await {
        let data = message.is_text() || message.is_binary();
        if data && ws.send(message).await.is_err() {
            return;
        }
    }
}

/// `Upgrade: echo`: reads the head, answers 101, echoes bytes until the
/// client's end of stream, then closes.
async fn raw_echo(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let answer = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\nx-app: raw\r\n\r\n";
    if stream.write_all(answer).await.is_err() {
        return;
    }
    let (mut read, mut write) = stream.split();
    let _ = tokio::io::copy(&mut read, &mut write).await;
    let _ = write.shutdown().await;
}

/// web's sidecar → mTLS → api's sidecar → app.
struct Mesh {
    _app: App,
    api: Proxy,
    web: Proxy,
    _pki: TestPki,
}

async fn mesh(authorization: &str, web_args: &[&str]) -> Mesh {
    let pki = TestPki::new();
    let app = App::start().await;
    let api = Proxy::builder(&api_snapshot(authorization))
        .app(app.addr)
        .identity(&pki.issue("api"), &pki.bundle())
        .arg("--service")
        .arg("api")
        .start()
        .await;
    let mut web = Proxy::builder(&web_snapshot(api.inbound, "{}"))
        .identity(&pki.issue("web"), &pki.bundle())
        .arg("--service")
        .arg("web");
    for arg in web_args {
        web = web.arg(arg);
    }
    let web = web.start().await;
    Mesh {
        _app: app,
        api,
        web,
        _pki: pki,
    }
}

type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `api` at `path` through `sidecar`'s outbound
/// listener; the handshake's answer, or its error (e.g. a 403).
async fn connect(
    sidecar: SocketAddr,
    path: &str,
) -> Result<(Ws, http::Response<Option<Vec<u8>>>), tokio_tungstenite::tungstenite::Error> {
    let stream = TcpStream::connect(sidecar)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let request = format!("ws://api{path}")
        .into_client_request()
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream))
        .await
        .unwrap_or_else(|_| panic!("no handshake answer within {WAIT:?}"))
}

async fn open(sidecar: SocketAddr) -> Ws {
    let (ws, response) = connect(sidecar, "/v1/chat")
        .await
        .unwrap_or_else(|e| panic!("the upgrade failed: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

/// Sends `message` and returns the next data message received.
async fn echo(ws: &mut Ws, message: Message) -> Message {
    ws.send(message)
        .await
        .unwrap_or_else(|e| panic!("send: {e}"));
    next_data(ws).await
}

async fn next_data(ws: &mut Ws) -> Message {
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no message within {WAIT:?}"));
        match next {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => return message,
            Some(Ok(_)) => {}
            other => panic!("the stream ended: {other:?}"),
        }
    }
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

async fn value(proxy: &Proxy, series: &str) -> f64 {
    metric(&proxy.metrics().await, series).unwrap_or(0.0)
}

const OUT_OPEN: &str = r#"tether_upgraded_connections_open{direction="outbound",service="api"}"#;
const IN_OPEN: &str = r#"tether_upgraded_connections_open{direction="inbound",service="api"}"#;

#[tokio::test]
async fn a_websocket_echoes_large_messages_both_ways_through_two_sidecars_over_mtls() {
    let mesh = mesh(ALLOW_WEB_V1, &["--access-log"]).await;
    let mut ws = open(mesh.web.outbound).await;
    let big = payload(1024 * 1024);
    let echoed = echo(&mut ws, Message::binary(big.clone())).await;
    assert!(
        echoed.clone().into_data() == big,
        "1 MiB came back different ({} bytes)",
        echoed.len()
    );
    let echoed = echo(&mut ws, Message::text("hello through the mesh")).await;
    assert_eq!(echoed, Message::text("hello through the mesh"));
    // Several messages in flight at once.
    for i in 0..8u8 {
        ws.send(Message::binary(vec![i; 64 * 1024]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for i in 0..8u8 {
        assert_eq!(next_data(&mut ws).await.into_data(), vec![i; 64 * 1024]);
    }
    // Counted on both sidecars while open.
    assert_eq!(value(&mesh.web, OUT_OPEN).await, 1.0);
    assert_eq!(value(&mesh.api, IN_OPEN).await, 1.0);
    // The close handshake goes through: the app's close frame comes back.
    ws.close(Some(CloseFrame {
        code: 1000u16.into(),
        reason: "done".into(),
    }))
    .await
    .unwrap_or_else(|e| panic!("close: {e}"));
    let mut closed_by_app = false;
    for _ in 0..16 {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                closed_by_app = frame.is_some_and(|f| u16::from(f.code) == 1000);
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) | Err(_) => break,
        }
    }
    assert!(closed_by_app, "the app's close frame never came back");
    // The app closed its side; the client closes its own (a half-closed
    // stream stays open until then). Both relays end, bytes counted.
    drop(ws);
    assert_eventually!(
        WAIT,
        || async { value(&mesh.web, OUT_OPEN).await == 0.0 },
        "web's relay did not end"
    );
    assert_eventually!(
        WAIT,
        || async { value(&mesh.api, IN_OPEN).await == 0.0 },
        "api's relay did not end"
    );
    let web = mesh.web.metrics().await;
    assert_eq!(
        metric(
            &web,
            r#"tether_upgraded_connections_total{direction="outbound",service="api"}"#
        ),
        Some(1.0),
        "{web}"
    );
    for flow in ["received", "sent"] {
        let series = format!(
            r#"tether_upgraded_bytes_total{{direction="outbound",flow="{flow}",service="api"}}"#
        );
        let bytes = metric(&web, &series).unwrap_or(0.0);
        assert!(bytes > 1024.0 * 1024.0 * 1.5, "{series} = {bytes}");
    }
    let api = mesh.api.metrics().await;
    assert_eq!(
        metric(
            &api,
            r#"tether_upgraded_connections_total{direction="inbound",service="api"}"#
        ),
        Some(1.0),
        "{api}"
    );
    // One access-log line for the stream when it closed, beside the
    // request's (status 101).
    assert_eventually!(
        WAIT,
        || async { stream_line(&mesh.web.stdout()).is_some() },
        "no access-log line for the stream: {}",
        mesh.web.stdout()
    );
    let line = stream_line(&mesh.web.stdout()).unwrap_or_default();
    assert_eq!(line["direction"], "outbound");
    assert_eq!(line["service"], "api");
    assert_eq!(line["endpoint"], mesh.api.inbound.to_string());
    assert!(
        line["bytes_received"].as_u64().unwrap_or(0) > 1024 * 1024,
        "{line}"
    );
    assert!(
        line["bytes_sent"].as_u64().unwrap_or(0) > 1024 * 1024,
        "{line}"
    );
    assert!(line.get("error").is_none(), "{line}");
    assert!(
        mesh.web.stdout().contains(r#""status":101"#),
        "{}",
        mesh.web.stdout()
    );
    // The upgrade request itself is a request like any other: 101.
    assert_eq!(
        metric(
            &web,
            r#"tether_requests_total{direction="outbound",service="api",status_class="1xx"}"#
        ),
        Some(1.0),
        "{web}"
    );
}

/// The access-log line of a WebSocket stream in `stdout`, if written.
fn stream_line(stdout: &str) -> Option<serde_json::Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["protocol"] == "websocket")
}

#[tokio::test]
async fn authorization_applies_to_the_upgrade_request() {
    let mesh = mesh(ALLOW_WEB_V1, &[]).await;
    match connect(mesh.web.outbound, "/admin/chat").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            assert_eq!(response.headers()["tether-error"], "unauthorized");
        }
        Err(other) => panic!("expected a 403, got {other}"),
        Ok((_, response)) => panic!("upgraded though not allowed: {response:?}"),
    }
    let api = mesh.api.metrics().await;
    assert_eq!(
        metric(&api, r#"tether_authz_denied_total{service="api"}"#),
        Some(1.0),
        "{api}"
    );
    assert_eq!(value(&mesh.api, IN_OPEN).await, 0.0);
    // An allowed path on the same mesh upgrades.
    let mut ws = open(mesh.web.outbound).await;
    assert_eq!(
        echo(&mut ws, Message::text("allowed")).await,
        Message::text("allowed")
    );
}

#[tokio::test]
async fn an_idle_upgraded_connection_is_closed_after_the_idle_timeout() {
    let mesh = mesh("", &["--upgrade-idle-timeout", "2s"]).await;
    let mut ws = open(mesh.web.outbound).await;
    assert_eq!(
        echo(&mut ws, Message::text("one")).await,
        Message::text("one")
    );
    // Nothing more is sent: web's sidecar closes the stream.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(_) | Message::Binary(_))) => return false,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return true,
            }
        }
    })
    .await;
    assert_eq!(ended, Ok(true), "the idle connection stayed open");
    assert_eq!(
        value(
            &mesh.web,
            r#"tether_upgraded_idle_closed_total{direction="outbound",service="api"}"#
        )
        .await,
        1.0
    );
    // api's relay sees the end of its stream and ends too.
    assert_eventually!(
        WAIT,
        || async { value(&mesh.api, IN_OPEN).await == 0.0 },
        "api's relay outlived the closed stream"
    );
    assert_eq!(value(&mesh.web, OUT_OPEN).await, 0.0);
}

#[tokio::test]
async fn snapshot_reloads_do_not_cut_an_open_upgraded_connection() {
    let mesh = mesh(ALLOW_WEB_V1, &[]).await;
    let mut ws = open(mesh.web.outbound).await;
    assert_eq!(
        echo(&mut ws, Message::text("before")).await,
        Message::text("before")
    );
    let (web_version, api_version) = (
        mesh.web.config_version().await,
        mesh.api.config_version().await,
    );
    // New policy on web's side, new rules on api's: both sidecars reload.
    mesh.web
        .write_snapshot(&web_snapshot(mesh.api.inbound, "{ timeout: 7s }"));
    mesh.api.write_snapshot(&api_snapshot(
        "authorization:\n  default: deny\n  rules:\n    - { from: [web], methods: [GET], paths: [\"/v2/*\"] }\n",
    ));
    assert_eventually!(
        WAIT,
        || async { mesh.web.config_version().await > web_version },
        "web never applied its new snapshot"
    );
    assert_eventually!(
        WAIT,
        || async { mesh.api.config_version().await > api_version },
        "api never applied its new snapshot"
    );
    let big = payload(256 * 1024);
    assert_eq!(
        echo(&mut ws, Message::binary(big.clone()))
            .await
            .into_data(),
        big,
        "the open connection kept flowing"
    );
    // The new rules apply to new upgrades only.
    assert!(connect(mesh.web.outbound, "/v1/chat").await.is_err());
    assert_eq!(value(&mesh.web, OUT_OPEN).await, 1.0);
}

#[tokio::test]
async fn sigterm_gives_an_upgraded_connection_the_drain_deadline() {
    let mut mesh = mesh("", &["--drain-timeout", "3s"]).await;
    let mut ws = open(mesh.web.outbound).await;
    assert_eq!(echo(&mut ws, Message::text("1")).await, Message::text("1"));
    mesh.web.signal("TERM");
    assert_eq!(
        echo(&mut ws, Message::text("2")).await,
        Message::text("2"),
        "an open upgraded connection keeps flowing while draining"
    );
    let status = mesh.web.wait_exit(WAIT).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", mesh.web.log());
    assert!(
        mesh.web.log().contains("drain deadline passed"),
        "{}",
        mesh.web.log()
    );
    // Cut at the deadline: the client sees its stream end.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived the proxy");
}

#[tokio::test]
async fn a_plain_http1_upgrade_relays_bytes_with_half_close() {
    let mesh = mesh("", &[]).await;
    let mut stream = TcpStream::connect(mesh.web.outbound)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(
            b"GET /raw HTTP/1.1\r\nhost: api\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The 101 as the app sent it, then the echo.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read_head = async {
        while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                break;
            }
            head.push(byte[0]);
        }
    };
    tokio::time::timeout(WAIT, read_head)
        .await
        .unwrap_or_else(|_| panic!("no answer within {WAIT:?}"));
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    assert!(head.contains("x-app: raw"), "{head}");
    let sent = payload(300 * 1024);
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write
            .write_all(&sent)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Half-close: the app sees the end, echoes the rest, then closes.
        write.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        sent
    });
    let mut echoed = Vec::new();
    tokio::time::timeout(WAIT, read.read_to_end(&mut echoed))
        .await
        .unwrap_or_else(|_| panic!("the echo never ended"))
        .unwrap_or_else(|e| panic!("{e}"));
    let sent = writer.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        echoed == sent,
        "{} bytes back of {}",
        echoed.len(),
        sent.len()
    );
    assert_eventually!(
        WAIT,
        || async { value(&mesh.web, OUT_OPEN).await == 0.0 },
        "web's relay did not end after both halves closed"
    );
}

#[tokio::test]
async fn a_websocket_through_one_plaintext_sidecar_stays_open_after_the_101() {
    // The issue's report: from outside through one sidecar, the 101 came
    // back and the connection was reset.
    let app = App::start().await;
    let api = Proxy::builder(&api_snapshot(""))
        .app(app.addr)
        .arg("--service")
        .arg("api")
        .start()
        .await;
    let mut ws = open(api.inbound).await;
    for i in 0..3 {
        let text = format!("message {i}");
        assert_eq!(
            echo(&mut ws, Message::text(text.clone())).await,
            Message::text(text)
        );
    }
    assert_eq!(value(&api, IN_OPEN).await, 1.0);
}

#[tokio::test]
async fn an_upgrade_that_cannot_connect_is_retried_on_another_endpoint() {
    let mesh = mesh("", &[]).await;
    let dead = format!("127.0.0.1:{}", tether_e2e::free_port()); // nothing listens here
    let api = mesh.api.inbound;
    let version = mesh.web.config_version().await;
    mesh.web.write_snapshot(&format!(
        "service: web\nservices:\n  api:\n    policy: {{ load_balancer: round-robin }}\n    endpoints: [ {{ address: \"{dead}\" }}, {{ address: \"{api}\" }} ]\n"
    ));
    assert_eventually!(
        WAIT,
        || async { mesh.web.config_version().await > version },
        "web never applied its new snapshot"
    );
    // Round robin picks the dead endpoint first or second: every upgrade
    // succeeds, the one that met it after a retry.
    let mut open_ones = Vec::new();
    for i in 0..4 {
        let mut ws = open(mesh.web.outbound).await;
        let text = format!("upgrade {i}");
        assert_eq!(
            echo(&mut ws, Message::text(text.clone())).await,
            Message::text(text)
        );
        open_ones.push(ws);
    }
    let web = mesh.web.metrics().await;
    let retries = metric(&web, r#"tether_retries_total{service="api"}"#).unwrap_or(0.0);
    assert!(retries >= 1.0, "{web}");
    assert_eq!(value(&mesh.web, OUT_OPEN).await, 4.0);
}

#[tokio::test]
async fn a_websocket_over_http2_extended_connect_reaches_an_http1_app() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::tungstenite::protocol::Role;

    let mesh = mesh(ALLOW_WEB_V1, &[]).await;
    let stream = TcpStream::connect(mesh.web.outbound)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap_or_else(|e| panic!("h2c handshake: {e}"));
    tokio::spawn(connection);
    // A first request, so that the sidecar's SETTINGS (with
    // ENABLE_CONNECT_PROTOCOL) have arrived before the CONNECT.
    let first = http::Request::get("http://nowhere/")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let answer = sender
        .send_request(first)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer.status(), 503, "unknown service");
    let mut request = http::Request::connect("http://api/v1/chat")
        .header("sec-websocket-version", "13")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap_or_else(|e| panic!("{e}"));
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .unwrap_or_else(|_| panic!("no answer within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("extended CONNECT: {e}"));
    assert_eq!(response.status(), 200, "{response:?}");
    assert!(response.headers().get("sec-websocket-accept").is_none());
    let upgraded = hyper::upgrade::on(&mut response)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    let big = payload(512 * 1024);
    ws.send(Message::binary(big.clone()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let echoed = loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => break data,
            Ok(Some(Ok(_))) => {}
            other => panic!("no echo: {other:?}"),
        }
    };
    assert!(echoed == big, "{} bytes back", echoed.len());
    assert_eq!(value(&mesh.web, OUT_OPEN).await, 1.0);
    assert_eq!(value(&mesh.api, IN_OPEN).await, 1.0);
    // The same rules as over HTTP/1.1.
    let mut denied = http::Request::connect("http://api/admin")
        .header("sec-websocket-version", "13")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap_or_else(|e| panic!("{e}"));
    denied
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let answer = sender
        .send_request(denied)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer.status(), 403);
}

#[tokio::test]
async fn a_websocket_through_two_plaintext_sidecars() {
    let app = App::start().await;
    let api = Proxy::builder(&api_snapshot(""))
        .app(app.addr)
        .arg("--service")
        .arg("api")
        .start()
        .await;
    let snapshot = format!(
        "service: web\nservices:\n  api:\n    protocol: http2\n    endpoints: [ {{ address: \"{}\" }} ]\n",
        api.inbound
    );
    let web = Proxy::builder(&snapshot)
        .arg("--service")
        .arg("web")
        .start()
        .await;
    // The pool between the sidecars is h2c; the upgrade takes HTTP/1.1.
    let mut ws = open(web.outbound).await;
    let big = payload(1024 * 1024);
    assert_eq!(
        echo(&mut ws, Message::binary(big.clone()))
            .await
            .into_data(),
        big
    );
    assert_eq!(value(&web, OUT_OPEN).await, 1.0);
    assert_eq!(value(&api, IN_OPEN).await, 1.0);
}
