//! Metrics of the mesh identity: the certificate in force and the requests
//! for new ones.

use prometheus::{IntCounterVec, IntGauge, Registry};

use crate::request_metrics::{counter_vec, gauge};

/// The identity families, and the TLS handshake failures the identity's
/// client configs count (that family belongs to the listeners:
/// [`crate::transport::ListenerMetrics`]).
#[derive(Clone)]
pub struct IdentityMetrics {
    /// Expiry of the certificate in force (Unix seconds; 0 without mTLS).
    pub expiry: IntGauge,
    /// Certificate requests to the control plane's CA, by kind and result.
    pub certificate_requests: IntCounterVec,
    /// TLS handshakes that failed, by direction and reason.
    pub tls_handshake_errors: IntCounterVec,
}

impl IdentityMetrics {
    /// Registers the identity families in `registry`; outbound handshake
    /// failures are counted in `tls_handshake_errors`.
    pub fn register(registry: &Registry, tls_handshake_errors: IntCounterVec) -> Self {
        Self {
            expiry: gauge(
                registry,
                "tether_identity_expiry_timestamp_seconds",
                "Unix time at which the certificate in force expires (0 without mTLS).",
            ),
            certificate_requests: counter_vec(
                registry,
                "tether_identity_certificate_requests_total",
                "Certificate requests to the control plane's CA, by kind (issue: with the join token, renew: with the current certificate) and result (ok, error).",
                &["kind", "result"],
            ),
            tls_handshake_errors,
        }
    }
}
