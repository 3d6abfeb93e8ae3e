//! Metrics of the downstream listeners: connections, bytes and TLS
//! handshakes, registered once by the composition root and shared by the
//! HTTP servers and the tcp listeners.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::stream::ByteCounters;
use crate::request_metrics::{counter, counter_vec, gauge, gauge_vec, Direction};

/// The listener families.
#[derive(Clone)]
pub struct ListenerMetrics {
    connections_open: IntGaugeVec,
    connections_total: IntCounterVec,
    bytes: IntCounterVec,
    /// Plaintext connections accepted on an mTLS inbound (permissive mode).
    pub inbound_plaintext: IntCounter,
    /// 1 while the inbound listener also accepts plaintext.
    pub inbound_permissive: IntGauge,
    /// TLS handshakes that failed, by direction and reason (inbound here,
    /// outbound in the connector).
    pub tls_handshake_errors: IntCounterVec,
    /// Captured outbound traffic to destinations outside the mesh passed
    /// through (`outbound_policy: allow-any`), by protocol.
    pub passthrough: IntCounterVec,
    /// Captured outbound traffic to destinations outside the mesh refused
    /// (`outbound_policy: registry-only`), by protocol.
    pub outbound_refused: IntCounterVec,
    /// Connections that sent nothing within the detection timeout, relayed
    /// as opaque TCP (a server-first protocol), by direction: captured
    /// outbound ones, and plaintext ones on the inbound listener.
    pub detect_timeouts: IntCounterVec,
}

impl ListenerMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &Registry) -> Self {
        Self {
            connections_open: gauge_vec(
                registry,
                "tether_connections_open",
                "Downstream connections open now.",
                &["direction"],
            ),
            connections_total: counter_vec(
                registry,
                "tether_connections_total",
                "Downstream connections accepted.",
                &["direction"],
            ),
            bytes: counter_vec(
                registry,
                "tether_bytes_total",
                "Bytes on downstream connections (after TLS), by direction and flow: received from or sent to the client.",
                &["direction", "flow"],
            ),
            inbound_plaintext: counter(
                registry,
                "tether_inbound_plaintext_connections_total",
                "Plaintext connections accepted by an mTLS inbound listener in permissive mode.",
            ),
            inbound_permissive: gauge(
                registry,
                "tether_inbound_permissive",
                "1 while the inbound listener also accepts plaintext (permissive mode).",
            ),
            tls_handshake_errors: counter_vec(
                registry,
                "tether_tls_handshake_errors_total",
                "TLS handshakes that failed, by direction and reason (handshake, timeout, identity-mismatch, not-tls).",
                &["direction", "reason"],
            ),
            passthrough: counter_vec(
                registry,
                "tether_passthrough_total",
                "Captured outbound TCP connections (protocol tcp) and HTTP requests (protocol http) to destinations outside the mesh, passed through to their original destination (outbound_policy allow-any).",
                &["protocol"],
            ),
            detect_timeouts: counter_vec(
                registry,
                "tether_protocol_detect_timeouts_total",
                "Connections that sent nothing within the protocol detection timeout and were relayed as opaque TCP (a server-first protocol): captured outbound ones (10 s) to a destination not declared as a tcp service, plaintext ones on the inbound listener (500 ms; permissive mode).",
                &["direction"],
            ),
            outbound_refused: counter_vec(
                registry,
                "tether_outbound_refused_total",
                "Captured outbound TCP connections (protocol tcp) and HTTP requests (protocol http) to destinations outside the mesh, refused (outbound_policy registry-only).",
                &["protocol"],
            ),
        }
    }

    /// Counts an accepted connection; the returned guard counts it closed.
    pub fn connection_opened(&self, direction: Direction) -> ConnectionGuard {
        let d = direction.as_str();
        self.connections_total.with_label_values(&[d]).inc();
        let open = self.connections_open.with_label_values(&[d]);
        open.inc();
        ConnectionGuard(open)
    }

    /// Byte counters for the downstream connections of one listener.
    pub fn bytes(&self, direction: Direction) -> ByteCounters {
        let d = direction.as_str();
        ByteCounters {
            received: self.bytes.with_label_values(&[d, "received"]),
            sent: self.bytes.with_label_values(&[d, "sent"]),
        }
    }
}

/// Decrements the open-connections gauge when dropped.
pub struct ConnectionGuard(IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
