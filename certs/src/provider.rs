//! The one crypto provider of the crate, a leaf every module that builds
//! or checks TLS material (keys, stores, verifiers, configs) uses.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The crypto provider every mesh config uses: rustls' ring provider,
/// chosen explicitly so the process-wide default (possibly aws-lc, possibly
/// unset) never matters.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
