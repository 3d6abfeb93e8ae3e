//! Start, bad input and shutdown: what the proxy does with malformed
//! requests, huge headers, slow clients and SIGTERM.

use std::time::Duration;

use tether_e2e::{assert_eventually, Backend, Behavior, Client, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn one_service(backend: &Backend) -> String {
    format!(
        "services:\n  api:\n    endpoints: [ {{ address: \"{}\" }} ]\n",
        backend.address()
    )
}

/// Writes raw bytes on a fresh connection and reads until the server closes
/// the connection or 5 s pass.
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(bytes)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn two_host_headers_get_400_not_a_route() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(&one_service(&api)).await;
    // RFC 9112 §3.2: a server answers 400 to more than one Host.
    let answer = raw_exchange(
        proxy.outbound,
        b"GET / HTTP/1.1\r\nHost: api\r\nHost: other\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("tether-error: bad-request"), "{answer}");
    assert!(answer.contains("more than one Host header"), "{answer}");
    // The same on the inbound listener, before the app sees it.
    let answer = raw_exchange(
        proxy.inbound,
        b"GET / HTTP/1.1\r\nHost: api\r\nHost: api\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = raw_exchange(
        proxy.outbound,
        b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "one Host is fine: {answer}"
    );
}

#[tokio::test]
async fn a_malformed_request_gets_400_and_the_next_one_succeeds() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(&one_service(&api)).await;
    let answer = raw_exchange(proxy.outbound, b"GET / HTTP/1.1\r\nHost api\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = raw_exchange(proxy.outbound, b"\x16\x03\x01garbage\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(
        Client::http1().get(proxy.outbound, "api", "/").await.status,
        200
    );
    assert_eq!(api.hits(), 1, "nothing malformed reached the backend");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let api = Backend::start("api").await;
    let proxy = Proxy::builder(&one_service(&api))
        .arg("--max-header-bytes")
        .arg("8192")
        .start()
        .await;
    let huge = "x".repeat(16 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: api\r\nX-Big: {huge}\r\n\r\n");
    let answer = raw_exchange(proxy.outbound, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(
        Client::http1().get(proxy.outbound, "api", "/").await.status,
        200
    );
    assert_eq!(api.hits(), 1);
}

#[tokio::test]
async fn a_slow_client_is_cut_off_by_the_header_read_timeout() {
    let api = Backend::start("api").await;
    let proxy = Proxy::builder(&one_service(&api))
        .arg("--header-read-timeout")
        .arg("300ms")
        .start()
        .await;
    let mut stream = TcpStream::connect(proxy.outbound)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: ap")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "connection not closed by the header read timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(api.hits(), 0);
    assert_eq!(
        Client::http1().get(proxy.outbound, "api", "/").await.status,
        200
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_with_none_lost() {
    let api = Backend::with(
        "api",
        Behavior {
            delay: Duration::from_millis(700),
            ..Behavior::default()
        },
    )
    .await;
    let mut proxy = Proxy::builder(&one_service(&api))
        .arg("--drain-timeout")
        .arg("10s")
        .start()
        .await;
    let outbound = proxy.outbound;
    let in_flight: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move { Client::http1().get(outbound, "api", "/").await.status })
        })
        .collect();
    let api_ref = &api;
    assert_eventually!(
        Duration::from_secs(5),
        || async move { api_ref.hits() == 20 },
        "requests never reached the backend"
    );
    proxy.signal("TERM");
    for request in in_flight {
        assert_eq!(
            request.await.ok().map(|s| s.as_u16()),
            Some(200),
            "an in-flight request was lost"
        );
    }
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "log:\n{}",
        proxy.log()
    );
    assert!(proxy.log().contains("drained cleanly"), "{}", proxy.log());
    assert!(
        TcpStream::connect(outbound).await.is_err(),
        "no longer accepting after exit"
    );
}

#[tokio::test]
async fn ready_turns_503_while_draining() {
    // 800 ms: under the default 1 s per-try timeout, long enough to observe.
    let api = Backend::with(
        "api",
        Behavior {
            delay: Duration::from_millis(800),
            ..Behavior::default()
        },
    )
    .await;
    let proxy = Proxy::builder(&one_service(&api))
        .arg("--drain-timeout")
        .arg("5s")
        .start()
        .await;
    let client = Client::http1();
    assert_eq!(client.get(proxy.admin, "admin", "/ready").await.status, 200);
    assert_eq!(client.get(proxy.admin, "admin", "/live").await.status, 200);
    let outbound = proxy.outbound;
    let pending =
        tokio::spawn(async move { Client::http1().get(outbound, "api", "/").await.status });
    let api_ref = &api;
    assert_eventually!(
        Duration::from_secs(5),
        || async move { api_ref.hits() == 1 },
        "request never arrived"
    );
    proxy.signal("TERM");
    assert_eventually!(
        Duration::from_secs(2),
        || async { client.get(proxy.admin, "admin", "/ready").await.status == 503 },
        "/ready must turn 503 while draining"
    );
    assert_eq!(pending.await.ok().map(|s| s.as_u16()), Some(200));
}

/// A connection that sends nothing is closed at the header-read timeout
/// (hyper's own timeout starts only at the first byte): it would otherwise
/// hold one of `--max-connections` for ever, and that many silent
/// connections lock every new caller out (found by the chaos suite).
#[tokio::test]
async fn a_silent_connection_is_closed_by_the_header_read_timeout() {
    let api = Backend::start("api").await;
    let proxy = Proxy::builder(&one_service(&api))
        .arg("--header-read-timeout")
        .arg("300ms")
        .arg("--max-connections")
        .arg("1")
        .start()
        .await;
    let mut silent = TcpStream::connect(proxy.outbound)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "a silent connection was never closed");
    // Its slot is free again.
    assert_eq!(
        Client::http1().get(proxy.outbound, "api", "/").await.status,
        200
    );
}
