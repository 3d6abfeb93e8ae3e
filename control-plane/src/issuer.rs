//! The mesh CA service: signs a proxy's CSR for exactly the service the
//! proxy proved it is (a join token on first issue, its current mesh
//! certificate on renewal), and keeps the control plane's own API
//! certificate fresh.
//!
//! The CA's key lives only in this process and in `ca-key.pem` (0600); it
//! never appears in a log line, a metric or an answer. Neither does a join
//! token: logs name a signed token by its id only.
//!
//! Join tokens are signed (`tjt1.…`, see `tether_certs::TokenKey`): any
//! replica holding the same CA verifies them, then asks the shared
//! revocation store (Consul KV, or the CA directory's file; see
//! [`crate::revocations`]). Tokens of the older random kind are still looked
//! up in `tokens.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use tether_api::CertificateResponse;
use tether_certs::{
    fmt_unix, is_signed_token, CertificateAuthority, Identity, IdentityKey, IdentityStore,
    SpiffeId, TokenKey, TokenRefusal, TokenStore, CONTROL_PLANE_SERVICE,
};
use tokio::sync::watch;

use crate::config::MeshConfig;
use crate::metrics::ControlMetrics;
use crate::revocations::{Revocation, RevocationStore};

/// Name of the legacy token store inside the CA directory (mode 0600,
/// hashes only): tokens made before signed tokens still work from it.
pub const TOKENS_FILE: &str = "tokens.json";

/// Shortest pause between two renewals of the control plane's own
/// certificate, so a clock jump or a tiny lifetime cannot spin the loop.
const MIN_RENEW_PAUSE: Duration = Duration::from_secs(1);
/// Pause before retrying a failed self-renewal.
const RENEW_RETRY: Duration = Duration::from_secs(5);

/// Where the CA lives and how long certificates last.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// Directory with `ca.pem`, `ca-key.pem` (and, for a static catalog,
    /// `revoked-tokens.json`; for tokens of the older kind, `tokens.json`).
    pub ca_dir: PathBuf,
    /// Lifetime of every certificate issued (proxies' and our own).
    pub cert_lifetime: Duration,
}

/// Why the CA could not be loaded at start-up.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// The CA files are missing or unusable.
    #[error("CA in {}: {source}; create one with `tether-control ca init --dir {}`", dir.display(), dir.display())]
    Load {
        /// The CA directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: tether_certs::Error,
    },
    /// The CA's root names another trust domain than mesh.yaml.
    #[error("the CA in {} is for trust domain `{ca}` but mesh.yaml says `{mesh}`; use the CA of that trust domain or fix mesh.trust_domain", dir.display())]
    TrustDomain {
        /// The CA directory.
        dir: PathBuf,
        /// The CA's trust domain.
        ca: String,
        /// mesh.yaml's.
        mesh: String,
    },
    /// The control plane's own certificate could not be made.
    #[error("cannot issue the control plane's own certificate: {0}")]
    OwnCertificate(#[source] tether_certs::Error),
    /// The certificate lifetime is unusable.
    #[error("--cert-lifetime must be at least 1s, got {0:?}")]
    Lifetime(Duration),
}

/// What the caller of `POST /v1/certificate` proved about itself.
#[derive(Debug, Clone, Copy)]
pub enum Proof<'a> {
    /// A join token (`Authorization: Bearer ...`).
    Token(&'a str),
    /// The SPIFFE ID of the TLS client certificate it presented.
    Peer(&'a SpiffeId),
    /// Nothing.
    Nothing,
}

/// Why a certificate request was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// No token and no client certificate.
    #[error("no credentials: send a join token as `Authorization: Bearer <token>` (first issue) or present your current mesh certificate (renewal)")]
    Unauthenticated,
    /// The token matches no record.
    #[error("join token refused: it matches no token of this control plane (revoked, mistyped, or made for another CA); create one with `tether-control token create --service NAME`")]
    BadToken,
    /// A signed token that is malformed, signed by another CA, or expired.
    #[error("{0}")]
    Token(TokenRefusal),
    /// A signed token that an operator revoked.
    #[error("join token {} for {} refused: it was revoked{} (`tether-control token revoke`); create a new one with `tether-control token create --service {}`", .0.id, service(.0), revoked_at(.0), service(.0))]
    Revoked(Revocation),
    /// Whether the token is revoked cannot be known now: refused (fail closed).
    #[error("join token {id} refused for now: cannot check whether it is revoked ({detail}); the proxy retries, and it is accepted once the revocation store answers")]
    RevocationUnavailable {
        /// The token's id.
        id: String,
        /// Why the store cannot be asked.
        detail: String,
    },
    /// Nobody may obtain the control plane's own identity.
    #[error("the identity `{0}` is reserved for the control plane")]
    Reserved(String),
    /// The token store cannot be read.
    #[error("{0}")]
    TokenStore(#[source] tether_certs::Error),
    /// The CSR is malformed or asks for another identity than was proved.
    #[error("{0}")]
    Refused(#[source] tether_certs::Error),
}

impl IssueError {
    /// The HTTP status that says what kind of failure this is.
    pub fn status(&self) -> StatusCode {
        use tether_certs::Error as E;
        match self {
            IssueError::Unauthenticated
            | IssueError::BadToken
            | IssueError::Token(_)
            | IssueError::Revoked(_) => StatusCode::UNAUTHORIZED,
            IssueError::RevocationUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            IssueError::Reserved(_) => StatusCode::FORBIDDEN,
            IssueError::TokenStore(_) => StatusCode::INTERNAL_SERVER_ERROR,
            IssueError::Refused(
                E::CsrIdentityNotAuthorized { .. } | E::WrongTrustDomain { .. },
            ) => StatusCode::FORBIDDEN,
            IssueError::Refused(E::BadCsr(_) | E::InvalidServiceName { .. }) => {
                StatusCode::BAD_REQUEST
            }
            IssueError::Refused(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Bounded label for `tether_control_certificate_refusals_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            IssueError::Unauthenticated => "unauthenticated",
            IssueError::BadToken
            | IssueError::Token(TokenRefusal::Malformed(_) | TokenRefusal::BadSignature) => {
                "bad-token"
            }
            IssueError::Token(TokenRefusal::Expired { .. }) => "expired-token",
            IssueError::Revoked(_) => "revoked-token",
            IssueError::RevocationUnavailable { .. } => "revocation-unavailable",
            IssueError::Reserved(_) => "reserved",
            IssueError::TokenStore(_) => "token-store",
            IssueError::Refused(tether_certs::Error::CsrIdentityNotAuthorized { .. }) => {
                "identity-not-authorized"
            }
            IssueError::Refused(tether_certs::Error::BadCsr(_)) => "bad-csr",
            IssueError::Refused(_) => "other",
        }
    }
}

fn service(revocation: &Revocation) -> &str {
    revocation.service.as_deref().unwrap_or("NAME")
}

fn revoked_at(revocation: &Revocation) -> String {
    if revocation.revoked_unix == 0 {
        String::new()
    } else {
        format!(" at {}", fmt_unix(revocation.revoked_unix))
    }
}

/// The CA service.
pub struct Issuer {
    ca: CertificateAuthority,
    token_key: TokenKey,
    trust_domain: String,
    ca_dir: PathBuf,
    tokens: PathBuf,
    /// mesh.yaml in force: its catalog says where revocations are kept.
    config: Option<watch::Receiver<Arc<MeshConfig>>>,
    lifetime: Duration,
    metrics: ControlMetrics,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("trust_domain", &self.trust_domain)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Loads the CA from `settings.ca_dir` for `trust_domain`.
    pub fn load(
        settings: &IssuerSettings,
        trust_domain: &str,
        metrics: ControlMetrics,
    ) -> Result<Self, IssuerError> {
        if settings.cert_lifetime < Duration::from_secs(1) {
            return Err(IssuerError::Lifetime(settings.cert_lifetime));
        }
        let dir = &settings.ca_dir;
        let ca = CertificateAuthority::load_dir(dir).map_err(|source| IssuerError::Load {
            dir: dir.clone(),
            source,
        })?;
        if let Some(ca_domain) = ca.trust_domain() {
            if ca_domain != trust_domain {
                return Err(IssuerError::TrustDomain {
                    dir: dir.clone(),
                    ca: ca_domain.to_owned(),
                    mesh: trust_domain.to_owned(),
                });
            }
        }
        Ok(Self {
            token_key: TokenKey::from_ca(&ca),
            ca,
            trust_domain: trust_domain.to_owned(),
            ca_dir: dir.clone(),
            tokens: dir.join(TOKENS_FILE),
            config: None,
            lifetime: settings.cert_lifetime,
            metrics,
        })
    }

    /// Reads where revocations are kept from the mesh.yaml in force (its
    /// catalog: Consul KV, else the CA directory's file) at every token use.
    /// Without it, the CA directory's file.
    pub fn with_config(mut self, config: watch::Receiver<Arc<MeshConfig>>) -> Self {
        self.config = Some(config);
        self
    }

    /// The legacy token store this issuer reads (re-read on every token
    /// request, so changes apply without a restart).
    pub fn tokens_path(&self) -> &Path {
        &self.tokens
    }

    /// The key signed join tokens are checked with.
    pub fn token_key(&self) -> &TokenKey {
        &self.token_key
    }

    /// Where revocations are looked up now.
    pub fn revocation_store(&self) -> RevocationStore {
        let store = self.config.as_ref().and_then(|config| {
            RevocationStore::for_catalog(&config.borrow().catalog, Some(&self.ca_dir))
        });
        store.unwrap_or_else(|| {
            RevocationStore::File(crate::revocations::file::FileStore::new(
                self.ca_dir.join(crate::revocations::REVOKED_FILE),
            ))
        })
    }

    /// Signs `csr_pem` for the service `proof` establishes.
    pub async fn issue(
        &self,
        csr_pem: &str,
        proof: Proof<'_>,
    ) -> Result<CertificateResponse, IssueError> {
        let mut token_id = None;
        let (result, auth) = match proof {
            Proof::Nothing => (Err(IssueError::Unauthenticated), "none"),
            Proof::Token(token) => (
                self.sign_for_token(csr_pem, token, &mut token_id).await,
                "token",
            ),
            Proof::Peer(peer) => (self.sign(csr_pem, peer.service_name()), "certificate"),
        };
        let token_id = token_id.as_deref().unwrap_or("-");
        match &result {
            Ok(issued) => {
                self.metrics
                    .certificates_issued
                    .with_label_values(&[auth])
                    .inc();
                tracing::info!(spiffe_id = %issued.spiffe_id, auth, token_id, "certificate issued");
            }
            Err(error) => {
                self.metrics
                    .certificate_refusals
                    .with_label_values(&[error.reason()])
                    .inc();
                tracing::warn!(%error, auth, token_id, "certificate request refused");
            }
        }
        result
    }

    /// A signed token: MAC and expiry, then the revocation store (one
    /// lookup; fail closed). Anything else: the legacy `tokens.json`.
    async fn sign_for_token(
        &self,
        csr_pem: &str,
        token: &str,
        token_id: &mut Option<String>,
    ) -> Result<CertificateResponse, IssueError> {
        if !is_signed_token(token) {
            let store = TokenStore::open(&self.tokens).map_err(IssueError::TokenStore)?;
            let service = store.verify(token).ok_or(IssueError::BadToken)?;
            return self.sign(csr_pem, &service);
        }
        let claims = self
            .token_key
            .verify(token, SystemTime::now())
            .map_err(IssueError::Token)?;
        *token_id = Some(claims.id.clone());
        let store = self.revocation_store();
        match store.lookup(&claims.id).await {
            Ok(None) => self.sign(csr_pem, &claims.service),
            Ok(Some(mut revocation)) => {
                revocation.service.get_or_insert(claims.service);
                Err(IssueError::Revoked(revocation))
            }
            Err(error) => Err(IssueError::RevocationUnavailable {
                id: claims.id,
                detail: error.to_string(),
            }),
        }
    }

    fn sign(&self, csr_pem: &str, service: &str) -> Result<CertificateResponse, IssueError> {
        if service == CONTROL_PLANE_SERVICE {
            return Err(IssueError::Reserved(service.to_owned()));
        }
        let id = SpiffeId::service(&self.trust_domain, service).map_err(IssueError::Refused)?;
        let issued = self
            .ca
            .sign_csr(csr_pem, &id, self.lifetime)
            .map_err(IssueError::Refused)?;
        Ok(CertificateResponse {
            chain_pem: issued.chain_pem,
            spiffe_id: issued.spiffe_id.to_string(),
            not_after_unix: unix(issued.not_after),
        })
    }

    /// A fresh certificate for the control plane's own API
    /// (`spiffe://<td>/service/tether-control`), with a key made here.
    pub fn own_identity(&self) -> Result<Identity, IssuerError> {
        let make = || {
            let id = SpiffeId::service(&self.trust_domain, CONTROL_PLANE_SERVICE)?;
            let key = IdentityKey::generate()?;
            let csr = key.csr_pem(&id)?;
            let issued = self.ca.sign_csr(&csr, &id, self.lifetime)?;
            Identity::new(&key, &issued.chain_pem)
        };
        make().map_err(IssuerError::OwnCertificate)
    }

    /// A store holding the control plane's own certificate and trusting the
    /// CA's root, for the API's TLS server.
    pub fn own_store(&self) -> Result<Arc<IdentityStore>, IssuerError> {
        IdentityStore::with_identity(self.own_identity()?, self.ca.bundle())
            .map_err(IssuerError::OwnCertificate)
    }

    /// Renews the control plane's own certificate at two thirds of its life,
    /// forever. A failure is logged and retried; the old one stays in force.
    pub async fn keep_own_fresh(self: Arc<Self>, store: Arc<IdentityStore>) {
        loop {
            let pause = store
                .identity()
                .map_or(Duration::ZERO, |identity| {
                    renew_after(&identity, SystemTime::now())
                })
                .max(MIN_RENEW_PAUSE);
            tokio::time::sleep(pause).await;
            match self.own_identity() {
                Ok(identity) => store.set_identity(identity),
                Err(error) => {
                    tracing::error!(%error, retry_in = ?RENEW_RETRY, "renewing the control plane's certificate failed");
                    tokio::time::sleep(RENEW_RETRY).await;
                }
            }
        }
    }
}

/// Fraction of a certificate's life after which it is renewed: leaves a
/// third (8 h of the default 24 h) to retry through an outage.
pub const RENEW_FRACTION: f64 = 2.0 / 3.0;

/// How long from `now` until `identity` should be renewed.
pub fn renew_after(identity: &Identity, now: SystemTime) -> Duration {
    identity
        .renewal_time(RENEW_FRACTION)
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocations::{RevokeOutcome, REVOKED_FILE};
    use tether_certs::{JoinToken, CA_CERT_FILE};

    fn setup(lifetime: Duration) -> (tempfile::TempDir, Issuer) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        CertificateAuthority::init_dir(dir.path(), "tether.local")
            .unwrap_or_else(|e| panic!("{e}"));
        let issuer = Issuer::load(
            &IssuerSettings {
                ca_dir: dir.path().to_owned(),
                cert_lifetime: lifetime,
            },
            "tether.local",
            ControlMetrics::new(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (dir, issuer)
    }

    /// A token of the older, random kind, kept in `tokens.json`.
    fn legacy_token_for(issuer: &Issuer, service: &str) -> String {
        let (token, record) = JoinToken::generate(service).unwrap_or_else(|e| panic!("{e}"));
        let mut store = TokenStore::open(issuer.tokens_path()).unwrap_or_else(|e| panic!("{e}"));
        store.add(record).unwrap_or_else(|e| panic!("{e}"));
        token
    }

    fn signed_token_for(issuer: &Issuer, service: &str, ttl_secs: u64) -> String {
        issuer
            .token_key()
            .mint(service, Duration::from_secs(ttl_secs), SystemTime::now())
            .unwrap_or_else(|e| panic!("{e}"))
            .0
    }

    fn csr(service: &str) -> String {
        let id = SpiffeId::service("tether.local", service).unwrap_or_else(|e| panic!("{e}"));
        IdentityKey::generate()
            .and_then(|k| k.csr_pem(&id))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn a_token_obtains_only_its_own_service() {
        let (_dir, issuer) = setup(Duration::from_secs(3600));
        let token = signed_token_for(&issuer, "api", 3600);
        let issued = issuer
            .issue(&csr("api"), Proof::Token(&token))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(issued.spiffe_id, "spiffe://tether.local/service/api");
        let refused = issuer
            .issue(&csr("web"), Proof::Token(&token))
            .await
            .err()
            .unwrap_or_else(|| panic!("a token for api obtained a certificate for web"));
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{refused}");
        assert!(
            refused
                .to_string()
                .contains("only authorized for spiffe://tether.local/service/api"),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn unknown_tokens_and_no_proof_are_unauthorized() {
        let (_dir, issuer) = setup(Duration::from_secs(3600));
        let bad = issuer
            .issue(&csr("api"), Proof::Token("not-a-token"))
            .await
            .err();
        assert_eq!(bad.map(|e| e.status()), Some(StatusCode::UNAUTHORIZED));
        let none = issuer.issue(&csr("api"), Proof::Nothing).await.err();
        assert_eq!(none.map(|e| e.status()), Some(StatusCode::UNAUTHORIZED));
    }

    #[tokio::test]
    async fn renewal_by_certificate_keeps_the_identity_and_the_control_plane_id_is_reserved() {
        let (_dir, issuer) = setup(Duration::from_secs(3600));
        let peer = SpiffeId::service("tether.local", "web").unwrap_or_else(|e| panic!("{e}"));
        let renewed = issuer
            .issue(&csr("web"), Proof::Peer(&peer))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(renewed.spiffe_id, peer.to_string());
        let stolen = issuer.issue(&csr("api"), Proof::Peer(&peer)).await.err();
        assert_eq!(stolen.map(|e| e.status()), Some(StatusCode::FORBIDDEN));
        let cp = SpiffeId::service("tether.local", CONTROL_PLANE_SERVICE)
            .unwrap_or_else(|e| panic!("{e}"));
        let reserved = issuer
            .issue(&csr(CONTROL_PLANE_SERVICE), Proof::Peer(&cp))
            .await
            .err();
        assert!(matches!(reserved, Some(IssueError::Reserved(_))));
    }

    #[tokio::test]
    async fn a_malformed_csr_is_a_bad_request() {
        let (_dir, issuer) = setup(Duration::from_secs(3600));
        let token = signed_token_for(&issuer, "api", 3600);
        let bad = issuer.issue("garbage", Proof::Token(&token)).await.err();
        assert_eq!(bad.map(|e| e.status()), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn a_ca_of_another_trust_domain_is_refused_at_load() {
        let (dir, _) = setup(Duration::from_secs(3600));
        assert!(dir.path().join(CA_CERT_FILE).exists());
        let error = Issuer::load(
            &IssuerSettings {
                ca_dir: dir.path().to_owned(),
                cert_lifetime: Duration::from_secs(60),
            },
            "other.local",
            ControlMetrics::new(),
        )
        .err();
        assert!(
            matches!(error, Some(IssuerError::TrustDomain { .. })),
            "{error:?}"
        );
    }

    #[test]
    fn own_certificate_renews_two_thirds_into_its_life_after_issue() {
        let (_dir, issuer) = setup(Duration::from_secs(30));
        let own = issuer.own_identity().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            own.spiffe_id().to_string(),
            "spiffe://tether.local/service/tether-control"
        );
        let now = SystemTime::now();
        let wait = renew_after(&own, now);
        // 2/3 of 30 s after issue, minus the moment since: 18..=20 s.
        assert!(
            wait <= Duration::from_secs(20) && wait >= Duration::from_secs(18),
            "{wait:?}"
        );
    }

    #[tokio::test]
    async fn legacy_tokens_from_tokens_json_still_work() {
        let (_dir, issuer) = setup(Duration::from_secs(3600));
        let token = legacy_token_for(&issuer, "api");
        let issued = issuer
            .issue(&csr("api"), Proof::Token(&token))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(issued.spiffe_id, "spiffe://tether.local/service/api");
    }

    #[tokio::test]
    async fn signed_tokens_are_refused_when_expired_revoked_or_from_another_ca() {
        let (dir, issuer) = setup(Duration::from_secs(3600));
        let (_other_dir, other) = setup(Duration::from_secs(3600));
        let foreign = signed_token_for(&other, "api", 3600);
        let refused = issuer
            .issue(&csr("api"), Proof::Token(&foreign))
            .await
            .err()
            .unwrap_or_else(|| panic!("another CA's token was accepted"));
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(refused.reason(), "bad-token");
        assert!(refused.to_string().contains("another CA"), "{refused}");

        let (expired, _) = issuer
            .token_key()
            .mint(
                "api",
                Duration::from_secs(60),
                SystemTime::now() - Duration::from_secs(120),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let refused = issuer
            .issue(&csr("api"), Proof::Token(&expired))
            .await
            .err()
            .unwrap_or_else(|| panic!("an expired token was accepted"));
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(refused.reason(), "expired-token");
        assert!(refused.to_string().contains("expired at "), "{refused}");

        let token = signed_token_for(&issuer, "api", 3600);
        let claims =
            tether_certs::TokenClaims::read_unverified(&token).unwrap_or_else(|e| panic!("{e}"));
        let store = issuer.revocation_store();
        assert_eq!(
            store.describe(),
            dir.path().join(REVOKED_FILE).display().to_string()
        );
        let revocation = Revocation {
            id: claims.id.clone(),
            service: None,
            expires_unix: None,
            revoked_unix: 1_800_000_000,
        };
        assert_eq!(
            store.revoke(&revocation).await.ok(),
            Some(RevokeOutcome::Revoked)
        );
        let refused = issuer
            .issue(&csr("api"), Proof::Token(&token))
            .await
            .err()
            .unwrap_or_else(|| panic!("a revoked token was accepted"));
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(refused.reason(), "revoked-token");
        let message = refused.to_string();
        assert!(
            message.contains(&format!(
                "join token {} for api refused: it was revoked at 2027-01-15T08:00:00Z",
                claims.id
            )),
            "{message}"
        );
        assert!(!message.contains(&token), "the token is never shown");

        // A revocation store that cannot be read: refused, 503 (fail closed).
        std::fs::write(dir.path().join(REVOKED_FILE), "{ broken").unwrap_or_else(|e| panic!("{e}"));
        let fresh = signed_token_for(&issuer, "api", 3600);
        let refused = issuer
            .issue(&csr("api"), Proof::Token(&fresh))
            .await
            .err()
            .unwrap_or_else(|| panic!("accepted without a revocation check"));
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            refused
                .to_string()
                .contains("cannot check whether it is revoked"),
            "{refused}"
        );
    }
}
