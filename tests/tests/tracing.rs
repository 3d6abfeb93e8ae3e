//! Every hop traced into a real Jaeger: web's sidecar → api's sidecar (mTLS)
//! → api, with parent-child links, attributes, errors and B3 continuation.

use bytes::Bytes;
use http::Method;
use tether_e2e::jaeger::{spans, Jaeger};
use tether_e2e::{Backend, Behavior, Client, Proxy, Reply, TestPki};

struct Traced {
    jaeger: Jaeger,
    _app: Backend,
    _api: Proxy,
    web: Proxy,
    _pki: TestPki,
}

async fn traced_mesh(app: Behavior, retry: &str) -> Traced {
    let jaeger = Jaeger::start().await;
    let pki = TestPki::new();
    let tracing = format!(
        "mesh:\n  tracing: {{ otlp_endpoint: \"{}\", sample_ratio: 1.0 }}\n",
        jaeger.otlp_grpc
    );
    let app = Backend::with("api-app", app).await;
    let api = Proxy::builder(&format!("service: api\n{tracing}services: {{}}\n"))
        .app(app.addr)
        .identity(&pki.issue("api"), &pki.bundle())
        .arg("--service")
        .arg("api")
        .start()
        .await;
    let web = Proxy::builder(&format!(
        "service: web\n{tracing}services:\n  api:\n    policy: {retry}\n    endpoints: [ {{ address: \"{}\" }} ]\n",
        api.inbound
    ))
    .identity(&pki.issue("web"), &pki.bundle())
    .arg("--service")
    .arg("web")
    .start()
    .await;
    Traced {
        jaeger,
        _app: app,
        _api: api,
        web,
        _pki: pki,
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// A GET to `api` through web's sidecar, with these request headers.
async fn get_api(mesh: &Traced, path: &str, headers: &[(&str, &str)]) -> Reply {
    Client::http1()
        .send(
            Method::GET,
            mesh.web.outbound,
            "api",
            path,
            Bytes::new(),
            headers,
        )
        .await
}

#[tokio::test]
async fn a_request_is_one_trace_with_a_span_per_sidecar() {
    let mesh = traced_mesh(Behavior::default(), "{}").await;
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let reply = get_api(&mesh, "/v1/users", &[("traceparent", &traceparent)]).await;
    assert_eq!(reply.status, 200);
    // The app sees the same trace, parented by api's SERVER span.
    assert!(
        reply
            .header("x-traceparent")
            .starts_with(&format!("00-{TRACE}-")),
        "{reply:?}"
    );
    let trace = mesh
        .jaeger
        .trace(TRACE, 2)
        .await
        .unwrap_or_else(|| panic!("trace {TRACE} never reached Jaeger"));
    let all = spans(&trace);
    let web = all
        .iter()
        .find(|s| s.service == "web")
        .unwrap_or_else(|| panic!("no web span"));
    let api = all
        .iter()
        .find(|s| s.service == "api")
        .unwrap_or_else(|| panic!("no api span"));
    assert_eq!(
        web.parent().as_deref(),
        Some(CALLER_SPAN),
        "web's span continues the caller's"
    );
    assert_eq!(
        api.parent(),
        Some(web.id()),
        "api's span is the child of web's"
    );
    assert_eq!(web.tag("span.kind").as_deref(), Some("client"));
    assert_eq!(api.tag("span.kind").as_deref(), Some("server"));
    assert_eq!(web.tag("http.request.method").as_deref(), Some("GET"));
    assert_eq!(web.tag("url.path").as_deref(), Some("/v1/users"));
    assert_eq!(web.tag("server.address").as_deref(), Some("api"));
    assert_eq!(web.tag("tether.direction").as_deref(), Some("outbound"));
    assert_eq!(api.tag("tether.service").as_deref(), Some("api"));
    assert_eq!(web.tag("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(
        web.tag("tether.endpoint"),
        Some(mesh._api.inbound.to_string())
    );
    assert_eq!(
        api.tag("tether.peer.identity").as_deref(),
        Some("spiffe://tether.local/service/web")
    );
    assert!(
        reply.header("x-traceparent").contains(&api.id()),
        "the app's parent is api's span"
    );
}

#[tokio::test]
async fn a_failing_request_marks_its_spans_as_errors() {
    let retry = "{ retries: { attempts: 1, retry_on: [5xx], backoff: { base: 1ms, max: 1ms } } }";
    let mesh = traced_mesh(
        Behavior {
            status: 500,
            ..Behavior::default()
        },
        retry,
    )
    .await;
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-{CALLER_SPAN}-01");
    let reply = get_api(&mesh, "/", &[("traceparent", &traceparent)]).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.header("tether-attempts"), "2");
    let trace = mesh
        .jaeger
        .trace(trace_id, 3)
        .await
        .unwrap_or_else(|| panic!("trace never reached Jaeger"));
    let all = spans(&trace);
    let web = all
        .iter()
        .find(|s| s.service == "web")
        .unwrap_or_else(|| panic!("no web span"));
    assert_eq!(
        web.tag("error").as_deref(),
        Some("true"),
        "web span is an error"
    );
    assert_eq!(web.tag("tether.retries").as_deref(), Some("1"));
    let events = web.span["logs"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 1, "one `retry` event: {events:?}");
    assert!(
        events[0].to_string().contains("retry"),
        "the event is the retry: {events:?}"
    );
    let api_spans: Vec<_> = all.iter().filter(|s| s.service == "api").collect();
    assert_eq!(api_spans.len(), 2, "one server span per try");
    assert!(api_spans
        .iter()
        .all(|s| s.tag("error").as_deref() == Some("true")));
}

#[tokio::test]
async fn a_b3_request_continues_its_trace() {
    let mesh = traced_mesh(Behavior::default(), "{}").await;
    let trace_id = "6bf92f3577b34da6a3ce929d0e0e4736";
    let b3 = format!("{trace_id}-{CALLER_SPAN}-1");
    let reply = get_api(&mesh, "/", &[("b3", &b3)]).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("x-traceparent")
            .starts_with(&format!("00-{trace_id}-")),
        "continued as W3C"
    );
    let trace = mesh
        .jaeger
        .trace(trace_id, 2)
        .await
        .unwrap_or_else(|| panic!("B3 trace never reached Jaeger"));
    let all = spans(&trace);
    assert!(all
        .iter()
        .any(|s| s.service == "web" && s.parent().as_deref() == Some(CALLER_SPAN)));
}

#[tokio::test]
async fn an_unsampled_caller_is_not_recorded_and_new_traces_are() {
    let mesh = traced_mesh(Behavior::default(), "{}").await;
    let unsampled = "7bf92f3577b34da6a3ce929d0e0e4736";
    let reply = get_api(
        &mesh,
        "/",
        &[("traceparent", &format!("00-{unsampled}-{CALLER_SPAN}-00"))],
    )
    .await;
    assert_eq!(reply.status, 200);
    let seen = reply.header("x-traceparent");
    assert!(
        seen.starts_with(&format!("00-{unsampled}-")) && seen.ends_with("-00"),
        "the caller's decision travels: {seen}"
    );
    // No trace header at all: a new trace, sampled at ratio 1.0.
    let reply = get_api(&mesh, "/", &[]).await;
    let seen = reply.header("x-traceparent");
    assert!(seen.len() == 55 && seen.ends_with("-01"), "{seen}");
    let new_trace = seen[3..35].to_owned();
    assert_ne!(new_trace, unsampled);
    assert!(
        mesh.jaeger.trace(&new_trace, 2).await.is_some(),
        "the new trace reached Jaeger"
    );
    // Had the unsampled request (sent first) been recorded, its span would
    // have left in the same batch or an earlier one; and web exported
    // exactly one span.
    assert!(mesh.jaeger.trace_now(unsampled).await.is_none());
    let exported = tether_e2e::metric(
        &mesh.web.metrics().await,
        "tether_trace_spans_exported_total",
    );
    assert_eq!(exported, Some(1.0));
}

#[tokio::test]
async fn spans_also_go_over_otlp_http() {
    let jaeger = Jaeger::start().await;
    let app = Backend::with("api-app", Behavior::default()).await;
    let web = Proxy::builder(&format!(
        "service: web\nmesh:\n  tracing: {{ otlp_endpoint: \"{}\", protocol: http/protobuf }}\nservices:\n  api:\n    endpoints: [ {{ address: \"{}\" }} ]\n",
        jaeger.otlp_http, app.addr
    ))
    .arg("--service")
    .arg("web")
    .start()
    .await;
    let trace_id = "8bf92f3577b34da6a3ce929d0e0e4736";
    let reply = Client::http1()
        .send(
            Method::POST,
            web.outbound,
            "api:8080",
            "/v1/orders",
            Bytes::from_static(b"{}"),
            &[("traceparent", &format!("00-{trace_id}-{CALLER_SPAN}-01"))],
        )
        .await;
    assert_eq!(reply.status, 200);
    let trace = jaeger
        .trace(trace_id, 1)
        .await
        .unwrap_or_else(|| panic!("trace never reached Jaeger over OTLP/HTTP"));
    let all = spans(&trace);
    let span = &all[0];
    assert_eq!(span.service, "web");
    assert_eq!(span.tag("http.request.method").as_deref(), Some("POST"));
    assert_eq!(span.tag("server.address").as_deref(), Some("api"));
    assert_eq!(span.tag("server.port").as_deref(), Some("8080"));
    assert_eq!(
        tether_e2e::metric(&web.metrics().await, "tether_trace_export_errors_total"),
        Some(0.0)
    );
}

#[tokio::test]
async fn an_abandoned_request_still_ends_its_spans_as_cancelled() {
    use tokio::io::AsyncWriteExt;
    let slow = Behavior {
        delay: std::time::Duration::from_secs(30),
        ..Behavior::default()
    };
    let mesh = traced_mesh(slow, "{}").await;
    let trace_id = "9bf92f3577b34da6a3ce929d0e0e4736";
    let mut caller = tokio::net::TcpStream::connect(mesh.web.outbound)
        .await
        .expect("web's sidecar accepts");
    let request = format!(
        "GET / HTTP/1.1\r\nhost: api\r\ntraceparent: 00-{trace_id}-{CALLER_SPAN}-01\r\n\r\n"
    );
    caller
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let reached = tether_e2e::eventually(std::time::Duration::from_secs(10), || async {
        mesh._app.hits() >= 1
    })
    .await;
    assert!(reached, "the request reached the app");
    drop(caller);
    let trace = mesh
        .jaeger
        .trace(trace_id, 2)
        .await
        .unwrap_or_else(|| panic!("the abandoned request's spans never reached Jaeger"));
    let all = spans(&trace);
    assert_eq!(all.len(), 2, "both sidecars' spans");
    for span in &all {
        assert_eq!(
            span.tag("tether.error").as_deref(),
            Some("cancelled"),
            "{}",
            span.service
        );
        assert_eq!(span.tag("error").as_deref(), Some("true"));
        assert_eq!(span.tag("http.response.status_code"), None);
    }
}
