//! Entry points for the fuzz targets in `fuzz/` (not a stable API).
//!
//! The functions the targets need are private to their modules; these thin
//! wrappers are the one place that reaches them, so a refactor that moves
//! one re-points it here and the targets keep compiling. Everything else
//! the targets use is already public (`discovery::build`,
//! `telemetry::SpanContext`).

use std::path::Path;

use http::{HeaderMap, Request};
use tether_api::Snapshot;

use crate::discovery::SnapshotError;
use crate::errors::ProxyError;
use crate::outbound::Target;
use crate::state::MeshState;
use crate::telemetry::SpanContext;

/// Decodes snapshot bytes as the proxy does for a control-plane response
/// body or a snapshot file (lossy UTF-8, then YAML of which JSON is a subset).
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    crate::discovery::file::parse(Path::new("fuzz"), &String::from_utf8_lossy(bytes))
}

/// Where the outbound path sends `request`: authority → service, route
/// rules (path prefix, headers), then the traffic split.
pub fn resolve(state: &MeshState, request: &Request<()>) -> Result<Target, ProxyError> {
    crate::outbound::route::resolve(state, request)
}

/// Snapshot metric families in a registry of their own, for `build`.
pub fn snapshot_metrics() -> crate::discovery::SnapshotMetrics {
    let requests = crate::request_metrics::RequestMetrics::new();
    let tcp = crate::tcp_metrics::TcpFamilies::register(requests.registry());
    crate::discovery::SnapshotMetrics::register(&requests, tcp)
}

/// The authorization policy compiled from its wire form, as discovery does.
pub fn compile_authorization(
    policy: &tether_api::Authorization,
) -> Result<crate::state::AuthzPolicy, Vec<String>> {
    crate::discovery::compile_authorization(policy)
}

/// The caller's trace context as the proxy reads it: W3C `traceparent`,
/// else B3 (single or multi header).
pub fn extract_trace_context(headers: &HeaderMap) -> Option<SpanContext> {
    crate::telemetry::extract(headers)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::discovery::build::{build, unknown_metrics};
    use crate::discovery::SnapshotMetrics;

    #[tokio::test]
    async fn hooks_reach_the_private_entry_points() {
        let snapshot = decode_snapshot(
            br#"{"services": {"api": {"endpoints": [{"address": "127.0.0.1:1"}]}}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let metrics = SnapshotMetrics::for_tests();
        let empty = MeshState::empty(unknown_metrics(&metrics));
        let state =
            build(Arc::new(snapshot), &empty, &metrics, None).unwrap_or_else(|p| panic!("{p:?}"));
        let request = Request::get("http://api.mesh:80/x")
            .body(())
            .unwrap_or_else(|e| panic!("{e}"));
        let target = resolve(&state, &request).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(target.service.name, "api");
        assert!(decode_snapshot(b"services: [").is_err());

        let mut headers = HeaderMap::new();
        headers.insert(
            "b3",
            http::HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        let context = extract_trace_context(&headers).map(|c| c.sampled);
        assert_eq!(context, Some(true));
    }
}
