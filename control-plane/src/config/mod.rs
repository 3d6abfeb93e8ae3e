//! mesh.yaml: parsing ([`parse`]), merging per-service policy over
//! `defaults` ([`merge`]), and validation that reports every problem at
//! once as `FILE:LINE:COL: what` ([`validate`]).

mod consul;
mod merge;
mod ports;
mod traffic;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use tether_api::{
    AuthorizationDefault, Endpoint, FaultInjection, Mirror, OutboundPolicy, Protocol, RateLimits,
    Route, SplitTarget, SubsetSelector, TracingSettings, TrafficPolicy,
};

pub use self::consul::{ConsulTls, DEFAULT_ADDRESS};
use self::validate::Problems;

/// The operator's mesh configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Where endpoints come from.
    pub catalog: CatalogConfig,
    /// Tracing settings handed to every proxy.
    pub tracing: Option<TracingSettings>,
    /// What sidecars with transparent capture do with outbound traffic to
    /// destinations outside the mesh (`mesh.outbound_policy`).
    pub outbound_policy: OutboundPolicy,
    /// Policy for services not listed under `services`.
    pub defaults: TrafficPolicy,
    /// Services with their merged policy.
    pub services: BTreeMap<String, ServiceConfig>,
    /// Authorization rules.
    pub authorization: Option<AuthorizationConfig>,
    /// What a proxy's snapshot holds when its service declares no
    /// `upstreams` (`mesh.upstream_scope`).
    pub upstream_scope: UpstreamScope,
}

/// Which services a proxy receives when its service declares no
/// `upstreams:` (`mesh.upstream_scope`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamScope {
    /// Every service of the mesh.
    #[default]
    All,
    /// Only the services `authorization` (with `default: deny`) lets the
    /// proxy's service call: what it cannot call it does not hold.
    Authorized,
}

/// Where endpoints come from.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogConfig {
    /// Instances written in the file (laptop, quickstart, tests).
    Static {
        /// Instances per service.
        services: BTreeMap<String, Vec<Endpoint>>,
    },
    /// A Consul agent's catalog and health (boxed: far larger than the
    /// static variant).
    Consul(Box<ConsulConfig>),
}

/// How to reach Consul. Keys left out are taken from Consul's own
/// environment variables (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`, ...; see
/// `consul.rs`), resolved when mesh.yaml is loaded.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulConfig {
    /// HTTP(S) API, e.g. `http://127.0.0.1:8500` or `https://consul:8501`;
    /// unset: `CONSUL_HTTP_ADDR`, else the local agent's default.
    #[serde(default)]
    pub address: String,
    /// Datacenter (`dc=`); the agent's own when unset.
    #[serde(default)]
    pub datacenter: Option<String>,
    /// ACL token (`X-Consul-Token`), after resolution the one in use:
    /// `token_file`'s content, else this key, else `CONSUL_HTTP_TOKEN_FILE`'s
    /// content, else `CONSUL_HTTP_TOKEN`. Prefer a file or the environment
    /// to writing a secret into mesh.yaml.
    #[serde(default)]
    pub token: Option<String>,
    /// File holding the ACL token (re-read on every reload).
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
    /// PEM CA that signed Consul's HTTPS certificate (`CONSUL_CACERT`);
    /// required for `https://`.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate for Consul's `verify_incoming`
    /// (`CONSUL_CLIENT_CERT`); with `key_file`.
    #[serde(default)]
    pub cert_file: Option<std::path::PathBuf>,
    /// Its private key (`CONSUL_CLIENT_KEY`).
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// Name Consul's certificate must carry when it is not the address's
    /// host (`CONSUL_TLS_SERVER_NAME`), e.g. `server.dc1.consul`.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// After Consul answers again following a failure (or its index went
    /// backwards: a server that lost its state), instances that disappear
    /// are kept this long so sidecars re-registering with a restarted,
    /// empty Consul are not dropped meanwhile. `0s` turns it off.
    #[serde(default = "default_resync_hold", with = "humantime_serde")]
    pub resync_hold: std::time::Duration,
    /// TLS built from the files above when the address is `https://`.
    #[serde(skip)]
    pub tls: Option<consul::ConsulTls>,
    /// The service-meta (else node-meta) key whose value is an instance's
    /// zone, for locality-aware balancing.
    #[serde(default = "default_zone_meta_key")]
    pub zone_meta_key: String,
}

/// Default of `consul.zone_meta_key`: `zone`, the name Consul's own docs
/// and most registrations use for a failure domain.
pub const DEFAULT_ZONE_META_KEY: &str = "zone";

fn default_zone_meta_key() -> String {
    DEFAULT_ZONE_META_KEY.to_owned()
}

fn default_resync_hold() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

/// One service as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Protocol.
    pub protocol: Protocol,
    /// `tcp` only: the local port every sidecar accepts the app's
    /// connections for this service on.
    pub outbound_port: Option<u16>,
    /// Defaults merged with the service's overrides.
    pub policy: TrafficPolicy,
    /// Subsets by tags/meta.
    pub subsets: BTreeMap<String, SubsetSelector>,
    /// Default split.
    pub split: Vec<SplitTarget>,
    /// Route rules.
    pub routes: Vec<Route>,
    /// Faults callers inject into requests to the service (`fault`).
    pub fault: Option<FaultInjection>,
    /// Local rate limits, outbound (callers) and inbound (own sidecar).
    pub rate_limit: Option<RateLimits>,
    /// Requests copied elsewhere (`mirror`).
    pub mirror: Option<Mirror>,
    /// The services this service's proxies call (`upstreams`): their
    /// snapshots hold only these (and what these mirror to). `None`: as
    /// `mesh.upstream_scope` says.
    pub upstreams: Option<Vec<String>>,
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
    #[serde(default)]
    outbound_policy: OutboundPolicy,
    #[serde(default)]
    upstream_scope: UpstreamScope,
}

impl Default for MeshSection {
    fn default() -> Self {
        Self {
            trust_domain: default_trust_domain(),
            catalog: CatalogSection::default(),
            tracing: None,
            outbound_policy: OutboundPolicy::default(),
            upstream_scope: UpstreamScope::default(),
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
    /// Read wider than a port so a value out of range gets a plain message.
    #[serde(default)]
    outbound_port: Option<u64>,
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
    #[serde(default)]
    fault: Option<FaultInjection>,
    #[serde(default)]
    rate_limit: Option<RateLimits>,
    mirror: Option<Mirror>,
    #[serde(default)]
    upstreams: Option<Vec<String>>,
}

/// Problems found in a config file, each `FILE:LINE:COL: message`.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// One parse error as `FILE:LINE:COL: message`.
fn syntax_error(path: &Path, error: &serde_norway::Error) -> ConfigErrors {
    let (line, col) = error.location().map_or((1, 1), |l| (l.line(), l.column()));
    let message = error.to_string();
    // serde_norway appends " at line L column C"; the prefix says it already.
    let message = message
        .find(" at line ")
        .map_or(message.as_str(), |i| &message[..i]);
    // humantime-serde's wording names no format.
    let message = message.replace(
        "expected a duration",
        "expected a duration such as `250ms`, `5s` or `1m`",
    );
    ConfigErrors(vec![format!("{}:{line}:{col}: {message}", path.display())])
}

/// Reads and validates a mesh.yaml file.
pub fn load(path: &Path) -> Result<MeshConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
    parse(path, &text)
}

/// Parses and validates mesh.yaml text; `path` only names the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<MeshConfig, ConfigErrors> {
    let file: File = serde_norway::from_str(text).map_err(|e| syntax_error(path, &e))?;
    // The untyped tree the policies are merged on. Typed maps (services,
    // subsets) keep the last of two equal keys without a word, while this
    // parse refuses them: report it rather than merge over nothing.
    let raw: serde_norway::Value =
        serde_norway::from_str(text).map_err(|e| syntax_error(path, &e))?;
    let mut problems = Problems::new(path, text);

    validate::defaults(&mut problems, &file.defaults);
    ports::check(&mut problems, &file.services);
    let mut services = BTreeMap::new();
    for (name, service) in file.services {
        validate::service_name(&mut problems, &["services", &name], &name);
        let policy = merge::merged_policy(&raw, &name).unwrap_or_else(|e| {
            problems.at(
                &["services", &name, "policy"],
                format!("policy does not merge over defaults: {e}"),
            );
            file.defaults.clone()
        });
        let service = ServiceConfig {
            protocol: service.protocol,
            outbound_port: ports::port(service.protocol, service.outbound_port),
            policy,
            subsets: service.subsets,
            split: service.split,
            routes: service.routes,
            fault: service.fault,
            rate_limit: service.rate_limit,
            mirror: service.mirror,
            upstreams: service.upstreams,
        };
        validate::service(&mut problems, &name, &service, &file.defaults);
        traffic::check(&mut problems, &name, &service);
        services.insert(name, service);
    }

    let catalog = match (file.mesh.catalog.fixed, file.mesh.catalog.consul) {
        (Some(_), Some(_)) => {
            problems.at(
                &["mesh", "catalog"],
                "catalog: expected exactly one of `static` or `consul`, found both",
            );
            CatalogConfig::Static {
                services: BTreeMap::new(),
            }
        }
        (Some(fixed), None) => {
            for (name, endpoints) in &fixed.services {
                validate::static_service(&mut problems, name, endpoints);
            }
            CatalogConfig::Static {
                services: fixed.services,
            }
        }
        (None, Some(mut consul)) => {
            consul::resolve(&mut problems, &mut consul, &|name| std::env::var(name).ok());
            validate::consul(&mut problems, &consul);
            CatalogConfig::Consul(Box::new(consul))
        }
        (None, None) => CatalogConfig::Static {
            services: BTreeMap::new(),
        },
    };
    if let Some(tracing) = &file.mesh.tracing {
        validate::tracing(&mut problems, tracing);
    }
    // A mirror's target must be in every snapshot: a service of this file
    // (always sent, endpoints or not) or of the static catalog. Consul's
    // services come and go at run time, so with Consul it must be declared
    // under `services` (a proxy refuses a mirror to a service it lacks).
    let mirror_targets: BTreeSet<&str> = match &catalog {
        CatalogConfig::Static { services: catalog } => services
            .keys()
            .chain(catalog.keys())
            .map(String::as_str)
            .collect(),
        CatalogConfig::Consul(_) => services.keys().map(String::as_str).collect(),
    };
    for (name, service) in &services {
        validate::mirrors(&mut problems, name, service, &services, &mirror_targets);
    }
    if let Some(authz) = &file.authorization {
        let known: BTreeSet<&str> = match &catalog {
            CatalogConfig::Static { services: catalog } => services
                .keys()
                .chain(catalog.keys())
                .map(String::as_str)
                .collect(),
            // Consul's services are only known at run time.
            CatalogConfig::Consul(_) => BTreeSet::new(),
        };
        validate::authorization(&mut problems, authz, &known);
    }
    let known: Option<BTreeSet<&str>> = match &catalog {
        CatalogConfig::Static { services: catalog } => Some(
            services
                .keys()
                .chain(catalog.keys())
                .map(String::as_str)
                .collect(),
        ),
        CatalogConfig::Consul(_) => None,
    };
    for (name, service) in &services {
        validate::upstreams(&mut problems, name, service, known.as_ref());
    }
    validate::upstream_scope(
        &mut problems,
        file.mesh.upstream_scope,
        file.authorization.as_ref(),
    );
    problems.finish()?;
    Ok(MeshConfig {
        trust_domain: file.mesh.trust_domain,
        catalog,
        tracing: file.mesh.tracing,
        outbound_policy: file.mesh.outbound_policy,
        upstream_scope: file.mesh.upstream_scope,
        defaults: file.defaults,
        services,
        authorization: file.authorization,
    })
}

/// Whether a proxy can connect to `address`: `host:port`, as proxies
/// require (one unusable endpoint would make them refuse a whole snapshot).
pub fn usable_address(address: &str) -> bool {
    address
        .parse::<http::uri::Authority>()
        .is_ok_and(|a| a.port_u16().is_some())
}

#[cfg(test)]
mod tests;
