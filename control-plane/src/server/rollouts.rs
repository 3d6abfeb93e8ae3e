//! `POST /v1/stats` (proxies' per-upstream statistics) and `/v1/rollouts`
//! (list, start, abort).
//!
//! Statistics follow the report's rule: over TLS the client certificate
//! must be the reporting proxy's service. Rollout mutations (`POST`) are
//! accepted only from a loopback peer, whatever the transport: the
//! operator runs `tether-control rollout` on the control plane's host (or
//! in its pod); nothing else on the network can move traffic.

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use tether_api::{RolloutRequest, StatsReport, ROLLOUTS_PATH};

use super::{json, read_json, text, Api, Caller, Peer, Rsp};

/// Largest stats report accepted: ~200 bytes per upstream subset, so
/// thousands of them.
const MAX_STATS_BYTES: usize = 1024 * 1024;
/// Largest rollout request accepted.
const MAX_ROLLOUT_BYTES: usize = 16 * 1024;

impl Api {
    /// `POST /v1/stats`.
    pub(super) async fn stats(&self, request: Request<Incoming>, caller: &Caller) -> Rsp {
        let Some(rollouts) = &self.rollouts else {
            return text(StatusCode::NOT_FOUND, "statistics are not collected here\n");
        };
        let peer = request.extensions().get::<Peer>().map(|p| p.0.ip());
        let mut report: StatsReport =
            match read_json(request, MAX_STATS_BYTES, "a stats report").await {
                Ok(report) => report,
                Err(refusal) => return refusal,
            };
        if let Some(peer) = peer {
            crate::topology::resolve_inbound(&mut report, peer);
        }
        self.record_stats(rollouts, report, caller)
    }

    /// Keeps a stats report if `caller` may report for its service.
    pub(super) fn record_stats(
        &self,
        rollouts: &crate::rollout::Rollouts,
        report: StatsReport,
        caller: &Caller,
    ) -> Rsp {
        if let Err(refusal) = caller.may_act_for(&report.service) {
            return self.unauthorized("stats", refusal);
        }
        self.metrics.stats_reports.inc();
        match rollouts.stats().record(report) {
            Ok(()) => text(StatusCode::NO_CONTENT, ""),
            Err(error) => text(StatusCode::BAD_REQUEST, format!("{error}\n")),
        }
    }

    /// `GET /v1/rollouts`, `POST /v1/rollouts`, `POST /v1/rollouts/<service>/abort`.
    pub(super) async fn rollouts(&self, request: Request<Incoming>) -> Rsp {
        let Some(rollouts) = &self.rollouts else {
            return text(StatusCode::NOT_FOUND, "rollouts are not served here\n");
        };
        let path = request.uri().path().to_owned();
        if request.method() == Method::GET && path == ROLLOUTS_PATH {
            return json(&rollouts.list());
        }
        if request.method() != Method::POST {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET /v1/rollouts, POST /v1/rollouts, POST /v1/rollouts/<service>/abort\n",
            );
        }
        if let Some(refusal) = self.refuse_rollout_change(request.extensions().get::<Peer>()) {
            return refusal;
        }
        let result = if path == ROLLOUTS_PATH {
            match read_json::<RolloutRequest>(request, MAX_ROLLOUT_BYTES, "a rollout request").await
            {
                Ok(wanted) => rollouts.start(wanted),
                Err(refusal) => return refusal,
            }
        } else {
            match path
                .strip_prefix("/v1/rollouts/")
                .and_then(|rest| rest.strip_suffix("/abort"))
            {
                Some(service) if !service.is_empty() && !service.contains('/') => {
                    rollouts.abort(service)
                }
                _ => {
                    return text(
                        StatusCode::NOT_FOUND,
                        "expected POST /v1/rollouts/<service>/abort\n",
                    )
                }
            }
        };
        match result {
            Ok(status) => json(&status),
            Err(error) => text(error.status(), format!("{error}")),
        }
    }

    /// Rollout changes come only from a loopback peer: `None` for one, else
    /// a `403` (counted and logged).
    pub(super) fn refuse_rollout_change(&self, peer: Option<&Peer>) -> Option<Rsp> {
        match peer {
            Some(Peer(addr)) if addr.ip().is_loopback() => None,
            _ => {
                self.metrics
                    .api_unauthorized
                    .with_label_values(&["rollout"])
                    .inc();
                tracing::warn!(peer = ?peer.map(|p| p.0), "rollout change refused: not from a loopback address");
                Some(text(
                    StatusCode::FORBIDDEN,
                    "rollouts are changed only from the control plane's host (a loopback address)\n",
                ))
            }
        }
    }
}
