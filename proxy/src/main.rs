//! `tether-proxy` binary: parses flags, sets up logging, runs the proxy.

use std::process::ExitCode;

use clap::Parser;
use tether_proxy::cli::{wait_ready, Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Init(args)) = &cli.command {
        return ExitCode::from(tether_proxy::cli::init(args));
    }
    let runtime = match runtime(cli.proxy.worker_threads) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tether-proxy: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    if let Some(Command::WaitReady(args)) = &cli.command {
        return if runtime.block_on(wait_ready(args)) {
            ExitCode::SUCCESS
        } else {
            eprintln!(
                "tether-proxy: {} did not become ready within {:?}",
                args.admin, args.timeout
            );
            ExitCode::from(1)
        };
    }
    init_logging(cli.proxy.log_format);
    let config = match cli.proxy.into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tether-proxy: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(tether_proxy::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "tether-proxy stopped");
            eprintln!("tether-proxy: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// The async runtime: one thread runs a current-thread runtime (no work
/// stealing, no cross-thread wake-ups); more run a multi-thread one.
fn runtime(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("TETHER_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
