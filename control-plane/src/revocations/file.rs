//! Revocations in a JSON file in the CA directory (`revoked-tokens.json`,
//! 0600, replaced atomically): the store when the catalog is static and
//! there is no Consul to share. Each replica reads its own CA directory,
//! so with several replicas and a static catalog a revocation must be
//! written into every replica's copy.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Revocation;

/// Version of the file format.
const FILE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Default)]
struct RevokedFile {
    version: u32,
    revoked: Vec<Revocation>,
}

/// The revocation file of one CA directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// The store at `path` (a missing file holds no revocation).
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every revocation in the file.
    pub fn read(&self) -> Result<Vec<Revocation>, String> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        let file: RevokedFile = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{}: {e}; fix the file (it lists revoked join tokens)",
                self.path.display()
            )
        })?;
        if file.version != FILE_VERSION {
            return Err(format!(
                "{}: unsupported version {}",
                self.path.display(),
                file.version
            ));
        }
        Ok(file.revoked)
    }

    /// Replaces the file's list: a temporary file (0600), fsync, rename.
    pub fn write(&self, revoked: Vec<Revocation>) -> Result<(), String> {
        let fail = |e: std::io::Error| format!("{}: {e}", self.path.display());
        let json = serde_json::to_vec_pretty(&RevokedFile {
            version: FILE_VERSION,
            revoked,
        })
        .map_err(|e| fail(std::io::Error::other(e)))?;
        crate::private_file::write_atomic(&self.path, &json).map_err(fail)
    }
}
