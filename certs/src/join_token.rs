//! Signed join tokens: self-contained, expiring, verifiable by every
//! control-plane replica that holds the mesh CA, with no shared token store.
//!
//! A token reads
//!
//! ```text
//! tjt1.<service>.<expires_unix>.<id>.<mac>
//! ```
//!
//! - `tjt1`: the format (Tether join token, version 1);
//! - `<service>`: the only service it can obtain a certificate for (a DNS
//!   label, so it never contains a `.`);
//! - `<expires_unix>`: seconds since the Unix epoch; the token is valid while
//!   `now < expires_unix`;
//! - `<id>`: [`TOKEN_ID_BYTES`] random bytes in lower-case hex, what
//!   revocation names;
//! - `<mac>`: HMAC-SHA256 of everything before the last `.`, base64url
//!   without padding, under the [`TokenKey`] derived from the CA's key.
//!
//! **Why an HMAC under a key derived from the CA key, not an ECDSA
//! signature by it**: every replica that verifies tokens also signs
//! certificates, so it holds the CA key anyway: a public-key signature
//! would buy nothing. The derived key (HKDF-SHA256 with a Tether-specific
//! salt and info, i.e. domain separation) keeps the CA key itself for
//! certificates only; it works for any CA key type an operator imports
//! (ECDSA, RSA, Ed25519), not just the P-256 that `ca init` makes; tokens
//! stay short (about 100 characters); and [`ring::hmac::verify`] compares in
//! constant time. The price: the key is derived from the PKCS#8 bytes of
//! `ca-key.pem`, so replicas must hold byte-identical copies of it (copy the
//! file, do not re-encode it), and a new CA key invalidates every token.
//!
//! The token is a bearer credential: never log it. Its parts before the MAC
//! are not secret (`token revoke` and the refusal messages show them).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::{hkdf, hmac};

use crate::ca::CertificateAuthority;
use crate::error::{Error, Result};
use crate::random_bytes;
use crate::spiffe::validate_service_name;

/// First field of every signed token: format and version.
pub const TOKEN_FORMAT: &str = "tjt1";
/// Random bytes in a token's id: 96 bits, so two tokens never share an id
/// (revoking one must never revoke another).
pub const TOKEN_ID_BYTES: usize = 12;
/// Default lifetime of a join token: a day, like kubeadm's bootstrap
/// tokens. Long enough to roll out a fleet, short enough that a token left
/// in a ticket or a shell history is soon worthless. Proxies need a token
/// only for their first certificate; a token stored in a deployment secret
/// for new instances needs an explicit longer `--ttl`.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// HKDF salt: separates this key from anything else derived from the CA key.
const KDF_SALT: &[u8] = b"tether join-token key v1";
/// HKDF info: binds the key to this token format and MAC.
const KDF_INFO: &[u8] = b"tjt1 hmac-sha256";
/// Length of an HMAC-SHA256 tag.
const MAC_BYTES: usize = 32;

/// What a token says about itself (after verification, or read unverified
/// with [`TokenClaims::read_unverified`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    /// The token's id ([`TOKEN_ID_BYTES`] bytes, hex): what revocation names.
    pub id: String,
    /// The only service the token can obtain a certificate for.
    pub service: String,
    /// End of validity, seconds since the Unix epoch (valid while `now < expires_unix`).
    pub expires_unix: u64,
}

impl TokenClaims {
    /// The claims of a signed token, **without** checking its MAC: for
    /// revoking a token by its text, where what matters is its id. Never
    /// use this to authorize anything.
    pub fn read_unverified(token: &str) -> Result<TokenClaims, TokenRefusal> {
        parse(token.trim()).map(|(claims, _, _)| claims)
    }

    /// The expiry as a time.
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.expires_unix)
    }
}

/// Whether `token` looks like a signed token (starts with `tjt1.`), rather
/// than a legacy random token from `tokens.json`.
pub fn is_signed_token(token: &str) -> bool {
    token
        .trim()
        .strip_prefix(TOKEN_FORMAT)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// Why a signed token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// Not a well-formed `tjt1.` token.
    #[error("join token refused: it is not a well-formed Tether join token ({0}); pass the whole token printed by `tether-control token create`")]
    Malformed(&'static str),
    /// The MAC does not verify: made with another CA, or altered.
    #[error("join token refused: its signature does not verify with this control plane's CA (the token was made with another CA, or altered); create one with `tether-control token create` against this mesh's CA directory")]
    BadSignature,
    /// Valid, but past its expiry.
    #[error("join token {id} for {service} refused: it expired at {} ({} ago); create a new one with `tether-control token create --service {service} [--ttl DURATION]`", fmt_unix(*expires_unix), humantime::format_duration(Duration::from_secs(now_unix.saturating_sub(*expires_unix))))]
    Expired {
        /// The token's id.
        id: String,
        /// Its service.
        service: String,
        /// When it expired (Unix seconds).
        expires_unix: u64,
        /// The verifier's clock (Unix seconds).
        now_unix: u64,
    },
}

/// RFC 3339 (UTC, seconds) of a Unix time, for messages.
pub fn fmt_unix(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The key that makes and checks join tokens, derived from the CA's private
/// key. Never printed (`Debug` is redacted).
pub struct TokenKey {
    key: hmac::Key,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    /// Derives the token key of `ca`: HKDF-SHA256 over the PKCS#8 DER of its
    /// private key, with a Tether-specific salt and info.
    pub fn from_ca(ca: &CertificateAuthority) -> Self {
        Self::derive(ca.private_key_der())
    }

    fn derive(secret: &[u8]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, KDF_SALT).extract(secret);
        let key = match prk.expand(&[KDF_INFO], hmac::HMAC_SHA256) {
            Ok(okm) => hmac::Key::from(okm),
            // Unreachable: HKDF-SHA256 can expand to 32 bytes. Fall back to
            // the PRK itself (still a secret key) rather than panic.
            Err(_) => hmac::Key::new(hmac::HMAC_SHA256, secret),
        };
        TokenKey { key }
    }

    /// A new token for `service`, valid for `ttl` from `now`. Returns the
    /// token (show it once; it is a bearer credential) and its claims.
    pub fn mint(
        &self,
        service: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(String, TokenClaims)> {
        validate_service_name(service)?;
        if ttl.is_zero() {
            return Err(Error::Validity(
                "a join token's TTL must be positive".into(),
            ));
        }
        let expires_unix = now
            .checked_add(ttl)
            .map(unix)
            .filter(|&e| e > unix(now))
            .ok_or_else(|| Error::Validity(format!("join token TTL {ttl:?} is too long")))?;
        let id: String = random_bytes::<TOKEN_ID_BYTES>()?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let claims = TokenClaims {
            id,
            service: service.to_owned(),
            expires_unix,
        };
        let signed = format!(
            "{TOKEN_FORMAT}.{}.{}.{}",
            claims.service, claims.expires_unix, claims.id
        );
        let mac = hmac::sign(&self.key, signed.as_bytes());
        Ok((
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref())),
            claims,
        ))
    }

    /// Checks `token` (surrounding whitespace ignored): well formed, MAC
    /// valid under this key (compared in constant time), and `now` before
    /// its expiry. Revocation is the caller's business.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<TokenClaims, TokenRefusal> {
        let (claims, signed, mac) = parse(token.trim())?;
        hmac::verify(&self.key, signed.as_bytes(), &mac).map_err(|_| TokenRefusal::BadSignature)?;
        let now_unix = unix(now);
        if now_unix >= claims.expires_unix {
            return Err(TokenRefusal::Expired {
                id: claims.id,
                service: claims.service,
                expires_unix: claims.expires_unix,
                now_unix,
            });
        }
        Ok(claims)
    }
}

/// Splits a token into its claims, the signed text and the MAC bytes.
fn parse(token: &str) -> Result<(TokenClaims, &str, Vec<u8>), TokenRefusal> {
    use TokenRefusal::Malformed;
    let (signed, mac) = token.rsplit_once('.').ok_or(Malformed("no fields"))?;
    let mut fields = signed.split('.');
    let (Some(format), Some(service), Some(expires), Some(id), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(Malformed("expected tjt1.<service>.<expiry>.<id>.<mac>"));
    };
    if format != TOKEN_FORMAT {
        return Err(Malformed("unknown format; expected tjt1"));
    }
    validate_service_name(service).map_err(|_| Malformed("invalid service name"))?;
    if expires.is_empty() || !expires.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Malformed("the expiry is not a number"));
    }
    let expires_unix = expires
        .parse::<u64>()
        .map_err(|_| Malformed("the expiry is out of range"))?;
    if !is_token_id(id) {
        return Err(Malformed("the id is not 24 lower-case hex digits"));
    }
    let mac = URL_SAFE_NO_PAD
        .decode(mac)
        .ok()
        .filter(|m| m.len() == MAC_BYTES)
        .ok_or(Malformed("the signature is not 32 bytes of base64url"))?;
    Ok((
        TokenClaims {
            id: id.to_owned(),
            service: service.to_owned(),
            expires_unix,
        },
        signed,
        mac,
    ))
}

/// Whether `text` has the form of a token id ([`TOKEN_ID_BYTES`] bytes in
/// lower-case hex).
pub fn is_token_id(text: &str) -> bool {
    text.len() == TOKEN_ID_BYTES * 2
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("tether.local", Duration::from_secs(3600))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_token_verifies_with_its_ca_and_carries_its_claims() {
        let ca = ca();
        let key = TokenKey::from_ca(&ca);
        let now = SystemTime::now();
        let (token, claims) = key.mint("api", HOUR, now).unwrap_or_else(|e| panic!("{e}"));
        assert!(token.starts_with("tjt1.api."), "{token}");
        assert!(is_signed_token(&token));
        assert!(!is_signed_token("AAAAbbbb"));
        assert_eq!(claims.service, "api");
        assert_eq!(claims.expires_unix, unix(now) + 3600);
        assert!(is_token_id(&claims.id), "{}", claims.id);
        assert!(token.len() < 120, "{} characters", token.len());
        assert_eq!(key.verify(&token, now), Ok(claims.clone()));
        assert_eq!(key.verify(&format!(" {token}\n"), now), Ok(claims.clone()));
        // The same CA loaded again (another replica's copy) derives the same key.
        let copy = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem_for_tests())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(TokenKey::from_ca(&copy).verify(&token, now), Ok(claims));
        let (other, _) = key.mint("api", HOUR, now).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(token, other, "every token has its own id");
        assert_eq!(format!("{key:?}"), "TokenKey(<redacted>)");
    }

    #[test]
    fn another_ca_refuses_the_token() {
        let now = SystemTime::now();
        let (token, _) = TokenKey::from_ca(&ca())
            .mint("api", HOUR, now)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            TokenKey::from_ca(&ca()).verify(&token, now),
            Err(TokenRefusal::BadSignature)
        );
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let key = TokenKey::from_ca(&ca());
        let now = SystemTime::now();
        let (token, claims) = key.mint("api", HOUR, now).unwrap_or_else(|e| panic!("{e}"));
        // Another service, a later expiry, another id: all break the MAC.
        let tampered = [
            token.replacen("tjt1.api.", "tjt1.web.", 1),
            token.replacen(
                &claims.expires_unix.to_string(),
                &(claims.expires_unix + 86400).to_string(),
                1,
            ),
            token.replacen(&claims.id, &"0".repeat(24), 1),
        ];
        for t in &tampered {
            assert_ne!(t, &token);
            assert_eq!(key.verify(t, now), Err(TokenRefusal::BadSignature), "{t}");
        }
        // One flipped character of the MAC.
        let mut mac_flipped = token.clone();
        let last = mac_flipped.pop().unwrap_or('A');
        mac_flipped.push(if last == 'A' { 'B' } else { 'A' });
        assert!(key.verify(&mac_flipped, now).is_err());
        for malformed in [
            "",
            "tjt1",
            "tjt1.api.1.2",
            "tjt2.api.1.aaaaaaaaaaaaaaaaaaaaaaaa.AAAA",
            "tjt1.Api.1.aaaaaaaaaaaaaaaaaaaaaaaa.AAAA",
            "tjt1.api.+1.aaaaaaaaaaaaaaaaaaaaaaaa.AAAA",
            "tjt1.api.1.AAAAAAAAAAAAAAAAAAAAAAAA.AAAA",
            "tjt1.api.1.aaaaaaaaaaaaaaaaaaaaaaaa.AAAA",
            "tjt1.api.x.y.aaaaaaaaaaaaaaaaaaaaaaaa.AAAA",
        ] {
            assert!(
                matches!(key.verify(malformed, now), Err(TokenRefusal::Malformed(_))),
                "{malformed:?}"
            );
        }
    }

    #[test]
    fn expiry_is_exclusive_to_the_second() {
        let key = TokenKey::from_ca(&ca());
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (token, claims) = key
            .mint("api", Duration::from_secs(10), start)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(claims.expires_unix, 1_800_000_010);
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        assert!(key.verify(&token, at(1_800_000_009)).is_ok());
        assert!(key
            .verify(&token, at(1_800_000_009) + Duration::from_millis(999))
            .is_ok());
        let expired = key.verify(&token, at(1_800_000_010));
        assert_eq!(
            expired,
            Err(TokenRefusal::Expired {
                id: claims.id.clone(),
                service: "api".into(),
                expires_unix: 1_800_000_010,
                now_unix: 1_800_000_010,
            })
        );
        let message = key
            .verify(&token, at(1_800_000_070))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("expired at 2027-01-15T08:00:10Z (1m ago)"),
            "{message}"
        );
    }

    #[test]
    fn bad_input_to_mint() {
        let key = TokenKey::from_ca(&ca());
        let now = SystemTime::now();
        assert!(key.mint("Not Valid", HOUR, now).is_err());
        assert!(key.mint("api", Duration::ZERO, now).is_err());
        assert!(key.mint("api", Duration::MAX, now).is_err());
    }

    #[test]
    fn unverified_reading_gives_the_id() {
        let key = TokenKey::from_ca(&ca());
        let (token, claims) = key
            .mint("api", HOUR, SystemTime::now())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(TokenClaims::read_unverified(&token), Ok(claims));
        assert!(TokenClaims::read_unverified("garbage").is_err());
    }
}
