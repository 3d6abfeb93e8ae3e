//! The proxy's metric registry and the request metrics every HTTP path
//! shares.
//!
//! This module imports nothing else of the proxy: each module registers its
//! own families in [`RequestMetrics::registry`] where its stack is built (tcp
//! streams, listeners, identity, trace export, snapshots), with the helpers
//! here. The request path never looks a label set up by name: per-service
//! handles ([`ServiceMetrics`]) are resolved when a snapshot is applied and
//! kept in the service's state. Label values are bounded: directions,
//! service names from the snapshot, status classes and the fixed set of
//! error reasons — never raw paths or hosts.

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

/// The registry every family is exported from, and the request families.
#[derive(Clone)]
pub struct RequestMetrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    proxy_errors: IntCounterVec,
    retries: IntCounterVec,
    retries_skipped: IntCounterVec,
    ejections: IntCounterVec,
    lb_panics: IntCounterVec,
    grpc: IntCounterVec,
    /// Inbound requests refused by authorization, by service.
    pub authz_denied: IntCounterVec,
}

/// Registers `collector` in `registry`; definitions are static, so a
/// failure is a programming error caught by every test.
pub fn register<C: prometheus::core::Collector + Clone + 'static>(
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
pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

/// A counter without labels, registered in `registry`.
pub fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help))
}

/// A gauge without labels, registered in `registry`.
pub fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help))
}

/// A gauge family with `labels`, registered in `registry`.
pub fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

impl RequestMetrics {
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
        let authz_denied = counter_vec(
            &registry,
            "tether_authz_denied_total",
            "Inbound requests and TCP connections refused by authorization policy.",
            &["service"],
        );
        let grpc = counter_vec(
            &registry,
            "tether_grpc_responses_total",
            "gRPC calls finished, by direction, service and grpc-status (code name in kebab-case; `none` when the stream ended without one).",
            &["direction", "service", "grpc_status"],
        );
        Self {
            authz_denied,
            grpc,
            registry,
            requests,
            duration,
            proxy_errors,
            retries,
            retries_skipped,
            ejections,
            lb_panics,
        }
    }

    /// The registry, for the families of the other modules.
    pub fn registry(&self) -> &Registry {
        &self.registry
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
            grpc: self.grpc.clone(),
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

impl Default for RequestMetrics {
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
    grpc: IntCounterVec,
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

    /// Counts a finished gRPC call by its `grpc-status` name (gRPC calls
    /// only: the label set is looked up per call).
    pub fn grpc_status(&self, code: &str) {
        self.grpc
            .with_label_values(&[self.direction.as_str(), &self.service, code])
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
        let metrics = RequestMetrics::new();
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
        let metrics = RequestMetrics::new();
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
