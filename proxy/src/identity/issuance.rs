//! Certificates from the control plane's CA.
//!
//! - Start: a certificate saved in the state directory is used at once if
//!   it is this service's and still valid (a restart with the control plane
//!   down keeps mTLS working).
//! - First issue: a fresh P-256 key, a CSR for our SPIFFE ID, and the join
//!   token from `--token-file` (re-read on every attempt, so a fixed file
//!   applies without a restart).
//! - Renewal: at `renew_fraction` of the certificate's life (two thirds by
//!   default), a new key and CSR, authenticated by the current certificate
//!   as the TLS client certificate. Failures retry with jittered backoff up
//!   to 30 s until the certificate expires; the old one stays in force.
//!
//! Here: the settings and the restart path; the requests themselves and
//! the renewal loop are in `renewal` (above the control-plane client,
//! which needs a [`MeshIdentity`]). The private key never leaves the process
//! except into the state directory (`identity-key.pem`, 0600), written
//! atomically.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tether_certs::{Identity, SpiffeId};

use super::MeshIdentity;

/// Renew at two thirds of a certificate's life: a third (8 h of the
/// default 24 h) remains to ride out a control-plane outage.
pub const DEFAULT_RENEW_FRACTION: f64 = 2.0 / 3.0;
/// How the proxy obtains certificates from the control plane.
#[derive(Debug, Clone)]
pub struct IssuanceSettings {
    /// The control plane (`https://host:port`).
    pub url: String,
    /// The service this proxy is.
    pub service: String,
    /// PEM file with the mesh's root(s), watched for changes.
    pub bundle: PathBuf,
    /// Trust domain; default: the one the bundle's roots name.
    pub trust_domain: Option<String>,
    /// Join token for the first certificate.
    pub token_file: Option<PathBuf>,
    /// Where the certificate and key are kept across restarts.
    pub state_dir: Option<PathBuf>,
    /// Renew at this fraction of the certificate's life (0 < f < 1).
    pub renew_fraction: f64,
    /// How often the bundle file is checked for changes.
    pub bundle_reload_interval: Duration,
}

/// Puts the certificate saved in the state directory in force, if it is
/// for `service` in our trust domain and still valid. Returns whether it was.
pub fn restore(identity: &MeshIdentity, settings: &IssuanceSettings) -> bool {
    let Some(dir) = &settings.state_dir else {
        return false;
    };
    if !dir.join(tether_certs::IDENTITY_CERT_FILE).exists() {
        return false;
    }
    let wanted = SpiffeId::service(identity.trust_domain(), &settings.service).ok();
    match Identity::load_dir(dir) {
        Ok(saved) if Some(saved.spiffe_id()) != wanted.as_ref() => {
            tracing::warn!(found = %saved.spiffe_id(), "the certificate in the state directory is for another identity; ignoring it");
            false
        }
        Ok(saved) if saved.is_expired_at(SystemTime::now()) => {
            tracing::info!(path = %dir.display(), "the certificate in the state directory has expired; a new one is needed");
            false
        }
        Ok(saved) => {
            tracing::info!(path = %dir.display(), "serving with the certificate from the state directory");
            identity.set(saved);
            true
        }
        Err(error) => {
            tracing::warn!(%error, path = %dir.display(), "cannot use the certificate in the state directory");
            false
        }
    }
}
