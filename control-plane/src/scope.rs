//! Which services each proxy holds: its service's declared `upstreams`,
//! else with `mesh.upstream_scope: authorized` the services authorization
//! lets it call, else the whole mesh. Mirror targets of the services held
//! are held too (a proxy refuses a snapshot whose mirror names a service
//! it does not have), transitively.

use std::collections::{BTreeMap, BTreeSet};

use tether_api::ServiceSnapshot;

use crate::config::{MeshConfig, UpstreamScope};

/// The services `service`'s proxies receive, or `None` for all of them.
pub fn upstreams(
    config: &MeshConfig,
    service: &str,
    services: &BTreeMap<String, ServiceSnapshot>,
) -> Option<BTreeSet<String>> {
    let declared = config
        .services
        .get(service)
        .and_then(|s| s.upstreams.as_ref());
    let mut held: BTreeSet<String> = match (declared, config.upstream_scope) {
        (Some(declared), _) => declared.iter().cloned().collect(),
        (None, UpstreamScope::All) => return None,
        (None, UpstreamScope::Authorized) => authorized(config, service, services)?,
    };
    add_mirror_targets(&mut held, services);
    held.retain(|name| services.contains_key(name));
    Some(held)
}

/// `held` (what [`upstreams`] gave) plus the services `service`'s proxies
/// asked for on demand ([`crate::wants`]) that exist and that
/// authorization lets `service` call (with `default: deny`, a rule from it
/// or `*` to them or `*`), with their mirror targets. `None` stays `None`:
/// such a proxy holds everything already.
pub fn with_wanted(
    config: &MeshConfig,
    service: &str,
    held: Option<BTreeSet<String>>,
    wanted: &BTreeSet<String>,
    services: &BTreeMap<String, ServiceSnapshot>,
) -> Option<BTreeSet<String>> {
    let mut held = held?;
    let before = held.len();
    for name in wanted {
        if services.contains_key(name) && !held.contains(name) && may_call(config, service, name) {
            held.insert(name.clone());
        }
    }
    if held.len() != before {
        add_mirror_targets(&mut held, services);
        held.retain(|name| services.contains_key(name));
    }
    Some(held)
}

/// Whether authorization lets `from` call `to` (no authorization, or
/// `default: allow`, lets every service call every other).
fn may_call(config: &MeshConfig, from: &str, to: &str) -> bool {
    let Some(authz) = config.authorization.as_ref() else {
        return true;
    };
    if authz.default == tether_api::AuthorizationDefault::Allow {
        return true;
    }
    authz.rules.iter().any(|rule| {
        (rule.to == to || rule.to == "*") && rule.from.iter().any(|f| f == from || f == "*")
    })
}

/// The services whose authorization rules let `service` call them; `None`
/// when a rule for every service (`to: "*"`) does.
fn authorized(
    config: &MeshConfig,
    service: &str,
    services: &BTreeMap<String, ServiceSnapshot>,
) -> Option<BTreeSet<String>> {
    let authz = config.authorization.as_ref()?;
    let mut held = BTreeSet::new();
    for rule in &authz.rules {
        let allows = rule.from.iter().any(|f| f == service || f == "*");
        if !allows {
            continue;
        }
        if rule.to == "*" {
            return None;
        }
        if services.contains_key(&rule.to) {
            held.insert(rule.to.clone());
        }
    }
    Some(held)
}

/// Adds, until nothing changes, every service a held service mirrors to.
fn add_mirror_targets(held: &mut BTreeSet<String>, services: &BTreeMap<String, ServiceSnapshot>) {
    let mut pending: Vec<String> = held.iter().cloned().collect();
    while let Some(name) = pending.pop() {
        let Some(service) = services.get(&name) else {
            continue;
        };
        let targets = service
            .mirror
            .iter()
            .chain(service.routes.iter().filter_map(|r| r.mirror.as_ref()))
            .filter_map(|m| m.service.clone());
        for target in targets {
            if held.insert(target.clone()) {
                pending.push(target);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> MeshConfig {
        crate::config::parse(std::path::Path::new("mesh.yaml"), text)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn held(config: &MeshConfig, service: &str) -> Option<Vec<String>> {
        let services =
            crate::snapshot::compute_services(config, &crate::catalog::CatalogState::default());
        upstreams(config, service, &services).map(|s| s.into_iter().collect())
    }

    const MESH: &str = "services:\n  web: {}\n  api:\n    mirror: { service: shadow, percent: 5 }\n  shadow: {}\n  db: {}\n  batch:\n    upstreams: [db]\n";

    #[test]
    fn without_a_declaration_or_scope_a_proxy_holds_everything() {
        let c = config(MESH);
        assert_eq!(held(&c, "web"), None);
        assert_eq!(held(&c, "batch"), Some(vec!["db".to_owned()]));
    }

    #[test]
    fn authorized_scope_holds_what_the_rules_allow_plus_mirror_targets() {
        let text = format!("mesh:\n  upstream_scope: authorized\n{MESH}authorization:\n  default: deny\n  rules:\n    - {{ to: api, from: [web] }}\n    - {{ to: db, from: [api, batch] }}\n    - {{ to: web, from: [\"*\"] }}\n");
        let c = config(&text);
        assert_eq!(
            held(&c, "web"),
            Some(vec![
                "api".to_owned(),
                "shadow".to_owned(),
                "web".to_owned()
            ])
        );
        assert_eq!(
            held(&c, "api"),
            Some(vec!["db".to_owned(), "web".to_owned()])
        );
        assert_eq!(held(&c, "shadow"), Some(vec!["web".to_owned()]));
        // A declaration wins over the rules.
        assert_eq!(held(&c, "batch"), Some(vec!["db".to_owned()]));
        let everything = format!("mesh:\n  upstream_scope: authorized\n{MESH}authorization:\n  default: deny\n  rules:\n    - {{ to: \"*\", from: [web] }}\n");
        assert_eq!(held(&config(&everything), "web"), None);
    }

    #[test]
    fn wanted_services_are_added_when_they_exist_and_may_be_called() {
        let wanted = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
        let open = config(MESH);
        let services =
            crate::snapshot::compute_services(&open, &crate::catalog::CatalogState::default());
        let with = |c: &MeshConfig, service: &str, names: &[&str]| {
            with_wanted(
                c,
                service,
                upstreams(c, service, &services),
                &wanted(names),
                &services,
            )
            .map(|s| s.into_iter().collect::<Vec<_>>())
        };
        // No authorization: any existing service; its mirror target too.
        assert_eq!(
            with(&open, "batch", &["api", "nosuch"]),
            Some(vec!["api".to_owned(), "db".to_owned(), "shadow".to_owned()])
        );
        // A proxy holding everything stays so.
        assert_eq!(with(&open, "web", &["api"]), None);
        // default deny: only what a rule allows.
        let text = format!(
            "{MESH}authorization:\n  default: deny\n  rules:\n    - {{ to: web, from: [batch] }}\n"
        );
        let deny = config(&text);
        assert_eq!(
            with(&deny, "batch", &["api", "web"]),
            Some(vec!["db".to_owned(), "web".to_owned()])
        );
    }

    #[test]
    fn bad_declarations_and_scopes_are_reported() {
        let bad = "mesh:\n  upstream_scope: authorized\n  catalog:\n    static:\n      services:\n        api: [ { address: \"127.0.0.1:1\" } ]\nservices:\n  web:\n    upstreams: [api, nosuch, Bad_Name]\n";
        let errors = crate::config::parse(std::path::Path::new("mesh.yaml"), bad)
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        assert_eq!(
            errors,
            [
                "mesh.yaml:9:5: upstreams: `nosuch` is no service of this mesh (neither under `services` nor in the static catalog)",
                "mesh.yaml:9:5: upstreams: `Bad_Name` is not a service name",
                "mesh.yaml:2:3: upstream_scope: authorized needs `authorization` with `default: deny` (the rules then say who calls whom); with default allow every service may call every other",
            ]
        );
    }
}
