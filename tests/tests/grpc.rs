//! gRPC as gRPC: a real tonic server behind one sidecar, a real tonic
//! client in front of another, mTLS between them. The four call shapes
//! stream through (no buffering: the bidirectional call is a ping-pong
//! that would hang if either sidecar held a stream back), trailers and
//! `grpc-status` arrive intact, UNAVAILABLE is retried, `grpc-timeout` is
//! the deadline and goes on reduced, and every failure the mesh makes
//! itself reaches the client as a gRPC error of the right code.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tether_e2e::{assert_eventually, metric, Proxy, TestPki};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

/// The one message of the test service: `test.Echo`.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
}

fn msg(text: impl Into<String>) -> Msg {
    Msg { text: text.into() }
}

const UNARY: &str = "/test.Echo/Unary";
const SERVER_STREAM: &str = "/test.Echo/ServerStream";
const CLIENT_STREAM: &str = "/test.Echo/ClientStream";
const BIDI: &str = "/test.Echo/Bidi";

/// What the test app saw.
#[derive(Default)]
struct AppState {
    calls: AtomicUsize,
    /// Unary calls to answer UNAVAILABLE before answering.
    unavailable: AtomicUsize,
}

/// A tonic gRPC server on loopback (h2c), served by hyper directly, with
/// tonic's standard health service beside the test service.
struct App {
    addr: SocketAddr,
    state: Arc<AppState>,
    health: tonic_health::server::HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(AppState::default());
        let shared = Arc::clone(&state);
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("test.Echo", tonic_health::ServingStatus::Serving)
            .await;
        let task = tokio::spawn(async move {
            // Connections die with the app (aborting this task drops them).
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                let health = health_service.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request: http::Request<_>| {
                        let state = Arc::clone(&state);
                        let health = health.clone();
                        async move {
                            if request.uri().path().starts_with("/grpc.health.v1.Health/") {
                                return tower::ServiceExt::oneshot(health, request).await;
                            }
                            Ok::<_, Infallible>(route(state, request).await)
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App {
            addr,
            state,
            health,
            task,
        }
    }

    fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }
}

fn codec() -> ProstCodec<Msg, Msg> {
    ProstCodec::default()
}

/// The test service, as tonic's generated code would route it.
async fn route(
    state: Arc<AppState>,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<tonic::body::Body> {
    state.calls.fetch_add(1, Ordering::SeqCst);
    // The deadline the app was given, sent back so the test can see it.
    let seen_timeout = request
        .headers()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    let mut grpc = tonic::server::Grpc::new(codec());
    let mut response = match request.uri().path() {
        UNARY => {
            let service = tower::service_fn(move |call: Request<Msg>| {
                let state = Arc::clone(&state);
                async move { unary(&state, call.into_inner()).await }
            });
            grpc.unary(service, request).await
        }
        SERVER_STREAM => {
            let service = tower::service_fn(|call: Request<Msg>| async move {
                Ok::<_, Status>(Response::new(tokio_stream::iter(server_stream(
                    &call.into_inner().text,
                ))))
            });
            grpc.server_streaming(service, request).await
        }
        CLIENT_STREAM => {
            let service = tower::service_fn(move |call: Request<Streaming<Msg>>| {
                let state = Arc::clone(&state);
                async move {
                    let mut stream = call.into_inner();
                    let mut all = Vec::new();
                    while let Some(m) = stream.message().await? {
                        // Refused after its first message, the rest unread.
                        if m.text == "flaky" && state.unavailable.load(Ordering::SeqCst) > 0 {
                            state.unavailable.fetch_sub(1, Ordering::SeqCst);
                            return Err(Status::unavailable("not now"));
                        }
                        all.push(m.text);
                    }
                    Ok::<_, Status>(Response::new(msg(all.join(","))))
                }
            });
            grpc.client_streaming(service, request).await
        }
        BIDI => {
            let service = tower::service_fn(|call: Request<Streaming<Msg>>| async move {
                let mut stream = call.into_inner();
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tokio::spawn(async move {
                    while let Ok(Some(m)) = stream.message().await {
                        if tx.send(Ok(msg(format!("echo {}", m.text)))).await.is_err() {
                            break;
                        }
                    }
                });
                Ok::<_, Status>(Response::new(ReceiverStream::new(rx)))
            });
            grpc.streaming(service, request).await
        }
        _ => Status::unimplemented("no such method").into_http(),
    };
    if let Ok(value) = http::HeaderValue::from_str(&seen_timeout) {
        response.headers_mut().insert("x-seen-timeout", value);
    }
    response
}

async fn unary(state: &AppState, request: Msg) -> Result<Response<Msg>, Status> {
    match request.text.as_str() {
        "flaky" => {
            let left = state.unavailable.load(Ordering::SeqCst);
            if left > 0 {
                state.unavailable.store(left - 1, Ordering::SeqCst);
                return Err(Status::unavailable("warming up"));
            }
            Ok(Response::new(msg("recovered")))
        }
        "slow" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(Response::new(msg("late")))
        }
        "missing" => Err(Status::not_found("no such thing")),
        text => Ok(Response::new(msg(format!("hello {text}")))),
    }
}

/// `big`: 40 messages of 64 KiB (well past HTTP/2's default window, so
/// flow control must work on both hops); `trailer`: 3 messages then an
/// error status with a custom trailer; else 3 messages, then OK.
fn server_stream(text: &str) -> Vec<Result<Msg, Status>> {
    match text {
        "big" => (0..40).map(|_| Ok(msg("x".repeat(64 * 1024)))).collect(),
        "trailer" => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert("x-trailer", "kept".parse().expect("ascii"));
            let end = Status::with_metadata(Code::FailedPrecondition, "the end", metadata);
            vec![Ok(msg("0")), Ok(msg("1")), Ok(msg("2")), Err(end)]
        }
        _ => (0..3).map(|i| Ok(msg(i.to_string()))).collect(),
    }
}

/// web (client sidecar) → api (server sidecar, mTLS) → the tonic app.
struct Mesh {
    app: App,
    api: Proxy,
    web: Proxy,
    _pki: TestPki,
}

const ALLOW_ECHO: &str =
    "authorization:\n  default: deny\n  rules:\n    - { from: [web], paths: [\"/test.Echo/*\"] }\n";

async fn mesh(policy: &str) -> Mesh {
    let pki = TestPki::new();
    let app = App::start().await;
    let api = Proxy::builder(&format!("service: api\nservices: {{}}\n{ALLOW_ECHO}"))
        .app(app.addr)
        .arg("--app-protocol")
        .arg("grpc")
        .identity(&pki.issue("api"), &pki.bundle())
        .arg("--service")
        .arg("api")
        .start()
        .await;
    let dead = tether_e2e::free_port();
    let snapshot = format!(
        "service: web\nservices:\n  api:\n    protocol: grpc\n    policy: {policy}\n    endpoints: [ {{ address: \"{}\" }} ]\n  empty:\n    protocol: grpc\n    endpoints: []\n  dead:\n    protocol: grpc\n    policy: {{ connect_timeout: 200ms }}\n    endpoints: [ {{ address: \"127.0.0.1:{dead}\" }} ]\n",
        api.inbound
    );
    let web = Proxy::builder(&snapshot)
        .identity(&pki.issue("web"), &pki.bundle())
        .arg("--service")
        .arg("web")
        .arg("--access-log")
        .start()
        .await;
    Mesh {
        app,
        api,
        web,
        _pki: pki,
    }
}

type Client = tonic::client::Grpc<tonic::transport::Channel>;

/// A tonic client through `sidecar`'s outbound listener, calling `service`.
async fn client(sidecar: SocketAddr, service: &str) -> Client {
    let origin = format!("http://{service}").parse().expect("origin");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{sidecar}"))
        .expect("endpoint")
        .origin(origin)
        .connect()
        .await
        .expect("connect to the sidecar");
    tonic::client::Grpc::new(channel)
}

async fn call(client: &mut Client, text: &str) -> Result<Response<Msg>, Status> {
    call_with(client, Request::new(msg(text))).await
}

async fn call_with(client: &mut Client, request: Request<Msg>) -> Result<Response<Msg>, Status> {
    client.ready().await.expect("ready");
    client
        .unary(request, PathAndQuery::from_static(UNARY), codec())
        .await
}

fn metadata<'a>(map: &'a tonic::metadata::MetadataMap, key: &str) -> &'a str {
    map.get(key).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn all_four_call_shapes_stream_through_two_sidecars_over_mtls() {
    let mesh = mesh("{}").await;
    let mut api = client(mesh.web.outbound, "api").await;

    let reply = call(&mut api, "web").await.expect("unary");
    assert_eq!(reply.get_ref().text, "hello web");

    api.ready().await.expect("ready");
    let mut stream = api
        .server_streaming(
            Request::new(msg("big")),
            PathAndQuery::from_static(SERVER_STREAM),
            codec(),
        )
        .await
        .expect("server streaming")
        .into_inner();
    let mut received = 0;
    while let Some(m) = stream.message().await.expect("stream message") {
        assert_eq!(m.text.len(), 64 * 1024);
        received += 1;
    }
    assert_eq!(received, 40, "every message of the server stream");

    api.ready().await.expect("ready");
    let upload = tokio_stream::iter((0..5).map(|i| msg(i.to_string())));
    let reply = api
        .client_streaming(
            Request::new(upload),
            PathAndQuery::from_static(CLIENT_STREAM),
            codec(),
        )
        .await
        .expect("client streaming");
    assert_eq!(reply.get_ref().text, "0,1,2,3,4");

    // Ping-pong: each message waits for the answer to the one before, so
    // a sidecar that held a stream back until its end would hang here.
    api.ready().await.expect("ready");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(msg("ping 0")).await.expect("send");
    let mut answers = api
        .streaming(
            Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(BIDI),
            codec(),
        )
        .await
        .expect("bidi")
        .into_inner();
    for i in 0..3 {
        let answer = tokio::time::timeout(Duration::from_secs(10), answers.message())
            .await
            .expect("an answer to each ping while the stream stays open")
            .expect("bidi message");
        assert_eq!(answer.map(|m| m.text), Some(format!("echo ping {i}")));
        if i < 2 {
            tx.send(msg(format!("ping {}", i + 1))).await.expect("send");
        }
    }
    drop(tx);
    assert_eq!(answers.message().await.expect("clean end"), None);

    let web = mesh.web.metrics().await;
    let ok = metric(
        &web,
        r#"tether_grpc_responses_total{direction="outbound",grpc_status="ok",service="api"}"#,
    );
    assert_eq!(ok, Some(4.0), "{web}");
    assert_eventually!(
        Duration::from_secs(5),
        || async {
            let api = mesh.api.metrics().await;
            metric(
                &api,
                r#"tether_grpc_responses_total{direction="inbound",grpc_status="ok",service="api"}"#,
            ) == Some(4.0)
        },
        "the server sidecar counts the four calls by their trailers"
    );
    assert_eq!(mesh.app.calls(), 4);
}

#[tokio::test]
async fn trailers_and_the_grpc_status_arrive_intact() {
    let mesh = mesh("{}").await;
    let mut api = client(mesh.web.outbound, "api").await;
    api.ready().await.expect("ready");
    let mut stream = api
        .server_streaming(
            Request::new(msg("trailer")),
            PathAndQuery::from_static(SERVER_STREAM),
            codec(),
        )
        .await
        .expect("server streaming")
        .into_inner();
    let mut texts = Vec::new();
    let status = loop {
        match stream.message().await {
            Ok(Some(m)) => texts.push(m.text),
            Ok(None) => panic!("the stream ended without its error status"),
            Err(status) => break status,
        }
    };
    assert_eq!(texts, ["0", "1", "2"]);
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), "the end");
    assert_eq!(metadata(status.metadata(), "x-trailer"), "kept");
    assert_eq!(metadata(status.metadata(), "tether-error"), "");

    // An app's own error in a trailers-only response, not the mesh's.
    let status = call(&mut api, "missing").await.expect_err("not found");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such thing");
    assert_eq!(metadata(status.metadata(), "tether-error"), "");

    let web = mesh.web.metrics().await;
    for (code, n) in [("failed-precondition", 1.0), ("not-found", 1.0)] {
        let series = format!(
            r#"tether_grpc_responses_total{{direction="outbound",grpc_status="{code}",service="api"}}"#
        );
        assert_eq!(metric(&web, &series), Some(n), "{series}\n{web}");
    }
    // The access log line of the stream is written at its end, with the
    // status from its trailers (9: FAILED_PRECONDITION).
    assert_eventually!(
        Duration::from_secs(5),
        || async {
            mesh.web.stdout().lines().any(|l| {
                l.contains(r#""path":"/test.Echo/ServerStream""#)
                    && l.contains(r#""grpc_status":9"#)
            })
        },
        "no access log line with the stream's grpc_status:\n{}",
        mesh.web.stdout()
    );
    // HTTP says 200 for both: the gRPC status is the outcome.
    let twos = metric(
        &web,
        r#"tether_requests_total{direction="outbound",service="api",status_class="2xx"}"#,
    );
    assert_eq!(twos, Some(2.0));
}

#[tokio::test]
async fn unavailable_is_retried_by_default_for_a_grpc_service() {
    let mesh = mesh("{ retries: { backoff: { base: 1ms, max: 1ms } } }").await;
    mesh.app.state.unavailable.store(1, Ordering::SeqCst);
    let mut api = client(mesh.web.outbound, "api").await;
    let reply = call(&mut api, "flaky").await.expect("retried to success");
    assert_eq!(reply.get_ref().text, "recovered");
    assert_eq!(metadata(reply.metadata(), "tether-attempts"), "2");
    assert_eq!(mesh.app.calls(), 2);

    // Not retryable by default: the app's NOT_FOUND goes back at once.
    let status = call(&mut api, "missing").await.expect_err("not found");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(mesh.app.calls(), 3);
    let web = mesh.web.metrics().await;
    assert_eq!(
        metric(&web, r#"tether_retries_total{service="api"}"#),
        Some(1.0)
    );
}

#[tokio::test]
async fn retry_on_names_grpc_codes() {
    let mesh = mesh(
        "{ retries: { attempts: 2, retry_on: [not-found], backoff: { base: 1ms, max: 1ms } } }",
    )
    .await;
    let mut api = client(mesh.web.outbound, "api").await;
    let status = call(&mut api, "missing")
        .await
        .expect_err("still not found");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(metadata(status.metadata(), "tether-attempts"), "3");
    assert_eq!(mesh.app.calls(), 3, "the first try and two retries");
}

#[tokio::test]
async fn grpc_timeout_is_the_deadline_and_goes_on_reduced() {
    let mesh = mesh("{}").await;
    let mut api = client(mesh.web.outbound, "api").await;
    let mut request = Request::new(msg("web"));
    request.set_timeout(Duration::from_secs(3));
    let reply = call_with(&mut api, request)
        .await
        .expect("within the deadline");
    let seen = metadata(reply.metadata(), "x-seen-timeout").to_owned();
    let seen = parse_grpc_timeout(&seen).unwrap_or_else(|| panic!("app saw {seen:?}"));
    assert!(
        seen > Duration::ZERO && seen < Duration::from_secs(3),
        "the app's deadline is the caller's less the time spent: {seen:?}"
    );

    // tonic's client enforces its own deadline too; a raw HTTP/2 call
    // shows the sidecar's (the policy's timeout is 5 s).
    let stream = tokio::net::TcpStream::connect(mesh.web.outbound)
        .await
        .expect("connect");
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let body = {
        let encoded = prost::Message::encode_to_vec(&msg("slow"));
        let mut framed = vec![0u8];
        framed.extend_from_slice(&u32::try_from(encoded.len()).unwrap_or(0).to_be_bytes());
        framed.extend_from_slice(&encoded);
        http_body_util::Full::new(bytes::Bytes::from(framed))
    };
    let request = http::Request::post(format!("http://api{UNARY}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(body)
        .expect("request");
    let response = h2.send_request(request).await.expect("an answer");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert_eq!(response.headers()["tether-error"], "timeout");
}

fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tokio::test]
async fn failures_the_mesh_makes_are_grpc_errors() {
    let mesh = mesh("{ timeout: 300ms }").await;
    let expect = |status: Status, code: Code, reason: &str| {
        assert_eq!(status.code(), code, "{status:?}");
        assert_eq!(metadata(status.metadata(), "tether-error"), reason);
        assert!(
            status.message().starts_with("tether: "),
            "the message names the reason: {status:?}"
        );
    };

    let mut empty = client(mesh.web.outbound, "empty").await;
    let status = call(&mut empty, "x").await.expect_err("no endpoints");
    expect(status, Code::Unavailable, "no-endpoints");

    let mut nope = client(mesh.web.outbound, "nope").await;
    let status = call(&mut nope, "x").await.expect_err("unknown service");
    expect(status, Code::Unavailable, "unknown-service");

    let mut dead = client(mesh.web.outbound, "dead").await;
    let status = call(&mut dead, "x").await.expect_err("connect failure");
    expect(status, Code::Unavailable, "upstream-connect");

    let mut api = client(mesh.web.outbound, "api").await;
    let status = call(&mut api, "slow").await.expect_err("policy timeout");
    expect(status, Code::DeadlineExceeded, "timeout");

    // The server sidecar refuses a method its policy does not allow.
    api.ready().await.expect("ready");
    let status = api
        .unary(
            Request::new(msg("x")),
            PathAndQuery::from_static("/test.Secret/Get"),
            codec(),
        )
        .await
        .expect_err("unauthorized");
    expect(status, Code::PermissionDenied, "unauthorized");

    let web = mesh.web.metrics().await;
    assert_eq!(
        metric(
            &web,
            r#"tether_grpc_responses_total{direction="outbound",grpc_status="unavailable",service="dead"}"#
        ),
        Some(1.0),
        "{web}"
    );
}

#[tokio::test]
async fn a_dead_app_behind_a_live_sidecar_is_unavailable() {
    let mesh = mesh("{ retries: { attempts: 0 } }").await;
    let Mesh { app, api, web, .. } = mesh;
    drop(app);
    let mut client = client(web.outbound, "api").await;
    let status = assert_unavailable_eventually(&mut client).await;
    assert_eq!(
        metadata(status.metadata(), "tether-error"),
        "upstream-connect"
    );
    drop(api);
}

/// The app's listener closes when its task is aborted; calls fail once
/// the pooled connection to it is gone too.
async fn assert_unavailable_eventually(client: &mut Client) -> Status {
    for _ in 0..100 {
        match call(client, "x").await {
            Err(status) if status.code() == Code::Unavailable => return status,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("calls to a dead app never became UNAVAILABLE");
}

#[tokio::test]
async fn the_app_health_probe_can_be_a_grpc_health_check() {
    let app = App::start().await;
    let sidecar = Proxy::builder("service: api\nservices: {}\n")
        .app(app.addr)
        .arg("--app-protocol")
        .arg("grpc")
        .arg("--app-health-grpc-service")
        .arg("test.Echo")
        .start()
        .await;
    let client = tether_e2e::Client::http1();
    let health = client.get(sidecar.admin, "admin", "/app-health").await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(health.body.contains("answered SERVING"), "{}", health.body);

    app.health
        .set_service_status("test.Echo", tonic_health::ServingStatus::NotServing)
        .await;
    let health = client.get(sidecar.admin, "admin", "/app-health").await;
    assert_eq!(health.status, 503, "{}", health.body);
    assert!(health.body.contains("NOT_SERVING"), "{}", health.body);

    // A name the app's health service does not know: NOT_FOUND.
    let unknown = Proxy::builder("service: api\nservices: {}\n")
        .app(app.addr)
        .arg("--app-health-grpc-service")
        .arg("nope")
        .start()
        .await;
    let health = client.get(unknown.admin, "admin", "/app-health").await;
    assert_eq!(health.status, 503, "{}", health.body);
    assert!(
        health.body.contains("grpc-status not-found"),
        "{}",
        health.body
    );
}

#[tokio::test]
async fn a_stream_partly_sent_is_never_replayed() {
    let mesh = mesh("{ retries: { backoff: { base: 1ms, max: 1ms } } }").await;
    mesh.app.state.unavailable.store(1, Ordering::SeqCst);
    let mut api = client(mesh.web.outbound, "api").await;
    api.ready().await.expect("ready");
    // The client stream stays open: only its first message was sent when
    // the app answered UNAVAILABLE.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(msg("flaky")).await.expect("send");
    let status = api
        .client_streaming(
            Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(CLIENT_STREAM),
            codec(),
        )
        .await
        .expect_err("the app's UNAVAILABLE, not retried");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "not now");
    assert_eq!(
        metadata(status.metadata(), "tether-retry-skipped"),
        "body-not-replayable"
    );
    assert_eq!(mesh.app.calls(), 1);
    drop(tx);
}

#[tokio::test]
async fn a_full_circuit_breaker_is_resource_exhausted() {
    let mesh =
        mesh("{ timeout: 30s, circuit_breaker: { max_requests: 1, max_pending_requests: 0 } }")
            .await;
    let mut slow = client(mesh.web.outbound, "api").await;
    let hold = tokio::spawn(async move { call(&mut slow, "slow").await });
    assert_eventually!(
        Duration::from_secs(10),
        || async { mesh.app.calls() == 1 },
        "the slow call never reached the app"
    );
    // The slow call holds the one slot: the next is refused at once.
    let mut api = client(mesh.web.outbound, "api").await;
    let status = call(&mut api, "x").await.expect_err("overloaded");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(metadata(status.metadata(), "tether-error"), "overloaded");
    assert_eq!(mesh.app.calls(), 1);
    hold.abort();
}

#[tokio::test]
async fn outlier_detection_counts_server_failures_by_grpc_status() {
    let policy = "{ retries: { attempts: 0 }, circuit_breaker: { consecutive_failures: 2 } }";
    let mesh = mesh(policy).await;
    let mut api = client(mesh.web.outbound, "api").await;
    // The caller's errors (NOT_FOUND) are no failures of the endpoint.
    for _ in 0..3 {
        let status = call(&mut api, "missing").await.expect_err("not found");
        assert_eq!(status.code(), Code::NotFound);
    }
    let ejections = r#"tether_endpoint_ejections_total{service="api"}"#;
    let web = mesh.web.metrics().await;
    assert_eq!(metric(&web, ejections).unwrap_or(0.0), 0.0, "{web}");
    // UNAVAILABLE twice in a row (a 200 each, over HTTP) ejects it.
    mesh.app.state.unavailable.store(2, Ordering::SeqCst);
    for _ in 0..2 {
        let status = call(&mut api, "flaky").await.expect_err("unavailable");
        assert_eq!(status.code(), Code::Unavailable);
    }
    let web = mesh.web.metrics().await;
    assert_eq!(metric(&web, ejections), Some(1.0), "{web}");
}
