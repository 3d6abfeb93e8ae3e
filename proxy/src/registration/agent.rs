//! The few calls of the local Consul agent's HTTP API that registration
//! makes: register, TTL check updates, deregister. `http://`, or `https://`
//! verified against Consul's CA ([`AgentTls`]), over the proxy's own
//! HTTP/1.1 connection pool; bodies are JSON (`serde_json`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde::Serialize;

use crate::body::Body;
use crate::transport::{ConnectionSettings, EndpointPool, PoolFactory, TlsTarget};

/// Connect timeout to the agent: it is local (same host or pod), so a
/// second without a connection means it is down, not slow.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle connection to the agent closes after this: above the longest check
/// interval, so the connection is reused between updates.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// One agent call, connect to the whole answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The header that carries a Consul ACL token.
const TOKEN_HEADER: &str = "x-consul-token";

/// Why the agent URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AgentUrlError {
    /// Not `http(s)://HOST:PORT`, or a token that is no header value.
    #[error("Consul agent URL `{0}`: expected http://HOST:PORT or https://HOST:PORT (the local agent's HTTP API)")]
    Url(String),
    /// `https://` without Consul's CA.
    #[error("Consul agent URL `{0}` is https: give --consul-ca-cert (or CONSUL_CACERT), the CA that signed the agent's certificate")]
    NeedCa(String),
    /// The name to verify the agent's certificate against is not a DNS name or IP.
    #[error("Consul TLS server name `{0}` is not a DNS name or IP address")]
    ServerName(String),
}

/// TLS to an agent whose HTTP API is HTTPS: its CA (and a client
/// certificate, for `verify_incoming`), built from PEM files.
#[derive(Clone)]
pub struct AgentTls {
    /// Consul's CA as the only root; TLS 1.3.
    pub config: Arc<rustls::ClientConfig>,
    /// The name the agent's certificate must carry when it is not the URL's
    /// host (e.g. `localhost` or `server.dc1.consul`).
    pub server_name: Option<String>,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Why one agent call failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentCallError {
    /// No answer: connect refused, the connection broke, or the time ran out.
    #[error("no answer from the Consul agent: {0}")]
    Transport(String),
    /// The agent answered with a non-2xx status (404 for an unknown check).
    #[error("the Consul agent answered {status}: {message}")]
    Status {
        /// The status.
        status: StatusCode,
        /// The answer's body, trimmed.
        message: String,
    },
}

/// `PUT /v1/agent/service/register` body (the fields Tether sets).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    /// Service name.
    pub name: String,
    /// Instance id, unique on the agent.
    #[serde(rename = "ID")]
    pub id: String,
    /// Address other sidecars reach the inbound listener at.
    pub address: String,
    /// The inbound listener's port.
    pub port: u16,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// The TTL check the proxy keeps updated.
    pub check: TtlCheck,
}

/// The instance's TTL check, inside a registration.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TtlCheck {
    /// Check id (`tether:<instance id>`).
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Human-readable name.
    pub name: String,
    /// Critical when not updated within this (Go duration, e.g. `6s`).
    #[serde(rename = "TTL")]
    pub ttl: String,
    /// The agent removes the instance once critical this long (e.g. `1m`).
    pub deregister_critical_service_after: String,
    /// Status at registration: `passing` or `critical`.
    pub status: String,
    /// Output at registration (the probe's note).
    pub notes: String,
}

/// A client of one Consul agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    host: HeaderValue,
    token: Option<HeaderValue>,
    pool: Arc<EndpointPool>,
}

impl AgentClient {
    /// A client for `url` (`http://HOST:PORT`, or `https://HOST:PORT` with
    /// `tls`); `token` goes in `X-Consul-Token` when set.
    pub fn new(
        url: &str,
        token: Option<&str>,
        tls: Option<&AgentTls>,
    ) -> Result<Self, AgentUrlError> {
        let url = url.trim_end_matches('/');
        let bad = || AgentUrlError::Url(url.to_owned());
        let (https, rest) = match url.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            _ => return Err(bad()),
        };
        let authority = rest.parse::<Authority>().map_err(|_| bad())?;
        if authority.port_u16().is_none() || authority.as_str() != rest {
            return Err(bad());
        }
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| bad())?;
        let token = match token {
            Some(token) => Some(HeaderValue::from_str(token).map_err(|_| bad())?),
            None => None,
        };
        let target = match (https, tls) {
            (false, _) => None,
            (true, None) => return Err(AgentUrlError::NeedCa(url.to_owned())),
            (true, Some(tls)) => {
                let name = tls
                    .server_name
                    .clone()
                    .unwrap_or_else(|| crate::authority::host(authority.as_str()).to_owned());
                let name = name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let server_name = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| AgentUrlError::ServerName(name))?;
                Some(TlsTarget {
                    config: Arc::clone(&tls.config),
                    server_name,
                    failures: handshake_failures(),
                })
            }
        };
        let settings = ConnectionSettings {
            http2: false,
            connect_timeout: CONNECT_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            expected_identity: None,
        };
        let pool = PoolFactory::with_tls(settings, target).pool_for(&authority);
        Ok(Self { host, token, pool })
    }

    /// Registers (or replaces) the instance and its check.
    pub async fn register(&self, registration: &ServiceRegistration) -> Result<(), AgentCallError> {
        let body = serde_json::to_vec(registration)
            .map_err(|e| AgentCallError::Transport(e.to_string()))?;
        self.put("/v1/agent/service/register".to_owned(), Bytes::from(body))
            .await
    }

    /// Sets the TTL check `check_id` passing or critical with `note` as its
    /// output; a 404 means the agent no longer knows the check.
    pub async fn update_check(
        &self,
        check_id: &str,
        passing: bool,
        note: &str,
    ) -> Result<(), AgentCallError> {
        let verb = if passing { "pass" } else { "fail" };
        let path = format!(
            "/v1/agent/check/{verb}/{}?note={}",
            encode(check_id),
            encode(note)
        );
        self.put(path, Bytes::new()).await
    }

    /// Removes the instance (and its check) from the agent.
    pub async fn deregister(&self, id: &str) -> Result<(), AgentCallError> {
        self.put(
            format!("/v1/agent/service/deregister/{}", encode(id)),
            Bytes::new(),
        )
        .await
    }

    async fn put(&self, path: String, body: Bytes) -> Result<(), AgentCallError> {
        let mut request = Request::builder()
            .method(Method::PUT)
            .uri(path)
            .header(header::HOST, self.host.clone())
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(TOKEN_HEADER, token.clone());
        }
        let request = request
            .body(Body::full(body))
            .map_err(|e| AgentCallError::Transport(e.to_string()))?;
        let exchange = async {
            let response = self
                .pool
                .send(request)
                .await
                .map_err(|e| AgentCallError::Transport(e.to_string()))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| AgentCallError::Transport(format!("the answer broke off: {e}")))?
                .to_bytes();
            if status.is_success() {
                Ok(())
            } else {
                Err(AgentCallError::Status {
                    status,
                    message: String::from_utf8_lossy(&body).trim().to_owned(),
                })
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| AgentCallError::Transport(format!("no answer within {CALL_TIMEOUT:?}")))?
    }
}

/// A handshake-failure counter for the agent connection: its failures
/// surface as call errors in the log (and the registration metrics), not
/// among the mesh's handshake failures.
fn handshake_failures() -> prometheus::IntCounterVec {
    prometheus::IntCounterVec::new(
        prometheus::Opts::new("consul_agent_tls_failures", "unregistered"),
        &["direction", "reason"],
    )
    .unwrap_or_else(|_| unreachable!("static, valid metric options"))
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for a
/// path segment or a query value.
fn encode(text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_or_https_host_port_urls_are_accepted() {
        assert!(AgentClient::new("http://127.0.0.1:8500", None, None).is_ok());
        assert!(AgentClient::new("http://consul.local:8500/", None, None).is_ok());
        for bad in [
            "127.0.0.1:8500",
            "unix:///var/run/consul.sock",
            "http://127.0.0.1",
            "http://127.0.0.1:8500/v1",
        ] {
            assert!(
                matches!(
                    AgentClient::new(bad, None, None),
                    Err(AgentUrlError::Url(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            AgentClient::new("https://127.0.0.1:8501", None, None),
            Err(AgentUrlError::NeedCa(_))
        ));
    }

    #[test]
    fn notes_and_ids_are_percent_encoded() {
        assert_eq!(encode("tether:api-1"), "tether%3Aapi-1");
        assert_eq!(encode("GET /h answered 503"), "GET%20%2Fh%20answered%20503");
    }

    #[test]
    fn the_registration_body_uses_consul_field_names() {
        let registration = ServiceRegistration {
            name: "api".into(),
            id: "api-1".into(),
            address: "10.0.0.5".into(),
            port: 15443,
            tags: vec!["v1".into()],
            meta: BTreeMap::from([("zone".into(), "a".into())]),
            check: TtlCheck {
                check_id: "tether:api-1".into(),
                name: "app health".into(),
                ttl: "6s".into(),
                deregister_critical_service_after: "1m".into(),
                status: "passing".into(),
                notes: "ok".into(),
            },
        };
        let value = serde_json::to_value(&registration).unwrap_or_default();
        assert_eq!(value["ID"], "api-1");
        assert_eq!(value["Name"], "api");
        assert_eq!(value["Address"], "10.0.0.5");
        assert_eq!(value["Port"], 15443);
        assert_eq!(value["Tags"][0], "v1");
        assert_eq!(value["Meta"]["zone"], "a");
        assert_eq!(value["Check"]["CheckID"], "tether:api-1");
        assert_eq!(value["Check"]["TTL"], "6s");
        assert_eq!(value["Check"]["DeregisterCriticalServiceAfter"], "1m");
        assert_eq!(value["Check"]["Status"], "passing");
    }
}
