//! rustls configs for the mesh: TLS 1.3 only, ring crypto, identities and
//! trust read from an [`IdentityStore`] at handshake time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::client::Resumption;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};

use crate::error::Result;
use crate::provider::provider;
use crate::spiffe_id::SpiffeId;
use crate::store::IdentityStore;
use crate::verify::{MeshClientVerifier, MeshServerVerifier};

/// ALPN protocols offered and accepted on mesh HTTP connections, preferred first.
pub const MESH_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// ALPN protocol of an opaque TCP stream between sidecars: the inbound side
/// sees it after the handshake and copies bytes instead of speaking HTTP.
pub const MESH_TCP_ALPN: &[u8] = b"tether-tcp";

/// What the inbound (server) side accepts: the HTTP protocols, then
/// [`MESH_TCP_ALPN`]. The server picks the first of these the client offers;
/// mesh clients offer exactly one.
pub const MESH_SERVER_ALPN: [&[u8]; 3] = [b"h2", b"http/1.1", MESH_TCP_ALPN];

/// Whether the inbound side demands a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a valid mesh certificate (the default).
    Required,
    /// A client may connect without a certificate; one it does present must
    /// be valid. The caller must then treat the peer as unauthenticated.
    Optional,
}

fn alpn(protocols: &[&[u8]]) -> Vec<Vec<u8>> {
    protocols.iter().map(|p| p.to_vec()).collect()
}

/// The inbound (server) config: presents the store's current certificate,
/// verifies client chains against the store's current bundle and requires
/// a SPIFFE identity in them. TLS 1.3 only; ALPN `h2`, `http/1.1`,
/// `tether-tcp` ([`MESH_SERVER_ALPN`]).
///
/// Session resumption is off, so every connection is verified against the
/// bundle in force when it is made (connections are pooled, so this costs
/// few handshakes).
pub fn server_config(store: &Arc<IdentityStore>, auth: ClientAuth) -> Result<Arc<ServerConfig>> {
    let verifier = Arc::new(MeshClientVerifier {
        store: store.clone(),
        mandatory: auth == ClientAuth::Required,
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(store.clone());
    config.alpn_protocols = alpn(&MESH_SERVER_ALPN);
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The outbound (client) config for calling `expected`: presents the store's
/// current certificate, verifies the server chain against the store's
/// current bundle without any DNS-name check, and refuses the server unless
/// its SPIFFE ID is `expected` ([`crate::Error::IdentityMismatch`]).
/// TLS 1.3 only; ALPN `h2`, `http/1.1`; no session resumption.
///
/// Building one is cheap but not free; use [`ClientConfigs`] to keep one per
/// target service.
pub fn client_config(store: &Arc<IdentityStore>, expected: SpiffeId) -> Result<Arc<ClientConfig>> {
    let verifier = Arc::new(MeshServerVerifier {
        store: store.clone(),
        expected,
    });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(store.clone());
    config.alpn_protocols = alpn(&MESH_ALPN);
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Client configs cached per target identity. The configs read the store on
/// every handshake, so cached entries never go stale on rotation.
#[derive(Debug)]
pub struct ClientConfigs {
    store: Arc<IdentityStore>,
    configs: Mutex<HashMap<SpiffeId, Arc<ClientConfig>>>,
}

impl ClientConfigs {
    /// An empty cache over `store`.
    pub fn new(store: Arc<IdentityStore>) -> Self {
        ClientConfigs {
            store,
            configs: Mutex::new(HashMap::new()),
        }
    }

    /// The config for connections that must reach `expected`.
    pub fn get(&self, expected: &SpiffeId) -> Result<Arc<ClientConfig>> {
        // A poisoned lock only means another thread panicked mid-insert; the
        // map itself is still consistent.
        let mut map = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(expected) {
            return Ok(c.clone());
        }
        let c = client_config(&self.store, expected.clone())?;
        map.insert(expected.clone(), c.clone());
        Ok(c)
    }

    /// Drops the config for a target that left the mesh.
    pub fn remove(&self, expected: &SpiffeId) {
        self.configs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(expected);
    }

    /// The store the configs read from.
    pub fn store(&self) -> &Arc<IdentityStore> {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{CertificateAuthority, TrustBundle};

    fn store() -> Arc<IdentityStore> {
        let ca = CertificateAuthority::generate("tether.local", Duration::from_secs(3600))
            .unwrap_or_else(|e| panic!("{e}"));
        let bundle = TrustBundle::from_pem(ca.cert_pem()).unwrap_or_else(|e| panic!("{e}"));
        IdentityStore::new(bundle).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn servers_also_accept_tcp_streams_but_http_clients_never_offer_it() {
        let store = store();
        let server = server_config(&store, ClientAuth::Required).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            server.alpn_protocols,
            [&b"h2"[..], b"http/1.1", b"tether-tcp"],
            "HTTP stays preferred when a client offers both"
        );
        let api = SpiffeId::service("tether.local", "api").unwrap_or_else(|e| panic!("{e}"));
        let client = client_config(&store, api).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(client.alpn_protocols, [&b"h2"[..], b"http/1.1"]);
    }
}
