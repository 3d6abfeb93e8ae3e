//! Metrics of opaque TCP streams. Families are registered once, in the
//! proxy's registry ([`crate::request_metrics::RequestMetrics::registry`]); per-service handles are
//! resolved when a snapshot is applied (outbound) or at start (inbound), so a
//! connection never looks a label set up by name. Apart from the TCP relay
//! so that the state, which holds each TCP service's handle, sits below it.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};

use crate::request_metrics::{counter_vec, gauge_vec, Direction};
use crate::transport::ByteCounters;

/// The TCP metric families.
#[derive(Clone)]
pub struct TcpFamilies {
    connections: IntCounterVec,
    open: IntGaugeVec,
    connect_failures: IntCounterVec,
    bytes: IntCounterVec,
}

impl TcpFamilies {
    /// Registers the families in `registry`.
    pub fn register(registry: &Registry) -> Self {
        Self {
            connections: counter_vec(
                registry,
                "tether_tcp_connections_total",
                "Opaque TCP streams proxied (authorized inbound), by direction and service.",
                &["direction", "service"],
            ),
            open: gauge_vec(
                registry,
                "tether_tcp_connections_open",
                "Opaque TCP streams open now, by direction and service.",
                &["direction", "service"],
            ),
            connect_failures: counter_vec(
                registry,
                "tether_tcp_connect_failures_total",
                "TCP connects that failed: to an endpoint (outbound, each try) or to the local app (inbound).",
                &["service"],
            ),
            bytes: counter_vec(
                registry,
                "tether_tcp_bytes_total",
                "Bytes of opaque TCP streams, by direction, service and flow (received from or sent to the client).",
                &["direction", "service", "flow"],
            ),
        }
    }

    /// Handles for `service` in `direction`.
    pub fn service(&self, direction: Direction, service: &str) -> TcpMetrics {
        let d = direction.as_str();
        TcpMetrics {
            connections: self.connections.with_label_values(&[d, service]),
            open: self.open.with_label_values(&[d, service]),
            connect_failures: self.connect_failures.with_label_values(&[service]),
            bytes: ByteCounters {
                received: self.bytes.with_label_values(&[d, service, "received"]),
                sent: self.bytes.with_label_values(&[d, service, "sent"]),
            },
        }
    }
}

/// Metric handles of one service's TCP streams in one direction.
#[derive(Clone)]
pub struct TcpMetrics {
    connections: IntCounter,
    open: IntGauge,
    connect_failures: IntCounter,
    /// Bytes of the streams, counted on the client's side.
    pub bytes: ByteCounters,
}

impl std::fmt::Debug for TcpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpMetrics").finish_non_exhaustive()
    }
}

impl TcpMetrics {
    /// Counts a stream opened; the guard counts it closed.
    pub fn opened(&self) -> OpenStream {
        self.connections.inc();
        self.open.inc();
        OpenStream(self.open.clone())
    }

    /// Counts a failed connect.
    pub fn connect_failed(&self) {
        self.connect_failures.inc();
    }
}

/// Decrements the open-streams gauge when dropped.
pub struct OpenStream(IntGauge);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}
