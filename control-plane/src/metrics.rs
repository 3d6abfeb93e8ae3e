//! The control plane's Prometheus metrics.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric of the control plane.
#[derive(Clone)]
pub struct ControlMetrics {
    registry: Registry,
    /// Long-polls open now.
    pub subscribers: IntGauge,
    /// Snapshots sent to proxies.
    pub snapshots_served: IntCounter,
    /// Bytes of the snapshot bodies sent to proxies, by kind (`full`, `delta`).
    pub snapshot_bytes: IntCounterVec,
    /// Snapshot answers sent to proxies, by kind (`full`, `delta`).
    pub snapshot_responses: IntCounterVec,
    /// New snapshot versions computed (any service).
    pub snapshot_updates: IntCounter,
    /// Generation of the config in force (Unix seconds of its load).
    pub config_loaded: IntGauge,
    /// Generation of the config in force: 1 at start, +1 per accepted reload.
    pub config_version: IntGauge,
    /// Config reloads refused.
    pub config_errors: IntCounter,
    /// Failed Consul queries.
    pub consul_errors: IntCounter,
    /// Consul query latency (blocking queries included).
    pub consul_latency: Histogram,
    /// Consul blocking queries kept open (service list, check list, node list).
    pub consul_watches: IntGauge,
    /// Times Consul answered again after a failure and removals were held.
    pub consul_resync_holds: IntCounter,
    /// Proxy reports that refused a snapshot.
    pub proxy_rejections: IntCounter,
    /// Certificates signed, by how the caller authenticated (`token`, `certificate`).
    pub certificates_issued: IntCounterVec,
    /// Certificate requests refused, by reason.
    pub certificate_refusals: IntCounterVec,
    /// API requests refused for lack of the right client certificate, by path kind.
    pub api_unauthorized: IntCounterVec,
    /// TLS handshakes on the API that failed.
    pub tls_handshake_errors: IntCounter,
    /// Stats reports received from proxies.
    pub stats_reports: IntCounter,
    /// Current step (1-based) of each service's active rollout; 0 when none is active.
    pub rollout_step: IntGaugeVec,
    /// Percent of each rolled-out service's default traffic on the new subset.
    pub rollout_percent: IntGaugeVec,
    /// Rollouts finished, by outcome (promoted, rolled-back, aborted).
    pub rollouts: IntCounterVec,
    /// TCP connections open to Consul now (bounded: see `catalog::consul`).
    pub consul_connections: IntGauge,
    /// Consul requests (blocking or not) in flight now.
    pub consul_requests_in_flight: IntGauge,
    /// Non-blocking reads, by what was read (service: one service's
    /// health; node: one node's instances, in a sweep).
    pub consul_reads: IntCounterVec,
    /// Sweeps started: every node's instances listed (the service index
    /// moved), or every service read (start, after an error).
    pub consul_sweeps: IntCounter,
    /// Reads waiting for one of the readers.
    pub consul_reads_queued: IntGauge,
}

impl ControlMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            metric: T,
        ) -> T {
            registry
                .register(Box::new(metric.clone()))
                .unwrap_or_else(|e| unreachable!("metric registered twice: {e}"));
            metric
        }
        let gauge = |n: &str, h: &str| {
            reg(
                &registry,
                IntGauge::new(n, h).unwrap_or_else(|e| unreachable!("{n}: {e}")),
            )
        };
        let counter = |n: &str, h: &str| {
            reg(
                &registry,
                IntCounter::new(n, h).unwrap_or_else(|e| unreachable!("{n}: {e}")),
            )
        };
        let counter_vec = |n: &str, h: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(n, h), labels)
                    .unwrap_or_else(|e| unreachable!("{n}: {e}")),
            )
        };
        let gauge_vec = |n: &str, h: &str, labels: &[&str]| {
            reg(
                &registry,
                IntGaugeVec::new(Opts::new(n, h), labels)
                    .unwrap_or_else(|e| unreachable!("{n}: {e}")),
            )
        };
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "tether_control_consul_watch_latency_seconds",
                "Time Consul took to answer a (blocking) query.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
            ]),
        )
        .unwrap_or_else(|e| unreachable!("histogram: {e}"));
        Self {
            subscribers: gauge("tether_control_subscribers", "Proxy long-polls open now."),
            snapshots_served: counter(
                "tether_control_snapshots_served_total",
                "Snapshots sent to proxies.",
            ),
            snapshot_bytes: counter_vec(
                "tether_control_snapshot_bytes_sent_total",
                "Bytes of snapshot bodies sent to proxies, by kind: full (the whole snapshot) or delta (what changed since the version the proxy holds). With `upstreams` or `upstream_scope: authorized`, each proxy gets only the services it holds.",
                &["kind"],
            ),
            snapshot_responses: counter_vec(
                "tether_control_snapshot_responses_total",
                "Snapshot answers sent to proxies, by kind: full or delta.",
                &["kind"],
            ),
            snapshot_updates: counter(
                "tether_control_snapshot_updates_total",
                "New snapshot versions computed, over all services.",
            ),
            config_loaded: gauge(
                "tether_control_config_loaded_timestamp_seconds",
                "When the mesh.yaml in force was loaded (Unix seconds).",
            ),
            config_version: gauge(
                "tether_control_config_version",
                "Generation of the mesh.yaml in force: 1 at start, +1 per accepted reload.",
            ),
            config_errors: counter(
                "tether_control_config_reload_errors_total",
                "mesh.yaml reloads refused; the last good config stays.",
            ),
            consul_errors: counter(
                "tether_control_consul_watch_errors_total",
                "Consul queries that failed.",
            ),
            consul_latency: reg(&registry, latency),
            consul_watches: gauge(
                "tether_control_consul_watches",
                "Consul blocking queries kept open: the service list, the check list and the node list.",
            ),
            consul_resync_holds: counter(
                "tether_control_consul_resync_holds_total",
                "Times Consul answered again after a failure (or its index went backwards) and instances that vanished were kept for `resync_hold`.",
            ),
            proxy_rejections: counter(
                "tether_control_proxy_rejections_total",
                "Snapshots that a proxy reported it refused.",
            ),
            certificates_issued: counter_vec(
                "tether_control_certificates_issued_total",
                "Certificates signed, by how the caller proved its identity (token: join token, certificate: renewal).",
                &["auth"],
            ),
            certificate_refusals: counter_vec(
                "tether_control_certificate_refusals_total",
                "Certificate requests refused, by reason (unauthenticated, bad-token, expired-token, revoked-token, revocation-unavailable, identity-not-authorized, bad-csr, reserved, token-store, other).",
                &["reason"],
            ),
            api_unauthorized: counter_vec(
                "tether_control_api_unauthorized_total",
                "API requests refused because the client certificate was missing or for another service (path: snapshot, report).",
                &["path"],
            ),
            tls_handshake_errors: counter(
                "tether_control_tls_handshake_errors_total",
                "TLS handshakes on the API that failed or timed out.",
            ),
            stats_reports: counter(
                "tether_control_stats_reports_total",
                "Per-upstream statistics reports received from proxies (POST /v1/stats).",
            ),
            rollout_step: gauge_vec(
                "tether_control_rollout_step",
                "Current step (1-based) of the service's active rollout; 0 once it finished.",
                &["service"],
            ),
            rollout_percent: gauge_vec(
                "tether_control_rollout_percent",
                "Percent of the service's default traffic the rollout sends to the new subset.",
                &["service"],
            ),
            rollouts: counter_vec(
                "tether_control_rollouts_total",
                "Rollouts finished, by outcome (promoted, rolled-back, aborted).",
                &["outcome"],
            ),
            consul_connections: gauge(
                "tether_control_consul_connections",
                "TCP connections open to Consul now (at most the blocking queries plus the service readers).",
            ),
            consul_requests_in_flight: gauge(
                "tether_control_consul_requests_in_flight",
                "Consul requests in flight now, blocking queries included.",
            ),
            consul_reads: counter_vec(
                "tether_control_consul_reads_total",
                "Non-blocking Consul reads, by what was read (service: /v1/health/service/<name>; node: /v1/catalog/node-services/<node>, in a sweep).",
                &["read"],
            ),
            consul_sweeps: counter(
                "tether_control_consul_sweeps_total",
                "Sweeps: every node's instances listed because Consul's service index moved (a registration, deregistration or re-registration), or every service read (at start, after an error).",
            ),
            consul_reads_queued: gauge(
                "tether_control_consul_reads_queued",
                "Reads waiting for one of the readers.",
            ),
            registry,
        }
    }

    /// Prometheus text.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The value of one series in Prometheus text (0 when absent), for tests.
#[cfg(test)]
pub(crate) fn tests_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
