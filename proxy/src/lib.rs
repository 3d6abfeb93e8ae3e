//! `tether-proxy`: Tether's sidecar.
//!
//! [`run`] (in [`app`], the composition root) builds the proxy from its
//! configuration, serves until SIGTERM or SIGINT and drains.
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
pub mod hop;
pub mod identity;
pub mod inbound;
pub mod observe;
pub mod original_dst;
pub mod outbound;
pub mod request_metrics;
pub mod resilience;
pub mod state;
pub mod tcp;
pub mod telemetry;
pub mod transport;

pub use app::{run, RunError};
