//! A one-request TLS client for the control plane's API, as a proxy would
//! speak to it: the server must prove it is `tether-control`; the client
//! presents a chosen mesh certificate, or none.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tether_certs::{Identity, IdentityStore, SpiffeId, TrustBundle, CONTROL_PLANE_SERVICE};

use crate::pki::TRUST_DOMAIN;

/// An answer: status and body.
#[derive(Debug, Clone)]
pub struct TlsReply {
    /// HTTP status.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

/// Sends one HTTP/1.1 request over TLS to the control plane at `addr`,
/// verifying it against `bundle`, presenting `identity` if given.
pub async fn request(
    addr: SocketAddr,
    bundle: &Path,
    identity: Option<Identity>,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<TlsReply, String> {
    let pem = std::fs::read_to_string(bundle).map_err(|e| e.to_string())?;
    let bundle = TrustBundle::from_pem(&pem).map_err(|e| e.to_string())?;
    let store = match identity {
        Some(identity) => IdentityStore::with_identity(identity, bundle),
        None => IdentityStore::new(bundle),
    }
    .map_err(|e| e.to_string())?;
    let expected =
        SpiffeId::service(TRUST_DOMAIN, CONTROL_PLANE_SERVICE).map_err(|e| e.to_string())?;
    let mut config = (*tether_certs::client_config(&store, expected.clone())
        .map_err(|e| e.to_string())?)
    .clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = expected.server_name().map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "control");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(TlsReply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
