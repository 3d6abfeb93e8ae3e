//! Connects to an upstream endpoint: TCP with a connect timeout, then, when
//! the proxy has a mesh identity, TLS 1.3 that requires the endpoint to
//! prove it is the target service (its SPIFFE ID), presenting ours.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tower::Service;

use super::stream::{MeshStream, UpstreamIo};

/// TLS settings for one target service.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    /// Verifies the server is the expected identity; presents ours.
    pub config: Arc<rustls::ClientConfig>,
    /// SNI sent (the expected identity's DNS form).
    pub server_name: ServerName<'static>,
    /// Counts handshake failures by reason.
    pub failures: prometheus::IntCounterVec,
}

/// The connector behind every upstream pool.
#[derive(Clone, Debug)]
pub struct MeshConnector {
    http: HttpConnector,
    tls: Option<TlsTarget>,
}

impl MeshConnector {
    /// Plain TCP when `tls` is `None`.
    pub fn new(http: HttpConnector, tls: Option<TlsTarget>) -> Self {
        Self { http, tls }
    }

    /// The same connector offering ALPN `http/1.1` only over TLS: for a
    /// request that must go over HTTP/1.1 (an upgrade) to an endpoint the
    /// pool reaches with HTTP/2.
    pub fn for_http1(&self) -> Self {
        const HTTP1: &[u8] = b"http/1.1";
        match &self.tls {
            Some(tls) if tls.config.alpn_protocols != [HTTP1] => {
                let mut config = (*tls.config).clone();
                config.alpn_protocols = vec![HTTP1.to_vec()];
                Self {
                    http: self.http.clone(),
                    tls: Some(TlsTarget {
                        config: Arc::new(config),
                        ..tls.clone()
                    }),
                }
            }
            _ => self.clone(),
        }
    }

    /// Whether every connection is mTLS to a verified mesh identity.
    pub fn is_mtls(&self) -> bool {
        self.tls.is_some()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for MeshConnector {
    type Response = UpstreamIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let stream = match tls {
                None => MeshStream::Plain(tcp),
                Some(tls) => tls_connect(&tls, tcp).await?,
            };
            Ok(UpstreamIo(TokioIo::new(stream)))
        })
    }
}

/// The TLS handshake to an endpoint that must prove it is `tls`'s target;
/// a failure is counted by reason (`identity-mismatch` or `handshake`).
pub async fn tls_connect(tls: &TlsTarget, tcp: TcpStream) -> std::io::Result<MeshStream> {
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
    match connector.connect(tls.server_name.clone(), tcp).await {
        Ok(stream) => Ok(MeshStream::Client(Box::new(stream))),
        Err(error) => {
            let reason = if tether_certs::find_identity_mismatch(&error).is_some() {
                "identity-mismatch"
            } else {
                "handshake"
            };
            tls.failures.with_label_values(&["outbound", reason]).inc();
            Err(error)
        }
    }
}
