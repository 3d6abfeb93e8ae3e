//! The four Consul KV calls revocation needs (`GET ?raw`, `PUT ?cas=0`,
//! `GET ?recurse`, `DELETE`), over the same transport settings as the
//! catalog watch (mesh.yaml's `mesh.catalog.consul`: address, datacenter,
//! ACL token, TLS with Consul's CA and an optional client certificate).
//!
//! A client of its own rather than the catalog's `ConsulApi`: that one is
//! built for blocking GETs with an empty body, these calls are short, carry
//! a body and have their own timeout. The connector set-up mirrors
//! `catalog/consul/api.rs` (kept in step by hand: a dozen lines).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::ServerName;
use serde::Deserialize;

use crate::catalog::consul::escape;
use crate::config::ConsulConfig;

/// How long one KV call may take. A revocation check sits in a proxy's
/// first certificate request (which it retries), so a Consul that does not
/// answer within this is reported as unavailable rather than waited for.
pub const KV_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed KV call; the message names the URI, never the ACL token.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The request could not be built (e.g. a token that is not a header value).
    #[error("cannot build the request to {uri}: {source}")]
    Request {
        /// The URI.
        uri: String,
        /// Why.
        #[source]
        source: http::Error,
    },
    /// No connection, or it broke.
    #[error("{uri}: {source}")]
    Transport {
        /// The URI.
        uri: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No answer within [`KV_TIMEOUT`].
    #[error("{uri}: no answer within {KV_TIMEOUT:?}")]
    Timeout {
        /// The URI.
        uri: String,
    },
    /// Consul answered with an error status (e.g. 403: the ACL token lacks
    /// `key_prefix` rights).
    #[error("{uri}: {status}: {body}")]
    Status {
        /// The URI.
        uri: String,
        /// The status.
        status: StatusCode,
        /// Consul's explanation.
        body: String,
    },
    /// The answer was not what Consul sends.
    #[error("{uri}: unexpected answer: {detail}")]
    Answer {
        /// The URI.
        uri: String,
        /// What was wrong.
        detail: String,
    },
}

#[derive(Clone)]
enum Transport {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

/// A Consul agent's KV API.
#[derive(Clone)]
pub struct ConsulKv {
    client: Transport,
    config: ConsulConfig,
}

impl std::fmt::Debug for ConsulKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulKv")
            .field("address", &self.config.address)
            .field("datacenter", &self.config.datacenter)
            .finish_non_exhaustive()
    }
}

/// One entry of `GET /v1/kv/<prefix>?recurse`.
#[derive(Deserialize)]
struct KvEntry {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value", default)]
    value: Option<String>,
}

impl ConsulKv {
    /// A client for the agent in `config` (plain HTTP, or HTTPS verified
    /// against `config.tls`).
    pub fn new(config: ConsulConfig) -> Self {
        let mut http = HttpConnector::new();
        let builder = Client::builder(TokioExecutor::new());
        let client = match &config.tls {
            Some(tls) => {
                http.enforce_http(false);
                let mut tls_config = (*tls.config).clone();
                // hyper-rustls sets ALPN itself (and panics if it is set).
                tls_config.alpn_protocols.clear();
                let https = HttpsConnectorBuilder::new()
                    .with_tls_config(tls_config)
                    .https_only();
                let https = match tls.server_name.as_deref().map(ServerName::try_from) {
                    Some(Ok(name)) => https
                        .with_server_name_resolver(FixedServerNameResolver::new(name.to_owned())),
                    _ => https,
                };
                Transport::Tls(builder.build(https.enable_http1().wrap_connector(http)))
            }
            None => Transport::Plain(builder.build(http)),
        };
        Self { client, config }
    }

    /// The agent's address, for messages.
    pub fn address(&self) -> &str {
        &self.config.address
    }

    /// The value at `key`, or `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        match self.call(Method::GET, key, "raw", Bytes::new()).await {
            Ok(body) => Ok(Some(body)),
            Err(KvError::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` at `key` unless the key exists (`cas=0`); returns
    /// whether it was written.
    pub async fn create(&self, key: &str, value: Bytes) -> Result<bool, KvError> {
        let body = self.call(Method::PUT, key, "cas=0", value).await?;
        match body.as_ref().trim_ascii() {
            b"true" => Ok(true),
            b"false" => Ok(false),
            other => Err(KvError::Answer {
                uri: self.uri(key, "cas=0"),
                detail: format!(
                    "expected true or false, got {:?}",
                    String::from_utf8_lossy(other)
                ),
            }),
        }
    }

    /// Every key under `prefix` with its value.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Bytes)>, KvError> {
        let body = match self
            .call(Method::GET, prefix, "recurse", Bytes::new())
            .await
        {
            Ok(body) => body,
            Err(KvError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        };
        let uri = || self.uri(prefix, "recurse");
        let entries: Vec<KvEntry> = serde_json::from_slice(&body).map_err(|e| KvError::Answer {
            uri: uri(),
            detail: e.to_string(),
        })?;
        entries
            .into_iter()
            .map(|entry| {
                let value = match entry.value {
                    Some(v) => STANDARD.decode(v).map_err(|e| KvError::Answer {
                        uri: uri(),
                        detail: format!("{}: value is not base64: {e}", entry.key),
                    })?,
                    None => Vec::new(),
                };
                Ok((entry.key, Bytes::from(value)))
            })
            .collect()
    }

    /// Deletes `key` (no error when it does not exist).
    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.call(Method::DELETE, key, "", Bytes::new())
            .await
            .map(drop)
    }

    fn uri(&self, key: &str, query: &str) -> String {
        let path: Vec<String> = key.split('/').map(escape).collect();
        let mut uri = format!(
            "{}/v1/kv/{}",
            self.config.address.trim_end_matches('/'),
            path.join("/")
        );
        let mut sep = '?';
        if !query.is_empty() {
            uri.push(sep);
            uri.push_str(query);
            sep = '&';
        }
        if let Some(dc) = &self.config.datacenter {
            uri.push(sep);
            uri.push_str("dc=");
            uri.push_str(&escape(dc));
        }
        uri
    }

    /// One call: the body of a 2xx answer, else the status as an error.
    async fn call(
        &self,
        method: Method,
        key: &str,
        query: &str,
        body: Bytes,
    ) -> Result<Bytes, KvError> {
        let uri = self.uri(key, query);
        let mut request = http::Request::builder().method(method).uri(&uri);
        if let Some(token) = &self.config.token {
            request = request.header("x-consul-token", token);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|source| KvError::Request {
                uri: uri.clone(),
                source,
            })?;
        let exchange = async {
            let response = match &self.client {
                Transport::Plain(client) => client.request(request).await,
                Transport::Tls(client) => client.request(request).await,
            }
            .map_err(|e| KvError::Transport {
                uri: uri.clone(),
                source: Box::new(e),
            })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| KvError::Transport {
                    uri: uri.clone(),
                    source: Box::new(e),
                })?
                .to_bytes();
            Ok::<_, KvError>((status, body))
        };
        let (status, body) = tokio::time::timeout(KV_TIMEOUT, exchange)
            .await
            .map_err(|_| KvError::Timeout { uri: uri.clone() })??;
        if !status.is_success() {
            let body = String::from_utf8_lossy(&body).trim().to_owned();
            return Err(KvError::Status { uri, status, body });
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(address: &str, dc: Option<&str>) -> ConsulKv {
        let mut config: ConsulConfig = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
        config.address = address.to_owned();
        config.datacenter = dc.map(str::to_owned);
        ConsulKv::new(config)
    }

    #[tokio::test]
    async fn uris_carry_the_query_and_the_datacenter() {
        let plain = kv("http://127.0.0.1:8500/", None);
        assert_eq!(
            plain.uri("tether/join-tokens/revoked/ab12", "raw"),
            "http://127.0.0.1:8500/v1/kv/tether/join-tokens/revoked/ab12?raw"
        );
        assert_eq!(
            plain.uri("a b/c", ""),
            "http://127.0.0.1:8500/v1/kv/a%20b/c"
        );
        let dc = kv("http://consul:8500", Some("dc 2"));
        assert_eq!(
            dc.uri("p/", "recurse"),
            "http://consul:8500/v1/kv/p/?recurse&dc=dc%202"
        );
        assert_eq!(dc.uri("k", ""), "http://consul:8500/v1/kv/k?dc=dc%202");
    }

    #[tokio::test]
    async fn an_agent_that_is_not_there_is_an_error_not_an_absent_key() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        let gone = kv(&format!("http://127.0.0.1:{port}"), None);
        let result = gone.get("tether/join-tokens/revoked/x").await;
        assert!(
            matches!(result, Err(KvError::Transport { .. })),
            "{result:?}"
        );
    }
}
