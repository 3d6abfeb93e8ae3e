//! Rollouts: the control plane moves a service's default split from one
//! subset to another in steps, gated by the proxies' statistics.
//!
//! - `GET {ROLLOUTS_PATH}` answers a [`RolloutList`].
//! - `POST {ROLLOUTS_PATH}` takes a [`RolloutRequest`] and answers the new
//!   [`RolloutStatus`] (`409` while another rollout of the service is active).
//! - `POST {ROLLOUTS_PATH}/<service>/abort` switches the service back to
//!   100 % of `from` at once and answers the [`RolloutStatus`].
//!
//! The mutations are accepted only from a loopback peer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Path of the rollouts endpoint.
pub const ROLLOUTS_PATH: &str = "/v1/rollouts";

/// Default minimum success rate of the new subset: one failure in 100.
pub const DEFAULT_MIN_SUCCESS_RATE: f64 = 0.99;
/// Default maximum p99 latency of the new subset: a generous bound for an
/// HTTP API; set it to the service's objective.
pub const DEFAULT_MAX_P99: Duration = Duration::from_millis(500);
/// Default largest drop of the new subset's success rate below the old
/// one's (in rate, 0.01 = one percentage point).
pub const DEFAULT_MAX_SUCCESS_DROP: f64 = 0.01;
/// Default largest ratio of the new subset's p99 to the old one's.
pub const DEFAULT_MAX_P99_RATIO: f64 = 2.0;
/// Default minimum requests to the new subset in a step before it is judged.
pub const DEFAULT_MIN_REQUESTS: u64 = 100;

/// What `tether-control rollout start` asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// The service whose default split moves.
    pub service: String,
    /// The subset traffic moves away from.
    pub from: String,
    /// The subset traffic moves to.
    pub to: String,
    /// Percent of traffic to `to` at each step, increasing, ending at 100.
    pub steps: Vec<u32>,
    /// How long each step lasts before it is judged.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The gates each step must pass.
    pub gates: Gates,
}

/// Thresholds a step of the new subset must meet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// Minimum success rate of `to` (0..=1).
    pub min_success_rate: f64,
    /// Maximum p99 latency of `to`.
    #[serde(with = "humantime_serde")]
    pub max_p99: Duration,
    /// Largest drop of `to`'s success rate below `from`'s (0..=1).
    pub max_success_drop: f64,
    /// Largest ratio of `to`'s p99 over `from`'s.
    pub max_p99_ratio: f64,
    /// Requests to `to` in a step before any gate is judged.
    pub min_requests: u64,
    /// Longest a step may wait for `min_requests`; then the rollout is
    /// rolled back (an unjudged step is never promoted).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutPhase {
    /// Stepping: the current step's share goes to `to`.
    Active,
    /// Every step passed: 100 % to `to`.
    Promoted,
    /// A gate failed (or a step never saw enough traffic): 100 % to `from`.
    RolledBack,
    /// Stopped by the operator: 100 % to `from`.
    Aborted,
    /// mesh.yaml changed the service's split (or removed a subset) after
    /// the rollout: the override is gone, mesh.yaml is in force.
    Superseded,
}

impl RolloutPhase {
    /// The name shown in status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Active => "active",
            RolloutPhase::Promoted => "promoted",
            RolloutPhase::RolledBack => "rolled-back",
            RolloutPhase::Aborted => "aborted",
            RolloutPhase::Superseded => "superseded",
        }
    }
}

/// One subset's figures in the current window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsetFigures {
    /// Requests counted.
    pub requests: u64,
    /// Failures among them.
    pub failures: u64,
    /// Success rate (1 when there were no requests).
    pub success_rate: f64,
    /// p99 latency in milliseconds: the upper bound of the histogram bucket
    /// holding the 99th percentile (`None`: no request, or slower than the
    /// last bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

/// A rollout as the control plane holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStatus {
    /// What was asked.
    pub request: RolloutRequest,
    /// Where it is.
    pub phase: RolloutPhase,
    /// Index of the current step in `request.steps` (the last one once
    /// promoted).
    pub step: usize,
    /// Percent of traffic to `to` now.
    pub percent: u32,
    /// When the current step started, Unix milliseconds.
    pub step_started_unix_ms: u64,
    /// When the rollout started, Unix milliseconds.
    pub started_unix_ms: u64,
    /// When it finished, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<u64>,
    /// `from`'s figures in the current (or last) window.
    pub from_figures: SubsetFigures,
    /// `to`'s figures in the current (or last) window.
    pub to_figures: SubsetFigures,
    /// Why the step is waiting, or why the rollout ended as it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The service's split in mesh.yaml when the rollout started: a reload
    /// that changes it supersedes a finished rollout.
    #[serde(default)]
    pub config_split: Vec<crate::SplitTarget>,
}

/// `GET /v1/rollouts`: every rollout the control plane holds, one per service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutList {
    /// The rollouts, by service.
    pub rollouts: Vec<RolloutStatus>,
}
