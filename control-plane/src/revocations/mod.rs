//! Revoked join tokens, shared by every control-plane replica.
//!
//! Signed join tokens (`tether_certs::TokenKey`) are verified by any replica
//! from the CA alone; what a replica cannot know by itself is that an
//! operator withdrew one. That list lives
//!
//! - in Consul's KV store when mesh.yaml's catalog is Consul: one key per
//!   token, `tether/join-tokens/revoked/<id>` ([`KV_PREFIX`]), whose value is
//!   a [`Revocation`] as JSON;
//! - otherwise in `revoked-tokens.json` ([`REVOKED_FILE`]) in the CA
//!   directory.
//!
//! Every token use (a proxy's first certificate, rare) asks the store once:
//! one Consul GET. If the store cannot be asked the token is refused (fail
//! closed, `503` with the reason): a revoked token must never pass because
//! Consul was unreachable. An entry is useless once its token has expired
//! (an expired token is refused anyway): `token prune-revoked` deletes those.

pub mod consul_kv;
pub mod file;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::CatalogConfig;
use consul_kv::ConsulKv;
use file::FileStore;

/// Consul KV prefix of revoked join tokens; the key's last segment is the
/// token id. The control plane needs `read` on it, the operator's
/// `token revoke` needs `write` (docs/identity.md has the ACL policy).
pub const KV_PREFIX: &str = "tether/join-tokens/revoked/";
/// The revocation file in the CA directory (static catalog).
pub const REVOKED_FILE: &str = "revoked-tokens.json";

/// One revoked token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The token's id.
    pub id: String,
    /// Its service, when it was revoked by its text (unknown by id alone).
    #[serde(default)]
    pub service: Option<String>,
    /// When the token expires anyway (Unix seconds), when known: after
    /// that the entry may be deleted.
    #[serde(default)]
    pub expires_unix: Option<u64>,
    /// When it was revoked (Unix seconds).
    pub revoked_unix: u64,
}

impl Revocation {
    /// Whether the token has expired at `now`, so the entry is no longer
    /// needed (never, when the expiry is unknown).
    pub fn prunable(&self, now: SystemTime) -> bool {
        self.expires_unix.is_some_and(|e| unix(now) >= e)
    }
}

/// What `revoke` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// The entry was written.
    Revoked,
    /// The token was already revoked; the first entry is kept.
    AlreadyRevoked(Revocation),
}

/// The store cannot be asked or written.
#[derive(Debug, thiserror::Error)]
#[error("{store}: {detail}")]
pub struct RevocationError {
    /// Which store (Consul's address, or the file).
    pub store: String,
    /// Why.
    pub detail: String,
}

/// Where revocations are kept.
#[derive(Debug, Clone)]
pub enum RevocationStore {
    /// Consul KV under [`KV_PREFIX`] (boxed: far larger than the file variant).
    Consul(Box<ConsulKv>),
    /// [`REVOKED_FILE`] in a CA directory.
    File(FileStore),
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl RevocationStore {
    /// The store for this catalog: Consul's KV when the catalog is Consul,
    /// else the file in `ca_dir`; `None` when that is needed but unknown.
    pub fn for_catalog(catalog: &CatalogConfig, ca_dir: Option<&Path>) -> Option<Self> {
        match catalog {
            CatalogConfig::Consul(consul) => Some(Self::Consul(Box::new(ConsulKv::new(
                consul.as_ref().clone(),
            )))),
            CatalogConfig::Static { .. } => {
                ca_dir.map(|dir| Self::File(FileStore::new(dir.join(REVOKED_FILE))))
            }
        }
    }

    /// Where, for messages: `Consul KV at ADDR under PREFIX`, or the file.
    pub fn describe(&self) -> String {
        match self {
            Self::Consul(kv) => format!("Consul KV at {} under {KV_PREFIX}", kv.address()),
            Self::File(file) => file.path().display().to_string(),
        }
    }

    fn error(&self, detail: impl std::fmt::Display) -> RevocationError {
        RevocationError {
            store: self.describe(),
            detail: detail.to_string(),
        }
    }

    /// The revocation of token `id`, if it is revoked.
    pub async fn lookup(&self, id: &str) -> Result<Option<Revocation>, RevocationError> {
        match self {
            Self::Consul(kv) => {
                let Some(value) = kv
                    .get(&format!("{KV_PREFIX}{id}"))
                    .await
                    .map_err(|e| self.error(e))?
                else {
                    return Ok(None);
                };
                // An entry we cannot read still says "revoked".
                Ok(Some(decode(id, &value).unwrap_or(Revocation {
                    id: id.to_owned(),
                    service: None,
                    expires_unix: None,
                    revoked_unix: 0,
                })))
            }
            Self::File(file) => Ok(file
                .read()
                .map_err(|e| self.error(e))?
                .into_iter()
                .find(|r| r.id == id)),
        }
    }

    /// Records `revocation`, unless its token is already revoked.
    pub async fn revoke(&self, revocation: &Revocation) -> Result<RevokeOutcome, RevocationError> {
        match self {
            Self::Consul(kv) => {
                let key = format!("{KV_PREFIX}{}", revocation.id);
                let value = serde_json::to_vec(revocation).map_err(|e| self.error(e))?;
                if kv
                    .create(&key, Bytes::from(value))
                    .await
                    .map_err(|e| self.error(e))?
                {
                    return Ok(RevokeOutcome::Revoked);
                }
                let existing = self.lookup(&revocation.id).await?;
                Ok(RevokeOutcome::AlreadyRevoked(
                    existing.unwrap_or_else(|| revocation.clone()),
                ))
            }
            Self::File(file) => {
                let mut list = file.read().map_err(|e| self.error(e))?;
                if let Some(existing) = list.iter().find(|r| r.id == revocation.id) {
                    return Ok(RevokeOutcome::AlreadyRevoked(existing.clone()));
                }
                list.push(revocation.clone());
                file.write(list).map_err(|e| self.error(e))?;
                Ok(RevokeOutcome::Revoked)
            }
        }
    }

    /// Every revocation, oldest first.
    pub async fn list(&self) -> Result<Vec<Revocation>, RevocationError> {
        let mut list = match self {
            Self::Consul(kv) => kv
                .list(KV_PREFIX)
                .await
                .map_err(|e| self.error(e))?
                .into_iter()
                .filter_map(|(key, value)| {
                    let id = key.strip_prefix(KV_PREFIX)?;
                    (!id.is_empty()).then(|| {
                        decode(id, &value).unwrap_or(Revocation {
                            id: id.to_owned(),
                            service: None,
                            expires_unix: None,
                            revoked_unix: 0,
                        })
                    })
                })
                .collect(),
            Self::File(file) => file.read().map_err(|e| self.error(e))?,
        };
        list.sort_by(|a, b| (a.revoked_unix, &a.id).cmp(&(b.revoked_unix, &b.id)));
        Ok(list)
    }

    /// Deletes the entries of tokens expired at `now`; returns them.
    pub async fn prune(&self, now: SystemTime) -> Result<Vec<Revocation>, RevocationError> {
        let list = self.list().await?;
        let (expired, kept): (Vec<_>, Vec<_>) = list.into_iter().partition(|r| r.prunable(now));
        if expired.is_empty() {
            return Ok(expired);
        }
        match self {
            Self::Consul(kv) => {
                for r in &expired {
                    kv.delete(&format!("{KV_PREFIX}{}", r.id))
                        .await
                        .map_err(|e| self.error(e))?;
                }
            }
            Self::File(file) => file.write(kept).map_err(|e| self.error(e))?,
        }
        Ok(expired)
    }
}

/// The JSON value of a KV entry; its id is the key's.
fn decode(id: &str, value: &[u8]) -> Option<Revocation> {
    let mut revocation: Revocation = serde_json::from_slice(value).ok()?;
    revocation.id = id.to_owned();
    Some(revocation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn entry(id: &str, expires_unix: Option<u64>) -> Revocation {
        Revocation {
            id: id.to_owned(),
            service: Some("api".to_owned()),
            expires_unix,
            revoked_unix: 100,
        }
    }

    #[tokio::test]
    async fn the_file_store_revokes_once_lists_and_prunes_expired_entries() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = RevocationStore::for_catalog(
            &CatalogConfig::Static {
                services: BTreeMap::new(),
            },
            Some(dir.path()),
        )
        .unwrap_or_else(|| panic!("a file store"));
        assert_eq!(store.lookup("a").await.ok(), Some(None));
        assert_eq!(
            store.revoke(&entry("a", Some(1000))).await.ok(),
            Some(RevokeOutcome::Revoked)
        );
        let mut again = entry("a", Some(1000));
        again.revoked_unix = 200;
        assert_eq!(
            store.revoke(&again).await.ok(),
            Some(RevokeOutcome::AlreadyRevoked(entry("a", Some(1000)))),
            "the first entry is kept"
        );
        assert!(store.revoke(&entry("b", None)).await.is_ok());
        assert_eq!(
            store.lookup("a").await.ok().flatten(),
            Some(entry("a", Some(1000)))
        );
        let mode = std::fs::metadata(dir.path().join(REVOKED_FILE))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
        assert_eq!(mode.ok(), Some(0o600));

        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let pruned = store.prune(at(999)).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(pruned.is_empty(), "not expired yet: {pruned:?}");
        let pruned = store
            .prune(at(1000))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pruned, [entry("a", Some(1000))]);
        let left = store.list().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(left, [entry("b", None)], "an unknown expiry is kept");

        std::fs::write(dir.path().join(REVOKED_FILE), "{ nope").unwrap_or_else(|e| panic!("{e}"));
        let error = store.lookup("b").await.err().map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(|e| e.contains(REVOKED_FILE)),
            "{error:?}"
        );
    }

    #[test]
    fn a_static_catalog_without_a_ca_dir_has_no_store() {
        let catalog = CatalogConfig::Static {
            services: BTreeMap::new(),
        };
        assert!(RevocationStore::for_catalog(&catalog, None).is_none());
    }
}
