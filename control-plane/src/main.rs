//! `tether-control` binary: `serve`, `validate`, `status`, `ca init`,
//! `token create|revoke|list-revoked|prune-revoked|list`, `rollout start|status|abort`, `explain`. The only code that reads flags and the
//! environment.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod admin_cli;
mod explain_cli;
mod rollout_cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tether_control::issuer::IssuerSettings;
use tether_control::ServeSettings;
use tracing_subscriber::EnvFilter;

use crate::admin_cli::{CaCommand, TokenCommand};
use crate::rollout_cli::RolloutCommand;

/// Tether's control plane.
#[derive(Parser)]
#[command(name = "tether-control", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve snapshots to proxies (and, with --ca-dir, sign their certificates).
    Serve {
        /// The mesh configuration.
        #[arg(long, env = "TETHER_CONFIG", default_value = "mesh.yaml")]
        config: PathBuf,
        /// Proxy-facing API address.
        #[arg(long, env = "TETHER_LISTEN", default_value = "127.0.0.1:15010")]
        listen: SocketAddr,
        /// Plaintext admin listener for probes, Prometheus and operators
        /// (GET /live /ready /metrics /v1/status /v1/rollouts /v1/topology
        /// and the topology page /ui only); off unless set.
        #[arg(long, env = "TETHER_ADMIN")]
        admin: Option<SocketAddr>,
        /// The mesh CA (`ca init --dir`): serves the API over TLS and signs
        /// proxies' certificates (signed join tokens; revocations in Consul KV, or
        /// DIR/revoked-tokens.json with a static catalog).
        #[arg(long, env = "TETHER_CA_DIR")]
        ca_dir: Option<PathBuf>,
        /// Lifetime of the certificates issued; proxies renew at two thirds.
        #[arg(long, env = "TETHER_CERT_LIFETIME", default_value = "24h", value_parser = humantime::parse_duration, requires = "ca_dir")]
        cert_lifetime: Duration,
        /// Where rollouts are kept (JSON, 0600, written atomically), so a
        /// restart resumes or reports them; rollouts cannot start without it.
        #[arg(long, env = "TETHER_ROLLOUT_STATE")]
        rollout_state: Option<PathBuf>,
    },
    /// Check a mesh.yaml; prints every problem as FILE:LINE:COL and exits 1.
    Validate {
        /// The file.
        #[arg(env = "TETHER_CONFIG")]
        config: PathBuf,
    },
    /// What a new mesh.yaml would change for the proxies, before it is
    /// applied. Exit 0: nothing changes; 2: something does; 1: a file is
    /// invalid (its problems as FILE:LINE:COL).
    Plan {
        /// The new file.
        new: PathBuf,
        /// The file in force.
        #[arg(long, env = "TETHER_CONFIG", default_value = "mesh.yaml")]
        current: PathBuf,
    },
    /// List every proxy the control plane knows, with its applied version.
    Status {
        #[command(flatten)]
        target: rollout_cli::Target,
    },
    /// The mesh certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Join tokens: how a proxy proves its service for its first certificate.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Canary and blue-green rollouts gated by the proxies' statistics.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// What the mesh would do with one request: route, split, policy,
    /// traffic features, authorization rule (FILE:LINE), endpoints. Exit 0:
    /// allowed and routed; 1: denied or unroutable; 2: no answer.
    Explain(explain_cli::ExplainArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TETHER_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tether-control: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Serve {
            config,
            listen,
            admin,
            ca_dir,
            cert_lifetime,
            rollout_state,
        } => {
            let settings = ServeSettings {
                config_path: config,
                listen,
                admin,
                ca: ca_dir.map(|ca_dir| IssuerSettings {
                    ca_dir,
                    cert_lifetime,
                }),
                rollout_state,
            };
            match runtime.block_on(tether_control::serve(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("tether-control: {error}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Validate { config } => match tether_control::config::load(&config) {
            Ok(mesh) => {
                println!(
                    "{}: OK ({} services, trust domain {})",
                    config.display(),
                    mesh.services.len(),
                    mesh.trust_domain
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(1)
            }
        },
        Command::Plan { new, current } => {
            let (current_mesh, new_mesh) = match (
                tether_control::config::load(&current),
                tether_control::config::load(&new),
            ) {
                (Ok(a), Ok(b)) => (a, b),
                (a, b) => {
                    for errors in [a.err(), b.err()].into_iter().flatten() {
                        eprintln!("{errors}");
                    }
                    return ExitCode::from(1);
                }
            };
            let plan = tether_control::plan::Plan::between(&current_mesh, &new_mesh);
            println!("{} -> {}:", current.display(), new.display());
            print!("{plan}");
            if plan.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Command::Status { target } => runtime.block_on(status(&target)),
        Command::Ca(command) => admin_cli::ca(command),
        Command::Token(command) => runtime.block_on(admin_cli::token(command)),
        Command::Rollout(command) => runtime.block_on(rollout_cli::rollout(command)),
        Command::Explain(args) => runtime.block_on(explain_cli::explain(args)),
    }
}

async fn status(target: &rollout_cli::Target) -> ExitCode {
    let tls = match rollout_cli::tls(target) {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("tether-control: {error}");
            return ExitCode::from(2);
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let bases: Vec<&str> = target
        .control_plane
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .collect();
    if let [base] = bases.as_slice() {
        return match tether_control::status::fetch(base, &tls).await {
            Ok(status) => {
                print!("{}", tether_control::status::render(&status, now));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("tether-control: {error}");
                ExitCode::from(1)
            }
        };
    }
    // Several replicas: ask them all at once.
    let answers = bases.iter().map(|base| async {
        let answer = tether_control::status::fetch(base, &tls).await;
        ((*base).to_owned(), answer)
    });
    let answers: Vec<_> = futures_util::future::join_all(answers).await;
    print!("{}", tether_control::status::render_replicas(&answers, now));
    if answers.iter().any(|(_, answer)| answer.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
