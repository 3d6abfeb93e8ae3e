//! `tether-pki`: a development CA for local meshes, demos and benchmarks.
//!
//! ```text
//! tether-pki init  --dir pki                        # CA: pki/ca.pem, pki/ca-key.pem (0600)
//! tether-pki issue --dir pki --service api --out pki/api [--lifetime 24h]
//! ```
//!
//! `issue` generates the key and CSR and signs it in one step, which is only
//! fit for a laptop: in a mesh the proxy keeps its key and sends a CSR.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tether_certs::{CertificateAuthority, Identity, IdentityKey, SpiffeId};

#[derive(Parser)]
#[command(name = "tether-pki", about = "Development CA for Tether meshes")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a CA in DIR (refuses to overwrite one).
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "tether.local")]
        trust_domain: String,
    },
    /// Issue a service identity signed by the CA in DIR into OUT.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        service: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        lifetime: Duration,
    },
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tether-pki: {error}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<String, Box<dyn std::error::Error>> {
    match args.command {
        Command::Init { dir, trust_domain } => {
            CertificateAuthority::init_dir(&dir, &trust_domain)?;
            Ok(format!(
                "CA for {trust_domain} written to {}",
                dir.display()
            ))
        }
        Command::Issue {
            dir,
            service,
            out,
            lifetime,
        } => {
            let ca = CertificateAuthority::load_dir(&dir)?;
            let domain = ca
                .trust_domain()
                .ok_or("the CA has no SPIFFE trust domain")?
                .to_owned();
            let id = SpiffeId::service(&domain, &service)?;
            let key = IdentityKey::generate()?;
            let issued = ca.sign_csr(&key.csr_pem(&id)?, &id, lifetime)?;
            std::fs::create_dir_all(&out)?;
            Identity::new(&key, &issued.chain_pem)?.write_dir(&out)?;
            Ok(format!(
                "{id} issued to {} (lifetime {})",
                out.display(),
                humantime::format_duration(lifetime)
            ))
        }
    }
}
