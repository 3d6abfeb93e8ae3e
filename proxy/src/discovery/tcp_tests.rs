//! Tcp services end to end inside one process: snapshot validation, the
//! listeners following snapshots through the [`Applier`], and a stream
//! relayed with the plaintext preamble and a half-close.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tether_api::Snapshot;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::SnapshotMetrics;
use super::{build, build::unknown_metrics, Applier, SnapshotError};
use crate::state::MeshState;
use crate::tcp::{TcpListeners, TcpSettings};
use crate::telemetry::ExportCounters;
use crate::telemetry::{self, Telemetry};
use crate::transport::preamble::PREAMBLE;
use crate::transport::ListenerMetrics;

fn snapshot(text: &str) -> Snapshot {
    serde_norway::from_str(text).unwrap_or_else(|e| panic!("{e}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `check` (every 10 ms, up to 5 s) until it holds.
async fn eventually<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) -> bool {
    for _ in 0..500 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn refused(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_err()
}

struct Harness {
    applier: Applier,
    listeners: Arc<TcpListeners>,
    metrics: SnapshotMetrics,
}

fn harness() -> Harness {
    let metrics = SnapshotMetrics::for_tests();
    let registry = metrics.requests().registry();
    let state = Arc::new(ArcSwap::from_pointee(MeshState::empty(unknown_metrics(
        &metrics,
    ))));
    let settings = TcpSettings {
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        max_connections: 16,
    };
    let listeners = TcpListeners::new(
        settings,
        Arc::clone(&state),
        ListenerMetrics::register(registry),
        None,
    );
    let identity = telemetry::Identity {
        service: "web".into(),
        instance: "web-1".into(),
    };
    let telemetry = Telemetry::new(identity, ExportCounters::register(registry));
    let applier =
        Applier::new(state, metrics.clone(), telemetry, None).with_tcp(Arc::clone(&listeners));
    Harness {
        applier,
        listeners,
        metrics,
    }
}

fn tcp_services(services: &[(&str, u16, &str)]) -> String {
    let mut text = String::from("services:\n");
    for (name, port, endpoint) in services {
        text.push_str(&format!(
            "  {name}:\n    protocol: tcp\n    outbound_port: {port}\n    endpoints: [ {{ address: \"{endpoint}\" }} ]\n"
        ));
    }
    text
}

#[tokio::test]
async fn tcp_services_need_one_unique_port_and_stay_out_of_http_routing() {
    let metrics = SnapshotMetrics::for_tests();
    let empty = MeshState::empty(unknown_metrics(&metrics));
    let good = snapshot(
        "services:\n  db: { protocol: tcp, outbound_port: 15306 }\n  api: { protocol: http }\n",
    );
    let state = build(Arc::new(good), &empty, &metrics, None).unwrap_or_else(|p| panic!("{p:?}"));
    assert_eq!(state.tcp.keys().copied().collect::<Vec<_>>(), [15306]);
    assert!(!state.services.contains_key("db"), "not routable as HTTP");
    assert!(state.services.contains_key("api"));

    let bad = snapshot(
        "services:\n  a: { protocol: tcp }\n  b: { protocol: tcp, outbound_port: 0 }\n  c: { protocol: http, outbound_port: 1 }\n  d: { protocol: tcp, outbound_port: 7 }\n  e: { protocol: tcp, outbound_port: 7 }\n",
    );
    let problems = build(Arc::new(bad), &empty, &metrics, None)
        .err()
        .unwrap_or_default();
    assert_eq!(
        problems,
        [
            "services.a: protocol tcp needs outbound_port (the local port the app connects to for it)",
            "services.b.outbound_port: 0 is not a port: expected 1 to 65535",
            "services.c.outbound_port: only protocol tcp has one",
            "services.e.outbound_port: 7 is also `d`'s: expected one port per service",
        ]
    );
}

/// Writes `byte` on `stream` and expects it echoed.
async fn ping(stream: &mut TcpStream, byte: u8) -> bool {
    let mut got = [0u8; 1];
    stream.write_all(&[byte]).await.is_ok()
        && stream.read_exact(&mut got).await.is_ok()
        && got[0] == byte
}

#[tokio::test]
async fn listeners_follow_snapshots_and_unchanged_ones_keep_their_connections() {
    let h = harness();
    let echo = preamble_echo().await.to_string();
    let (db, cache) = (free_port(), free_port());
    h.applier
        .apply(snapshot(&tcp_services(&[("db", db, &echo)])))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(h.listeners.ports(), [db]);
    let mut held = TcpStream::connect(("127.0.0.1", db))
        .await
        .unwrap_or_else(|e| panic!("listening at once: {e}"));
    assert!(ping(&mut held, 1).await);

    let both = tcp_services(&[("db", db, &echo), ("cache", cache, &echo)]);
    h.applier
        .apply(snapshot(&both))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut expected = [db, cache];
    expected.sort_unstable();
    assert_eq!(h.listeners.ports(), expected);
    assert!(
        ping(&mut held, 2).await,
        "db's listener and stream untouched"
    );

    h.applier
        .apply(snapshot(&tcp_services(&[("cache", cache, &echo)])))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(h.listeners.ports(), [cache]);
    assert!(eventually(|| refused(db)).await, "db's port still open");
    assert!(
        ping(&mut held, 3).await,
        "an open stream outlives its listener"
    );

    // Back again, right away: bound anew (or its closing socket taken over).
    h.applier
        .apply(snapshot(&both))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut again = TcpStream::connect(("127.0.0.1", db))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ping(&mut again, 4).await);
}

#[tokio::test]
async fn a_port_in_use_refuses_the_snapshot_and_changes_nothing() {
    let h = harness();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = taken.local_addr().map(|a| a.port()).unwrap_or_default();
    let other = free_port();
    let text = tcp_services(&[("cache", other, "127.0.0.1:1"), ("db", port, "127.0.0.1:1")]);
    let error = h.applier.apply(snapshot(&text)).err();
    if let Some(error) = &error {
        h.applier.refused(error);
    }
    let message = error.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(matches!(error, Some(SnapshotError::Listen(_))), "{message}");
    assert!(
        message.contains(&format!("cannot listen on 127.0.0.1:{port}")) && message.contains("`db`"),
        "{message}"
    );
    assert!(h.listeners.ports().is_empty());
    assert!(refused(other).await, "the other new port was released");
    assert_eq!(h.applier.version(), 0, "the snapshot is not in force");
    assert_eq!(h.metrics.config_errors.get(), 1);
}

/// A stand-in for the peer sidecar's inbound: expects the preamble, then
/// echoes until the end of stream, then closes its side.
async fn preamble_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut preamble = [0u8; PREAMBLE.len()];
                if stream.read_exact(&mut preamble).await.is_err() || preamble != PREAMBLE {
                    return;
                }
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_plaintext_stream_carries_the_preamble_and_passes_on_half_close() {
    let h = harness();
    let endpoint = preamble_echo().await;
    let dead = free_port();
    let port = free_port();
    // A dead endpoint first in round-robin: the connect is retried on the other.
    let text = format!(
        "services:\n  db:\n    protocol: tcp\n    outbound_port: {port}\n    policy: {{ load_balancer: round-robin }}\n    endpoints: [ {{ address: \"127.0.0.1:{dead}\" }}, {{ address: \"{endpoint}\" }} ]\n"
    );
    h.applier
        .apply(snapshot(&text))
        .unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..2 {
        let mut app = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let payload = vec![7u8; 100_000];
        app.write_all(&payload)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        app.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        let mut echoed = Vec::new();
        app.read_to_end(&mut echoed)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(echoed.len(), payload.len(), "the echo after our half-close");
    }
    let text = String::from_utf8(h.metrics.requests().render()).unwrap_or_default();
    for series in [
        r#"tether_tcp_connections_total{direction="outbound",service="db"} 2"#,
        r#"tether_tcp_bytes_total{direction="outbound",flow="received",service="db"} 200000"#,
        r#"tether_tcp_bytes_total{direction="outbound",flow="sent",service="db"} 200000"#,
        r#"tether_bytes_total{direction="outbound",flow="received"} 200000"#,
    ] {
        assert!(
            eventually(|| {
                let text = String::from_utf8(h.metrics.requests().render()).unwrap_or_default();
                async move { text.contains(series) }
            })
            .await,
            "{series} in\n{text}"
        );
    }
    let failures = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"tether_tcp_connect_failures_total{service="db"} "#))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        failures.is_some_and(|n| n >= 1),
        "round-robin tried the dead endpoint once at least: {text}"
    );
}
