//! `tether-control explain`: its flags, its output and exit codes (0: the
//! request would be allowed and routed; 1: denied or unroutable; 2: no
//! answer: bad arguments, an invalid mesh.yaml, an unreachable control
//! plane).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tether_control::explain::{self, ExplainError, Positions, Query};

/// `explain`'s flags.
#[derive(Args)]
pub struct ExplainArgs {
    /// The calling service (its sidecar routes the request).
    #[arg(long)]
    from: String,
    /// The called service (the request's authority).
    #[arg(long)]
    to: String,
    /// The request's method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// The request's path.
    #[arg(long, default_value = "/")]
    path: String,
    /// A request header, NAME=VALUE (repeatable): route rules may match it.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// The mesh configuration to explain from (offline); with --control,
    /// only read to name rules and routes by FILE:LINE.
    #[arg(long, env = "TETHER_CONFIG")]
    config: Option<PathBuf>,
    /// A running control plane (plain http://): its current snapshots,
    /// rollouts included.
    #[arg(long)]
    control: Option<String>,
    /// The caller's zone (its proxy's --zone), for locality-aware balancing.
    #[arg(long)]
    zone: Option<String>,
    /// Print the explanation as JSON.
    #[arg(long)]
    json: bool,
}

const USAGE: u8 = 2;

/// Runs `explain`.
pub async fn explain(args: ExplainArgs) -> ExitCode {
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("tether-control explain: {error}");
            ExitCode::from(USAGE)
        }
    }
}

async fn run(args: ExplainArgs) -> Result<bool, ExplainError> {
    let method =
        http::Method::from_bytes(args.method.to_ascii_uppercase().as_bytes()).map_err(|_| {
            ExplainError::Usage(format!("--method {}: not an HTTP method", args.method))
        })?;
    let mut headers = Vec::with_capacity(args.headers.len());
    for header in &args.headers {
        let (name, value) = header.split_once('=').ok_or_else(|| {
            ExplainError::Usage(format!("--header {header}: expected NAME=VALUE"))
        })?;
        headers.push((name.trim().to_owned(), value.to_owned()));
    }
    let query = Query {
        from: args.from,
        to: args.to,
        method,
        path: args.path,
        headers,
        zone: args.zone,
    };
    let positions = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ExplainError::Usage(format!("{}: cannot read: {e}", path.display()))
            })?;
            let config = tether_control::config::parse(path, &text)?;
            Some(Positions::new(path, text, config))
        }
        None => None,
    };
    let inputs = match (&args.control, &args.config, &positions) {
        (Some(base), _, _) => explain::fetch(base, &query).await?,
        (None, Some(path), Some(positions)) => explain::offline(positions.config(), path, &query),
        _ => {
            return Err(ExplainError::Usage(
                "say where the mesh is: --config mesh.yaml or --control http://HOST:PORT".into(),
            ))
        }
    };
    let explanation = explain::explain(&query, &inputs, positions.as_ref())?;
    if args.json {
        let json = serde_json::to_string_pretty(&explanation)
            .map_err(|e| ExplainError::Usage(e.to_string()))?;
        println!("{json}");
    } else {
        print!("{}", explain::render(&explanation));
    }
    Ok(explanation.ok())
}
