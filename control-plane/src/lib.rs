//! `tether-control`: watches the catalog (Consul or static), merges the
//! operator's mesh.yaml, and serves versioned snapshots to every proxy.
//!
//! ```text
//! mesh.yaml ──(poll + SIGHUP)──► config ─┐
//! Consul ──(blocking queries)──► catalog ─┴─► snapshots ──► long-polls ──► proxies
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod catalog;
pub mod config;
pub mod locate;
pub mod metrics;
pub mod server;
pub mod snapshot;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::catalog::CatalogState;
use crate::config::{CatalogConfig, ConfigErrors, MeshConfig};
use crate::metrics::ControlMetrics;
use crate::snapshot::Snapshots;

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// mesh.yaml is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The API could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the control plane until the process is stopped.
pub async fn serve(config_path: PathBuf, listen: SocketAddr) -> Result<(), ServeError> {
    let metrics = ControlMetrics::new();
    let config = config::load(&config_path)?;
    metrics.config_loaded.set(unix_now());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: listen,
            source,
        })?;
    let snapshots = Snapshots::new(metrics.clone());
    let (config_tx, config_rx) = watch::channel(Arc::new(config));
    tokio::spawn(reload_loop(config_path, config_tx, metrics.clone()));
    tokio::spawn(compute_loop(
        config_rx,
        Arc::clone(&snapshots),
        metrics.clone(),
    ));
    tracing::info!(%listen, "tether-control serving");
    server::Api::new(snapshots, metrics).serve(listener).await;
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Starts the catalog a config names.
fn start_catalog(
    config: &MeshConfig,
    metrics: &ControlMetrics,
) -> watch::Receiver<Arc<CatalogState>> {
    match &config.catalog {
        CatalogConfig::Static { services } => catalog::fixed(services.clone()),
        CatalogConfig::Consul(consul) => catalog::consul::watch(consul.clone(), metrics.clone()),
    }
}

/// Recomputes snapshots whenever the config or the catalog changes. A
/// config change that switches catalogs restarts the catalog watch.
async fn compute_loop(
    mut configs: watch::Receiver<Arc<MeshConfig>>,
    snapshots: Arc<Snapshots>,
    metrics: ControlMetrics,
) {
    let mut config = configs.borrow_and_update().clone();
    let mut catalog = start_catalog(&config, &metrics);
    loop {
        let state = catalog.borrow_and_update().clone();
        snapshots.update(&config, &state);
        tokio::select! {
            changed = configs.changed() => {
                if changed.is_err() {
                    return;
                }
                let next = configs.borrow_and_update().clone();
                if next.catalog != config.catalog {
                    catalog = start_catalog(&next, &metrics);
                }
                config = next;
            }
            changed = catalog.changed() => {
                if changed.is_err() {
                    catalog = start_catalog(&config, &metrics);
                }
            }
        }
    }
}

/// Reloads mesh.yaml when its content changes (checked every second) or on
/// SIGHUP. A bad edit keeps the last good config, logged with line:column.
async fn reload_loop(path: PathBuf, tx: watch::Sender<Arc<MeshConfig>>, metrics: ControlMetrics) {
    let mut last = std::fs::read_to_string(&path).unwrap_or_default();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            _ = async { match hup.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => true,
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if text == last && !forced {
            continue;
        }
        last.clone_from(&text);
        match config::parse(&path, &text) {
            Ok(config) => {
                metrics.config_loaded.set(unix_now());
                tracing::info!(path = %path.display(), "mesh.yaml reloaded");
                tx.send_replace(Arc::new(config));
            }
            Err(errors) => {
                metrics.config_errors.inc();
                for error in &errors.0 {
                    tracing::error!(%error, "mesh.yaml refused; keeping the last good config");
                }
            }
        }
    }
}
