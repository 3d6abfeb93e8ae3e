//! The HTTP client to the control plane. `http://` is plaintext; `https://`
//! is TLS 1.3 verified against the mesh trust bundle, where the server must
//! prove it is `spiffe://<trust_domain>/service/tether-control`, and the
//! proxy presents its own mesh certificate once it holds one (the control
//! plane serves a service's snapshot only to that service's proxies).

use std::sync::Arc;
use std::time::Duration;

use tether_certs::{SpiffeId, CONTROL_PLANE_SERVICE};

use crate::body::Body;
use crate::identity::MeshIdentity;
use crate::transport::{ClientSettings, TlsTarget, UpstreamClient};

/// Why the control-plane URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlClientError {
    /// Not `http://host:port` or `https://host:port`.
    #[error("control-plane URL `{0}`: expected http://HOST:PORT or https://HOST:PORT")]
    Url(String),
    /// `https://` without a trust bundle to verify the server.
    #[error("control-plane URL `{0}` is https: pass --trust-bundle FILE (the mesh CA's ca.pem)")]
    NeedBundle(String),
    /// TLS settings could not be built.
    #[error("control-plane TLS: {0}")]
    Tls(#[source] tether_certs::Error),
}

/// A pooled client to one control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneClient {
    /// `http://host:port`: requests are written against it; TLS, when on,
    /// happens underneath in the connector.
    base: String,
    tls: bool,
    client: UpstreamClient,
}

impl ControlPlaneClient {
    /// A client for `url`; `identity` is required for `https://`.
    pub fn new(
        url: &str,
        identity: Option<&MeshIdentity>,
        idle_timeout: Duration,
    ) -> Result<Self, ControlClientError> {
        let url = url.trim_end_matches('/');
        let (tls, authority) = match url.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            _ => return Err(ControlClientError::Url(url.to_owned())),
        };
        let valid = authority
            .parse::<http::uri::Authority>()
            .is_ok_and(|a| a.port_u16().is_some() && a.as_str() == authority);
        if !valid {
            return Err(ControlClientError::Url(url.to_owned()));
        }
        let settings = ClientSettings {
            http2: false,
            connect_timeout: Duration::from_secs(2),
            idle_timeout,
            expected_identity: None,
        };
        let target = if tls {
            let identity =
                identity.ok_or_else(|| ControlClientError::NeedBundle(url.to_owned()))?;
            Some(tls_target(identity)?)
        } else {
            None
        };
        Ok(Self {
            base: format!("http://{authority}"),
            tls,
            client: UpstreamClient::with_tls(settings, target),
        })
    }

    /// Whether the control plane is reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// `http://host:port` for building request URIs (also under TLS).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request whose URI starts with [`ControlPlaneClient::base`].
    pub fn request(
        &self,
        request: http::Request<Body>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        self.client.request(request)
    }
}

fn tls_target(identity: &MeshIdentity) -> Result<TlsTarget, ControlClientError> {
    let expected = SpiffeId::service(identity.trust_domain(), CONTROL_PLANE_SERVICE)
        .map_err(ControlClientError::Tls)?;
    let shared = tether_certs::client_config(identity.store(), expected.clone())
        .map_err(ControlClientError::Tls)?;
    let mut config = (*shared).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsTarget {
        config: Arc::new(config),
        server_name: expected.server_name().map_err(ControlClientError::Tls)?,
        failures: identity.handshake_failures(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_a_scheme_a_host_and_a_port() {
        let idle = Duration::from_secs(1);
        for bad in [
            "127.0.0.1:15010",
            "ftp://x:1",
            "http://x",
            "http://x:1/path",
        ] {
            assert!(
                matches!(
                    ControlPlaneClient::new(bad, None, idle),
                    Err(ControlClientError::Url(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            ControlPlaneClient::new("https://127.0.0.1:15010", None, idle),
            Err(ControlClientError::NeedBundle(_))
        ));
        let plain = ControlPlaneClient::new("http://127.0.0.1:15010/", None, idle)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plain.base(), "http://127.0.0.1:15010");
        assert!(!plain.is_tls());
    }
}
