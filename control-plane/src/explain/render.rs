//! The readable form of an [`Explanation`].

use std::fmt::Write;

use super::Explanation;

/// `explain`'s text output: one section per decision, the verdict last.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} → {}: {} {}", e.from, e.to, e.method, e.path);
    let _ = writeln!(
        out,
        "  snapshots: {} (versions {} / {})",
        e.source, e.versions[0], e.versions[1]
    );
    out.push_str(&routing(e));
    out.push_str(&traffic(e));
    out.push_str(&authorization(e));
    let verdict = match (e.routed, e.allowed) {
        (true, true) => "allowed and routed (exit 0)".to_owned(),
        (false, true) => format!(
            "not routed: {} (exit 1)",
            e.error.as_ref().map_or("unroutable", |x| x.reason)
        ),
        (true, false) => "denied by authorization (exit 1)".to_owned(),
        (false, false) => "not routed, and denied by authorization (exit 1)".to_owned(),
    };
    let _ = writeln!(out, "verdict: {verdict}");
    out
}

fn routing(e: &Explanation) -> String {
    let mut out = String::new();
    if let Some(error) = &e.error {
        let _ = writeln!(
            out,
            "error:   tether-error: {} ({})",
            error.reason, error.message
        );
    }
    let Some(route) = &e.route else {
        return out;
    };
    let d = &route.decision;
    match d.route {
        Some(i) => {
            let at = route
                .position
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default();
            let matches = route
                .matches
                .as_ref()
                .map(|m| format!(" match {m}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "route:   services.{}.routes[{i}]{at}{matches}",
                d.service
            );
        }
        None => {
            let _ = writeln!(out, "route:   no route rule matched: the default split");
        }
    }
    let _ = writeln!(out, "timeout: {:?}", d.timeout);
    let _ = writeln!(out, "split:");
    for share in &d.split {
        let subset = share.subset.as_deref().unwrap_or("(all endpoints)");
        let endpoints = if e.endpoints_from_consul && share.endpoints.is_empty() {
            "(from Consul at run time)".to_owned()
        } else if share.endpoints.is_empty() {
            "(none)".to_owned()
        } else {
            share.endpoints.join(", ")
        };
        let note = share
            .note
            .as_deref()
            .map(|n| format!(" [{n}]"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {subset:<16} weight {:<5} {:>5.1} %  {endpoints}{note}",
            share.weight, share.percent
        );
        if let Some(local) = &share.local_endpoints {
            let _ = writeln!(
                out,
                "  {:<16} prefers its zone while healthy: {}",
                "",
                local.join(", ")
            );
        }
    }
    if let Some(policy) = e.policy.as_ref().and_then(|p| p.as_object()) {
        for key in ["retries", "circuit_breaker", "load_balancer", "locality"] {
            if let Some(value) = policy.get(key) {
                let _ = writeln!(out, "{key}: {value}");
            }
        }
    }
    out
}

fn traffic(e: &Explanation) -> String {
    let t = &e.traffic;
    let mut out = String::new();
    let _ = writeln!(out, "fault injection:    {}", show(t.fault.as_ref()));
    let _ = writeln!(out, "rate limit (out):   {}", show(t.rate_limit.as_ref()));
    let _ = writeln!(
        out,
        "rate limit (in):    {}",
        show(t.inbound_rate_limit.as_ref())
    );
    let _ = writeln!(out, "mirror:             {}", show(t.mirror.as_ref()));
    let rollout = match &t.rollout {
        Some(r) => {
            let own_split = e
                .route
                .as_ref()
                .is_some_and(|route| route.decision.route.is_some());
            let applies = if own_split {
                "holds the default split; this request takes a route rule's split"
            } else {
                "the split above is its override"
            };
            format!(
                "{} → {} at {} % ({}): {applies}",
                r.from, r.to, r.percent, r.phase
            )
        }
        None if e.source.starts_with("http") => "none".to_owned(),
        None => "unknown offline (ask the control plane: --control URL)".to_owned(),
    };
    let _ = writeln!(out, "rollout:            {rollout}");
    out
}

fn authorization(e: &Explanation) -> String {
    let a = &e.authorization;
    let verdict = if a.decision.allowed {
        "ALLOWED"
    } else {
        "DENIED"
    };
    let by = match (a.decision.rule, a.decision.default) {
        (Some(i), _) => {
            let at = a
                .position
                .as_deref()
                .map(|p| format!(" at {p}"))
                .unwrap_or_default();
            let which = a.config_index.map_or_else(
                || format!("rule {i} for {}", e.to),
                |j| format!("authorization.rules[{j}]"),
            );
            let text = a
                .rule_text
                .as_ref()
                .map(|t| format!(": {t}"))
                .unwrap_or_default();
            format!("by {which}{at}{text}")
        }
        (None, Some(default)) if a.decision.allowed => format!("({default})"),
        (None, Some(default)) => format!("no rule allows it ({default})"),
        (None, None) => String::new(),
    };
    format!("authorization: {verdict} {by}\n")
}

/// A wire value as compact JSON, or `none`.
fn show<T: serde::Serialize>(value: Option<&T>) -> String {
    value
        .and_then(|v| serde_json::to_value(v).ok())
        .map_or_else(|| "none".to_owned(), |v| v.to_string())
}
