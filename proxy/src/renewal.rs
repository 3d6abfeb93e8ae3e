//! Obtains and renews the proxy's certificate from the control plane's CA
//! (see `identity::issuance` for the lifecycle): a fresh key and CSR per
//! request, with the join token or the current certificate, retried with
//! jittered backoff, each new certificate saved to the state directory and
//! put in force.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use tether_api::CertificateRequest;
use tether_certs::{Identity, IdentityKey, SpiffeId};

use crate::control_client::{ControlCallError, ControlClientError, ControlPlaneClient};
use crate::identity::{IdentityMetrics, IssuanceSettings, MeshIdentity};
use crate::resilience::Backoff;

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
        path: std::path::PathBuf,
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
