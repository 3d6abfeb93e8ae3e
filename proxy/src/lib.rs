//! `tether-proxy`: Tether's sidecar.
//!
//! Start-up order (see [`run`]): bind the admin, outbound and inbound
//! listeners, load the first snapshot (which binds its tcp services'
//! ports), then spawn tasks — a taken port or a bad snapshot stops the proxy
//! before it serves HTTP. Shutdown: stop accepting, let in-flight requests
//! and TCP streams finish up to the drain deadline, exit.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod body;
pub mod cli;
pub mod config;
pub mod control_client;
pub mod discovery;
pub mod errors;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod observe;
pub mod outbound;
pub mod resilience;
pub mod state;
pub mod tcp;
pub mod telemetry;
pub mod transport;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::Instrument;

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::config::{ProxyConfig, SnapshotSource};
use crate::control_client::{ControlClientError, ControlPlaneClient};
use crate::discovery::{load_file, watch_file, Applier, SnapshotError};
use crate::identity::{IdentityError, IdentitySource, MeshIdentity};
use crate::inbound::{Inbound, InboundSettings};
use crate::metrics::{Direction, Metrics};
use crate::observe::Observer;
use crate::outbound::Outbound;
use crate::state::MeshState;
use crate::tcp::{TcpInbound, TcpListeners, TcpSettings};
use crate::telemetry::Telemetry;
use crate::transport::{
    bind, ClientSettings, InboundTls, ListenerOptions, Servers, StreamHandler, UpstreamClient,
};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The first snapshot could not be loaded.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The mesh identity (certificate, key, trust bundle) could not be loaded.
    #[error("mesh identity: {0}")]
    Identity(#[from] IdentityError),
    /// The control-plane URL or its TLS settings are unusable.
    #[error("{0}")]
    ControlPlane(#[from] ControlClientError),
    /// A listener could not be bound.
    #[error("{0}")]
    Bind(#[source] std::io::Error),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

impl RunError {
    /// Process exit code: 2 for bad configuration, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Snapshot(SnapshotError::Listen(_)) => 1,
            RunError::Snapshot(_) | RunError::Identity(_) | RunError::ControlPlane(_) => 2,
            RunError::Bind(_) | RunError::Signals(_) => 1,
        }
    }
}

/// Runs the proxy until SIGTERM or SIGINT, then drains and returns.
pub async fn run(config: ProxyConfig) -> Result<(), RunError> {
    let metrics = Metrics::new();
    let state = Arc::new(ArcSwap::from_pointee(MeshState::empty(
        discovery::build::unknown_metrics(&metrics),
    )));
    let service = config
        .service
        .clone()
        .unwrap_or_else(|| "tether-proxy".to_owned());
    let instance = match &config.source {
        SnapshotSource::ControlPlane(settings) => settings.proxy_id.clone(),
        SnapshotSource::File { .. } => format!("{service}-{}", std::process::id()),
    };
    let telemetry = Telemetry::new(
        telemetry::Identity {
            service: service.clone(),
            instance,
        },
        metrics.clone(),
    );
    let access_log = config
        .access_log
        .then(|| AccessLog::start(metrics.access_log_dropped.clone()));

    // 1. Every listener first: a taken port stops start-up. (The tcp
    //    services' ports are bound with the first snapshot, below.)
    let admin_listener = bind(config.admin_addr).await.map_err(RunError::Bind)?;
    let outbound_listener = bind(config.outbound_addr).await.map_err(RunError::Bind)?;
    let inbound_listener = bind(config.inbound_addr).await.map_err(RunError::Bind)?;

    // 2. Identity, then the first snapshot, before anything is served: a bad
    //    certificate or snapshot file stops start-up. A control plane is
    //    subscribed to in the background after restoring the last good
    //    snapshot from the state directory.
    let identity = match &config.identity {
        Some(source) => Some(MeshIdentity::start(source, metrics.clone())?),
        None => None,
    };
    if let (Some(IdentitySource::ControlPlane(settings)), Some(identity)) =
        (&config.identity, &identity)
    {
        identity::issuance::restore(identity, settings);
    }
    let tcp_listeners = TcpListeners::new(
        TcpSettings {
            ip: config.outbound_addr.ip(),
            max_connections: config.server.max_connections,
        },
        Arc::clone(&state),
        metrics.clone(),
        access_log.clone(),
    );
    let applier = Applier::new(
        Arc::clone(&state),
        metrics.clone(),
        Arc::clone(&telemetry),
        identity.clone(),
    )
    .with_tcp(Arc::clone(&tcp_listeners));
    let source: SourceTask = match &config.source {
        SnapshotSource::File {
            path,
            poll_interval,
        } => {
            let (snapshot, text) = load_file(path).await?;
            applier.apply(snapshot)?;
            Box::pin(watch_file(
                path.clone(),
                *poll_interval,
                applier.clone(),
                text,
            ))
        }
        SnapshotSource::ControlPlane(settings) => {
            let client = ControlPlaneClient::new(
                &settings.url,
                identity.as_deref(),
                discovery::CONTROL_PLANE_IDLE_TIMEOUT,
            )?;
            discovery::restore(settings, &applier).await;
            Box::pin(discovery::subscribe(
                settings.clone(),
                client,
                identity.clone(),
                applier.clone(),
                metrics.clone(),
            ))
        }
    };
    let inbound_tls = match &identity {
        Some(identity) => {
            metrics
                .inbound_permissive
                .set(i64::from(config.inbound_permissive));
            Some(InboundTls {
                acceptor: identity.acceptor(config.inbound_permissive)?,
                permissive: config.inbound_permissive,
                handshake_timeout: config.server.header_read_timeout,
            })
        }
        None => None,
    };

    let mut signals = Signals::install().map_err(RunError::Signals)?;

    // 3. Serve.
    tokio::spawn(source.instrument(tracing::info_span!("snapshot_source")));
    if let (Some(source), Some(identity)) = (&config.identity, &identity) {
        spawn_identity_tasks(source, identity, &metrics);
    }
    let draining = Arc::new(AtomicBool::new(false));
    let admin = Admin::new(
        Arc::clone(&state),
        metrics.clone(),
        applier,
        identity,
        Arc::clone(&draining),
    );
    let mut admin_server = Servers::default();
    let admin_options = ListenerOptions {
        direction: None,
        settings: config.server,
        tls: None,
        streams: None,
    };
    admin_server.spawn(
        admin_listener,
        admin_options,
        metrics.clone(),
        move |request| {
            let admin = admin.clone();
            async move { admin.handle(request).await }
        },
    );

    let mut servers = Servers::default();
    let outbound = Outbound::new(
        Arc::clone(&state),
        Observer::new(
            Arc::clone(&telemetry),
            access_log.clone(),
            Direction::Outbound,
        ),
    );
    let outbound_options = ListenerOptions {
        direction: Some(Direction::Outbound),
        settings: config.server,
        tls: None,
        streams: None,
    };
    servers.spawn(
        outbound_listener,
        outbound_options,
        metrics.clone(),
        move |request| {
            let outbound = outbound.clone();
            async move { outbound.handle(request).await }
        },
    );
    let inbound = Inbound::new(
        InboundSettings {
            service: service.clone(),
            app: config.app.clone(),
            max_requests: config.inbound_max_requests,
            max_pending: config.inbound_max_pending,
        },
        UpstreamClient::new(ClientSettings {
            http2: config.app_http2,
            connect_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(60),
            expected_identity: None,
        }),
        metrics.service(Direction::Inbound, &service),
        Observer::new(telemetry, access_log.clone(), Direction::Inbound),
        Arc::clone(&state),
        &metrics,
    );
    let tcp_inbound: Arc<dyn StreamHandler> = Arc::new(TcpInbound::new(
        &service,
        config.app.clone(),
        Arc::clone(&state),
        &metrics,
        access_log,
    ));
    let inbound_options = ListenerOptions {
        direction: Some(Direction::Inbound),
        settings: config.server,
        tls: inbound_tls,
        streams: Some(tcp_inbound),
    };
    servers.spawn(
        inbound_listener,
        inbound_options,
        metrics.clone(),
        move |request| {
            let inbound = inbound.clone();
            async move { inbound.handle(request).await }
        },
    );
    tracing::info!(
        admin = %config.admin_addr,
        outbound = %config.outbound_addr,
        inbound = %config.inbound_addr,
        app = %config.app,
        tcp_ports = ?tcp_listeners.ports(),
        mtls = config.identity.is_some(),
        "tether-proxy serving"
    );

    // 4. Shutdown: HTTP listeners and tcp listeners stop together; open
    //    requests and streams get the same deadline.
    let signal = signals.recv().await;
    tracing::info!(signal, drain_timeout = ?config.drain_timeout, "shutting down: draining in-flight requests and streams");
    draining.store(true, Ordering::Release);
    let (http, tcp) = tokio::join!(
        servers.drain(config.drain_timeout),
        tcp_listeners.drain(config.drain_timeout)
    );
    if http && tcp {
        tracing::info!("drained cleanly");
    } else {
        tracing::warn!("drain deadline passed with requests or streams still open");
    }
    drop(admin_server);
    Ok(())
}

/// The tasks that keep the identity fresh: the file watch, and with
/// control-plane issuance the request/renewal loop.
fn spawn_identity_tasks(source: &IdentitySource, identity: &Arc<MeshIdentity>, metrics: &Metrics) {
    match source {
        IdentitySource::Files(files) => {
            let watch = identity::files::watch(
                Arc::clone(identity),
                Some(files.dir.clone()),
                files.bundle.clone(),
                files.reload_interval,
            );
            tokio::spawn(watch.instrument(tracing::info_span!("identity_files")));
        }
        IdentitySource::ControlPlane(settings) => {
            let watch = identity::files::watch(
                Arc::clone(identity),
                None,
                settings.bundle.clone(),
                settings.bundle_reload_interval,
            );
            tokio::spawn(watch.instrument(tracing::info_span!("trust_bundle_file")));
            let issuance =
                identity::issuance::run(Arc::clone(identity), settings.clone(), metrics.clone());
            tokio::spawn(issuance.instrument(tracing::info_span!("certificate_issuance")));
        }
    }
}

/// The task that keeps snapshots coming.
type SourceTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// SIGTERM and SIGINT.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
