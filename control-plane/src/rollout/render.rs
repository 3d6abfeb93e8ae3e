//! The table `tether-control rollout status` prints.

use tether_api::{RolloutList, RolloutPhase, SubsetFigures};

fn figures(f: &SubsetFigures) -> String {
    if f.requests == 0 {
        return "no requests yet in this window".to_owned();
    }
    let p99 = f
        .p99_ms
        .map_or_else(|| "-".to_owned(), |p| format!("{p}ms"));
    format!(
        "{} req, {:.2}% ok, p99 {p99}",
        f.requests,
        f.success_rate * 100.0
    )
}

/// One block per rollout: a table line, then the figures and the reason.
pub fn render(list: &RolloutList) -> String {
    let mut out = format!(
        "{:<16} {:<16} {:<12} {:>7} {:>6}\n",
        "SERVICE", "FROM -> TO", "STATE", "PERCENT", "STEP"
    );
    for r in &list.rollouts {
        let q = &r.request;
        let step = if r.phase == RolloutPhase::Active {
            format!("{}/{}", r.step + 1, q.steps.len())
        } else {
            "-".to_owned()
        };
        out.push_str(&format!(
            "{:<16} {:<16} {:<12} {:>6}% {:>6}\n",
            q.service,
            format!("{} -> {}", q.from, q.to),
            r.phase.as_str(),
            r.percent,
            step
        ));
        out.push_str(&format!("    {:<8} {}\n", q.from, figures(&r.from_figures)));
        out.push_str(&format!("    {:<8} {}\n", q.to, figures(&r.to_figures)));
        if let Some(reason) = &r.reason {
            out.push_str(&format!("    reason: {reason}\n"));
        }
    }
    if list.rollouts.is_empty() {
        out.push_str("(no rollout)\n");
    }
    out
}
