//! A throwaway mesh PKI for tests: a CA, identities issued to files in the
//! layout `tether-proxy --identity-dir` reads, and the trust bundle.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tether_certs::{CertificateAuthority, Identity, IdentityKey, SpiffeId};

/// Trust domain of test meshes.
pub const TRUST_DOMAIN: &str = "tether.local";

/// A CA with its files in a temporary directory.
pub struct TestPki {
    /// The CA.
    pub ca: CertificateAuthority,
    dir: tempfile::TempDir,
}

impl TestPki {
    /// A fresh CA.
    pub fn new() -> Self {
        let ca = CertificateAuthority::generate(TRUST_DOMAIN, Duration::from_secs(86_400))
            .unwrap_or_else(|e| panic!("CA: {e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("bundle.pem"), ca.cert_pem())
            .unwrap_or_else(|e| panic!("{e}"));
        Self { ca, dir }
    }

    /// The trust bundle file (this CA's root).
    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle.pem")
    }

    /// An identity for `service`, valid for `lifetime`, as an in-memory value.
    pub fn identity(&self, service: &str, lifetime: Duration) -> Identity {
        let now = SystemTime::now();
        self.identity_window(service, now - Duration::from_secs(60), now + lifetime)
    }

    /// An identity valid from `not_before` to `not_after` (for expired certs).
    pub fn identity_window(
        &self,
        service: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Identity {
        let id = SpiffeId::service(TRUST_DOMAIN, service).unwrap_or_else(|e| panic!("{e}"));
        let key = IdentityKey::generate().unwrap_or_else(|e| panic!("{e}"));
        let csr = key.csr_pem(&id).unwrap_or_else(|e| panic!("{e}"));
        let issued = self
            .ca
            .sign_csr_window(&csr, &id, not_before, not_after)
            .unwrap_or_else(|e| panic!("sign: {e}"));
        Identity::new(&key, &issued.chain_pem).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Issues `service` a certificate into `dir` (created if needed).
    pub fn issue_to(&self, service: &str, lifetime: Duration, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
        self.identity(service, lifetime)
            .write_dir(dir)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Issues `service` a certificate into a new directory under the PKI's.
    pub fn issue(&self, service: &str) -> PathBuf {
        let dir = self.dir.path().join(service);
        self.issue_to(service, Duration::from_secs(3600), &dir);
        dir
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
