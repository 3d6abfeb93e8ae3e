//! `tether-control status`: fetches `GET /v1/status` and prints one line per
//! proxy: service, applied version, whether that is the current one, last
//! contact and the last refusal.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tether_api::StatusResponse;
use tether_certs::{IdentityStore, SpiffeId, TrustBundle, CONTROL_PLANE_SERVICE};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Why the status could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The URL is not one.
    #[error("bad control-plane URL {uri}: {reason}")]
    Url {
        /// The URL.
        uri: String,
        /// Why.
        reason: String,
    },
    /// An https URL without a bundle to verify the control plane with.
    #[error("{uri} is https: pass --trust-bundle FILE (the mesh CA's ca.pem) to verify the control plane")]
    NeedBundle {
        /// The URL.
        uri: String,
    },
    /// The bundle does not say which trust domain the control plane is in.
    #[error("the trust bundle names no trust domain (no spiffe:// URI SAN on its roots); pass --trust-domain")]
    NoTrustDomain,
    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(#[source] tether_certs::Error),
    /// Nothing answered, or the answer broke off.
    #[error("{uri}: {reason} (is `tether-control serve` running there?)")]
    Transport {
        /// The URL.
        uri: String,
        /// Why.
        reason: String,
    },
    /// The answer was not a status.
    #[error("{uri}: answered {status}, not a status document: {body}")]
    NotStatus {
        /// The URL.
        uri: String,
        /// HTTP status.
        status: http::StatusCode,
        /// The start of the body.
        body: String,
    },
}

/// How to reach the control plane.
#[derive(Debug, Clone, Default)]
pub struct StatusTls {
    /// Roots to verify an https control plane against.
    pub bundle: Option<TrustBundle>,
    /// Its trust domain (default: the one the bundle's roots name).
    pub trust_domain: Option<String>,
}

/// Fetches the status from the control plane at `base` (`http://host:port`,
/// or `https://host:port` verified as `spiffe://<td>/service/tether-control`).
pub async fn fetch(base: &str, tls: &StatusTls) -> Result<StatusResponse, StatusError> {
    let (uri, status, body) = request(base, tls, http::Method::GET, "/v1/status", None).await?;
    serde_json::from_slice(&body).map_err(|_| StatusError::NotStatus {
        uri,
        status,
        body: String::from_utf8_lossy(&body).chars().take(200).collect(),
    })
}

/// One request to the control plane at `base` (as [`fetch`] reaches it),
/// with a JSON `body` if any: the URL, the answer's status and its body.
pub async fn request(
    base: &str,
    tls: &StatusTls,
    method: http::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(String, http::StatusCode, Bytes), StatusError> {
    let uri = format!("{}{path}", base.trim_end_matches('/'));
    let url_error = |reason: String| StatusError::Url {
        uri: uri.clone(),
        reason,
    };
    let parsed = uri
        .parse::<http::Uri>()
        .map_err(|e| url_error(e.to_string()))?;
    let https = match parsed.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(url_error("use http:// or https://".into())),
    };
    let authority = parsed
        .authority()
        .ok_or_else(|| url_error("no host:port".into()))?
        .clone();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let transport = |reason: String| StatusError::Transport {
        uri: uri.clone(),
        reason,
    };
    let tcp = TcpStream::connect((authority.host(), port))
        .await
        .map_err(|e| transport(e.to_string()))?;
    let mut request = http::Request::builder()
        .method(method)
        .uri(parsed.path())
        .header(http::header::HOST, authority.as_str());
    if body.is_some() {
        request = request.header(http::header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| url_error(e.to_string()))?;
    let (status, body) = if https {
        let bundle = tls
            .bundle
            .clone()
            .ok_or_else(|| StatusError::NeedBundle { uri: uri.clone() })?;
        let domain = match &tls.trust_domain {
            Some(domain) => domain.clone(),
            None => bundle
                .trust_domains()
                .into_iter()
                .next()
                .ok_or(StatusError::NoTrustDomain)?,
        };
        let expected =
            SpiffeId::service(&domain, CONTROL_PLANE_SERVICE).map_err(StatusError::Tls)?;
        let store = IdentityStore::new(bundle).map_err(StatusError::Tls)?;
        let mut config = (*tether_certs::client_config(&store, expected.clone())
            .map_err(StatusError::Tls)?)
        .clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = expected.server_name().map_err(StatusError::Tls)?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| transport(format!("TLS: {e}")))?;
        one_request(stream, request).await.map_err(transport)?
    } else {
        one_request(tcp, request).await.map_err(transport)?
    };
    Ok((uri, status, body))
}

/// One HTTP/1.1 request on a fresh connection.
async fn one_request<S>(
    io: S,
    request: http::Request<Full<Bytes>>,
) -> Result<(http::StatusCode, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// The table `status` prints; `now` is Unix seconds.
pub fn render(status: &StatusResponse, now: u64) -> String {
    let mut out = format!(
        "{:<28} {:<16} {:>15} {:<8} {:<9} {:>12}  LAST ERROR\n",
        "PROXY", "SERVICE", "APPLIED", "CURRENT", "POLLING", "LAST CONTACT"
    );
    for proxy in &status.proxies {
        let r = &proxy.report;
        let current = status.versions.get(&r.service) == Some(&r.applied_version);
        let error = last_error(r);
        let ago = format!("{}s ago", now.saturating_sub(proxy.last_contact_unix));
        out.push_str(&format!(
            "{:<28} {:<16} {:>15} {:<8} {:<9} {:>12}  {error}\n",
            r.proxy_id,
            r.service,
            r.applied_version,
            if current { "yes" } else { "no" },
            if proxy.connected { "yes" } else { "no" },
            ago,
        ));
    }
    if status.proxies.is_empty() {
        out.push_str("(no proxy has polled or reported yet)\n");
    }
    out
}

/// The table `status` prints for several replicas (`--control-plane`
/// a comma-separated list): each proxy once, as the replica it talked to
/// last reports it (a proxy that switched replicas is still listed, not
/// connected, by the one it left), with that replica; replicas that could
/// not be asked are listed after the table. `now` is Unix seconds.
pub fn render_replicas(
    replicas: &[(String, Result<StatusResponse, StatusError>)],
    now: u64,
) -> String {
    let mut latest: std::collections::BTreeMap<&str, (&str, &tether_api::ProxyStatus, bool)> =
        std::collections::BTreeMap::new();
    for (replica, answer) in replicas {
        let Ok(status) = answer else { continue };
        for proxy in &status.proxies {
            let r = &proxy.report;
            let current = status.versions.get(&r.service) == Some(&r.applied_version);
            let newer = |(_, seen, _): &(&str, &tether_api::ProxyStatus, bool)| {
                (proxy.connected, proxy.last_contact_unix)
                    > (seen.connected, seen.last_contact_unix)
            };
            match latest.get(r.proxy_id.as_str()) {
                Some(seen) if !newer(seen) => {}
                _ => {
                    latest.insert(&r.proxy_id, (replica, proxy, current));
                }
            }
        }
    }
    let mut out = format!(
        "{:<28} {:<16} {:>15} {:<8} {:<9} {:>12}  {:<24} LAST ERROR\n",
        "PROXY", "SERVICE", "APPLIED", "CURRENT", "POLLING", "LAST CONTACT", "REPLICA"
    );
    for (replica, proxy, current) in latest.values() {
        let r = &proxy.report;
        out.push_str(&format!(
            "{:<28} {:<16} {:>15} {:<8} {:<9} {:>12}  {:<24} {}\n",
            r.proxy_id,
            r.service,
            r.applied_version,
            if *current { "yes" } else { "no" },
            if proxy.connected { "yes" } else { "no" },
            format!("{}s ago", now.saturating_sub(proxy.last_contact_unix)),
            replica
                .trim_start_matches("http://")
                .trim_start_matches("https://"),
            last_error(r),
        ));
    }
    if latest.is_empty() {
        out.push_str("(no proxy has polled or reported yet)\n");
    }
    for (replica, answer) in replicas {
        if let Err(error) = answer {
            out.push_str(&format!("replica {replica} not asked: {error}\n"));
        }
    }
    out
}

fn last_error(r: &tether_api::ProxyReport) -> String {
    match (&r.rejected_version, &r.error) {
        (Some(v), Some(e)) => format!("refused {v}: {e}"),
        (Some(v), None) => format!("refused {v}"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_api::{ProxyReport, ProxyStatus};

    #[test]
    fn a_refused_version_shows_as_an_error_and_not_as_current() {
        let status = StatusResponse {
            versions: [("web".to_owned(), 7)].into(),
            proxies: vec![ProxyStatus {
                report: ProxyReport {
                    proxy_id: "web-1".into(),
                    service: "web".into(),
                    applied_version: 6,
                    rejected_version: Some(7),
                    error: Some("bad route".into()),
                },
                last_contact_unix: 100,
                connected: true,
            }],
        };
        let table = render(&status, 103);
        let line = table.lines().nth(1).unwrap_or_default();
        assert!(line.starts_with("web-1"), "{table}");
        assert!(line.contains(" 6 no "), "{table}");
        assert!(line.contains("3s ago  refused 7: bad route"), "{table}");
        assert!(render(&StatusResponse::default(), 0).contains("no proxy"));
    }

    #[test]
    fn replicas_show_each_proxy_once_as_its_latest_replica_sees_it() {
        let proxy = |id: &str, applied: u64, contact: u64, connected: bool| ProxyStatus {
            report: ProxyReport {
                proxy_id: id.into(),
                service: "web".into(),
                applied_version: applied,
                rejected_version: None,
                error: None,
            },
            last_contact_unix: contact,
            connected,
        };
        let a = StatusResponse {
            versions: [("web".to_owned(), 7)].into(),
            proxies: vec![proxy("web-1", 7, 100, false), proxy("web-2", 7, 100, true)],
        };
        let b = StatusResponse {
            versions: [("web".to_owned(), 8)].into(),
            proxies: vec![proxy("web-1", 8, 102, true)],
        };
        let down = StatusError::Transport {
            uri: "http://c:1".into(),
            reason: "refused".into(),
        };
        let table = render_replicas(
            &[
                ("http://a:1".into(), Ok(a)),
                ("http://b:1".into(), Ok(b)),
                ("http://c:1".into(), Err(down)),
            ],
            103,
        );
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[1].starts_with("web-1") && lines[1].contains(" 8 yes "),
            "{table}"
        );
        assert!(lines[1].contains("b:1"), "{table}");
        assert!(
            lines[2].starts_with("web-2") && lines[2].contains("a:1"),
            "{table}"
        );
        assert!(
            lines[3].starts_with("replica http://c:1 not asked"),
            "{table}"
        );
    }
}
