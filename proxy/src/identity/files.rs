//! Identity from files: `--identity-dir` (`identity.pem`, `identity-key.pem`)
//! and `--trust-bundle`, re-read when they change. A bad file is logged and
//! the identity in force stays.
//!
//! With control-plane issuance only the bundle file is watched (a root
//! rotation is rolled out by replacing it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tether_certs::Identity;

use super::IdentityMetrics;
use super::{certs, read_bundle, IdentityError, MeshIdentity};

/// Where a file-fed identity comes from.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    /// Directory with `identity.pem` (chain) and `identity-key.pem`.
    pub dir: PathBuf,
    /// PEM file with the trusted root(s).
    pub bundle: PathBuf,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}

/// Loads the identity and bundle; a missing or bad file is an error.
pub fn load(
    files: &IdentityFiles,
    metrics: IdentityMetrics,
) -> Result<Arc<MeshIdentity>, IdentityError> {
    let bundle = read_bundle(&files.bundle)?;
    let identity = certs(
        &format!("identity in {}", files.dir.display()),
        Identity::load_dir(&files.dir),
    )?;
    let trust_domain = identity.spiffe_id().trust_domain().to_owned();
    let mesh = MeshIdentity::new(bundle, trust_domain, metrics)?;
    mesh.set(identity);
    Ok(mesh)
}

/// Re-reads the files every `every` and swaps in what changed: the
/// certificate and key from `dir` (when set) and the bundle.
pub async fn watch(
    identity: Arc<MeshIdentity>,
    dir: Option<PathBuf>,
    bundle: PathBuf,
    every: Duration,
) {
    let fingerprint = || {
        let mtime = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut stamps: Vec<Option<SystemTime>> = vec![mtime(bundle.clone())];
        if let Some(dir) = &dir {
            stamps.push(mtime(dir.join(tether_certs::IDENTITY_CERT_FILE)));
            stamps.push(mtime(dir.join(tether_certs::IDENTITY_KEY_FILE)));
        }
        stamps
    };
    let mut last = fingerprint();
    loop {
        tokio::time::sleep(every).await;
        let now = fingerprint();
        if now == last {
            continue;
        }
        last = now;
        let reloaded = read_bundle(&bundle)
            .and_then(|b| identity.set_bundle(b))
            .and_then(|()| match &dir {
                Some(dir) => certs("identity", Identity::load_dir(dir)).map(|i| identity.set(i)),
                None => Ok(()),
            });
        match reloaded {
            Ok(()) => tracing::info!("mesh identity files reloaded"),
            Err(error) => {
                tracing::error!(%error, "identity files changed but cannot be used; keeping the current identity")
            }
        }
    }
}
