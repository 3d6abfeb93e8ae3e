//! mesh.yaml: parsing, merging per-service policy over `defaults`, and
//! validation that reports every problem at once as `FILE:LINE:COL: what`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use tether_api::{
    AuthorizationDefault, Endpoint, Protocol, Route, SplitTarget, SubsetSelector, TracingSettings,
    TrafficPolicy,
};

use crate::locate::locate;

/// The operator's mesh configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Where endpoints come from.
    pub catalog: CatalogConfig,
    /// Tracing settings handed to every proxy.
    pub tracing: Option<TracingSettings>,
    /// Policy for services not listed under `services`.
    pub defaults: TrafficPolicy,
    /// Services with their merged policy.
    pub services: BTreeMap<String, ServiceConfig>,
    /// Authorization rules.
    pub authorization: Option<AuthorizationConfig>,
}

/// Where endpoints come from.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogConfig {
    /// Instances written in the file (laptop, quickstart, tests).
    Static {
        /// Instances per service.
        services: BTreeMap<String, Vec<Endpoint>>,
    },
    /// A Consul agent's catalog and health.
    Consul(ConsulConfig),
}

/// How to reach Consul.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulConfig {
    /// HTTP API, e.g. `http://127.0.0.1:8500`.
    pub address: String,
    /// Datacenter (`dc=`); the agent's own when unset.
    #[serde(default)]
    pub datacenter: Option<String>,
    /// ACL token (`X-Consul-Token`).
    #[serde(default)]
    pub token: Option<String>,
}

/// One service as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Protocol.
    pub protocol: Protocol,
    /// Defaults merged with the service's overrides.
    pub policy: TrafficPolicy,
    /// Subsets by tags/meta.
    pub subsets: BTreeMap<String, SubsetSelector>,
    /// Default split.
    pub split: Vec<SplitTarget>,
    /// Route rules.
    pub routes: Vec<Route>,
}

/// `authorization:` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationConfig {
    /// Verdict for requests no rule allows.
    #[serde(default)]
    pub default: AuthorizationDefault,
    /// Allow rules.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Called service (`*` for all).
    pub to: String,
    /// Callers (`*` for any authenticated caller).
    pub from: Vec<String>,
    /// Methods; empty is any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Paths; empty is any.
    #[serde(default)]
    pub paths: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    mesh: MeshSection,
    #[serde(default)]
    defaults: TrafficPolicy,
    #[serde(default)]
    services: BTreeMap<String, ServiceFile>,
    #[serde(default)]
    authorization: Option<AuthorizationConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MeshSection {
    #[serde(default = "default_trust_domain")]
    trust_domain: String,
    #[serde(default)]
    catalog: CatalogSection,
    #[serde(default)]
    tracing: Option<TracingSettings>,
}

impl Default for MeshSection {
    fn default() -> Self {
        Self {
            trust_domain: default_trust_domain(),
            catalog: CatalogSection::default(),
            tracing: None,
        }
    }
}

/// `catalog:` as written: exactly one of `static` or `consul`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogSection {
    #[serde(default, rename = "static")]
    fixed: Option<StaticCatalog>,
    #[serde(default)]
    consul: Option<ConsulConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticCatalog {
    #[serde(default)]
    services: BTreeMap<String, Vec<Endpoint>>,
}

fn default_trust_domain() -> String {
    "tether.local".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    #[serde(default)]
    protocol: Protocol,
    /// Validated here; merged over `defaults` from the raw YAML below.
    #[serde(default)]
    #[allow(dead_code)]
    policy: Option<TrafficPolicy>,
    #[serde(default)]
    subsets: BTreeMap<String, SubsetSelector>,
    #[serde(default)]
    split: Vec<SplitTarget>,
    #[serde(default)]
    routes: Vec<Route>,
}

/// Problems found in a config file, each `FILE:LINE:COL: message`.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// Reads and validates a mesh.yaml file.
pub fn load(path: &Path) -> Result<MeshConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
    parse(path, &text)
}

/// Parses and validates mesh.yaml text.
pub fn parse(path: &Path, text: &str) -> Result<MeshConfig, ConfigErrors> {
    let at =
        |line: usize, col: usize, msg: String| format!("{}:{line}:{col}: {msg}", path.display());
    let file: File = serde_yaml::from_str(text).map_err(|e| {
        let (line, col) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        let msg = e.to_string();
        let msg = msg
            .find(" at line ")
            .map_or(msg.clone(), |i| msg[..i].to_owned());
        ConfigErrors(vec![at(line, col, msg)])
    })?;
    let raw: serde_yaml::Value = serde_yaml::from_str(text).unwrap_or_default();
    let mut problems = Vec::new();
    let mut problem = |keys: &[&str], msg: String| {
        let (line, col) = locate(text, keys);
        problems.push(at(line, col, msg));
    };

    let mut services = BTreeMap::new();
    for (name, service) in file.services {
        if !valid_name(&name) {
            problem(&["services", &name], format!("service name `{name}` is not valid: expected lowercase letters, digits and `-` (a DNS label)"));
        }
        let policy = merged_policy(&raw, &name).unwrap_or_else(|e| {
            problem(
                &["services", &name, "policy"],
                format!("policy does not merge over defaults: {e}"),
            );
            file.defaults.clone()
        });
        let splits = std::iter::once(("split".to_owned(), &service.split)).chain(
            service
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("routes[{i}].split"), &r.split)),
        );
        for (label, split) in splits {
            let key = if label == "split" { "split" } else { "routes" };
            for target in split {
                if !service.subsets.contains_key(&target.subset) {
                    problem(
                        &["services", &name, key],
                        format!(
                            "{label}: unknown subset `{}` (expected one of: {})",
                            target.subset,
                            names(service.subsets.keys())
                        ),
                    );
                }
            }
            if !split.is_empty() && split.iter().all(|t| t.weight == 0) {
                problem(
                    &["services", &name, key],
                    format!("{label}: weights sum to zero (expected at least one weight above 0)"),
                );
            }
        }
        services.insert(
            name,
            ServiceConfig {
                protocol: service.protocol,
                policy,
                subsets: service.subsets,
                split: service.split,
                routes: service.routes,
            },
        );
    }

    let catalog = match (file.mesh.catalog.fixed, file.mesh.catalog.consul) {
        (Some(_), Some(_)) => {
            problem(
                &["mesh", "catalog"],
                "catalog: expected exactly one of `static` or `consul`, found both".to_owned(),
            );
            CatalogConfig::Static {
                services: BTreeMap::new(),
            }
        }
        (Some(fixed), None) => CatalogConfig::Static {
            services: fixed.services,
        },
        (None, Some(consul)) => CatalogConfig::Consul(consul),
        (None, None) => CatalogConfig::Static {
            services: BTreeMap::new(),
        },
    };
    if let Some(tracing) = &file.mesh.tracing {
        if !(0.0..=1.0).contains(&tracing.sample_ratio) {
            problem(
                &["mesh", "tracing", "sample_ratio"],
                format!(
                    "sample_ratio {} is outside 0.0 to 1.0",
                    tracing.sample_ratio
                ),
            );
        }
    }
    let known: BTreeSet<&str> = match &catalog {
        CatalogConfig::Static { services: catalog } => services
            .keys()
            .chain(catalog.keys())
            .map(String::as_str)
            .collect(),
        // Consul's services are only known at run time.
        CatalogConfig::Consul(_) => BTreeSet::new(),
    };
    if let (Some(authz), false) = (&file.authorization, known.is_empty()) {
        for (i, rule) in authz.rules.iter().enumerate() {
            for name in std::iter::once(&rule.to).chain(&rule.from) {
                if name != "*" && !known.contains(name.as_str()) {
                    problem(
                        &["authorization", "rules"],
                        format!(
                            "rules[{i}]: unknown service `{name}` (expected one of: {}, or *)",
                            names(known.iter())
                        ),
                    );
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    Ok(MeshConfig {
        trust_domain: file.mesh.trust_domain,
        catalog,
        tracing: file.mesh.tracing,
        defaults: file.defaults,
        services,
        authorization: file.authorization,
    })
}

fn names<T: AsRef<str>>(items: impl Iterator<Item = T>) -> String {
    let all: Vec<String> = items.map(|s| s.as_ref().to_owned()).collect();
    if all.is_empty() {
        "none defined".to_owned()
    } else {
        all.join(", ")
    }
}

/// DNS-label service names, so every service has a valid SPIFFE ID.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// `defaults` with the service's `policy` merged over it, key by key.
fn merged_policy(
    raw: &serde_yaml::Value,
    service: &str,
) -> Result<TrafficPolicy, serde_yaml::Error> {
    let mut merged = raw
        .get("defaults")
        .cloned()
        .unwrap_or(serde_yaml::Value::Null);
    if let Some(overrides) = raw
        .get("services")
        .and_then(|s| s.get(service))
        .and_then(|s| s.get("policy"))
    {
        merge(&mut merged, overrides.clone());
    }
    if merged.is_null() {
        return Ok(TrafficPolicy::default());
    }
    serde_yaml::from_value(merged)
}

fn merge(base: &mut serde_yaml::Value, over: serde_yaml::Value) {
    match (base, over) {
        (serde_yaml::Value::Mapping(base), serde_yaml::Value::Mapping(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse_str(text: &str) -> Result<MeshConfig, ConfigErrors> {
        parse(Path::new("mesh.yaml"), text)
    }

    #[test]
    fn merges_service_policy_over_defaults() {
        let config = parse_str(
            "defaults:\n  timeout: 3s\n  retries: { attempts: 4, per_try_timeout: 500ms }\nservices:\n  api:\n    policy:\n      retries: { attempts: 1 }\n  web: {}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let api = &config.services["api"].policy;
        assert_eq!(api.timeout, Duration::from_secs(3));
        assert_eq!(api.retries.attempts, 1);
        assert_eq!(
            api.retries.per_try_timeout,
            Duration::from_millis(500),
            "kept from defaults"
        );
        assert_eq!(config.services["web"].policy.retries.attempts, 4);
    }

    #[test]
    fn a_typo_names_file_line_column_and_expectation() {
        let error = parse_str("services:\n  api:\n    policy:\n      timeot: 5s\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.starts_with("mesh.yaml:4:7: "), "{error}");
        assert!(
            error.contains("unknown field `timeot`, expected one of"),
            "{error}"
        );
    }

    #[test]
    fn reports_every_semantic_problem_with_its_location() {
        let text = "mesh:\n  tracing: { otlp_endpoint: x, sample_ratio: 2.0 }\nservices:\n  api:\n    subsets: { v1: { tags: [v1] } }\n    split:\n      - { subset: v3, weight: 1 }\nauthorization:\n  rules:\n    - { to: api, from: [ghost] }\n";
        let errors = parse_str(text).err().map(|e| e.0).unwrap_or_default();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(
            errors.iter().any(|e| e
                .starts_with("mesh.yaml:6:5: split: unknown subset `v3` (expected one of: v1)")),
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("mesh.yaml:2:") && e.contains("sample_ratio 2")),
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("mesh.yaml:9:3:") && e.contains("unknown service `ghost`")),
            "{errors:#?}"
        );
    }

    #[test]
    fn reads_both_catalog_kinds() {
        let config = parse_str("mesh:\n  catalog:\n    consul: { address: \"http://127.0.0.1:8500\", datacenter: dc1 }\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(config.catalog, CatalogConfig::Consul(ConsulConfig { ref datacenter, .. }) if datacenter.as_deref() == Some("dc1"))
        );
        let config = parse_str("mesh:\n  catalog:\n    static:\n      services:\n        api: [ { address: \"127.0.0.1:1\", tags: [v1] } ]\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(config.catalog, CatalogConfig::Static { ref services } if services["api"].len() == 1)
        );
    }
}
