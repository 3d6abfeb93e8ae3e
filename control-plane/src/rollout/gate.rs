//! The gates a rollout step must pass, judged on the window's figures of
//! the new subset (`to`) and the old one (`from`).
//!
//! - Nothing is judged before `to` has `min_requests` in the window.
//! - Absolute: `to`'s success rate ≥ `min_success_rate`; `to`'s p99 ≤
//!   `max_p99` (a p99 beyond the histogram's last bound fails).
//! - Relative, only while `from` also has `min_requests` in the window (at
//!   100 % it has none): `to`'s success rate at most `max_success_drop`
//!   below `from`'s; `to`'s p99 at most `max_p99_ratio` × `from`'s, unless
//!   the difference is under [`P99_RATIO_SLACK_MS`] or either subset has
//!   fewer than [`P99_RATIO_MIN_REQUESTS`] requests.

use tether_api::{Gates, SubsetFigures};

/// p99 differences smaller than this never fail the ratio gate: at low
/// latencies bucket bounds are a factor 2-2.5 apart, so a ratio alone would
/// fail a healthy subset one bucket slower (measured: 10 ms vs 25 ms on a
/// busy machine for two identical subsets).
pub const P99_RATIO_SLACK_MS: f64 = 25.0;

/// Fewer requests than this make no p99 worth comparing (of 50 requests the
/// "p99" is the slowest one), so the ratio gate waits for them on both sides.
pub const P99_RATIO_MIN_REQUESTS: u64 = 100;

/// What the figures say about the step.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not enough requests to `to` yet; the text says how many.
    Wait(String),
    /// Every gate passes.
    Pass,
    /// A gate fails; the text names it with its figures.
    Fail(String),
}

/// Judges `to` against `gates` and `from`.
pub fn judge(gates: &Gates, from: &SubsetFigures, to: &SubsetFigures) -> Verdict {
    if to.requests < gates.min_requests {
        return Verdict::Wait(format!(
            "waiting for traffic: {} of {} requests to the new subset",
            to.requests, gates.min_requests
        ));
    }
    if to.success_rate < gates.min_success_rate {
        return Verdict::Fail(format!(
            "success rate {:.4} below the minimum {:.4} ({} failures in {} requests)",
            to.success_rate, gates.min_success_rate, to.failures, to.requests
        ));
    }
    let max_p99_ms = gates.max_p99.as_secs_f64() * 1000.0;
    match to.p99_ms {
        None => {
            return Verdict::Fail(format!(
                "p99 beyond the histogram's last bound, above the maximum {max_p99_ms} ms"
            ))
        }
        Some(p99) if p99 > max_p99_ms => {
            return Verdict::Fail(format!("p99 {p99} ms above the maximum {max_p99_ms} ms"))
        }
        Some(_) => {}
    }
    if from.requests >= gates.min_requests {
        let drop = from.success_rate - to.success_rate;
        if drop > gates.max_success_drop {
            return Verdict::Fail(format!(
                "success rate {:.4} is {:.4} below the old subset's {:.4} (at most {:.4} allowed)",
                to.success_rate, drop, from.success_rate, gates.max_success_drop
            ));
        }
        let enough = from.requests.min(to.requests) >= P99_RATIO_MIN_REQUESTS;
        if let (true, Some(old), Some(new)) = (enough, from.p99_ms, to.p99_ms) {
            if new > old * gates.max_p99_ratio && new - old > P99_RATIO_SLACK_MS {
                return Verdict::Fail(format!(
                    "p99 {new} ms is more than {}× the old subset's {old} ms",
                    gates.max_p99_ratio
                ));
            }
        }
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn gates() -> Gates {
        Gates {
            min_success_rate: 0.99,
            max_p99: Duration::from_millis(500),
            max_success_drop: 0.01,
            max_p99_ratio: 2.0,
            min_requests: 10,
            max_wait: Duration::from_secs(60),
        }
    }

    fn figures(requests: u64, failures: u64, p99_ms: Option<f64>) -> SubsetFigures {
        SubsetFigures {
            requests,
            failures,
            success_rate: 1.0 - failures as f64 / requests.max(1) as f64,
            p99_ms,
        }
    }

    #[test]
    fn waits_for_traffic_then_judges_absolute_gates() {
        let g = gates();
        let none = SubsetFigures::default();
        assert!(
            matches!(judge(&g, &none, &figures(9, 0, Some(1.0))), Verdict::Wait(w) if w.contains("9 of 10"))
        );
        assert_eq!(judge(&g, &none, &figures(10, 0, Some(1.0))), Verdict::Pass);
        assert!(
            matches!(judge(&g, &none, &figures(100, 2, Some(1.0))), Verdict::Fail(f) if f.contains("0.9800 below the minimum"))
        );
        assert!(
            matches!(judge(&g, &none, &figures(100, 0, Some(750.0))), Verdict::Fail(f) if f.contains("750 ms above"))
        );
        assert!(matches!(
            judge(&g, &none, &figures(100, 0, None)),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn relative_gates_need_traffic_on_the_old_subset_and_a_real_difference() {
        let mut g = gates();
        g.min_success_rate = 0.5;
        // 5 points worse than the old subset: fails the drop gate.
        let old = figures(100, 0, Some(2.5));
        assert!(
            matches!(judge(&g, &old, &figures(100, 5, Some(2.5))), Verdict::Fail(f) if f.contains("below the old subset"))
        );
        // Not judged relatively when the old subset had too few requests.
        assert_eq!(
            judge(&g, &figures(5, 0, Some(2.5)), &figures(100, 5, Some(2.5))),
            Verdict::Pass
        );
        // 2.5 → 25 ms is a ratio of 10 but only 22.5 ms: within the slack.
        assert_eq!(judge(&g, &old, &figures(100, 0, Some(25.0))), Verdict::Pass);
        // Not with fewer than 100 requests on either side.
        assert_eq!(
            judge(
                &g,
                &figures(100, 0, Some(25.0)),
                &figures(99, 0, Some(100.0))
            ),
            Verdict::Pass
        );
        // 25 → 100 ms: 4×, 75 ms.
        let slow_old = figures(100, 0, Some(25.0));
        assert!(
            matches!(judge(&g, &slow_old, &figures(100, 0, Some(100.0))), Verdict::Fail(f) if f.contains("more than 2×"))
        );
    }
}
