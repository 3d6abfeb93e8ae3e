//! Certificate verifiers that read the *current* trust bundle on every
//! handshake and check SPIFFE identities instead of DNS names.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::{Error, Result};
use crate::spiffe_id::SpiffeId;
use crate::store::IdentityStore;
use crate::x509::spiffe_id_of;

/// The SPIFFE ID of a peer from the chain it presented (leaf first), e.g.
/// `conn.peer_certificates()` after the handshake. The inbound path hands it
/// to authorization and telemetry.
pub fn peer_spiffe_id(certs: &[CertificateDer<'_>]) -> Result<SpiffeId> {
    let leaf = certs.first().ok_or_else(|| {
        Error::NoPeerIdentity(
            "the peer presented no certificate (plaintext or no client auth)".into(),
        )
    })?;
    spiffe_id_of(leaf)
}

fn other(e: Error) -> rustls::Error {
    rustls::Error::Other(rustls::OtherError(Arc::new(e)))
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    crate::provider::provider().signature_verification_algorithms
}

/// Verifies client chains against the store's current bundle (rustls'
/// webpki verifier, rebuilt once per bundle) and requires a mesh identity.
#[derive(Debug)]
pub(crate) struct MeshClientVerifier {
    pub(crate) store: Arc<IdentityStore>,
    pub(crate) mandatory: bool,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The bundle can change under us, so no hints: mesh clients have a
        // single certificate and send it regardless.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let trust = self.store.trust();
        let inner = if self.mandatory {
            &trust.client_required
        } else {
            &trust.client_optional
        };
        let verified = inner.verify_client_cert(end_entity, intermediates, now)?;
        spiffe_id_of(end_entity).map_err(other)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Verifies a server chain against the store's current bundle, ignores DNS
/// names, and requires the leaf's SPIFFE ID to be `expected`.
#[derive(Debug)]
pub(crate) struct MeshServerVerifier {
    pub(crate) store: Arc<IdentityStore>,
    pub(crate) expected: SpiffeId,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let trust = self.store.trust();
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &trust.roots,
            intermediates,
            now,
            algorithms().all,
        )?;
        let presented = spiffe_id_of(end_entity).map_err(other)?;
        if presented != self.expected {
            tracing::warn!(expected = %self.expected, %presented, "server identity mismatch");
            return Err(other(Error::IdentityMismatch {
                expected: self.expected.clone(),
                presented,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}
