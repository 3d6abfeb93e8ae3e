//! Join tokens: a random secret bound to one service that authenticates a
//! proxy's first CSR. The control plane stores only a SHA-256 hash of it.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::{self, SECRET_MODE};
use crate::random_bytes;
use crate::spiffe::validate_service_name;

/// Random bytes in a token: 256 bits, beyond any guessing.
pub const TOKEN_BYTES: usize = 32;
/// Version of the token store file format.
const STORE_VERSION: u32 = 1;

/// Creates join tokens.
#[derive(Debug)]
pub struct JoinToken;

/// What the control plane keeps about a token: never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// The only service this token can obtain a certificate for.
    pub service: String,
    /// SHA-256 of the token string, base64url without padding.
    pub sha256: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
}

fn hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

/// Compares two byte strings without an early exit on the first difference.
/// Both are hashes of equal public length, so only their contents matter.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl JoinToken {
    /// A fresh token for `service`: returns the secret (base64url of
    /// [`TOKEN_BYTES`] random bytes; show it once, store it nowhere) and the
    /// record to keep in the [`TokenStore`].
    pub fn generate(service: &str) -> Result<(String, TokenRecord)> {
        validate_service_name(service)?;
        let token = URL_SAFE_NO_PAD.encode(random_bytes::<TOKEN_BYTES>()?);
        let created_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let record = TokenRecord {
            service: service.to_owned(),
            sha256: hash(&token),
            created_unix,
        };
        Ok((token, record))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    tokens: Vec<TokenRecord>,
}

/// Token records persisted as a JSON file with mode 0600.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    records: Vec<TokenRecord>,
}

impl TokenStore {
    /// Opens the store at `path`; a missing file is an empty store (created
    /// on the first `add`).
    pub fn open(path: &Path) -> Result<Self> {
        let records = match std::fs::read_to_string(path) {
            Ok(text) => {
                let file: StoreFile =
                    serde_json::from_str(&text).map_err(|e| Error::TokenStore {
                        path: path.into(),
                        detail: e.to_string(),
                    })?;
                if file.version != STORE_VERSION {
                    return Err(Error::TokenStore {
                        path: path.into(),
                        detail: format!("unsupported version {}", file.version),
                    });
                }
                file.tokens
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(path, e)),
        };
        Ok(TokenStore {
            path: path.into(),
            records,
        })
    }

    /// Adds a record and saves the file (atomically, mode 0600).
    pub fn add(&mut self, record: TokenRecord) -> Result<()> {
        validate_service_name(&record.service)?;
        self.records.push(record);
        self.save()
    }

    /// Removes every token of `service` and saves; returns how many.
    pub fn revoke_service(&mut self, service: &str) -> Result<usize> {
        let before = self.records.len();
        self.records.retain(|r| r.service != service);
        let removed = before - self.records.len();
        if removed > 0 {
            self.save()?;
        }
        Ok(removed)
    }

    /// The service `token` is bound to, or `None`. Compares the token's hash
    /// with every record in constant time, so timing reveals nothing.
    pub fn verify(&self, token: &str) -> Option<String> {
        let presented = hash(token.trim());
        let mut found = None;
        for r in &self.records {
            let equal = constant_time_eq(presented.as_bytes(), r.sha256.as_bytes());
            if equal && found.is_none() {
                found = Some(r.service.clone());
            }
        }
        found
    }

    /// All records (hashes only).
    pub fn records(&self) -> &[TokenRecord] {
        &self.records
    }

    fn save(&self) -> Result<()> {
        let file = StoreFile {
            version: STORE_VERSION,
            tokens: self.records.clone(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| Error::TokenStore {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        fsutil::replace(&self.path, &json, SECRET_MODE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_for_api_never_verifies_as_web() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let mut store = TokenStore::open(&path).unwrap();
        let (api_token, api_rec) = JoinToken::generate("api").unwrap();
        let (web_token, web_rec) = JoinToken::generate("web").unwrap();
        assert!(URL_SAFE_NO_PAD.decode(&api_token).unwrap().len() >= 32);
        assert_ne!(api_token, web_token);
        assert!(!api_rec.sha256.contains(&api_token));
        store.add(api_rec).unwrap();
        store.add(web_rec).unwrap();

        let reopened = TokenStore::open(&path).unwrap();
        assert_eq!(reopened.verify(&api_token).as_deref(), Some("api"));
        assert_eq!(reopened.verify(&web_token).as_deref(), Some("web"));
        assert_eq!(
            reopened.verify(&format!("{api_token}\n")).as_deref(),
            Some("api")
        );
        assert_eq!(reopened.verify("not-a-token"), None);
        assert_eq!(reopened.verify(""), None);
        let mut tampered = api_token.clone();
        tampered.pop();
        assert_eq!(reopened.verify(&tampered), None);

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&api_token),
            "the token itself must not be stored"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn revoke_and_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let mut store = TokenStore::open(&path).unwrap();
        let (t, rec) = JoinToken::generate("api").unwrap();
        store.add(rec).unwrap();
        assert_eq!(store.revoke_service("api").unwrap(), 1);
        assert_eq!(store.verify(&t), None);
        assert!(JoinToken::generate("Not Valid").is_err());
        std::fs::write(&path, "{ nope").unwrap();
        let err = TokenStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("tokens.json"), "{err}");
    }
}
