//! The few Consul HTTP API calls the watcher makes: blocking GETs with
//! `index`/`wait`, plain reads, `dc` and `X-Consul-Token`, over a strictly
//! bounded set of connections ([`pool`](super::pool)); and the JSON of
//! health entries, checks and nodes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;

use http::{HeaderMap, HeaderValue, Uri};
use hyper_rustls::{FixedServerNameResolver, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rand::Rng;
use serde::Deserialize;
use tether_api::Endpoint;

use super::pool::{Connector, Pool, PoolError};
use crate::config::ConsulConfig;
use crate::metrics::ControlMetrics;

/// How long Consul may hold a blocking query (Consul adds up to 1/16 jitter).
const WAIT: Duration = Duration::from_secs(30);
/// Set by Consul on an answer from which its ACLs removed entries.
const ACL_FILTERED: &str = "x-consul-results-filtered-by-acls";
/// Give up on an answer this long after `WAIT`: the agent or the network is gone.
const ANSWER_GRACE: Duration = Duration::from_secs(15);
/// Give up on a non-blocking read after this long: Consul answers one
/// service's health in milliseconds, even a busy one within seconds.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections of a client made with [`ConsulApi::new`]: a few queries at
/// once, far below Consul's default per-client limit of 200.
const DEFAULT_CONNECTIONS: usize = 4;
/// Time to open a TCP connection to the agent: it is near (usually local).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First retry delay after an error; doubles up to [`MAX_BACKOFF`], jittered.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest retry delay: a restarted Consul is noticed within seconds.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A failed Consul query.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    /// The request could not be built (e.g. a token that is not a header value).
    #[error("cannot build the request to {uri}: {source}")]
    Request {
        /// The URI.
        uri: String,
        /// Why.
        #[source]
        source: http::Error,
    },
    /// No connection, or the connection broke.
    #[error("{uri}: {source}")]
    Transport {
        /// The URI.
        uri: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No answer within the blocking wait plus a grace period.
    #[error("{uri}: no answer within {:?}", WAIT + ANSWER_GRACE)]
    Timeout {
        /// The URI.
        uri: String,
    },
    /// Consul answered with an error status.
    #[error("{uri}: {status}: {body}")]
    Status {
        /// The URI.
        uri: String,
        /// The status.
        status: http::StatusCode,
        /// Consul's explanation.
        body: String,
    },
    /// The answer was not the JSON expected.
    #[error("{uri}: unexpected JSON: {source}")]
    Json {
        /// The URI.
        uri: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// A Consul agent's HTTP API, as the watcher uses it.
#[derive(Clone)]
pub struct ConsulApi {
    pool: Arc<Pool>,
    /// Whether Consul's ACL filtering has been reported (once per process).
    filtered_warned: Arc<AtomicBool>,
    config: ConsulConfig,
    metrics: ControlMetrics,
}

impl ConsulApi {
    /// A client for the agent in `config` with a few connections (see
    /// [`ConsulApi::with_connections`]).
    pub fn new(config: ConsulConfig, metrics: ControlMetrics) -> Self {
        Self::with_connections(config, metrics, DEFAULT_CONNECTIONS)
    }

    /// A client for the agent in `config`, never holding more than
    /// `connections` TCP connections to it (queries beyond wait): plain
    /// HTTP, or HTTPS verified against the CA of `config.tls` when the
    /// address is `https://`. HTTP/1.1 either way: Consul's HTTPS also
    /// speaks HTTP/2, its plain port does not, and the bound is what keeps
    /// Consul's per-client connection limit out of reach.
    pub fn with_connections(
        config: ConsulConfig,
        metrics: ControlMetrics,
        connections: usize,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let connector = match &config.tls {
            Some(tls) => {
                http.enforce_http(false);
                let mut tls_config = (*tls.config).clone();
                // hyper-rustls sets ALPN itself (and panics if it is set).
                tls_config.alpn_protocols.clear();
                let builder = HttpsConnectorBuilder::new()
                    .with_tls_config(tls_config)
                    .https_only();
                let builder = match tls.server_name.as_deref().map(ServerName::try_from) {
                    Some(Ok(name)) => builder
                        .with_server_name_resolver(FixedServerNameResolver::new(name.to_owned())),
                    _ => builder,
                };
                Connector::Tls(builder.enable_http1().wrap_connector(http))
            }
            None => Connector::Plain(http),
        };
        // Validation made sure the address is a URI; a bad one fails every
        // query with a clear error rather than here.
        let base = config
            .address
            .trim_end_matches('/')
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("http://127.0.0.1:8500"));
        Self {
            pool: Arc::new(Pool::new(connector, base, connections, metrics.clone())),
            filtered_warned: Arc::new(AtomicBool::new(false)),
            config,
            metrics,
        }
    }

    /// One blocking query: the decoded body and the index for the next one.
    pub async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        index: u64,
    ) -> Result<(T, u64), ConsulError> {
        let (value, answered) = self
            .fetch(&self.path(path, Some(index)), WAIT + ANSWER_GRACE)
            .await?;
        Ok((value, next_index(index, answered)))
    }

    /// One plain (non-blocking) read: the decoded body and `X-Consul-Index`
    /// as answered (0 when missing).
    pub async fn read<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<(T, u64), ConsulError> {
        self.fetch(&self.path(path, None), READ_TIMEOUT).await
    }

    async fn fetch<T: serde::de::DeserializeOwned>(
        &self,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<(T, u64), ConsulError> {
        let uri = format!(
            "{}{path_and_query}",
            self.config.address.trim_end_matches('/')
        );
        if self.config.address.parse::<Uri>().is_err() {
            return Err(ConsulError::Transport {
                uri,
                source: "the Consul address is not a URI".into(),
            });
        }
        let mut headers = HeaderMap::new();
        if let Some(token) = &self.config.token {
            let value = HeaderValue::from_str(token).map_err(|e| ConsulError::Request {
                uri: uri.clone(),
                source: e.into(),
            })?;
            headers.insert("x-consul-token", value);
        }
        let started = Instant::now();
        let answer = self
            .pool
            .get(path_and_query, &headers, timeout)
            .await
            .map_err(|e| match e {
                PoolError::Timeout => ConsulError::Timeout { uri: uri.clone() },
                PoolError::Transport(source) => ConsulError::Transport {
                    uri: uri.clone(),
                    source,
                },
            })?;
        self.metrics
            .consul_latency
            .observe(started.elapsed().as_secs_f64());
        if answer
            .headers
            .get(ACL_FILTERED)
            .is_some_and(|v| v == "true")
            && !self.filtered_warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                path = path_and_query,
                "Consul left out results the control plane's ACL token may not read: give it service:read and node:read on every service (docs/control-plane.md, \"Consul in production\")"
            );
        }
        let answered = answer
            .headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if !answer.status.is_success() {
            let body = String::from_utf8_lossy(&answer.body).trim().to_owned();
            return Err(ConsulError::Status {
                uri,
                status: answer.status,
                body,
            });
        }
        let value = serde_json::from_slice(&answer.body)
            .map_err(|source| ConsulError::Json { uri, source })?;
        Ok((value, answered))
    }

    /// The path and query: `path`, then `index` and `wait` for a blocking
    /// query, then `dc`.
    fn path(&self, path: &str, index: Option<u64>) -> String {
        let mut out = path.to_owned();
        let mut sep = if path.contains('?') { '&' } else { '?' };
        if let Some(index) = index {
            out.push_str(&format!("{sep}index={index}&wait={}s", WAIT.as_secs()));
            sep = '&';
        }
        if let Some(dc) = &self.config.datacenter {
            out.push(sep);
            out.push_str("dc=");
            out.push_str(&escape(dc));
        }
        out
    }

    /// The meta key holding an instance's zone (`zone_meta_key`).
    pub fn zone_meta_key(&self) -> &str {
        &self.config.zone_meta_key
    }

    /// How long removals wait after Consul answers again (`resync_hold`).
    pub fn resync_hold(&self) -> Duration {
        self.config.resync_hold
    }

    /// The metrics this client reports to.
    pub fn metrics(&self) -> &ControlMetrics {
        &self.metrics
    }

    /// Counts and logs a failure, then sleeps a jittered, growing delay.
    pub async fn backoff(&self, failures: &mut u32, error: &ConsulError) {
        self.metrics.consul_errors.inc();
        *failures = failures.saturating_add(1);
        let delay = backoff_delay(*failures, &mut rand::thread_rng());
        tracing::warn!(%error, retry_in = ?delay, "consul watch failed; snapshots keep their last content");
        tokio::time::sleep(delay).await;
    }
}

/// Consul's rules for the next index: start over when it went backwards,
/// and never block on 0 (that answers at once, a busy loop).
fn next_index(previous: u64, answered: u64) -> u64 {
    if answered < previous {
        0
    } else {
        answered.max(1)
    }
}

/// The delay after `failures` failures in a row: a random time between half
/// and all of `min(MAX_BACKOFF, MIN_BACKOFF · 2^failures)`, so watchers that
/// failed together do not retry together.
fn backoff_delay(failures: u32, rng: &mut impl Rng) -> Duration {
    let ceiling = MIN_BACKOFF
        .saturating_mul(1 << failures.min(10))
        .min(MAX_BACKOFF);
    rng.gen_range(ceiling / 2..=ceiling)
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for a
/// service name in a path or a datacenter in the query.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// One entry of `/v1/health/service/<name>`.
#[derive(Debug, Deserialize)]
pub struct HealthEntry {
    #[serde(rename = "Node")]
    node: Node,
    #[serde(rename = "Service")]
    service: Service,
    /// The node's checks and the instance's own.
    #[serde(rename = "Checks", default)]
    checks: Option<Vec<Check>>,
}

#[derive(Debug, Deserialize)]
struct Check {
    #[serde(rename = "Status")]
    status: String,
}

#[derive(Debug, Deserialize)]
struct Node {
    #[serde(rename = "Node", default)]
    name: String,
    #[serde(rename = "Address")]
    address: String,
    #[serde(rename = "Meta", default)]
    meta: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct Service {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
    #[serde(rename = "Meta", default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(rename = "Weights", default)]
    weights: Option<Weights>,
}

#[derive(Debug, Deserialize)]
struct Weights {
    #[serde(rename = "Passing")]
    passing: u32,
}

/// One check of `/v1/health/state/any`: a node's (no service) or an
/// instance's.
#[derive(Debug, Deserialize)]
pub struct CheckEntry {
    /// The node it runs on.
    #[serde(rename = "Node")]
    pub node: String,
    /// Its ID, unique on the node.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// The service of the instance it checks; empty for a node check.
    #[serde(rename = "ServiceName", default)]
    pub service: String,
    /// `passing`, `warning` or `critical`.
    #[serde(rename = "Status", default)]
    pub status: String,
}

/// `/v1/catalog/node-services/<node>` (`Services` is null for a node
/// Consul does not know).
#[derive(Debug, Deserialize)]
pub struct NodeServices {
    /// The instances registered on the node.
    #[serde(rename = "Services", default)]
    pub services: Option<Vec<NodeService>>,
}

/// One instance of [`NodeServices`].
#[derive(Debug, Deserialize)]
pub struct NodeService {
    /// Its ID, unique on the node.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its service.
    #[serde(rename = "Service")]
    pub service: String,
    /// Raft index of its last change (address, port, tags, meta, weights).
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
}

/// One node of `/v1/catalog/nodes`.
#[derive(Debug, Deserialize)]
pub struct NodeEntry {
    /// Its name.
    #[serde(rename = "Node")]
    pub node: String,
    /// Raft index of its last change (address, meta, tagged addresses).
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
}

impl HealthEntry {
    /// Whether Consul counts the instance passing (what `?passing=true`
    /// keeps): every check of its node and its own is `passing`, or it has
    /// none.
    pub fn passing(&self) -> bool {
        self.checks
            .iter()
            .flatten()
            .all(|check| check.status == "passing")
    }

    /// The name of the node the instance runs on.
    pub fn node(&self) -> &str {
        &self.node.name
    }

    /// The instance's ID, unique on its node.
    pub fn id(&self) -> &str {
        &self.service.id
    }

    /// The endpoint, its zone read from the service's meta under
    /// `zone_key`, else the node's (`Node.Meta`).
    pub fn into_endpoint(mut self, zone_key: &str) -> Endpoint {
        let zone = self
            .service
            .meta
            .as_ref()
            .and_then(|m| m.get(zone_key))
            .or_else(|| self.node.meta.as_ref().and_then(|m| m.get(zone_key)))
            .filter(|z| !z.is_empty())
            .cloned();
        self.node.meta = None;
        Endpoint {
            zone,
            ..Endpoint::from(self)
        }
    }
}

impl From<HealthEntry> for Endpoint {
    /// Address: `Service.Address`, else the node's, with `Service.Port`
    /// (IPv6 hosts bracketed); weight: `Weights.Passing` (at least 1); no
    /// zone (see [`HealthEntry::into_endpoint`]).
    fn from(entry: HealthEntry) -> Self {
        let host = if entry.service.address.is_empty() {
            entry.node.address
        } else {
            entry.service.address
        };
        let address = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", entry.service.port)
        } else {
            format!("{host}:{}", entry.service.port)
        };
        Endpoint {
            address,
            weight: entry.service.weights.map_or(1, |w| w.passing.max(1)),
            tags: entry.service.tags.unwrap_or_default(),
            meta: entry.service.meta.unwrap_or_default(),
            zone: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Trimmed from a real Consul 1.14 answer.
    const HEALTH: &str = r#"[
      {"Node": {"Node": "n1", "Address": "10.0.0.1"},
       "Service": {"ID": "api-1", "Service": "api", "Address": "", "Port": 8080,
                   "Tags": ["v1"], "Meta": {"version": "1"},
                   "Weights": {"Passing": 3, "Warning": 1}},
       "Checks": []},
      {"Node": {"Node": "n2", "Address": "10.0.0.2"},
       "Service": {"ID": "api-2", "Service": "api", "Address": "fd00::2", "Port": 8081,
                   "Tags": null, "Meta": null, "Weights": {"Passing": 0, "Warning": 0}},
       "Checks": []}
    ]"#;

    #[test]
    fn health_entries_become_endpoints() {
        let entries: Vec<HealthEntry> =
            serde_json::from_str(HEALTH).unwrap_or_else(|e| panic!("{e}"));
        let endpoints: Vec<Endpoint> = entries.into_iter().map(Endpoint::from).collect();
        assert_eq!(
            endpoints[0].address, "10.0.0.1:8080",
            "node address fallback"
        );
        assert_eq!(endpoints[0].weight, 3);
        assert_eq!(endpoints[0].tags, vec!["v1".to_owned()]);
        assert_eq!(endpoints[0].meta["version"], "1");
        assert_eq!(endpoints[1].address, "[fd00::2]:8081");
        assert_eq!(endpoints[1].weight, 1, "a zero weight still gets traffic");
        assert!(endpoints[1].tags.is_empty() && endpoints[1].meta.is_empty());
    }

    #[test]
    fn the_zone_comes_from_service_meta_then_node_meta() {
        let entries: Vec<HealthEntry> = serde_json::from_str(
            r#"[
          {"Node": {"Address": "10.0.0.1", "Meta": {"zone": "node-a", "az": "x"}},
           "Service": {"Port": 1, "Meta": {"zone": "svc-a"}}},
          {"Node": {"Address": "10.0.0.2", "Meta": {"zone": "node-b"}},
           "Service": {"Port": 2, "Meta": null}},
          {"Node": {"Address": "10.0.0.3", "Meta": null},
           "Service": {"Port": 3, "Meta": {"zone": ""}}}
        ]"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let zones: Vec<Option<String>> = entries
            .into_iter()
            .map(|e| e.into_endpoint("zone").zone)
            .collect();
        assert_eq!(
            zones,
            [Some("svc-a".to_owned()), Some("node-b".to_owned()), None]
        );
        let other: Vec<HealthEntry> = serde_json::from_str(
            r#"[{"Node": {"Address": "10.0.0.1", "Meta": {"az": "x"}}, "Service": {"Port": 1}}]"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let endpoint = other.into_iter().map(|e| e.into_endpoint("az")).next();
        assert_eq!(endpoint.and_then(|e| e.zone).as_deref(), Some("x"));
    }

    #[test]
    fn an_instance_passes_when_every_check_of_its_node_and_its_own_does() {
        let entries: Vec<HealthEntry> = serde_json::from_str(
            r#"[
          {"Node": {"Node": "n1", "Address": "10.0.0.1"}, "Service": {"Port": 1},
           "Checks": [{"Status": "passing"}, {"Status": "passing"}]},
          {"Node": {"Node": "n2", "Address": "10.0.0.2"}, "Service": {"Port": 2},
           "Checks": [{"Status": "passing"}, {"Status": "warning"}]},
          {"Node": {"Node": "n3", "Address": "10.0.0.3"}, "Service": {"Port": 3},
           "Checks": [{"Status": "critical"}]},
          {"Node": {"Node": "n4", "Address": "10.0.0.4"}, "Service": {"Port": 4}, "Checks": []},
          {"Node": {"Node": "n5", "Address": "10.0.0.5"}, "Service": {"Port": 5}}
        ]"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let passing: Vec<(&str, bool)> = entries.iter().map(|e| (e.node(), e.passing())).collect();
        assert_eq!(
            passing,
            [
                ("n1", true),
                ("n2", false),
                ("n3", false),
                ("n4", true),
                ("n5", true)
            ]
        );
    }

    #[test]
    fn checks_and_nodes_decode() {
        let checks: Vec<CheckEntry> = serde_json::from_str(
            r#"[{"Node": "n1", "CheckID": "serfHealth", "Status": "passing", "ServiceID": "",
                 "ServiceName": "", "CreateIndex": 11, "ModifyIndex": 11},
                {"Node": "n1", "CheckID": "c:a1", "Status": "critical", "ServiceID": "a1",
                 "ServiceName": "a", "ModifyIndex": 20}]"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (checks[0].service.as_str(), checks[1].service.as_str()),
            ("", "a")
        );
        assert_eq!(checks[1].status, "critical");
        let nodes: Vec<NodeEntry> = serde_json::from_str(
            r#"[{"ID": "x", "Node": "n1", "Address": "10.0.0.1", "Meta": {"zone": "a"},
                 "CreateIndex": 27, "ModifyIndex": 29}]"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((nodes[0].node.as_str(), nodes[0].modify_index), ("n1", 29));
        let listing: NodeServices = serde_json::from_str(
            r#"{"Node": {"Node": "n1"}, "Services": [{"ID": "a1", "Service": "a", "Port": 1,
                 "Tags": [], "CreateIndex": 56, "ModifyIndex": 57}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let services = listing.services.unwrap_or_default();
        assert_eq!(
            (
                services[0].id.as_str(),
                services[0].service.as_str(),
                services[0].modify_index
            ),
            ("a1", "a", 57)
        );
        let unknown: NodeServices = serde_json::from_str(r#"{"Node": null, "Services": null}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(unknown.services.is_none());
    }

    #[test]
    fn the_index_resets_when_it_goes_backwards_and_is_never_zero() {
        assert_eq!(next_index(10, 12), 12);
        assert_eq!(next_index(10, 9), 0);
        assert_eq!(next_index(0, 0), 1);
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap() {
        let mut rng = rand::thread_rng();
        for failures in 1..40 {
            let delay = backoff_delay(failures, &mut rng);
            let ceiling = MIN_BACKOFF
                .saturating_mul(1 << failures.min(10))
                .min(MAX_BACKOFF);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{failures}: {delay:?}"
            );
        }
        assert!(backoff_delay(30, &mut rng) >= MAX_BACKOFF / 2);
    }

    #[test]
    fn names_are_escaped() {
        assert_eq!(escape("api-v1.x_y~"), "api-v1.x_y~");
        assert_eq!(escape("a b/c?d"), "a%20b%2Fc%3Fd");
    }
}
