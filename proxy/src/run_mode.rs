//! `tether-proxy run -- CMD ARGS...`: the proxy and an app as one process
//! tree, for batch jobs whose sidecar must stop when the job does.
//!
//! In order: install the signal handlers (so an early SIGTERM is not lost);
//! start the proxy; wait for its `/ready` (the condition `wait-ready` polls);
//! start the app with this process's stdio and environment; forward
//! SIGTERM, SIGINT, SIGHUP and SIGQUIT to it (and SIGTERM on
//! `POST /shutdown`); when it exits, drain the proxy as SIGTERM would and
//! exit with the app's code (128 + N when signal N killed it). A proxy that
//! cannot start never starts the app; the exit code is then the proxy's.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::app::{run_with, Lifecycle, RunError, Shutdown};
use crate::cli::{wait_ready, WaitReadyArgs};
use crate::config::ProxyConfig;

/// Exit code when the proxy is not ready in time (the app never ran).
const NOT_READY_EXIT: u8 = 1;
/// Exit code when the app's program cannot be found, as a shell reports it.
const NOT_FOUND_EXIT: u8 = 127;
/// Exit code when the app's program cannot be executed, as a shell reports it.
const CANNOT_EXECUTE_EXIT: u8 = 126;

/// What `run` starts beside the proxy.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// The app: program then arguments (never empty; clap requires it).
    pub command: Vec<OsString>,
    /// How long the proxy may take to become ready before giving up.
    pub ready_timeout: Duration,
}

/// Runs the proxy and the app; returns the process exit code.
pub async fn run(config: ProxyConfig, settings: RunSettings) -> u8 {
    let mut signals = match Forwarded::install() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("tether-proxy: cannot install signal handlers: {error}");
            return RunError::Signals(error).exit_code();
        }
    };
    let admin = config.admin_addr;
    let lifecycle = Lifecycle::supervised();
    let drain = lifecycle.drain.clone();
    let stop = lifecycle.admin_shutdown.clone();
    let mut proxy = tokio::spawn(run_with(config, lifecycle).in_current_span());

    // 1. The proxy first: the app starts only once it is ready.
    let ready = tokio::select! {
        result = &mut proxy => return proxy_exit(result),
        ready = ready(admin, settings.ready_timeout) => ready,
        (name, signal) = signals.recv() => {
            tracing::info!(signal = name, "signal before the app started: not starting it");
            let code = signal_exit(signal.as_raw());
            return stop_proxy(proxy, &drain, name, code).await;
        }
        reason = stop.requested() => {
            tracing::info!(reason, "stopped before the app started: not starting it");
            return stop_proxy(proxy, &drain, reason, 0).await;
        }
    };
    if !ready {
        eprintln!(
            "tether-proxy: {admin} did not become ready within {:?}; the app was not started",
            settings.ready_timeout
        );
        return stop_proxy(proxy, &drain, "the proxy was not ready", NOT_READY_EXIT).await;
    }

    // 2. The app.
    let app = match App::spawn(&settings.command) {
        Ok(app) => app,
        Err((error, code)) => {
            eprintln!("tether-proxy: cannot start the app: {error}");
            return stop_proxy(proxy, &drain, "the app could not start", code).await;
        }
    };
    let status = app.supervise(&mut signals, &stop, &mut proxy).await;

    // 3. The app is done: drain the proxy and pass its exit code on.
    let code = match status {
        Ok(status) => exit_code(status),
        Err(error) => {
            eprintln!("tether-proxy: lost track of the app: {error}");
            1
        }
    };
    tracing::info!(code, "the app exited");
    stop_proxy(proxy, &drain, "the app exited", code).await
}

/// Polls the proxy's own `/ready` until 200 or the timeout.
async fn ready(admin: SocketAddr, timeout: Duration) -> bool {
    wait_ready(&WaitReadyArgs { admin, timeout }).await
}

/// Drains the proxy; `code`, unless the proxy itself failed.
async fn stop_proxy(
    proxy: JoinHandle<Result<(), RunError>>,
    drain: &Shutdown,
    reason: &'static str,
    code: u8,
) -> u8 {
    drain.trigger(reason);
    match proxy_exit(proxy.await) {
        0 => code,
        failed => failed,
    }
}

/// The exit code the proxy task's end calls for (0 after a drain).
fn proxy_exit(result: Result<Result<(), RunError>, tokio::task::JoinError>) -> u8 {
    match result {
        Ok(Ok(())) => 0,
        Ok(Err(error)) => {
            tracing::error!(%error, "tether-proxy stopped");
            eprintln!("tether-proxy: {error}");
            error.exit_code()
        }
        Err(error) => {
            tracing::error!(%error, "tether-proxy stopped");
            eprintln!("tether-proxy: the proxy stopped: {error}");
            1
        }
    }
}

/// The app's exit code; 128 + N when signal N killed it, as shells report.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => signal_exit(signal),
        (None, None) => 1,
    }
}

/// 128 + N for signal N, as shells report a death by signal.
fn signal_exit(signal: i32) -> u8 {
    u8::try_from(128 + (signal & 0x7f)).unwrap_or(1)
}

/// The signals passed on to the app.
struct Forwarded {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Forwarded {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// The next signal: its name and number.
    async fn recv(&mut self) -> (&'static str, Signal) {
        tokio::select! {
            _ = self.term.recv() => ("SIGTERM", Signal::TERM),
            _ = self.int.recv() => ("SIGINT", Signal::INT),
            _ = self.hup.recv() => ("SIGHUP", Signal::HUP),
            _ = self.quit.recv() => ("SIGQUIT", Signal::QUIT),
        }
    }
}

/// The app's process, waited for on a blocking thread.
struct App {
    pid: Option<Pid>,
    exited: JoinHandle<std::io::Result<ExitStatus>>,
}

impl App {
    /// Starts the app with this process's stdio and environment; on failure
    /// the error and the exit code a shell would give.
    fn spawn(command: &[OsString]) -> Result<Self, (std::io::Error, u8)> {
        let Some((program, args)) = command.split_first() else {
            let error = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command");
            return Err((error, NOT_FOUND_EXIT));
        };
        let mut child = std::process::Command::new(program)
            .args(args)
            .spawn()
            .map_err(|error| {
                let code = match error.kind() {
                    std::io::ErrorKind::NotFound => NOT_FOUND_EXIT,
                    _ => CANNOT_EXECUTE_EXIT,
                };
                let program = program.to_string_lossy();
                (
                    std::io::Error::new(error.kind(), format!("{program}: {error}")),
                    code,
                )
            })?;
        let pid = i32::try_from(child.id()).ok().and_then(Pid::from_raw);
        tracing::info!(pid = child.id(), "the app started");
        let exited = tokio::task::spawn_blocking(move || child.wait());
        Ok(Self { pid, exited })
    }

    /// Waits for the app to exit, forwarding signals to it; `POST /shutdown`
    /// and a proxy that stops on its own send it SIGTERM.
    async fn supervise(
        mut self,
        signals: &mut Forwarded,
        stop: &Shutdown,
        proxy: &mut JoinHandle<Result<(), RunError>>,
    ) -> std::io::Result<ExitStatus> {
        let mut stop_sent = false;
        let mut proxy_running = true;
        loop {
            tokio::select! {
                status = &mut self.exited => {
                    return status.map_err(std::io::Error::other)?;
                }
                (name, signal) = signals.recv() => {
                    self.forward(name, signal);
                }
                reason = stop.requested(), if !stop_sent => {
                    stop_sent = true;
                    tracing::info!(reason, "stopping the app");
                    self.forward("SIGTERM", Signal::TERM);
                }
                result = &mut *proxy, if proxy_running => {
                    proxy_running = false;
                    proxy_exit(result);
                    tracing::warn!("the proxy stopped before the app: stopping the app");
                    self.forward("SIGTERM", Signal::TERM);
                }
            }
        }
    }

    /// Sends `signal` to the app (it is still running: its exit has not
    /// been seen yet).
    fn forward(&self, name: &'static str, signal: Signal) {
        let Some(pid) = self.pid else {
            return;
        };
        tracing::info!(signal = name, "forwarding to the app");
        if let Err(error) = rustix::process::kill_process(pid, signal) {
            tracing::warn!(signal = name, %error, "cannot signal the app");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn exit_codes_are_the_apps_or_128_plus_its_signal() {
        // Raw wait statuses: exit code in the high byte, signal in the low.
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
