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
pub mod explain;
pub mod issuer;
pub mod locate;
pub mod metrics;
pub mod plan;
pub mod private_file;
pub mod reload;
pub mod revocations;
pub mod rollout;
pub mod scope;
pub mod server;
pub mod snapshot;
pub mod stats;
pub mod status;
pub mod topology;
pub mod wants;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::catalog::consul::ConsulCatalog;
use crate::catalog::{Catalog, StaticCatalog};
use crate::config::{CatalogConfig, ConfigErrors, MeshConfig};
use crate::issuer::{Issuer, IssuerError, IssuerSettings};
use crate::metrics::ControlMetrics;
use crate::reload::Reloader;
use crate::snapshot::Snapshots;

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// mesh.yaml cannot be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// mesh.yaml is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The CA could not be loaded or could not issue our own certificate.
    #[error("{0}")]
    Issuer(#[from] IssuerError),
    /// The API's TLS settings could not be built.
    #[error("API TLS: {0}")]
    Tls(#[source] tether_certs::Error),
    /// The rollout state file cannot be read.
    #[error("rollout state: {0}")]
    RolloutState(#[from] crate::rollout::state_file::StateFileError),
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

/// What `tether-control serve` runs with.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// mesh.yaml.
    pub config_path: PathBuf,
    /// The proxy-facing API address.
    pub listen: SocketAddr,
    /// Plaintext admin listener (`/live /ready /metrics /v1/status`), if any.
    pub admin: Option<SocketAddr>,
    /// The mesh CA: with it the API is served over TLS and signs proxies'
    /// certificates; without it the API is plaintext and issues nothing.
    pub ca: Option<IssuerSettings>,
    /// Where rollouts are kept across restarts; without it rollouts cannot start.
    pub rollout_state: Option<PathBuf>,
}

/// Runs the control plane until the process is stopped.
pub async fn serve(settings: ServeSettings) -> Result<(), ServeError> {
    let ServeSettings {
        config_path,
        listen,
        admin,
        ca,
        rollout_state,
    } = settings;
    let metrics = ControlMetrics::new();
    let text = std::fs::read_to_string(&config_path).map_err(|source| ServeError::Read {
        path: config_path.clone(),
        source,
    })?;
    let config = config::parse(&config_path, &text)?;
    let trust_domain = config.trust_domain.clone();
    let (config_tx, config_rx) = watch::channel(Arc::new(config));
    // The CA and the API's own certificate before binding: a missing CA
    // stops start-up with what to run.
    let tls = match &ca {
        Some(ca) => {
            let issuer = Arc::new(
                Issuer::load(ca, &trust_domain, metrics.clone())?.with_config(config_rx.clone()),
            );
            let store = issuer.own_store()?;
            let server = tether_certs::server_config(&store, tether_certs::ClientAuth::Optional)
                .map_err(ServeError::Tls)?;
            tokio::spawn(Arc::clone(&issuer).keep_own_fresh(store));
            Some((issuer, tokio_rustls::TlsAcceptor::from(server)))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: listen,
            source,
        })?;
    let admin_listener = match admin {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?,
        ),
        None => None,
    };
    let snapshots = Snapshots::new(metrics.clone());
    // Installed before anything runs, so an early SIGHUP cannot kill us.
    let hup = match signal(SignalKind::hangup()) {
        Ok(hup) => Some(hup),
        Err(error) => {
            tracing::warn!(%error, "no SIGHUP handler; mesh.yaml is still re-read every second");
            None
        }
    };
    let rollouts = rollout::Rollouts::load(
        Arc::default(),
        config_rx.clone(),
        rollout_state,
        metrics.clone(),
    )?;
    let reloader = Reloader::new(config_path, text, config_tx, metrics.clone());
    tokio::spawn(reloader.run(hup));
    tokio::spawn(compute_loop(
        config_rx,
        rollouts.overrides(),
        Arc::clone(&snapshots),
        metrics.clone(),
    ));
    tokio::spawn(Arc::clone(&rollouts).run());
    tracing::info!(%listen, ?admin, tls = tls.is_some(), "tether-control serving");
    let mut api = server::Api::new(snapshots, metrics).with_rollouts(rollouts);
    if let Some(listener) = admin_listener {
        tokio::spawn(api.clone().serve_admin(listener));
    }
    let acceptor = match tls {
        Some((issuer, acceptor)) => {
            api = api.with_issuer(issuer);
            Some(acceptor)
        }
        None => None,
    };
    let api = api.serve(listener, acceptor);
    tokio::select! {
        () = api => {}
        () = stop_signal() => tracing::info!("stopping"),
    }
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM; never, if neither can be watched.
async fn stop_signal() {
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = term => {}
        () = interrupt => {}
    }
}

/// Starts the catalog a config names.
fn start_catalog(config: &MeshConfig, metrics: &ControlMetrics) -> Box<dyn Catalog> {
    match &config.catalog {
        CatalogConfig::Static { services } => Box::new(StaticCatalog::new(services.clone())),
        CatalogConfig::Consul(consul) => {
            Box::new(ConsulCatalog::start((**consul).clone(), metrics.clone()))
        }
    }
}

/// Recomputes snapshots whenever the config or the catalog changes, once the
/// catalog has been read in full (a half-read Consul catalog would hand
/// proxies empty endpoint lists). A config change that switches catalogs
/// stops the old catalog's watches and starts the new one's. Rollouts'
/// overrides replace their services' splits ([`rollout::apply`]).
async fn compute_loop(
    mut configs: watch::Receiver<Arc<MeshConfig>>,
    mut overrides: watch::Receiver<Arc<rollout::Overrides>>,
    snapshots: Arc<Snapshots>,
    metrics: ControlMetrics,
) {
    let mut config = configs.borrow_and_update().clone();
    let mut catalog = start_catalog(&config, &metrics);
    let mut states = catalog.subscribe();
    let mut wants = snapshots.wants().subscribe();
    loop {
        let state = states.borrow_and_update().clone();
        if state.synced {
            let effective = rollout::apply(&config, &overrides.borrow_and_update());
            snapshots.update(&effective, &state);
        }
        tokio::select! {
            changed = wants.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            changed = overrides.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            changed = configs.changed() => {
                if changed.is_err() {
                    return;
                }
                let next = configs.borrow_and_update().clone();
                if next.catalog != config.catalog {
                    catalog = start_catalog(&next, &metrics);
                    states = catalog.subscribe();
                }
                config = next;
            }
            changed = states.changed() => {
                if changed.is_err() {
                    catalog = start_catalog(&config, &metrics);
                    states = catalog.subscribe();
                }
            }
        }
    }
}
