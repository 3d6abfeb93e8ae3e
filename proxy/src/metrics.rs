//! Prometheus metrics of the proxy.
//!
//! Families are registered once, here. The request path never looks a label
//! set up by name: per-service handles ([`ServiceMetrics`]) are resolved when a
//! snapshot is applied and kept in the service's state. Label values are
//! bounded: directions, service names from the snapshot, status classes and
//! the fixed set of error reasons — never raw paths or hosts.

use crate::tcp::TcpFamilies;
use crate::transport::ByteCounters;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets from 100 µs to 30 s: sub-millisecond resolution for proxy
/// overhead, and room for slow upstreams up to the longest sane timeout.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Label value used for requests whose authority names no known service.
pub const UNKNOWN_SERVICE: &str = "unknown";

/// Every metric family the proxy exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    proxy_errors: IntCounterVec,
    retries: IntCounterVec,
    retries_skipped: IntCounterVec,
    ejections: IntCounterVec,
    lb_panics: IntCounterVec,
    /// Version of the snapshot in force.
    pub config_version: IntGauge,
    /// Snapshots refused (bad file, bad content).
    pub config_errors: IntCounter,
    /// 1 while connected to the control plane.
    pub control_plane_connected: IntGauge,
    connections_open: IntGaugeVec,
    connections_total: IntCounterVec,
    /// Finished spans dropped because the export queue was full.
    pub trace_spans_dropped: IntCounter,
    /// Spans that failed to export.
    pub trace_export_errors: IntCounter,
    /// Spans the collector accepted.
    pub trace_spans_exported: IntCounter,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    /// Plaintext connections accepted on an mTLS inbound (permissive mode).
    pub inbound_plaintext: IntCounter,
    /// 1 while the inbound listener also accepts plaintext.
    pub inbound_permissive: IntGauge,
    /// TLS handshakes that failed, by direction and reason.
    pub tls_handshake_errors: IntCounterVec,
    /// Inbound requests refused by authorization, by service.
    pub authz_denied: IntCounterVec,
    /// Expiry of the certificate in force (Unix seconds; 0 without mTLS).
    pub identity_expiry: IntGauge,
    /// Certificate requests to the control plane's CA, by kind and result.
    pub certificate_requests: IntCounterVec,
    bytes: IntCounterVec,
    /// The opaque-TCP families.
    pub tcp: TcpFamilies,
}

/// Registers `collector` in `registry`; definitions are static, so a
/// failure is a programming error caught by every test.
pub(crate) fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: prometheus::Result<C>,
) -> C {
    let collector = collector.unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
    registry
        .register(Box::new(collector.clone()))
        .unwrap_or_else(|e| unreachable!("metric registered twice: {e}"));
    collector
}

/// A counter family with `labels`, registered in `registry`.
pub(crate) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

/// A gauge family with `labels`, registered in `registry`.
pub(crate) fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

impl Metrics {
    /// Registers every family in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = counter_vec(
            &registry,
            "tether_requests_total",
            "Requests handled, by direction, service and response status class.",
            &["direction", "service", "status_class"],
        );
        let duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "tether_request_duration_seconds",
                    "Time from request arrival to response headers, all tries included.",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["direction", "service"],
            ),
        );
        let proxy_errors = counter_vec(
            &registry,
            "tether_proxy_errors_total",
            "Responses the proxy made itself, by reason (the tether-error header).",
            &["direction", "service", "reason"],
        );
        let retries = counter_vec(
            &registry,
            "tether_retries_total",
            "Retries sent, by service.",
            &["service"],
        );
        let retries_skipped = counter_vec(
            &registry,
            "tether_retries_skipped_total",
            "Retries wanted but not made, by reason: budget-exhausted, body-not-replayable, non-idempotent.",
            &["service", "reason"],
        );
        let ejections = counter_vec(
            &registry,
            "tether_endpoint_ejections_total",
            "Endpoints ejected by outlier detection.",
            &["service"],
        );
        let lb_panics = counter_vec(
            &registry,
            "tether_lb_panic_total",
            "Endpoint picks that ignored ejection because too few endpoints were available (panic threshold).",
            &["service"],
        );
        let gauge = |name: &str, help: &str| register(&registry, IntGauge::new(name, help));
        let config_version = gauge("tether_config_version", "Version of the snapshot in force.");
        let control_plane_connected = gauge(
            "tether_control_plane_connected",
            "1 while the proxy holds a working connection to the control plane.",
        );
        let counter = |name: &str, help: &str| register(&registry, IntCounter::new(name, help));
        let config_errors = counter(
            "tether_config_errors_total",
            "Snapshots refused because they could not be read or applied.",
        );
        let connections_open = gauge_vec(
            &registry,
            "tether_connections_open",
            "Downstream connections open now.",
            &["direction"],
        );
        let connections_total = counter_vec(
            &registry,
            "tether_connections_total",
            "Downstream connections accepted.",
            &["direction"],
        );
        let trace_spans_dropped = counter(
            "tether_trace_spans_dropped_total",
            "Finished spans dropped because the export queue was full.",
        );
        let trace_export_errors = counter(
            "tether_trace_export_errors_total",
            "Spans the OTLP exporter failed to send.",
        );
        let trace_spans_exported = counter(
            "tether_trace_spans_exported_total",
            "Spans the OTLP collector accepted.",
        );
        let access_log_dropped = counter(
            "tether_access_log_dropped_total",
            "Access log lines dropped because stdout could not keep up.",
        );
        let inbound_plaintext = counter(
            "tether_inbound_plaintext_connections_total",
            "Plaintext connections accepted by an mTLS inbound listener in permissive mode.",
        );
        let inbound_permissive = gauge(
            "tether_inbound_permissive",
            "1 while the inbound listener also accepts plaintext (permissive mode).",
        );
        let identity_expiry = gauge(
            "tether_identity_expiry_timestamp_seconds",
            "Unix time at which the certificate in force expires (0 without mTLS).",
        );
        let tls_handshake_errors = counter_vec(
            &registry,
            "tether_tls_handshake_errors_total",
            "TLS handshakes that failed, by direction and reason (handshake, timeout, identity-mismatch).",
            &["direction", "reason"],
        );
        let certificate_requests = counter_vec(
            &registry,
            "tether_identity_certificate_requests_total",
            "Certificate requests to the control plane's CA, by kind (issue: with the join token, renew: with the current certificate) and result (ok, error).",
            &["kind", "result"],
        );
        let authz_denied = counter_vec(
            &registry,
            "tether_authz_denied_total",
            "Inbound requests and TCP connections refused by authorization policy.",
            &["service"],
        );
        let bytes = counter_vec(
            &registry,
            "tether_bytes_total",
            "Bytes on downstream connections (after TLS), by direction and flow: received from or sent to the client.",
            &["direction", "flow"],
        );
        let tcp = TcpFamilies::register(&registry);
        Self {
            bytes,
            tcp,
            certificate_requests,
            inbound_plaintext,
            inbound_permissive,
            identity_expiry,
            tls_handshake_errors,
            authz_denied,
            trace_spans_dropped,
            trace_export_errors,
            trace_spans_exported,
            access_log_dropped,
            registry,
            requests,
            duration,
            proxy_errors,
            retries,
            retries_skipped,
            ejections,
            lb_panics,
            config_version,
            config_errors,
            control_plane_connected,
            connections_open,
            connections_total,
        }
    }

    /// Handles for one service in one direction, resolved once per snapshot.
    /// Retries, ejections and panics exist only for real upstream services:
    /// the inbound service and unroutable names never get those series.
    pub fn service(&self, direction: Direction, service: &str) -> ServiceMetrics {
        let d = direction.as_str();
        let upstream =
            (direction == Direction::Outbound && service != UNKNOWN_SERVICE).then(|| {
                UpstreamCounters {
                    retries: self.retries.with_label_values(&[service]),
                    ejections: self.ejections.with_label_values(&[service]),
                    lb_panics: self.lb_panics.with_label_values(&[service]),
                }
            });
        let class = |c: &str| self.requests.with_label_values(&[d, service, c]);
        ServiceMetrics {
            direction,
            service: service.to_owned(),
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: self.duration.with_label_values(&[d, service]),
            upstream,
            errors: self.proxy_errors.clone(),
            skipped: self.retries_skipped.clone(),
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

    /// Prometheus text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a failure would be a bad
        // family, which the registry already refused at registration.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Which way a request crosses the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the local app to the mesh.
    Outbound,
    /// From the mesh to the local app.
    Inbound,
}

impl Direction {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
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

/// Metric handles of one service, resolved once per snapshot.
#[derive(Clone)]
pub struct ServiceMetrics {
    direction: Direction,
    service: String,
    by_class: [IntCounter; 5],
    duration: Histogram,
    upstream: Option<UpstreamCounters>,
    errors: IntCounterVec,
    skipped: IntCounterVec,
}

/// Counters of an upstream service only.
#[derive(Clone)]
struct UpstreamCounters {
    retries: IntCounter,
    ejections: IntCounter,
    lb_panics: IntCounter,
}

impl std::fmt::Debug for ServiceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceMetrics")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl ServiceMetrics {
    /// Records a finished request: its status and how long until headers.
    pub fn record(&self, status: http::StatusCode, elapsed: std::time::Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a response the proxy made itself.
    pub fn proxy_error(&self, reason: &str) {
        self.errors
            .with_label_values(&[self.direction.as_str(), &self.service, reason])
            .inc();
    }

    /// Counts one retry sent (upstream services only).
    pub fn retry(&self) {
        if let Some(upstream) = &self.upstream {
            upstream.retries.inc();
        }
    }

    /// Counts a retry that was wanted but not made.
    pub fn retry_skipped(&self, reason: &str) {
        self.skipped
            .with_label_values(&[&self.service, reason])
            .inc();
    }

    /// Counts an endpoint ejection (upstream services only).
    pub fn ejection(&self) {
        if let Some(upstream) = &self.upstream {
            upstream.ejections.inc();
        }
    }

    /// Counts a pick made in panic mode (upstream services only).
    pub fn lb_panic(&self) {
        if let Some(upstream) = &self.upstream {
            upstream.lb_panics.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_recorded_requests_with_labels() {
        let metrics = Metrics::new();
        let api = metrics.service(Direction::Outbound, "api");
        api.record(http::StatusCode::OK, std::time::Duration::from_millis(2));
        api.record(
            http::StatusCode::SERVICE_UNAVAILABLE,
            std::time::Duration::from_millis(2),
        );
        api.proxy_error("timeout");
        let text = String::from_utf8(metrics.render()).unwrap_or_default();
        assert!(text.contains(
            r#"tether_requests_total{direction="outbound",service="api",status_class="2xx"} 1"#
        ));
        assert!(text.contains(
            r#"tether_requests_total{direction="outbound",service="api",status_class="5xx"} 1"#
        ));
        assert!(text.contains(
            r#"tether_proxy_errors_total{direction="outbound",reason="timeout",service="api"} 1"#
        ));
        assert!(text.contains("tether_request_duration_seconds_bucket"));
    }

    #[test]
    fn retries_carry_only_upstream_service_names() {
        let metrics = Metrics::new();
        metrics.service(Direction::Inbound, "tether-proxy").retry();
        metrics
            .service(Direction::Outbound, UNKNOWN_SERVICE)
            .retry();
        metrics.service(Direction::Outbound, "api").retry();
        let text = String::from_utf8(metrics.render()).unwrap_or_default();
        let retries: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("tether_retries_total{"))
            .collect();
        assert_eq!(retries, [r#"tether_retries_total{service="api"} 1"#]);
    }
}
