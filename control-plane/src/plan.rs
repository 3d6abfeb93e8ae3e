//! `tether-control plan`: what a new mesh.yaml would change for the proxies,
//! before it is applied.
//!
//! Both files are turned into exactly what the control plane would serve
//! ([`crate::snapshot`]'s per-service computation and per-proxy header), so
//! the plan cannot disagree with what a reload does. Endpoints are compared
//! only for a static catalog: with Consul they come from Consul, not from
//! the file.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::catalog::CatalogState;
use crate::config::{CatalogConfig, MeshConfig};
use crate::snapshot::{compute_services, header};

/// One changed value: its dotted path and the JSON before and after
/// (`None`: absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// e.g. `policy.timeout`, `split`, `tracing.sample_ratio`.
    pub path: String,
    /// Before.
    pub old: Option<Value>,
    /// After.
    pub new: Option<Value>,
}

/// What changes for whom.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Mesh-wide settings (every proxy).
    pub mesh: Vec<Change>,
    /// Upstream services as every proxy sees them, by name (a service
    /// added or removed is one change at path `""`).
    pub upstreams: BTreeMap<String, Vec<Change>>,
    /// Authorization rules each service's proxies enforce, by service.
    pub authorization: BTreeMap<String, Vec<Change>>,
    /// The inbound rate limit each service's proxies enforce, by service.
    pub inbound_rate_limits: BTreeMap<String, Vec<Change>>,
    /// Which services each service's proxies hold (`upstreams`,
    /// `mesh.upstream_scope`; `null`: all), by service.
    pub held: BTreeMap<String, Vec<Change>>,
    /// The endpoints were not compared (Consul catalog).
    pub endpoints_from_consul: bool,
}

impl Plan {
    /// The plan from `current` to `next`.
    pub fn between(current: &MeshConfig, next: &MeshConfig) -> Self {
        let catalog = |config: &MeshConfig| match &config.catalog {
            CatalogConfig::Static { services } => CatalogState::synced(services.clone()),
            CatalogConfig::Consul(_) => CatalogState::synced(BTreeMap::new()),
        };
        let old_services = compute_services(current, &catalog(current));
        let new_services = compute_services(next, &catalog(next));
        let mut plan = Plan {
            endpoints_from_consul: matches!(next.catalog, CatalogConfig::Consul(_))
                || matches!(current.catalog, CatalogConfig::Consul(_)),
            ..Plan::default()
        };
        for name in old_services.keys().chain(new_services.keys()) {
            if plan.upstreams.contains_key(name) {
                continue;
            }
            let old = old_services.get(name).map(to_json);
            let new = new_services.get(name).map(to_json);
            let changes = match (&old, &new) {
                (Some(old), Some(new)) => diff(old, new),
                _ => vec![Change {
                    path: String::new(),
                    old,
                    new,
                }],
            };
            if !changes.is_empty() {
                plan.upstreams.insert(name.clone(), changes);
            }
            let old_authz = to_json(&header(current, name).authorization);
            let new_authz = to_json(&header(next, name).authorization);
            let changes = diff(&old_authz, &new_authz);
            if !changes.is_empty() {
                plan.authorization.insert(name.clone(), changes);
            }
            let old_limit = to_json(&header(current, name).inbound_rate_limit);
            let new_limit = to_json(&header(next, name).inbound_rate_limit);
            let changes = diff(&old_limit, &new_limit);
            if !changes.is_empty() {
                plan.inbound_rate_limits.insert(name.clone(), changes);
            }
            let old_held = to_json(&crate::scope::upstreams(current, name, &old_services));
            let new_held = to_json(&crate::scope::upstreams(next, name, &new_services));
            if old_held != new_held {
                plan.held.insert(
                    name.clone(),
                    vec![Change {
                        path: "holds".to_owned(),
                        old: Some(old_held),
                        new: Some(new_held),
                    }],
                );
            }
        }
        let any = old_services.keys().next().cloned().unwrap_or_default();
        plan.mesh = diff(
            &to_json(&header(current, &any).mesh),
            &to_json(&header(next, &any).mesh),
        );
        plan
    }

    /// Whether anything changes.
    pub fn is_empty(&self) -> bool {
        self.mesh.is_empty()
            && self.upstreams.is_empty()
            && self.authorization.is_empty()
            && self.inbound_rate_limits.is_empty()
            && self.held.is_empty()
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// The leaves (object members, recursively; arrays whole) that differ.
fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let mut changes = Vec::new();
    walk("", Some(old), Some(new), &mut changes);
    changes
}

fn walk(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<Change>) {
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                walk(&sub, a.get(key), b.get(key), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(Change {
            path: path.to_owned(),
            old: a.filter(|v| !v.is_null()).cloned(),
            new: b.filter(|v| !v.is_null()).cloned(),
        }),
    }
}

fn show(value: &Option<Value>) -> String {
    value
        .as_ref()
        .map_or_else(|| "(none)".to_owned(), Value::to_string)
}

fn write_changes(f: &mut fmt::Formatter<'_>, changes: &[Change]) -> fmt::Result {
    for change in changes {
        let sign = match (&change.old, &change.new) {
            (None, Some(_)) => '+',
            (Some(_), None) => '-',
            _ => '~',
        };
        writeln!(
            f,
            "  {sign} {}: {} -> {}",
            change.path,
            show(&change.old),
            show(&change.new)
        )?;
    }
    Ok(())
}

impl fmt::Display for Plan {
    /// A readable diff, one block per thing that changes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            writeln!(f, "no change for any proxy")?;
        }
        if !self.mesh.is_empty() {
            writeln!(f, "mesh settings (every proxy):")?;
            write_changes(f, &self.mesh)?;
        }
        for (name, changes) in &self.upstreams {
            match changes.as_slice() {
                [Change {
                    path, old: None, ..
                }] if path.is_empty() => {
                    writeln!(f, "upstream {name}: added (every proxy can call it)")?;
                }
                [Change {
                    path, new: None, ..
                }] if path.is_empty() => {
                    writeln!(f, "upstream {name}: removed (no proxy can call it)")?;
                }
                _ => {
                    writeln!(f, "upstream {name} (every proxy's view of it):")?;
                    write_changes(f, changes)?;
                }
            }
        }
        for (name, changes) in &self.authorization {
            writeln!(f, "authorization enforced by {name}'s proxies:")?;
            write_changes(f, changes)?;
        }
        for (name, changes) in &self.inbound_rate_limits {
            writeln!(f, "inbound rate limit enforced by {name}'s proxies:")?;
            write_changes(f, changes)?;
        }
        for (name, changes) in &self.held {
            writeln!(f, "services {name}'s proxies hold (null: all):")?;
            write_changes(f, changes)?;
        }
        if self.endpoints_from_consul {
            writeln!(f, "(endpoints come from Consul and are not compared)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> MeshConfig {
        crate::config::parse(Path::new("m.yaml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str = "mesh:\n  catalog:\n    static:\n      services:\n        api: [ { address: \"10.0.0.1:15443\", tags: [v1] }, { address: \"10.0.0.2:15443\", tags: [v2] } ]\ndefaults:\n  timeout: 5s\nservices:\n  web: {}\n  api:\n    subsets: { v1: { tags: [v1] }, v2: { tags: [v2] } }\n    split: [ { subset: v1, weight: 90 }, { subset: v2, weight: 10 } ]\nauthorization:\n  rules:\n    - { to: api, from: [web] }\n";

    #[test]
    fn the_same_file_changes_nothing() {
        let plan = Plan::between(&config(BASE), &config(BASE));
        assert!(plan.is_empty(), "{plan}");
        assert_eq!(plan.to_string(), "no change for any proxy\n");
    }

    #[test]
    fn a_canary_step_a_timeout_and_a_rule_show_where_they_land() {
        let next = BASE
            .replace("weight: 90", "weight: 50")
            .replace("weight: 10", "weight: 50")
            .replace(
                "  web: {}\n",
                "  web: {}\n  db: { policy: { timeout: 1s } }\n",
            )
            .replace(
                "- { to: api, from: [web] }",
                "- { to: api, from: [web, db] }",
            );
        let plan = Plan::between(&config(BASE), &config(&next));
        let text = plan.to_string();
        assert!(
            text.contains("upstream api (every proxy's view of it):\n  ~ split:"),
            "{text}"
        );
        assert!(text.contains(r#""weight":50"#), "{text}");
        assert!(text.contains("upstream db: added"), "{text}");
        assert!(
            text.contains("authorization enforced by api's proxies:\n  ~ rules:"),
            "{text}"
        );
        assert!(!text.contains("upstream web"), "web is unchanged: {text}");
        assert!(!plan.endpoints_from_consul);
    }

    #[test]
    fn a_policy_key_is_named_with_both_values() {
        let next = BASE.replace("timeout: 5s", "timeout: 2s");
        let plan = Plan::between(&config(BASE), &config(&next));
        let api = &plan.upstreams["api"];
        assert_eq!(
            api,
            &vec![Change {
                path: "policy.timeout".into(),
                old: Some(Value::String("5s".into())),
                new: Some(Value::String("2s".into())),
            }]
        );
        assert!(plan.upstreams.contains_key("web"), "defaults reach web too");
    }

    #[test]
    fn mesh_settings_and_removed_services() {
        let next = BASE
            .replace("  web: {}\n", "")
            .replace("from: [web]", "from: [\"*\"]")
            .replace("defaults:", "  outbound_policy: registry-only\ndefaults:");
        let plan = Plan::between(&config(BASE), &config(&next));
        let text = plan.to_string();
        assert!(
            text.contains("mesh settings (every proxy):\n  ~ outbound_policy: \"allow-any\" -> \"registry-only\""),
            "{text}"
        );
        assert!(text.contains("upstream web: removed"), "{text}");
    }

    #[test]
    fn faults_and_rate_limits_show_where_they_land() {
        let next = BASE.replace(
            "    split: [ { subset: v1, weight: 90 }, { subset: v2, weight: 10 } ]\n",
            "    split: [ { subset: v1, weight: 90 }, { subset: v2, weight: 10 } ]\n    fault: { abort: { status: 503, percent: 5 } }\n    rate_limit: { outbound: { requests_per_second: 10 }, inbound: { requests_per_second: 50 } }\n",
        );
        let text = Plan::between(&config(BASE), &config(&next)).to_string();
        assert!(
            text.contains("upstream api (every proxy's view of it):"),
            "{text}"
        );
        assert!(
            text.contains("+ fault:") && text.contains("+ rate_limit:"),
            "{text}"
        );
        assert!(
            text.contains("inbound rate limit enforced by api's proxies:\n  + : (none) -> {\"requests_per_second\":50.0}"),
            "{text}"
        );
    }

    #[test]
    fn what_a_proxy_holds_is_planned_too() {
        let next = BASE.replace("  web: {}", "  web:\n    upstreams: [api]");
        let plan = Plan::between(&config(BASE), &config(&next));
        let text = plan.to_string();
        assert!(
            text.contains("services web's proxies hold (null: all):\n  ~ holds: null -> [\"api\"]"),
            "{text}"
        );
    }
}
