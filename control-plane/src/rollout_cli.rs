//! `tether-control rollout start|status|abort|undo`: the operator's side of
//! rollouts, talking to the running control plane's API (mutations only
//! from its host: the API accepts them from a loopback address only).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use tether_api::{
    Gates, RolloutList, RolloutRequest, RolloutStatus, DEFAULT_MAX_P99_RATIO,
    DEFAULT_MAX_SUCCESS_DROP, DEFAULT_MIN_REQUESTS, DEFAULT_MIN_SUCCESS_RATE, ROLLOUTS_PATH,
};
use tether_control::status::{request, StatusTls};

/// When `--max-wait` is not given: ten intervals, long enough for a quiet
/// service to send `--min-requests`, short enough that a rollout nobody
/// calls does not hang for ever.
const DEFAULT_MAX_WAIT_INTERVALS: u32 = 10;

/// How to reach the control plane (rollout changes are accepted only from
/// its host).
#[derive(Args, Clone)]
pub struct Target {
    /// The control plane (`https://` when it runs a CA); `status` takes
    /// several replicas separated by commas.
    #[arg(
        long,
        env = "TETHER_CONTROL_PLANE",
        default_value = "http://127.0.0.1:15010"
    )]
    pub control_plane: String,
    /// Roots to verify an https control plane with (the CA's ca.pem).
    #[arg(long, env = "TETHER_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,
}

/// `tether-control rollout ...`.
#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Move SERVICE's default split from subset --from to subset --to in
    /// steps, each judged by the gates on the proxies' statistics.
    Start {
        /// The service (in mesh.yaml, with both subsets).
        service: String,
        /// The subset traffic moves away from.
        #[arg(long)]
        from: String,
        /// The subset traffic moves to.
        #[arg(long)]
        to: String,
        /// Percent to --to at each step, increasing, ending at 100 (`100`
        /// alone: blue-green).
        #[arg(long, value_delimiter = ',', default_value = "5,25,50,100")]
        steps: Vec<u32>,
        /// How long each step lasts before it is judged.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Minimum success rate of --to (0..1).
        #[arg(long, default_value_t = DEFAULT_MIN_SUCCESS_RATE)]
        min_success_rate: f64,
        /// Maximum p99 latency of --to.
        #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
        max_p99: Duration,
        /// Largest drop of --to's success rate below --from's (0.01 = 1 point).
        #[arg(long, default_value_t = DEFAULT_MAX_SUCCESS_DROP)]
        max_success_drop: f64,
        /// Largest ratio of --to's p99 over --from's.
        #[arg(long, default_value_t = DEFAULT_MAX_P99_RATIO)]
        max_p99_ratio: f64,
        /// Requests to --to in a step before it is judged.
        #[arg(long, default_value_t = DEFAULT_MIN_REQUESTS)]
        min_requests: u64,
        /// Longest a step waits for --min-requests before the rollout is
        /// rolled back (default: 10 intervals).
        #[arg(long, value_parser = humantime::parse_duration)]
        max_wait: Option<Duration>,
        #[command(flatten)]
        target: Target,
    },
    /// Show every rollout (or SERVICE's): state, percent, step, the figures
    /// of both subsets in the current window, the reason it ended.
    Status {
        /// Only this service.
        service: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Switch SERVICE back to 100 % of --from at once (an active rollout,
    /// or a promoted one: blue-green's switch back).
    #[command(alias = "undo")]
    Abort {
        /// The service.
        service: String,
        #[command(flatten)]
        target: Target,
    },
}

/// The TLS settings to reach `target` with (its trust bundle, read).
pub fn tls(target: &Target) -> Result<StatusTls, String> {
    let bundle = target
        .trust_bundle
        .as_deref()
        .map(crate::admin_cli::read_bundle)
        .transpose()?;
    Ok(StatusTls {
        bundle,
        trust_domain: None,
    })
}

/// Runs `rollout ...`.
pub async fn rollout(command: RolloutCommand) -> ExitCode {
    match run(command).await {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tether-control: {}", error.trim_end());
            ExitCode::from(1)
        }
    }
}

async fn call(
    target: &Target,
    method: http::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<bytes::Bytes, String> {
    let tls = tls(target)?;
    let (uri, status, body) = request(&target.control_plane, &tls, method, path, body)
        .await
        .map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!(
            "{uri}: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ))
    }
}

async fn run(command: RolloutCommand) -> Result<String, String> {
    match command {
        RolloutCommand::Start {
            service,
            from,
            to,
            steps,
            interval,
            min_success_rate,
            max_p99,
            max_success_drop,
            max_p99_ratio,
            min_requests,
            max_wait,
            target,
        } => {
            let wanted = RolloutRequest {
                service,
                from,
                to,
                steps,
                interval,
                gates: Gates {
                    min_success_rate,
                    max_p99,
                    max_success_drop,
                    max_p99_ratio,
                    min_requests,
                    max_wait: max_wait.unwrap_or(interval * DEFAULT_MAX_WAIT_INTERVALS),
                },
            };
            let body = serde_json::to_vec(&wanted).map_err(|e| e.to_string())?;
            let answer = call(&target, http::Method::POST, ROLLOUTS_PATH, Some(body)).await?;
            let status: RolloutStatus =
                serde_json::from_slice(&answer).map_err(|e| format!("unexpected answer: {e}"))?;
            Ok(tether_control::rollout::render::render(&RolloutList {
                rollouts: vec![status],
            }))
        }
        RolloutCommand::Status { service, target } => {
            let answer = call(&target, http::Method::GET, ROLLOUTS_PATH, None).await?;
            let mut list: RolloutList =
                serde_json::from_slice(&answer).map_err(|e| format!("unexpected answer: {e}"))?;
            if let Some(service) = service {
                list.rollouts.retain(|r| r.request.service == service);
            }
            Ok(tether_control::rollout::render::render(&list))
        }
        RolloutCommand::Abort { service, target } => {
            let path = format!("{ROLLOUTS_PATH}/{service}/abort");
            let answer = call(&target, http::Method::POST, &path, None).await?;
            let status: RolloutStatus =
                serde_json::from_slice(&answer).map_err(|e| format!("unexpected answer: {e}"))?;
            Ok(tether_control::rollout::render::render(&RolloutList {
                rollouts: vec![status],
            }))
        }
    }
}
