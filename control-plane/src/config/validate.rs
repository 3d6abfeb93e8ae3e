//! Semantic checks run after parsing, so that every problem in a file is
//! reported at once, each as `FILE:LINE:COL: what is wrong, what was expected`.
//!
//! Policy rules are tether-api's (`TrafficPolicy::problems`), the same ones a
//! proxy applies to a snapshot (proxy `discovery`), so a policy that
//! validates here is never refused there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tether_api::{Endpoint, Mirror, Protocol, Route, SplitTarget, TracingSettings, TrafficPolicy};

use super::{AuthorizationConfig, ConfigErrors, ConsulConfig, ServiceConfig, UpstreamScope};
use crate::locate::locate;

/// Problems found so far, with their positions in the text.
pub struct Problems<'a> {
    path: &'a Path,
    text: &'a str,
    found: Vec<String>,
}

impl<'a> Problems<'a> {
    /// No problems yet in `text`, read from `path`.
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Self {
            path,
            text,
            found: Vec::new(),
        }
    }

    /// A problem at the key path `keys` (or its deepest part that exists).
    pub fn at(&mut self, keys: &[&str], message: impl Into<String>) {
        let (line, column) = locate(self.text, keys);
        let path = self.path.display();
        self.found
            .push(format!("{path}:{line}:{column}: {}", message.into()));
    }

    /// [`Problems::at`] for a key path built at run time.
    pub fn at_owned(&mut self, keys: &[String], message: impl Into<String>) {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.at(&keys, message);
    }

    /// `Err` with every problem, if there was any.
    pub fn finish(self) -> Result<(), ConfigErrors> {
        if self.found.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.found))
        }
    }
}

/// DNS-label service names, so every service has a valid SPIFFE ID.
pub fn service_name(problems: &mut Problems<'_>, keys: &[&str], name: &str) {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !valid {
        problems.at(keys, format!("service name `{name}` is not valid: expected lowercase letters, digits and `-` (a DNS label)"));
    }
}

/// What is wrong with a policy: (key path below the policy, message), by
/// the rules the proxy applies too (`tether_api::TrafficPolicy::problems`).
fn policy_problems(policy: &TrafficPolicy) -> Vec<(Vec<&'static str>, String)> {
    policy
        .problems()
        .into_iter()
        .map(|p| (p.path, p.message))
        .collect()
}

/// Checks `defaults`.
pub fn defaults(problems: &mut Problems<'_>, policy: &TrafficPolicy) {
    for (keys, message) in policy_problems(policy) {
        let path: Vec<&str> = std::iter::once("defaults").chain(keys).collect();
        problems.at(&path, format!("defaults.{message}"));
    }
}

/// Checks a service: its merged policy (problems it inherits from
/// `defaults` are reported there, once), splits and routes.
pub fn service(
    problems: &mut Problems<'_>,
    name: &str,
    service: &ServiceConfig,
    defaults: &TrafficPolicy,
) {
    let inherited = policy_problems(defaults);
    for (keys, message) in policy_problems(&service.policy) {
        if !inherited.iter().any(|(_, m)| *m == message) {
            let path: Vec<&str> = ["services", name, "policy"]
                .into_iter()
                .chain(keys)
                .collect();
            problems.at(&path, format!("policy.{message}"));
        }
    }
    let keys = ["services", name, "split"].map(str::to_owned);
    split(problems, &keys, service, "split", &service.split);
    for (i, route) in service.routes.iter().enumerate() {
        self::route(problems, name, service, i, route);
    }
}

fn route(
    problems: &mut Problems<'_>,
    name: &str,
    service: &ServiceConfig,
    i: usize,
    route: &Route,
) {
    let item = format!("[{i}]");
    let keys = |rest: &[&'static str]| -> Vec<String> {
        ["services", name, "routes", &item]
            .iter()
            .map(|k| (*k).to_owned())
            .chain(rest.iter().map(|k| (*k).to_owned()))
            .collect()
    };
    if route.split.is_empty() {
        problems.at_owned(
            &keys(&["split"]),
            format!("routes[{i}].split is empty: expected at least one {{ subset, weight }}"),
        );
    }
    split(
        problems,
        &keys(&["split"]),
        service,
        &format!("routes[{i}].split"),
        &route.split,
    );
    if let Some(prefix) = &route.matches.path_prefix {
        if !prefix.starts_with('/') {
            problems.at_owned(
                &keys(&["match", "path_prefix"]),
                format!(
                    "routes[{i}].match.path_prefix `{prefix}`: expected a path starting with `/`"
                ),
            );
        }
    }
    for (header, value) in &route.matches.headers {
        let name_ok = http::HeaderName::from_bytes(header.as_bytes()).is_ok();
        if !name_ok || http::HeaderValue::from_str(value).is_err() {
            let mut at = keys(&["match", "headers"]);
            at.push(header.clone());
            problems.at_owned(&at, format!("routes[{i}].match.headers: `{header}: {value}` is not a valid HTTP header: expected a token name and a visible-ASCII value"));
        }
    }
    if route.timeout.is_some_and(|t| t.is_zero()) {
        problems.at_owned(
            &keys(&["timeout"]),
            format!("routes[{i}].timeout is 0s: expected a duration above zero"),
        );
    }
}

/// Checks one split; `keys` is where it is written.
fn split(
    problems: &mut Problems<'_>,
    keys: &[String],
    service: &ServiceConfig,
    label: &str,
    targets: &[SplitTarget],
) {
    let mut seen = BTreeSet::new();
    for (j, target) in targets.iter().enumerate() {
        let mut at = keys.to_vec();
        at.extend([format!("[{j}]"), "subset".to_owned()]);
        if service.subsets.is_empty() {
            problems.at_owned(&at, format!("{label}: subset `{}` is not defined: a split needs `subsets` (expected e.g. `subsets: {{ {}: {{ tags: [{}] }} }}`)", target.subset, target.subset, target.subset));
        } else if !service.subsets.contains_key(&target.subset) {
            let known: Vec<&str> = service.subsets.keys().map(String::as_str).collect();
            problems.at_owned(
                &at,
                format!(
                    "{label}: unknown subset `{}` (expected one of: {})",
                    target.subset,
                    known.join(", ")
                ),
            );
        }
        if !seen.insert(target.subset.as_str()) {
            problems.at_owned(
                &at,
                format!(
                    "{label}: subset `{}` is listed twice: expected each subset once",
                    target.subset
                ),
            );
        }
    }
    if !targets.is_empty() && targets.iter().all(|t| t.weight == 0) {
        problems.at_owned(
            keys,
            format!("{label}: weights sum to zero (expected at least one weight above 0)"),
        );
    }
}

/// Checks the instances of a static catalog.
pub fn static_service(problems: &mut Problems<'_>, name: &str, endpoints: &[Endpoint]) {
    let keys = ["mesh", "catalog", "static", "services", name];
    service_name(problems, &keys, name);
    for (i, endpoint) in endpoints.iter().enumerate() {
        let item = format!("[{i}]");
        if !super::usable_address(&endpoint.address) {
            let at = [&keys[..], &[item.as_str(), "address"]].concat();
            problems.at(
                &at,
                format!(
                    "{name}[{i}].address `{}`: expected host:port (e.g. 127.0.0.1:15443)",
                    endpoint.address
                ),
            );
        }
        if endpoint.zone.as_deref() == Some("") {
            let at = [&keys[..], &[item.as_str(), "zone"]].concat();
            problems.at(
                &at,
                format!("{name}[{i}].zone is empty: expected a zone name, or leave it out"),
            );
        }
        if endpoint.weight == 0 {
            let at = [&keys[..], &[item.as_str(), "weight"]].concat();
            problems.at(&at, format!("{name}[{i}].weight is 0: expected 1 or more (remove the instance to send it nothing)"));
        }
    }
}

/// Checks how Consul is reached.
pub fn consul(problems: &mut Problems<'_>, consul: &ConsulConfig) {
    let keys = ["mesh", "catalog", "consul"];
    let uri = consul.address.parse::<http::Uri>();
    let usable = uri.as_ref().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https"))
            && u.authority().is_some_and(|a| a.port_u16().is_some())
    });
    if !usable {
        problems.at(
            &keys,
            format!(
                "consul.address `{}`: expected http://HOST:PORT or https://HOST:PORT",
                consul.address
            ),
        );
    }
    if consul.datacenter.as_deref() == Some("") {
        problems.at(
            &keys,
            "consul.datacenter is empty: expected a name, or leave it out for the agent's own",
        );
    }
    if consul.zone_meta_key.is_empty() {
        problems.at(
            &["mesh", "catalog", "consul", "zone_meta_key"],
            "consul.zone_meta_key is empty: expected a meta key such as `zone`",
        );
    }
    if let Some(token) = &consul.token {
        if http::HeaderValue::from_str(token).is_err() {
            problems.at(
                &keys,
                "consul.token is not a valid header value: expected visible ASCII",
            );
        }
    }
}

/// Checks tracing settings.
pub fn tracing(problems: &mut Problems<'_>, tracing: &TracingSettings) {
    if !(0.0..=1.0).contains(&tracing.sample_ratio) {
        problems.at(
            &["mesh", "tracing", "sample_ratio"],
            format!(
                "sample_ratio {} is outside 0.0 to 1.0",
                tracing.sample_ratio
            ),
        );
    }
    let scheme_ok = tracing
        .otlp_endpoint
        .parse::<http::Uri>()
        .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
    if !scheme_ok {
        problems.at(
            &["mesh", "tracing", "otlp_endpoint"],
            format!(
                "otlp_endpoint `{}`: expected http://HOST:PORT (OTLP over TLS is not supported yet)",
                tracing.otlp_endpoint
            ),
        );
    }
}

/// Checks authorization rules; `known` is empty when services are only
/// known at run time (Consul), and names are then not checked.
pub fn authorization(
    problems: &mut Problems<'_>,
    authz: &AuthorizationConfig,
    known: &BTreeSet<&str>,
) {
    for (i, rule) in authz.rules.iter().enumerate() {
        let item = format!("[{i}]");
        let rule_keys = ["authorization", "rules", item.as_str()];
        if rule.from.is_empty() {
            let at = [&rule_keys[..], &["from"]].concat();
            problems.at(
                &at,
                format!("rules[{i}].from is empty: expected caller service names, or `*`"),
            );
        }
        // The proxy refuses a whole snapshot over one bad method name, so
        // it is caught here, with the proxy's own rule (case-insensitive).
        for (k, method) in rule.methods.iter().enumerate() {
            if http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).is_err() {
                let index = format!("[{k}]");
                let at = [&rule_keys[..], &["methods", index.as_str()]].concat();
                problems.at(
                    &at,
                    format!("rules[{i}].methods: `{method}` is not an HTTP method (expected e.g. GET, POST)"),
                );
            }
        }
        if known.is_empty() {
            continue;
        }
        let from = rule
            .from
            .iter()
            .enumerate()
            .map(|(k, name)| (Some(k), name));
        for (k, name) in std::iter::once((None, &rule.to)).chain(from) {
            if name != "*" && !known.contains(name.as_str()) {
                let all: Vec<&str> = known.iter().copied().collect();
                let index = k.map(|k| format!("[{k}]")).unwrap_or_default();
                let at = match k {
                    None => [&rule_keys[..], &["to"]].concat(),
                    Some(_) => [&rule_keys[..], &["from", index.as_str()]].concat(),
                };
                problems.at(
                    &at,
                    format!(
                        "rules[{i}]: unknown service `{name}` (expected one of: {}, or *)",
                        all.join(", ")
                    ),
                );
            }
        }
    }
}

/// Checks a service's mirrors (its own and its routes'): the rules of
/// [`Mirror::problems`], and that the target exists: a subset of this
/// service, or an HTTP service that every snapshot carries (`known`).
pub fn mirrors(
    problems: &mut Problems<'_>,
    name: &str,
    service: &ServiceConfig,
    services: &BTreeMap<String, ServiceConfig>,
    known: &BTreeSet<&str>,
) {
    let routes = service.routes.iter().enumerate();
    let all = std::iter::once((None, service.mirror.as_ref()))
        .chain(routes.map(|(i, r)| (Some(i), r.mirror.as_ref())));
    for (route, mirror) in all {
        let Some(mirror) = mirror else { continue };
        let mut keys = vec!["services".to_owned(), name.to_owned()];
        let label = match route {
            Some(i) => {
                keys.extend(["routes".to_owned(), format!("[{i}]")]);
                format!("routes[{i}].")
            }
            None => String::new(),
        };
        keys.push("mirror".to_owned());
        for message in mirror.problems() {
            problems.at_owned(&keys, format!("{label}{message}"));
        }
        mirror_target(
            problems, &keys, &label, name, service, services, known, mirror,
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn mirror_target(
    problems: &mut Problems<'_>,
    keys: &[String],
    label: &str,
    name: &str,
    service: &ServiceConfig,
    services: &BTreeMap<String, ServiceConfig>,
    known: &BTreeSet<&str>,
    mirror: &Mirror,
) {
    if service.protocol == Protocol::Tcp {
        problems.at_owned(
            keys,
            format!("{label}mirror: `{name}` is a tcp service: only HTTP requests can be mirrored"),
        );
    }
    if let Some(subset) = &mirror.subset {
        if !subset.is_empty() && !service.subsets.contains_key(subset) {
            let mut at = keys.to_vec();
            at.push("subset".to_owned());
            let defined: Vec<&str> = service.subsets.keys().map(String::as_str).collect();
            let expected = if defined.is_empty() {
                "define it under `subsets`".to_owned()
            } else {
                format!("expected one of: {}", defined.join(", "))
            };
            problems.at_owned(
                &at,
                format!("{label}mirror.subset: unknown subset `{subset}` ({expected})"),
            );
        }
    }
    if let Some(target) = &mirror.service {
        let mut at = keys.to_vec();
        at.push("service".to_owned());
        if services
            .get(target)
            .is_some_and(|t| t.protocol == Protocol::Tcp)
        {
            problems.at_owned(
                &at,
                format!(
                    "{label}mirror.service: `{target}` is a tcp service: expected an HTTP service"
                ),
            );
        }
        if !target.is_empty() && !known.contains(target.as_str()) {
            let all: Vec<&str> = known.iter().copied().collect();
            problems.at_owned(
                &at,
                format!(
                    "{label}mirror.service: unknown service `{target}` (expected one of: {}; with Consul, declare it under `services`)",
                    all.join(", ")
                ),
            );
        }
    }
}

/// Checks `services.<name>.upstreams`: service names, and with a static
/// catalog (`known`) services that exist; a service's own name is no
/// upstream of its proxies.
pub fn upstreams(
    problems: &mut Problems<'_>,
    name: &str,
    service: &ServiceConfig,
    known: Option<&BTreeSet<&str>>,
) {
    let Some(upstreams) = &service.upstreams else {
        return;
    };
    let keys = ["services", name, "upstreams"];
    for upstream in upstreams {
        if tether_certs::validate_service_name(upstream).is_err() {
            problems.at(
                &keys,
                format!("upstreams: `{upstream}` is not a service name"),
            );
        } else if known.is_some_and(|k| !k.contains(upstream.as_str())) {
            problems.at(
                &keys,
                format!("upstreams: `{upstream}` is no service of this mesh (neither under `services` nor in the static catalog)"),
            );
        }
    }
}

/// `mesh.upstream_scope: authorized` needs authorization that denies by
/// default: with `default: allow` every service may call every other.
pub fn upstream_scope(
    problems: &mut Problems<'_>,
    scope: UpstreamScope,
    authorization: Option<&AuthorizationConfig>,
) {
    if scope == UpstreamScope::Authorized
        && authorization.is_none_or(|a| a.default != tether_api::AuthorizationDefault::Deny)
    {
        problems.at(
            &["mesh", "upstream_scope"],
            "upstream_scope: authorized needs `authorization` with `default: deny` (the rules then say who calls whom); with default allow every service may call every other",
        );
    }
}
