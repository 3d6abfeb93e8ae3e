//! `tether-proxy`: Tether's sidecar.
//!
//! [`run`] (in [`app`], the composition root) builds the proxy from its
//! configuration, serves until SIGTERM, SIGINT or `POST /shutdown` and
//! drains; [`run_mode`] runs an app beside it (`tether-proxy run`).
//!
//! Module layers, lowest first: a module uses only modules of the layers
//! below its own, never one above or beside it (`tests/module_graph.rs`
//! fails on any cycle between top-level modules).
//!
//! 1. leaves: `authority`, `body`, `capture`, `headers`, `request_metrics`, `shutdown`
//! 2. `transport`, `access_log`, `telemetry`, `grpc`, `tap`
//! 3. `balance`, `identity`, `tcp_metrics`
//! 4. `errors`, `control_client`
//! 5. `resilience`, `hop`, `observe`, `upgrade`, `traffic`
//! 6. `state`, `renewal`, `registration`
//! 7. `outbound`, `inbound`, `tcp`
//! 8. `discovery`
//! 9. `config`, `admin`, `explain`
//! 10. `app`, `cli`, `run_mode`, `tap_client`: the composition root, its
//!     flags, the app runner, the tap follower
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod authority;
pub mod balance;
pub mod body;
pub mod capture;
pub mod cli;
pub mod config;
pub mod control_client;
pub mod discovery;
pub mod errors;
pub mod explain;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod headers;
pub mod hop;
pub mod identity;
pub mod inbound;
pub mod observe;
pub mod original_dst;
pub mod outbound;
pub mod registration;
pub mod renewal;
pub mod request_metrics;
pub mod resilience;
pub mod run_mode;
pub mod shutdown;
pub mod state;
pub mod tap;
pub mod tap_client;
pub mod tcp;
pub mod tcp_metrics;
pub mod telemetry;
pub mod topology_facts;
pub mod traffic;
pub mod transport;
pub mod upgrade;
pub mod upstream_stats;

pub use app::{run, RunError};
