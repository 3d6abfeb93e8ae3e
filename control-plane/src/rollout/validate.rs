//! The checks a rollout request must pass before it starts: against itself
//! (steps, interval, gate ranges) and against mesh.yaml (the service and
//! both subsets), every problem at once.

use std::time::Duration;

use tether_api::{RolloutRequest, SplitTarget};

use super::RolloutError;
use crate::config::MeshConfig;

/// Shortest step interval accepted: below it a step would end before a
/// caller's sidecar (stats interval at least 100 ms) reported anything.
const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// Checks a request against itself and mesh.yaml (every problem at once);
/// the service's split in mesh.yaml when it is fine.
pub(super) fn check(
    r: &RolloutRequest,
    config: &MeshConfig,
) -> Result<Vec<SplitTarget>, RolloutError> {
    let mut problems = Vec::new();
    let service = config.services.get(&r.service);
    match service {
        None => problems.push(format!(
            "service `{}` is not in mesh.yaml's services",
            r.service
        )),
        Some(s) => {
            for subset in [&r.from, &r.to] {
                if !s.subsets.contains_key(subset) {
                    problems.push(format!(
                        "subset `{subset}` is not in services.{}.subsets (known: {})",
                        r.service,
                        s.subsets.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
    }
    if r.from == r.to {
        problems.push("--from and --to name the same subset".into());
    }
    if r.steps.is_empty() || r.steps.last() != Some(&100) {
        problems.push("steps must end at 100".into());
    }
    if r.steps.windows(2).any(|w| w[0] >= w[1]) || r.steps.first() == Some(&0) {
        problems.push("steps must increase, from 1 to 100".into());
    }
    if r.interval < MIN_INTERVAL {
        problems.push(format!("interval must be at least {MIN_INTERVAL:?}"));
    }
    let g = &r.gates;
    if !(0.0..=1.0).contains(&g.min_success_rate) {
        problems.push("min success rate must be within 0..1".into());
    }
    if !(0.0..=1.0).contains(&g.max_success_drop) {
        problems.push("max success drop must be within 0..1".into());
    }
    if g.max_p99_ratio.is_nan() || g.max_p99_ratio < 1.0 {
        problems.push("max p99 ratio must be at least 1".into());
    }
    if g.max_wait < r.interval {
        problems.push("max wait must be at least the interval".into());
    }
    if problems.is_empty() {
        Ok(service.map(|s| s.split.clone()).unwrap_or_default())
    } else {
        Err(RolloutError::Invalid(
            problems.into_iter().map(|p| p + "\n").collect(),
        ))
    }
}
