//! `tether-control ca ...` and `tether-control token ...`: the operator's
//! side of the mesh CA, run on the control plane's host. Nothing here talks
//! to a running control plane: `serve` re-reads `tokens.json` on every
//! token request, so new and revoked tokens apply at once.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use tether_certs::{
    CertificateAuthority, JoinToken, TokenStore, TrustBundle, CA_CERT_FILE, CA_KEY_FILE,
    CONTROL_PLANE_SERVICE,
};
use tether_control::issuer::TOKENS_FILE;

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
    /// Create a join token bound to one service. Prints it once (or writes
    /// it to --out with mode 0600); only its SHA-256 is stored.
    Create {
        /// The only service this token can obtain a certificate for.
        #[arg(long)]
        service: String,
        /// The CA directory (tokens live in DIR/tokens.json).
        #[arg(long, env = "TETHER_CA_DIR")]
        ca_dir: PathBuf,
        /// Write the token to this file (0600, must not exist) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke every token of a service. Certificates already issued stay
    /// valid until they expire; renewals by certificate go on.
    Revoke {
        /// The service.
        #[arg(long)]
        service: String,
        /// The CA directory.
        #[arg(long, env = "TETHER_CA_DIR")]
        ca_dir: PathBuf,
    },
    /// List the tokens (service and creation time; never the secrets).
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
pub fn token(command: TokenCommand) -> ExitCode {
    match command {
        TokenCommand::Create {
            service,
            ca_dir,
            out,
        } => match create(&service, &ca_dir, out.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(error),
        },
        TokenCommand::Revoke { service, ca_dir } => {
            let revoked = TokenStore::open(&ca_dir.join(TOKENS_FILE))
                .and_then(|mut store| store.revoke_service(&service));
            match revoked {
                Ok(n) => {
                    println!("revoked {n} token(s) of {service}");
                    ExitCode::SUCCESS
                }
                Err(error) => fail(error),
            }
        }
        TokenCommand::List { ca_dir } => match TokenStore::open(&ca_dir.join(TOKENS_FILE)) {
            Ok(store) => {
                println!("{:<24} CREATED (unix seconds)", "SERVICE");
                for record in store.records() {
                    println!("{:<24} {}", record.service, record.created_unix);
                }
                ExitCode::SUCCESS
            }
            Err(error) => fail(error),
        },
    }
}

fn create(service: &str, ca_dir: &Path, out: Option<&Path>) -> Result<(), String> {
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
    let (token, record) = JoinToken::generate(service).map_err(|e| e.to_string())?;
    // Write the secret first: a token that is stored but was never shown
    // to anyone would be harmless, the other way round it would be lost.
    if let Some(path) = out {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("{}: {e} (it must not exist yet)", path.display()))?;
        writeln!(file, "{token}").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let mut store = TokenStore::open(&ca_dir.join(TOKENS_FILE)).map_err(|e| e.to_string())?;
    store.add(record).map_err(|e| e.to_string())?;
    match out {
        Some(path) => eprintln!(
            "token for {service} written to {} (0600); give it to the proxy as --token-file",
            path.display()
        ),
        None => println!("{token}"),
    }
    Ok(())
}
