//! `tether-control ca ...` and `tether-control token ...`: the operator's
//! side of the mesh CA. Nothing here talks to a running control plane:
//! tokens are signed with the CA (any replica verifies them), and
//! revocations go to the store every replica asks at each token use
//! (Consul KV, or the CA directory's file), so both apply at once.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use tether_certs::{
    fmt_unix, is_signed_token, is_token_id, CertificateAuthority, TokenClaims, TokenKey,
    TokenRefusal, TokenStore, TrustBundle, CA_CERT_FILE, CA_KEY_FILE, CONTROL_PLANE_SERVICE,
    TOKEN_ID_BYTES,
};
use tether_control::config::CatalogConfig;
use tether_control::issuer::TOKENS_FILE;
use tether_control::revocations::{Revocation, RevocationStore, RevokeOutcome};

/// `tether-control ca ...`.
#[derive(Subcommand)]
pub enum CaCommand {
    /// Create the mesh root in DIR (ca.pem 0644, ca-key.pem 0600), or adopt
    /// an operator's root with --import-cert/--import-key. Never overwrites.
    Init {
        /// The CA directory (created 0700 if missing).
        #[arg(long, env = "TETHER_CA_DIR")]
        dir: PathBuf,
        /// Trust domain of the mesh (mesh.yaml's `mesh.trust_domain`).
        #[arg(long, default_value = "tether.local")]
        trust_domain: String,
        /// An existing root certificate (PEM) to adopt instead of generating one.
        #[arg(long, requires = "import_key")]
        import_cert: Option<PathBuf>,
        /// Its PKCS#8 private key (PEM).
        #[arg(long, requires = "import_cert")]
        import_key: Option<PathBuf>,
    },
}

/// `tether-control token ...`.
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a signed join token bound to one service, valid for --ttl.
    /// Prints it once (or writes it to --out with mode 0600); nothing is
    /// stored: every replica holding the same CA verifies it.
    Create {
        /// The only service this token can obtain a certificate for.
        #[arg(long)]
        service: String,
        /// How long the token can be used (first certificates only; renewals
        /// need no token). A token kept in a deployment secret for new
        /// instances needs a longer one, e.g. `--ttl 8760h`.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The CA directory (its key signs the token).
        #[arg(long, env = "TETHER_CA_DIR")]
        ca_dir: PathBuf,
        /// Write the token to this file (0600, must not exist) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke one signed token (by its id, or its text), in Consul's KV
    /// store when mesh.yaml's catalog is Consul, else in DIR/revoked-tokens.json.
    /// With --service instead: remove a service's legacy tokens from
    /// DIR/tokens.json. Certificates already issued stay valid until they
    /// expire; renewals by certificate go on.
    Revoke {
        /// The token id (printed by `token create`), or the token itself.
        #[arg(conflicts_with = "service", required_unless_present = "service")]
        token: Option<String>,
        /// Legacy tokens (tokens.json): remove every token of this service.
        #[arg(long)]
        service: Option<String>,
        /// The mesh configuration: its catalog says where revocations live.
        #[arg(long, env = "TETHER_CONFIG", default_value = "mesh.yaml")]
        config: PathBuf,
        /// The CA directory (needed with a static catalog, and for --service;
        /// with a token's text, also checks the token was made by this CA).
        #[arg(long, env = "TETHER_CA_DIR")]
        ca_dir: Option<PathBuf>,
        /// Consul ACL token for this command (file), instead of mesh.yaml's
        /// (which is the control plane's, often read-only): the operator's
        /// token needs `write` on the revocation prefix.
        #[arg(long)]
        consul_token_file: Option<PathBuf>,
    },
    /// List revoked tokens (id, service, expiry, when revoked).
    ListRevoked {
        /// The mesh configuration.
        #[arg(long, env = "TETHER_CONFIG", default_value = "mesh.yaml")]
        config: PathBuf,
        /// The CA directory (with a static catalog).
        #[arg(long, env = "TETHER_CA_DIR")]
        ca_dir: Option<PathBuf>,
        /// Consul ACL token for this command (file), instead of mesh.yaml's
        /// (which is the control plane's, often read-only): the operator's
        /// token needs `write` on the revocation prefix.
        #[arg(long)]
        consul_token_file: Option<PathBuf>,
    },
    /// Delete the revocations of tokens that have expired anyway.
    PruneRevoked {
        /// The mesh configuration.
        #[arg(long, env = "TETHER_CONFIG", default_value = "mesh.yaml")]
        config: PathBuf,
        /// The CA directory (with a static catalog).
        #[arg(long, env = "TETHER_CA_DIR")]
        ca_dir: Option<PathBuf>,
        /// Consul ACL token for this command (file), instead of mesh.yaml's
        /// (which is the control plane's, often read-only): the operator's
        /// token needs `write` on the revocation prefix.
        #[arg(long)]
        consul_token_file: Option<PathBuf>,
    },
    /// List the legacy tokens in DIR/tokens.json (service and creation
    /// time; never the secrets). Signed tokens are stored nowhere.
    List {
        /// The CA directory.
        #[arg(long, env = "TETHER_CA_DIR")]
        ca_dir: PathBuf,
    },
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("tether-control: {message}");
    ExitCode::from(1)
}

/// Reads a PEM trust bundle, with the file name in any error.
pub fn read_bundle(path: &Path) -> Result<TrustBundle, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    TrustBundle::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs `ca ...`.
pub fn ca(command: CaCommand) -> ExitCode {
    match command {
        CaCommand::Init {
            dir,
            trust_domain,
            import_cert,
            import_key,
        } => {
            let result = match (import_cert, import_key) {
                (Some(cert), Some(key)) => import(&dir, &cert, &key),
                _ => CertificateAuthority::init_dir(&dir, &trust_domain).map_err(|e| e.to_string()),
            };
            match result {
                Ok(ca) => {
                    println!(
                        "mesh CA for trust domain {} in {}:\n  {}  root certificate: the trust bundle to give every proxy (--trust-bundle)\n  {}  private key (0600): never leaves this host\nnext: tether-control token create --service NAME --ca-dir {}",
                        ca.trust_domain().unwrap_or("(any)"),
                        dir.display(),
                        dir.join(CA_CERT_FILE).display(),
                        dir.join(CA_KEY_FILE).display(),
                        dir.display(),
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => fail(error),
            }
        }
    }
}

fn import(dir: &Path, cert: &Path, key: &Path) -> Result<CertificateAuthority, String> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))
    };
    let ca =
        CertificateAuthority::from_pem(&read(cert)?, &read(key)?).map_err(|e| e.to_string())?;
    ca.write_dir(dir).map_err(|e| e.to_string())?;
    Ok(ca)
}

/// Runs `token ...`.
pub async fn token(command: TokenCommand) -> ExitCode {
    let result = match command {
        TokenCommand::Create {
            service,
            ttl,
            ca_dir,
            out,
        } => create(&service, ttl, &ca_dir, out.as_deref()),
        TokenCommand::Revoke {
            token: Some(token),
            config,
            ca_dir,
            consul_token_file,
            ..
        } => {
            let store = Store {
                config: &config,
                ca_dir: ca_dir.as_deref(),
                consul_token_file: consul_token_file.as_deref(),
            };
            revoke(&token, &store).await
        }
        TokenCommand::Revoke {
            token: None,
            service,
            ca_dir,
            ..
        } => revoke_legacy(service.as_deref().unwrap_or_default(), ca_dir.as_deref()),
        TokenCommand::ListRevoked {
            config,
            ca_dir,
            consul_token_file,
        } => {
            let store = Store {
                config: &config,
                ca_dir: ca_dir.as_deref(),
                consul_token_file: consul_token_file.as_deref(),
            };
            list_revoked(&store).await
        }
        TokenCommand::PruneRevoked {
            config,
            ca_dir,
            consul_token_file,
        } => {
            let store = Store {
                config: &config,
                ca_dir: ca_dir.as_deref(),
                consul_token_file: consul_token_file.as_deref(),
            };
            prune_revoked(&store).await
        }
        TokenCommand::List { ca_dir } => match TokenStore::open(&ca_dir.join(TOKENS_FILE)) {
            Ok(store) => {
                println!("{:<24} CREATED (unix seconds)", "SERVICE");
                for record in store.records() {
                    println!("{:<24} {}", record.service, record.created_unix);
                }
                Ok(())
            }
            Err(error) => Err(error.to_string()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(error),
    }
}

fn create(service: &str, ttl: Duration, ca_dir: &Path, out: Option<&Path>) -> Result<(), String> {
    if service == CONTROL_PLANE_SERVICE {
        return Err(format!(
            "`{CONTROL_PLANE_SERVICE}` is the control plane's own identity; no token can be made for it"
        ));
    }
    if !ca_dir.join(CA_CERT_FILE).exists() {
        return Err(format!(
            "{} has no CA: run `tether-control ca init --dir {}` first",
            ca_dir.display(),
            ca_dir.display()
        ));
    }
    let ca = CertificateAuthority::load_dir(ca_dir).map_err(|e| e.to_string())?;
    let now = SystemTime::now();
    if now.checked_add(ttl).is_none_or(|end| end > ca.not_after()) {
        return Err(format!(
            "--ttl {} outlives the CA, which expires at {}; give a shorter --ttl",
            humantime::format_duration(ttl),
            humantime::format_rfc3339_seconds(ca.not_after())
        ));
    }
    let (token, claims) = TokenKey::from_ca(&ca)
        .mint(service, ttl, now)
        .map_err(|e| e.to_string())?;
    match out {
        Some(path) => {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("{}: {e} (it must not exist yet)", path.display()))?;
            writeln!(file, "{token}").map_err(|e| format!("{}: {e}", path.display()))?;
            eprintln!(
                "token for {service} written to {} (0600); give it to the proxy as --token-file",
                path.display()
            );
        }
        None => println!("{token}"),
    }
    eprintln!(
        "token id {} for {service}, valid until {} ({}); revoke it with `tether-control token revoke {}`",
        claims.id,
        fmt_unix(claims.expires_unix),
        humantime::format_duration(ttl),
        claims.id
    );
    Ok(())
}

/// Where the revocation commands look: mesh.yaml and the flags that
/// refine it.
struct Store<'a> {
    config: &'a Path,
    ca_dir: Option<&'a Path>,
    consul_token_file: Option<&'a Path>,
}

impl Store<'_> {
    /// The revocation store mesh.yaml's catalog names (Consul KV, with the
    /// operator's ACL token if given; or the file in the CA directory).
    fn open(&self) -> Result<RevocationStore, String> {
        let mut mesh =
            tether_control::config::load(self.config).map_err(|errors| errors.to_string())?;
        if let Some(path) = self.consul_token_file {
            let CatalogConfig::Consul(consul) = &mut mesh.catalog else {
                return Err(format!(
                    "--consul-token-file given but the catalog of {} is not Consul",
                    self.config.display()
                ));
            };
            let token =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let token = token.trim();
            if token.is_empty() {
                return Err(format!("{} is empty", path.display()));
            }
            consul.token = Some(token.to_owned());
        }
        RevocationStore::for_catalog(&mesh.catalog, self.ca_dir).ok_or_else(|| {
            format!(
                "{}: the catalog is static, so revocations live in the CA directory: pass --ca-dir DIR (every replica's copy)",
                self.config.display()
            )
        })
    }
}

async fn revoke(target: &str, store: &Store<'_>) -> Result<(), String> {
    let ca_dir = store.ca_dir;
    let target = target.trim();
    let now = SystemTime::now();
    let revocation = if is_token_id(target) {
        Revocation {
            id: target.to_owned(),
            service: None,
            expires_unix: None,
            revoked_unix: unix(now),
        }
    } else if is_signed_token(target) {
        let claims = TokenClaims::read_unverified(target).map_err(|e| e.to_string())?;
        if let Some(dir) = ca_dir {
            let ca = CertificateAuthority::load_dir(dir).map_err(|e| e.to_string())?;
            if let Err(TokenRefusal::BadSignature) = TokenKey::from_ca(&ca).verify(target, now) {
                return Err(format!(
                    "this token was not made with the CA in {}; nothing revoked (revoke it by its id {} to record it anyway)",
                    dir.display(),
                    claims.id
                ));
            }
        }
        if unix(now) >= claims.expires_unix {
            eprintln!(
                "note: token {} expired at {} and is refused anyway; recording its revocation all the same",
                claims.id,
                fmt_unix(claims.expires_unix)
            );
        }
        Revocation {
            id: claims.id,
            service: Some(claims.service),
            expires_unix: Some(claims.expires_unix),
            revoked_unix: unix(now),
        }
    } else {
        return Err(format!(
            "give a token id ({TOKEN_ID_BYTES} bytes in hex, printed by `token create`) or a whole signed token (tjt1.…); for tokens of the older kind use `token revoke --service NAME --ca-dir DIR`"
        ));
    };
    let store = store.open()?;
    match store.revoke(&revocation).await.map_err(|e| e.to_string())? {
        RevokeOutcome::Revoked => println!(
            "revoked join token {}{} in {}; every replica refuses it from now on",
            revocation.id,
            revocation
                .service
                .as_deref()
                .map(|s| format!(" for {s}"))
                .unwrap_or_default(),
            store.describe()
        ),
        RevokeOutcome::AlreadyRevoked(existing) => println!(
            "join token {} was already revoked at {} in {}",
            existing.id,
            fmt_unix(existing.revoked_unix),
            store.describe()
        ),
    }
    Ok(())
}

fn revoke_legacy(service: &str, ca_dir: Option<&Path>) -> Result<(), String> {
    let ca_dir = ca_dir.ok_or("--service revokes tokens in DIR/tokens.json: pass --ca-dir DIR")?;
    let n = TokenStore::open(&ca_dir.join(TOKENS_FILE))
        .and_then(|mut store| store.revoke_service(service))
        .map_err(|e| e.to_string())?;
    println!("revoked {n} token(s) of {service}");
    Ok(())
}

fn print_revocations(list: &[Revocation]) {
    println!("{:<26} {:<24} {:<22} REVOKED", "ID", "SERVICE", "EXPIRES");
    for r in list {
        println!(
            "{:<26} {:<24} {:<22} {}",
            r.id,
            r.service.as_deref().unwrap_or("?"),
            r.expires_unix.map_or_else(|| "?".to_owned(), fmt_unix),
            fmt_unix(r.revoked_unix)
        );
    }
}

async fn list_revoked(store: &Store<'_>) -> Result<(), String> {
    let store = store.open()?;
    let list = store.list().await.map_err(|e| e.to_string())?;
    print_revocations(&list);
    Ok(())
}

async fn prune_revoked(store: &Store<'_>) -> Result<(), String> {
    let store = store.open()?;
    let pruned = store
        .prune(SystemTime::now())
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "deleted {} revocation(s) of expired tokens from {}",
        pruned.len(),
        store.describe()
    );
    print_revocations(&pruned);
    Ok(())
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
