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
//! The private key never leaves the process except into the state
//! directory (`identity-key.pem`, 0600), written atomically.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use tether_api::CertificateRequest;
use tether_certs::{Identity, IdentityKey, SpiffeId};

use super::IdentityMetrics;
use super::MeshIdentity;
use crate::control_client::{ControlCallError, ControlClientError, ControlPlaneClient};
use crate::resilience::Backoff;

/// Renew at two thirds of a certificate's life: a third (8 h of the
/// default 24 h) remains to ride out a control-plane outage.
pub const DEFAULT_RENEW_FRACTION: f64 = 2.0 / 3.0;
/// First retry delay after a failed request; doubles up to [`MAX_RETRY`],
/// with equal jitter (a random time between half and all of the ceiling).
const MIN_RETRY: Duration = Duration::from_millis(250);
/// Longest retry delay: a refused token is retried twice a minute, not
/// hammered, and a control plane that comes back is found quickly.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Longest a certificate request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest pause between renewals, whatever the certificate says.
const MIN_RENEW_PAUSE: Duration = Duration::from_millis(500);

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

/// Why one certificate request failed.
#[derive(Debug, thiserror::Error)]
pub enum IssuanceError {
    /// No valid certificate to renew with and no token to start with.
    #[error("no valid certificate held and no --token-file to obtain one with")]
    NoCredentials,
    /// The token file cannot be read.
    #[error("join token {}: {source}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Key or CSR generation, or the returned chain, failed.
    #[error("{0}")]
    Certs(#[from] tether_certs::Error),
    /// The control-plane client could not be built.
    #[error("{0}")]
    Client(#[from] ControlClientError),
    /// The request did not complete.
    #[error("control plane unreachable: {0}")]
    Transport(String),
    /// The control plane refused.
    #[error("control plane refused the certificate request ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// Its explanation.
        message: String,
    },
    /// The certificate is for another identity than asked.
    #[error("the control plane returned a certificate for {got}, not {wanted}")]
    WrongIdentity {
        /// What we asked for.
        wanted: String,
        /// What came back.
        got: String,
    },
}

impl From<ControlCallError> for IssuanceError {
    fn from(error: ControlCallError) -> Self {
        match error {
            ControlCallError::Transport(detail) => IssuanceError::Transport(detail),
            ControlCallError::Status { status, message } => {
                IssuanceError::Refused { status, message }
            }
            decode @ ControlCallError::Decode { .. } => {
                IssuanceError::Transport(decode.to_string())
            }
        }
    }
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

/// Keeps a valid certificate in force, forever: obtains one if none is
/// held, then renews each one at `renew_fraction` of its life.
pub async fn run(
    identity: Arc<MeshIdentity>,
    settings: IssuanceSettings,
    metrics: IdentityMetrics,
) {
    loop {
        let due = match identity.current() {
            Some(held) if !held.is_expired_at(SystemTime::now()) => held
                .renewal_time(settings.renew_fraction)
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .max(MIN_RENEW_PAUSE),
            _ => Duration::ZERO,
        };
        tokio::time::sleep(due).await;
        let mut failures = 0u32;
        loop {
            let kind = if identity.ready() { "renew" } else { "issue" };
            match obtain(&identity, &settings).await {
                Ok(fresh) => {
                    metrics
                        .certificate_requests
                        .with_label_values(&[kind, "ok"])
                        .inc();
                    save(&settings, &fresh);
                    identity.set(fresh);
                    break;
                }
                Err(error) => {
                    metrics
                        .certificate_requests
                        .with_label_values(&[kind, "error"])
                        .inc();
                    failures = failures.saturating_add(1);
                    let delay = retry_delay(failures);
                    tracing::error!(%error, kind, retry_in = ?delay, "could not obtain a certificate");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

fn retry_delay(failures: u32) -> Duration {
    Backoff::equal(MIN_RETRY, MAX_RETRY).delay(failures.saturating_add(1))
}

fn read_token(path: &Path) -> Result<String, IssuanceError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|source| IssuanceError::Token {
            path: path.to_owned(),
            source,
        })
}

/// One certificate request: a new key, a CSR for our identity, sent with
/// the current certificate (renewal) or the join token (first issue).
async fn obtain(
    identity: &MeshIdentity,
    settings: &IssuanceSettings,
) -> Result<Identity, IssuanceError> {
    let token = if identity.ready() {
        None
    } else {
        let path = settings
            .token_file
            .as_deref()
            .ok_or(IssuanceError::NoCredentials)?;
        Some(read_token(path)?)
    };
    let id = SpiffeId::service(identity.trust_domain(), &settings.service)?;
    let key = IdentityKey::generate()?;
    let request = CertificateRequest {
        csr_pem: key.csr_pem(&id)?,
    };
    // A pool per request: a connection opened without a client certificate
    // (first issue) must never be reused once we hold one.
    let client = ControlPlaneClient::new(&settings.url, Some(identity), Duration::from_secs(1))?;
    let issued = client
        .certificate(&request, token.as_deref(), REQUEST_TIMEOUT)
        .await?;
    let fresh = Identity::new(&key, &issued.chain_pem)?;
    if fresh.spiffe_id() != &id {
        return Err(IssuanceError::WrongIdentity {
            wanted: id.to_string(),
            got: fresh.spiffe_id().to_string(),
        });
    }
    Ok(fresh)
}

/// Writes the certificate and key to the state directory (atomically; the
/// key 0600). A failure is logged: serving goes on from memory.
fn save(settings: &IssuanceSettings, identity: &Identity) {
    let Some(dir) = &settings.state_dir else {
        return;
    };
    let written = std::fs::create_dir_all(dir)
        .map_err(|e| e.to_string())
        .and_then(|()| identity.write_dir(dir).map_err(|e| e.to_string()));
    if let Err(error) = written {
        tracing::warn!(path = %dir.display(), %error, "could not save the certificate to the state directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_to_the_cap() {
        for _ in 0..50 {
            assert!(retry_delay(1) <= MIN_RETRY * 2);
            assert!(retry_delay(40) <= MAX_RETRY);
            assert!(retry_delay(40) >= MAX_RETRY / 2);
        }
    }

    #[test]
    fn a_token_file_is_trimmed_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("token");
        std::fs::write(&path, "  abc\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_token(&path).ok().as_deref(), Some("abc"));
        let missing = read_token(&dir.path().join("nope")).err();
        assert!(missing.is_some_and(|e| e.to_string().contains("nope")));
    }
}
