//! The live identity and trust bundle of a process, swapped atomically.
//!
//! Every rustls config built by [`crate::server_config`] and
//! [`crate::client_config`] reads from one `IdentityStore` at handshake time,
//! so `set_identity` / `set_bundle` take effect on the next handshake with no
//! config rebuild. Established connections keep the keys they negotiated and
//! are not disturbed.

use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::ResolvesClientCert;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};

use crate::bundle::TrustBundle;
use crate::error::{Error, Result};
use crate::identity::Identity;

/// The trust bundle plus what rustls needs from it, built once per bundle.
pub(crate) struct TrustState {
    pub(crate) bundle: TrustBundle,
    pub(crate) roots: Arc<RootCertStore>,
    /// webpki client verifier that requires a client certificate.
    pub(crate) client_required: Arc<dyn ClientCertVerifier>,
    /// webpki client verifier that also accepts no client certificate.
    pub(crate) client_optional: Arc<dyn ClientCertVerifier>,
}

impl TrustState {
    fn build(bundle: TrustBundle) -> Result<Self> {
        let roots = bundle.root_store()?;
        let provider = crate::provider::provider();
        let builder =
            || WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        let verifier_err = |e: rustls::server::VerifierBuilderError| {
            Error::BadCertificate(format!(
                "cannot build a verifier from the trust bundle: {e}"
            ))
        };
        let client_required = builder().build().map_err(verifier_err)?;
        let client_optional = builder()
            .allow_unauthenticated()
            .build()
            .map_err(verifier_err)?;
        Ok(TrustState {
            bundle,
            roots,
            client_required,
            client_optional,
        })
    }
}

/// The process's current certificate (if any yet) and trust bundle.
///
/// Implements rustls' [`ResolvesServerCert`] and [`ResolvesClientCert`]; share
/// it as `Arc<IdentityStore>`.
pub struct IdentityStore {
    identity: ArcSwapOption<Identity>,
    trust: ArcSwap<TrustState>,
}

impl fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityStore")
            .field("identity", &self.identity.load().as_deref())
            .field("bundle", &self.trust.load().bundle)
            .finish()
    }
}

impl IdentityStore {
    /// A store that trusts `bundle` and holds no certificate yet (handshakes
    /// that need our certificate fail until [`IdentityStore::set_identity`]).
    pub fn new(bundle: TrustBundle) -> Result<Arc<Self>> {
        Ok(Arc::new(IdentityStore {
            identity: ArcSwapOption::empty(),
            trust: ArcSwap::from_pointee(TrustState::build(bundle)?),
        }))
    }

    /// A store holding `identity` and trusting `bundle`.
    pub fn with_identity(identity: Identity, bundle: TrustBundle) -> Result<Arc<Self>> {
        let store = Self::new(bundle)?;
        store.set_identity(identity);
        Ok(store)
    }

    /// Replaces the certificate presented on the next handshakes.
    pub fn set_identity(&self, identity: Identity) {
        tracing::info!(
            spiffe_id = %identity.spiffe_id(),
            not_after = %humantime::format_rfc3339_seconds(identity.not_after()),
            "identity rotated"
        );
        self.identity.store(Some(Arc::new(identity)));
    }

    /// Replaces the trusted roots used to verify peers on the next handshakes.
    /// Errors (and keeps the old bundle) if the bundle is empty or unusable.
    pub fn set_bundle(&self, bundle: TrustBundle) -> Result<()> {
        let state = TrustState::build(bundle)?;
        tracing::info!(roots = state.bundle.len(), "trust bundle replaced");
        self.trust.store(Arc::new(state));
        Ok(())
    }

    /// The current identity, if one has been set.
    pub fn identity(&self) -> Option<Arc<Identity>> {
        self.identity.load_full()
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> TrustBundle {
        self.trust.load().bundle.clone()
    }

    pub(crate) fn trust(&self) -> Arc<TrustState> {
        self.trust.load_full()
    }

    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.identity.load().as_ref().map(|id| id.certified_key())
    }
}

impl ResolvesServerCert for IdentityStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.certified_key();
        if key.is_none() {
            tracing::warn!("inbound TLS handshake refused: no certificate issued yet");
        }
        key
    }
}

impl ResolvesClientCert for IdentityStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }

    fn has_certs(&self) -> bool {
        self.identity.load().is_some()
    }
}
