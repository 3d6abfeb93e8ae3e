//! The proxy's mesh identity: its certificate and key, and the trust bundle,
//! held in a `tether_certs::IdentityStore` so rotation applies to the next
//! handshake without touching established connections.
//!
//! Source today: files (`--identity-dir` with `identity.pem` and
//! `identity-key.pem`, `--trust-bundle`), re-read when they change — the
//! form an operator, a cert-manager or the control plane's issuance writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tether_certs::{ClientAuth, ClientConfigs, Identity, IdentityStore, SpiffeId, TrustBundle};

use crate::metrics::Metrics;
use crate::transport::TlsTarget;

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
    #[error("cannot form a SPIFFE ID for service `{0}`: no identity held, or the name is not a valid service name")]
    NoTarget(String),
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
pub struct IdentityFiles {
    /// Directory with `identity.pem` (chain) and `identity-key.pem`.
    pub dir: PathBuf,
    /// PEM file with the trusted root(s).
    pub bundle: PathBuf,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

/// The proxy's identity and TLS configuration factory.
pub struct MeshIdentity {
    store: Arc<IdentityStore>,
    configs: ClientConfigs,
    files: IdentityFiles,
    metrics: Metrics,
}

fn certs<T>(context: &str, result: tether_certs::Result<T>) -> Result<T, IdentityError> {
    result.map_err(|source| IdentityError::Certs {
        context: context.to_owned(),
        source,
    })
}

fn read_bundle(path: &Path) -> Result<TrustBundle, IdentityError> {
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
    /// Loads the identity and bundle; a missing or bad file is an error.
    pub fn load(files: IdentityFiles, metrics: Metrics) -> Result<Arc<Self>, IdentityError> {
        let bundle = read_bundle(&files.bundle)?;
        let identity = certs(
            &format!("identity in {}", files.dir.display()),
            Identity::load_dir(&files.dir),
        )?;
        metrics.identity_expiry.set(unix(identity.not_after()));
        tracing::info!(id = %identity.spiffe_id(), expires = ?identity.not_after(), "mesh identity loaded");
        let store = certs(
            "trust bundle",
            IdentityStore::with_identity(identity, bundle),
        )?;
        let configs = ClientConfigs::new(Arc::clone(&store));
        Ok(Arc::new(Self {
            store,
            configs,
            files,
            metrics,
        }))
    }

    /// The identity in force.
    pub fn current(&self) -> Option<Arc<Identity>> {
        self.store.identity()
    }

    /// Whether a certificate that has not expired is held.
    pub fn ready(&self) -> bool {
        self.current()
            .is_some_and(|i| !i.is_expired_at(SystemTime::now()))
    }

    /// The SPIFFE ID of `service` in our trust domain.
    pub fn id_of(&self, service: &str) -> Option<SpiffeId> {
        let ours = self.current()?;
        SpiffeId::service(ours.spiffe_id().trust_domain(), service).ok()
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

    /// Re-reads the files every `every` and swaps in what changed. A bad
    /// file is logged; the identity in force stays.
    pub async fn watch(self: Arc<Self>) {
        let every = self.files.reload_interval;
        let mut last = self.fingerprint();
        loop {
            tokio::time::sleep(every).await;
            let now = self.fingerprint();
            if now == last {
                continue;
            }
            last = now;
            match self.reload() {
                Ok(()) => tracing::info!("mesh identity reloaded"),
                Err(error) => {
                    tracing::error!(%error, "identity files changed but cannot be used; keeping the current identity")
                }
            }
        }
    }

    fn fingerprint(&self) -> Vec<Option<SystemTime>> {
        let mtime = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        vec![
            mtime(self.files.dir.join(tether_certs::IDENTITY_CERT_FILE)),
            mtime(self.files.dir.join(tether_certs::IDENTITY_KEY_FILE)),
            mtime(self.files.bundle.clone()),
        ]
    }

    fn reload(&self) -> Result<(), IdentityError> {
        let bundle = read_bundle(&self.files.bundle)?;
        let identity = certs("identity", Identity::load_dir(&self.files.dir))?;
        certs("trust bundle", self.store.set_bundle(bundle))?;
        self.metrics.identity_expiry.set(unix(identity.not_after()));
        self.store.set_identity(identity);
        Ok(())
    }

    /// What `/config` shows: identity and expiry, never the key.
    pub fn describe(&self) -> serde_json::Value {
        match self.current() {
            Some(identity) => serde_json::json!({
                "spiffe_id": identity.spiffe_id().to_string(),
                "not_after_unix": unix(identity.not_after()),
                "renew_at_unix": unix(identity.renew_at()),
                "trust_bundle_roots": self.store.bundle().len(),
            }),
            None => serde_json::Value::Null,
        }
    }
}

fn unix(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
