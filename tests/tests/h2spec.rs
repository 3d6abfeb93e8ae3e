//! HTTP/2 conformance: every h2spec case passes against the outbound
//! listener (h2c, prior knowledge) and against the inbound mTLS listener
//! (ALPN h2, reached through a relay that presents a client certificate).
//! h2spec's requests (`GET /`, `:authority` `127.0.0.1:PORT`) reach a real
//! backend, so the answers are the backend's, not the proxy's own.

use std::time::Duration;

use tether_e2e::h2spec::{self, Run, Summary, CASES};
use tether_e2e::tls_relay::TlsRelay;
use tether_e2e::{Backend, Behavior, H2Connection, Proxy, TestPki};

/// Body of the app's answers: h2spec skips its flow-control case 6.9.2/2
/// (a window made negative mid-response) for bodies under 5 bytes.
const BODY_BYTES: usize = 1024;

/// The app behind the proxy, answering `GET /` with [`BODY_BYTES`].
async fn app(name: &str) -> Backend {
    let behavior = Behavior {
        body_size: BODY_BYTES,
        ..Behavior::default()
    };
    Backend::with(name, behavior).await
}

/// Asserts that every case ran and passed.
fn assert_all_passed(run: &Run, listener: &str) {
    let expected = Summary {
        tests: CASES,
        passed: CASES,
        skipped: 0,
        failed: 0,
    };
    assert_eq!(
        run.summary.as_ref(),
        Some(&expected),
        "h2spec against the {listener} listener:\n{}",
        run.failures()
    );
}

#[tokio::test]
async fn the_outbound_listener_passes_every_h2spec_case() {
    let app = app("app").await;
    // The proxy routes by authority without its port: h2spec's
    // `127.0.0.1:PORT` is the service `127.0.0.1`.
    let snapshot = format!(
        "service: web\nservices:\n  \"127.0.0.1\":\n    endpoints: [ {{ address: \"{}\" }} ]\n",
        app.address()
    );
    let proxy = Proxy::start(&snapshot).await;
    let reply = H2Connection::connect(proxy.outbound)
        .await
        .get(&proxy.outbound.to_string(), "/")
        .await;
    assert_eq!(
        reply.status, 200,
        "h2spec's requests reach the app: {reply:?}"
    );

    let run = h2spec::run(proxy.outbound).await;
    assert_all_passed(&run, "outbound");
    assert!(app.hits() > 0, "h2spec's requests were answered by the app");
}

#[tokio::test]
async fn the_inbound_mtls_listener_passes_every_h2spec_case() {
    let pki = TestPki::new();
    let app = app("api-app").await;
    let proxy = Proxy::builder("service: api\nservices: {}\n")
        .app(app.addr)
        .identity(&pki.issue("api"), &pki.bundle())
        .arg("--service")
        .arg("api")
        .start()
        .await;
    let relay = TlsRelay::start(
        proxy.inbound,
        "api",
        pki.identity("web", Duration::from_secs(3600)),
        &pki.bundle(),
    )
    .await;
    let reply = H2Connection::connect(relay.addr)
        .await
        .get("api", "/")
        .await;
    assert_eq!(reply.status, 200, "the relay reaches the app: {reply:?}");

    let run = h2spec::run(relay.addr).await;
    assert_all_passed(&run, "inbound mTLS");
    assert!(app.hits() > 1, "h2spec's requests were answered by the app");
}
