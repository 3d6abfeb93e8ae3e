//! The Consul catalog: blocking queries on `/v1/catalog/services` and, per
//! service, `/v1/health/service/<name>?passing`, fanned out as one
//! [`CatalogState`].
//!
//! Why a thin client of our own: `consulrs` 0.1 has no `/v1/health`
//! endpoints and brings reqwest 0.11, hyper 0.14 and OpenSSL; `rs-consul`
//! would do, but the watcher needs four calls, and hyper-util's client is
//! already in the build. The rest of the control plane sees only the
//! `watch` channel this module feeds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde::Deserialize;
use tether_api::Endpoint;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::CatalogState;
use crate::config::ConsulConfig;
use crate::metrics::ControlMetrics;

/// How long Consul may hold a blocking query.
const WAIT: &str = "30s";
/// First retry delay after an error; doubles to [`MAX_BACKOFF`], jittered.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest retry delay: a Consul restart is noticed within seconds.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Api {
    client: Client<HttpConnector, Empty<Bytes>>,
    config: ConsulConfig,
    metrics: ControlMetrics,
}

#[derive(Deserialize)]
struct HealthEntry {
    #[serde(rename = "Node")]
    node: Node,
    #[serde(rename = "Service")]
    service: Service,
}

#[derive(Deserialize)]
struct Node {
    #[serde(rename = "Address")]
    address: String,
}

#[derive(Deserialize)]
struct Service {
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

#[derive(Deserialize)]
struct Weights {
    #[serde(rename = "Passing")]
    passing: u32,
}

impl Api {
    /// One blocking query: the body and the new `X-Consul-Index`.
    async fn get(&self, path: &str, index: u64) -> Result<(Bytes, u64), String> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut uri = format!(
            "{}{path}{sep}index={index}&wait={WAIT}",
            self.config.address.trim_end_matches('/')
        );
        if let Some(dc) = &self.config.datacenter {
            uri.push_str(&format!("&dc={dc}"));
        }
        let mut request = http::Request::get(&uri);
        if let Some(token) = &self.config.token {
            request = request.header("x-consul-token", token);
        }
        let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(60), self.client.request(request))
            .await
            .map_err(|_| format!("{uri}: no answer in 60 s"))?
            .map_err(|e| format!("{uri}: {e}"))?;
        let status = response.status();
        let next = response
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        self.metrics
            .consul_latency
            .observe(started.elapsed().as_secs_f64());
        if !status.is_success() {
            return Err(format!(
                "{uri}: {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        // Consul's rule: an index that went backwards means start over.
        Ok((body, if next < index { 0 } else { next }))
    }

    async fn backoff(&self, failures: &mut u32, error: &str) {
        self.metrics.consul_errors.inc();
        *failures = failures.saturating_add(1);
        let ceiling = MIN_BACKOFF
            .saturating_mul(1 << (*failures).min(10))
            .min(MAX_BACKOFF);
        let delay = rand::thread_rng().gen_range(ceiling / 2..=ceiling);
        tracing::warn!(%error, retry_in = ?delay, "consul watch failed");
        tokio::time::sleep(delay).await;
    }
}

/// Starts watching Consul; the returned channel carries every change.
pub fn watch(config: ConsulConfig, metrics: ControlMetrics) -> watch::Receiver<Arc<CatalogState>> {
    let (tx, rx) = watch::channel(Arc::new(CatalogState::default()));
    let api = Api {
        client: Client::builder(TokioExecutor::new()).build_http(),
        config,
        metrics,
    };
    tokio::spawn(watch_services(api, tx));
    rx
}

type Shared = Arc<Mutex<BTreeMap<String, Vec<Endpoint>>>>;

fn publish(tx: &watch::Sender<Arc<CatalogState>>, shared: &Shared) {
    let services = shared.lock().map(|s| s.clone()).unwrap_or_default();
    tx.send_if_modified(|current| {
        if current.services == services {
            return false;
        }
        *current = Arc::new(CatalogState { services });
        true
    });
}

async fn watch_services(api: Api, tx: watch::Sender<Arc<CatalogState>>) {
    let shared: Shared = Arc::default();
    let mut watchers: BTreeMap<String, JoinHandle<()>> = BTreeMap::new();
    let (mut index, mut failures) = (0u64, 0u32);
    loop {
        let names: BTreeMap<String, serde_json::Value> =
            match api.get("/v1/catalog/services", index).await {
                Ok((body, next)) => match serde_json::from_slice(&body) {
                    Ok(names) => {
                        index = next;
                        failures = 0;
                        names
                    }
                    Err(e) => {
                        api.backoff(&mut failures, &format!("bad catalog JSON: {e}"))
                            .await;
                        continue;
                    }
                },
                Err(error) => {
                    api.backoff(&mut failures, &error).await;
                    continue;
                }
            };
        watchers.retain(|name, task| {
            let keep = names.contains_key(name) && !task.is_finished();
            if !keep {
                task.abort();
                if let Ok(mut services) = shared.lock() {
                    services.remove(name);
                }
            }
            keep
        });
        for name in names.keys().filter(|n| n.as_str() != "consul") {
            if !watchers.contains_key(name) {
                let task = tokio::spawn(watch_health(
                    api.clone(),
                    name.clone(),
                    Arc::clone(&shared),
                    tx.clone(),
                ));
                watchers.insert(name.clone(), task);
            }
        }
        publish(&tx, &shared);
    }
}

async fn watch_health(
    api: Api,
    name: String,
    shared: Shared,
    tx: watch::Sender<Arc<CatalogState>>,
) {
    let path = format!("/v1/health/service/{name}?passing=true");
    let (mut index, mut failures) = (0u64, 0u32);
    loop {
        let entries: Vec<HealthEntry> = match api.get(&path, index).await {
            Ok((body, next)) => match serde_json::from_slice(&body) {
                Ok(entries) => {
                    index = next;
                    failures = 0;
                    entries
                }
                Err(e) => {
                    api.backoff(&mut failures, &format!("bad health JSON for {name}: {e}"))
                        .await;
                    continue;
                }
            },
            Err(error) => {
                api.backoff(&mut failures, &error).await;
                continue;
            }
        };
        let endpoints: Vec<Endpoint> = entries
            .into_iter()
            .map(|e| {
                let host = if e.service.address.is_empty() {
                    e.node.address
                } else {
                    e.service.address
                };
                Endpoint {
                    address: format!("{host}:{}", e.service.port),
                    weight: e.service.weights.map_or(1, |w| w.passing.max(1)),
                    tags: e.service.tags.unwrap_or_default(),
                    meta: e.service.meta.unwrap_or_default(),
                }
            })
            .collect();
        if let Ok(mut services) = shared.lock() {
            services.insert(name.clone(), endpoints);
        }
        publish(&tx, &shared);
    }
}
