//! `tether-proxy` binary: parses flags, sets up logging, runs the proxy
//! (alone, or with an app under `run`).

use std::process::ExitCode;

use clap::Parser;
use tether_proxy::cli::{wait_ready, Cli, Command, LogFormat, WaitReadyArgs};
use tether_proxy::run_mode::RunSettings;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` takes the proxy flags after its name, plain mode before it.
    let (proxy, run) = match cli.command {
        Some(Command::Init(args)) => return ExitCode::from(tether_proxy::cli::init(&args)),
        Some(Command::WaitReady(args)) => return wait_ready_main(cli.proxy.worker_threads, &args),
        Some(Command::Tap(args)) => {
            return match runtime(Some(1)) {
                Ok(runtime) => {
                    ExitCode::from(runtime.block_on(tether_proxy::tap_client::tap(&args)))
                }
                Err(error) => runtime_failed(&error),
            }
        }
        Some(Command::Run(args)) => {
            let args = *args;
            (
                args.proxy,
                Some(RunSettings {
                    command: args.command,
                    ready_timeout: args.ready_timeout,
                }),
            )
        }
        None => (cli.proxy, None),
    };
    let runtime = match runtime(proxy.worker_threads) {
        Ok(runtime) => runtime,
        Err(error) => return runtime_failed(&error),
    };
    init_logging(proxy.log_format);
    let config = match proxy.into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tether-proxy: {error}");
            return ExitCode::from(2);
        }
    };
    if let Some(settings) = run {
        return ExitCode::from(runtime.block_on(tether_proxy::run_mode::run(config, settings)));
    }
    match runtime.block_on(tether_proxy::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "tether-proxy stopped");
            eprintln!("tether-proxy: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// `tether-proxy wait-ready`: 0 once ready, 1 on timeout.
fn wait_ready_main(threads: Option<u16>, args: &WaitReadyArgs) -> ExitCode {
    let runtime = match runtime(threads) {
        Ok(runtime) => runtime,
        Err(error) => return runtime_failed(&error),
    };
    if runtime.block_on(wait_ready(args)) {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "tether-proxy: {} did not become ready within {:?}",
            args.admin, args.timeout
        );
        ExitCode::from(1)
    }
}

fn runtime_failed(error: &std::io::Error) -> ExitCode {
    eprintln!("tether-proxy: cannot start the runtime: {error}");
    ExitCode::from(1)
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
