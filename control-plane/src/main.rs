//! `tether-control` binary: `serve`, `validate`, `status`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Tether's control plane.
#[derive(Parser)]
#[command(name = "tether-control", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve snapshots to proxies.
    Serve {
        /// The mesh configuration.
        #[arg(long, env = "TETHER_CONFIG", default_value = "mesh.yaml")]
        config: PathBuf,
        /// Proxy-facing API address.
        #[arg(long, env = "TETHER_LISTEN", default_value = "127.0.0.1:15010")]
        listen: SocketAddr,
    },
    /// Check a mesh.yaml; prints every problem as FILE:LINE:COL and exits 1.
    Validate {
        /// The file.
        config: PathBuf,
    },
    /// List every proxy the control plane knows, with its applied version.
    Status {
        /// The control plane.
        #[arg(
            long,
            env = "TETHER_CONTROL_PLANE",
            default_value = "http://127.0.0.1:15010"
        )]
        control_plane: String,
    },
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
        Command::Serve { config, listen } => {
            match runtime.block_on(tether_control::serve(config, listen)) {
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
        Command::Status { control_plane } => runtime.block_on(status(&control_plane)),
    }
}

async fn status(base: &str) -> ExitCode {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri = format!("{}/v1/status", base.trim_end_matches('/'));
    let body = match uri.parse::<http::Uri>() {
        Ok(parsed) => match client.get(parsed).await {
            Ok(response) => response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .ok(),
            Err(error) => {
                eprintln!("tether-control: {uri}: {error}");
                None
            }
        },
        Err(error) => {
            eprintln!("tether-control: bad URL {uri}: {error}");
            None
        }
    };
    let Some(status) =
        body.and_then(|b| serde_json::from_slice::<tether_api::StatusResponse>(&b).ok())
    else {
        return ExitCode::from(1);
    };
    println!(
        "{:<28} {:<14} {:>15} {:>9} {:<12} ERROR",
        "PROXY", "SERVICE", "APPLIED", "CURRENT", "CONNECTED"
    );
    for proxy in &status.proxies {
        let r = &proxy.report;
        let current = status.versions.get(&r.service).copied().unwrap_or(0);
        let error = match (&r.rejected_version, &r.error) {
            (Some(v), Some(e)) => format!("refused {v}: {e}"),
            _ => String::new(),
        };
        println!(
            "{:<28} {:<14} {:>15} {:>9} {:<12} {error}",
            r.proxy_id,
            r.service,
            r.applied_version,
            if r.applied_version == current {
                "yes"
            } else {
                "no"
            },
            proxy.connected
        );
    }
    ExitCode::SUCCESS
}
