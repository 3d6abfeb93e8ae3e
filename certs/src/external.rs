//! TLS to servers outside the mesh that have a CA of their own (Consul's
//! HTTPS API): the server's certificate is verified the WebPKI way (chain
//! to the given roots, name = the host connected to), and a client
//! certificate is presented when the server asks for one. TLS 1.3 only, as
//! everywhere in the mesh (Consul's default `tls_min_version` allows it).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::provider::provider;
use crate::{Error, Result};

/// A client certificate and its key, both PEM.
#[derive(Debug, Clone, Copy)]
pub struct ClientCertPem<'a> {
    /// The certificate chain, leaf first.
    pub chain: &'a str,
    /// Its private key: PKCS#8, SEC1 (`EC PRIVATE KEY`, as `consul tls
    /// cert create` writes) or PKCS#1.
    pub key: &'a str,
}

/// A client config trusting the roots in `ca_pem` (one or more
/// certificates), presenting `client` if given. ALPN `http/1.1`.
pub fn ca_client_config(
    ca_pem: &str,
    client: Option<ClientCertPem<'_>>,
) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let mut found = false;
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| Error::BadPem {
            what: "CA certificate",
            detail: e.to_string(),
        })?;
        roots
            .add(cert)
            .map_err(|e| Error::BadCertificate(format!("CA certificate: {e}")))?;
        found = true;
    }
    if !found {
        return Err(Error::MissingPem {
            what: "CERTIFICATE",
        });
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| Error::BadCertificate(format!("cannot build a verifier from the CA: {e}")))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let chain = CertificateDer::pem_slice_iter(pem.chain.as_bytes())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::BadPem {
                    what: "client certificate",
                    detail: e.to_string(),
                })?;
            if chain.is_empty() {
                return Err(Error::MissingPem {
                    what: "CERTIFICATE",
                });
            }
            let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
                .map_err(|e| Error::BadKey(e.to_string()))?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_input_without_a_certificate_and_bad_keys() {
        let err = ca_client_config("nothing here", None)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("CERTIFICATE")));
        let ca = rcgen::generate_simple_self_signed(vec!["consul".into()])
            .unwrap_or_else(|e| panic!("{e}"));
        let pem = ca.cert.pem();
        assert!(ca_client_config(&pem, None).is_ok());
        let bad = ca_client_config(
            &pem,
            Some(ClientCertPem {
                chain: &pem,
                key: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            }),
        );
        assert!(bad.is_err());
        let good = ca_client_config(
            &pem,
            Some(ClientCertPem {
                chain: &pem,
                key: &ca.signing_key.serialize_pem(),
            }),
        );
        assert!(good.is_ok(), "{:?}", good.err());
    }
}
