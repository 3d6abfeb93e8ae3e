//! A loopback relay that takes plaintext connections and carries each one
//! over mTLS to a mesh listener, as a sidecar would: ALPN `h2`, a client
//! certificate from the test PKI, the server's identity checked. Lets tools
//! that cannot present a client certificate (h2spec) reach an inbound
//! listener. Bytes are copied both ways unchanged; a close on either side
//! closes the other.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tether_certs::{Identity, IdentityStore, SpiffeId, TrustBundle};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::pki::TRUST_DOMAIN;

/// A running relay; stops accepting when dropped.
pub struct TlsRelay {
    /// Where plaintext clients connect.
    pub addr: SocketAddr,
    accepting: JoinHandle<()>,
}

impl TlsRelay {
    /// Relays to `target`, which must prove it is `service`, presenting
    /// `identity` and trusting `bundle`.
    pub async fn start(
        target: SocketAddr,
        service: &str,
        identity: Identity,
        bundle: &Path,
    ) -> Self {
        let pem = std::fs::read_to_string(bundle).unwrap_or_else(|e| panic!("bundle: {e}"));
        let bundle = TrustBundle::from_pem(&pem).unwrap_or_else(|e| panic!("bundle: {e}"));
        let store =
            IdentityStore::with_identity(identity, bundle).unwrap_or_else(|e| panic!("{e}"));
        let expected = SpiffeId::service(TRUST_DOMAIN, service).unwrap_or_else(|e| panic!("{e}"));
        let mut config = (*tether_certs::client_config(&store, expected.clone())
            .unwrap_or_else(|e| panic!("client config: {e}")))
        .clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = expected
            .server_name()
            .unwrap_or_else(|e| panic!("server name: {e}"));
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap_or_else(|e| panic!("relay bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("relay addr: {e}"));
        let accepting = tokio::spawn(async move {
            while let Ok((plain, _)) = listener.accept().await {
                let (connector, name) = (connector.clone(), name.clone());
                tokio::spawn(async move {
                    let _ = plain.set_nodelay(true);
                    let Ok(tcp) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tcp.set_nodelay(true);
                    let Ok(mut tls) = connector.connect(name, tcp).await else {
                        return;
                    };
                    let mut plain = plain;
                    // Ends when both sides have closed, or on the first error
                    // (then both are dropped, which closes them).
                    let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
                });
            }
        });
        Self { addr, accepting }
    }
}

impl Drop for TlsRelay {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}
