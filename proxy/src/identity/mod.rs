//! The proxy's mesh identity: its certificate and key, and the trust bundle,
//! held in a `tether_certs::IdentityStore` so rotation applies to the next
//! handshake without touching established connections.
//!
//! Two sources fill it:
//! - [`files`]: `--identity-dir` (`identity.pem`, `identity-key.pem`) and
//!   `--trust-bundle`, re-read when they change — what an operator or an
//!   external issuer writes;
//! - [`issuance`]: the control plane's CA. The key is generated here and
//!   never leaves the process; a join token proves the service on first
//!   issue, the current certificate on renewal.

mod certificate_metrics;
pub mod files;
pub mod issuance;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tether_certs::{ClientAuth, ClientConfigs, Identity, IdentityStore, SpiffeId, TrustBundle};
use tokio::sync::watch;

use crate::transport::TlsTarget;

pub use certificate_metrics::IdentityMetrics;
pub use files::IdentityFiles;
pub use issuance::IssuanceSettings;

/// Why the identity could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No SPIFFE ID can be formed for a target service.
    #[error("cannot form a SPIFFE ID for service `{0}`: the name is not a valid service name")]
    NoTarget(String),
    /// The trust domain is unknown.
    #[error("the trust bundle names no trust domain (no spiffe:// URI SAN on its roots): pass --trust-domain")]
    NoTrustDomain,
    /// The certificate, key or bundle is not usable.
    #[error("{context}: {source}")]
    Certs {
        /// What was being loaded.
        context: String,
        /// Why.
        #[source]
        source: tether_certs::Error,
    },
}

/// Where the identity comes from.
#[derive(Debug, Clone)]
pub enum IdentitySource {
    /// Files an operator or an external issuer keeps up to date.
    Files(IdentityFiles),
    /// Certificates signed by the control plane's CA.
    ControlPlane(IssuanceSettings),
}

/// The proxy's identity and TLS configuration factory.
pub struct MeshIdentity {
    store: Arc<IdentityStore>,
    configs: ClientConfigs,
    trust_domain: String,
    renew_fraction: f64,
    metrics: IdentityMetrics,
    changed: watch::Sender<u64>,
}

pub(crate) fn certs<T>(context: &str, result: tether_certs::Result<T>) -> Result<T, IdentityError> {
    result.map_err(|source| IdentityError::Certs {
        context: context.to_owned(),
        source,
    })
}

/// Reads a PEM trust bundle file.
pub(crate) fn read_bundle(path: &Path) -> Result<TrustBundle, IdentityError> {
    let pem = std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })?;
    certs(
        &format!("trust bundle {}", path.display()),
        TrustBundle::from_pem(&pem),
    )
}

impl MeshIdentity {
    /// An identity trusting `bundle` in `trust_domain`, holding no
    /// certificate yet (inbound handshakes fail and `/ready` answers 503
    /// until [`MeshIdentity::set`]).
    pub fn new(
        bundle: TrustBundle,
        trust_domain: String,
        metrics: IdentityMetrics,
    ) -> Result<Arc<Self>, IdentityError> {
        let store = certs("trust bundle", IdentityStore::new(bundle))?;
        let configs = ClientConfigs::new(Arc::clone(&store));
        Ok(Arc::new(Self {
            store,
            configs,
            trust_domain,
            renew_fraction: issuance::DEFAULT_RENEW_FRACTION,
            metrics,
            changed: watch::Sender::new(0),
        }))
    }

    /// Starts from `source`: loads the files (a missing or bad file is an
    /// error), or, for issuance, loads the bundle and works out the trust
    /// domain; the certificate then comes from `renewal::run`, above this module.
    pub fn start(
        source: &IdentitySource,
        metrics: IdentityMetrics,
    ) -> Result<Arc<Self>, IdentityError> {
        match source {
            IdentitySource::Files(files) => files::load(files, metrics),
            IdentitySource::ControlPlane(settings) => {
                let bundle = read_bundle(&settings.bundle)?;
                let trust_domain = match &settings.trust_domain {
                    Some(domain) => domain.clone(),
                    None => bundle
                        .trust_domains()
                        .into_iter()
                        .next()
                        .ok_or(IdentityError::NoTrustDomain)?,
                };
                let mut identity = Self::new(bundle, trust_domain, metrics)?;
                if let Some(this) = Arc::get_mut(&mut identity) {
                    this.renew_fraction = settings.renew_fraction;
                }
                Ok(identity)
            }
        }
    }

    /// Puts `identity` in force for the next handshakes.
    pub fn set(&self, identity: Identity) {
        self.metrics.expiry.set(unix(identity.not_after()));
        tracing::info!(id = %identity.spiffe_id(), expires = %humantime::format_rfc3339_seconds(identity.not_after()), "mesh identity in force");
        self.store.set_identity(identity);
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Replaces the trusted roots for the next handshakes.
    pub fn set_bundle(&self, bundle: TrustBundle) -> Result<(), IdentityError> {
        certs("trust bundle", self.store.set_bundle(bundle))
    }

    /// The identity in force.
    pub fn current(&self) -> Option<Arc<Identity>> {
        self.store.identity()
    }

    /// The store behind the TLS configs (for the control-plane client).
    pub fn store(&self) -> &Arc<IdentityStore> {
        &self.store
    }

    /// The counter of failed TLS handshakes (by direction and reason).
    pub fn handshake_failures(&self) -> prometheus::IntCounterVec {
        self.metrics.tls_handshake_errors.clone()
    }

    /// The mesh's trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Fraction of its life after which the certificate is renewed.
    pub fn renew_fraction(&self) -> f64 {
        self.renew_fraction
    }

    /// Whether a certificate that has not expired is held.
    pub fn ready(&self) -> bool {
        self.current()
            .is_some_and(|i| !i.is_expired_at(SystemTime::now()))
    }

    /// Resolves once a certificate that has not expired is held.
    pub async fn wait_ready(&self) {
        let mut changes = self.changed.subscribe();
        while !self.ready() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// The SPIFFE ID of `service` in our trust domain.
    pub fn id_of(&self, service: &str) -> Option<SpiffeId> {
        SpiffeId::service(&self.trust_domain, service).ok()
    }

    /// TLS settings to reach `service`: its identity is required of the
    /// endpoint; ALPN offers exactly the protocol the pool speaks.
    pub fn target(&self, service: &str, http2: bool) -> Result<(String, TlsTarget), IdentityError> {
        let expected = self
            .id_of(service)
            .ok_or_else(|| IdentityError::NoTarget(service.to_owned()))?;
        let shared = certs("client TLS config", self.configs.get(&expected))?;
        let mut config = (*shared).clone();
        config.alpn_protocols = vec![if http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let server_name = certs("server name", expected.server_name())?;
        let target = TlsTarget {
            config: Arc::new(config),
            server_name,
            failures: self.metrics.tls_handshake_errors.clone(),
        };
        Ok((expected.to_string(), target))
    }

    /// The inbound acceptor: client certificates required, or optional in
    /// permissive mode (plaintext is then let through by the acceptor).
    pub fn acceptor(&self, permissive: bool) -> Result<tokio_rustls::TlsAcceptor, IdentityError> {
        let auth = if permissive {
            ClientAuth::Optional
        } else {
            ClientAuth::Required
        };
        let config = certs(
            "server TLS config",
            tether_certs::server_config(&self.store, auth),
        )?;
        Ok(tokio_rustls::TlsAcceptor::from(config))
    }

    /// What `/config` shows: identity and expiry, never the key.
    pub fn describe(&self) -> serde_json::Value {
        match self.current() {
            Some(identity) => serde_json::json!({
                "spiffe_id": identity.spiffe_id().to_string(),
                "not_after_unix": unix(identity.not_after()),
                "renew_at_unix": unix(identity.renewal_time(self.renew_fraction)),
                "trust_bundle_roots": self.store.bundle().len(),
            }),
            None => serde_json::json!({
                "spiffe_id": null,
                "trust_domain": self.trust_domain,
                "trust_bundle_roots": self.store.bundle().len(),
            }),
        }
    }
}

pub(crate) fn unix(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
