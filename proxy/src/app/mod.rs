//! The composition root: builds the proxy from its configuration, serves
//! until a signal or a shutdown request, drains.
//!
//! [`run`] reads top to bottom as the start-up order: bind the admin,
//! outbound and inbound listeners; register the metric families; start the
//! identity and load the first snapshot (which binds its tcp services'
//! ports); only then spawn tasks — a taken port, a bad certificate or a bad
//! snapshot stops the proxy before it serves anything. With a Consul agent,
//! the instance is registered once the listeners serve. Shutdown:
//! deregister from Consul and keep serving for the grace period (only with
//! a Consul agent), then stop accepting, let in-flight requests and TCP
//! streams finish up to the drain deadline, exit.

mod families;
mod serve;

mod signals;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tracing::Instrument;

use self::families::Families;
use self::serve::{drain, serve_admin, serve_inbound, serve_outbound};
use self::signals::Signals;
use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::config::{ProxyConfig, SnapshotSource};
use crate::control_client::{ControlClientError, ControlPlaneClient};
use crate::discovery::{self, load_file, watch_file, Applier, SnapshotError};
use crate::identity::{self, IdentityError, IdentitySource, MeshIdentity};
use crate::registration::{AgentUrlError, AppProbe, Registration};
pub use crate::shutdown::{Lifecycle, Shutdown};
use crate::state::MeshState;
use crate::tcp::{TcpListeners, TcpSettings};
use crate::telemetry::{self, Telemetry};
use crate::transport::{bind, InboundTls, Servers};
use crate::upgrade::Upgrades;

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
    /// The Consul agent URL is unusable.
    #[error(transparent)]
    Registration(#[from] AgentUrlError),
}

impl RunError {
    /// Process exit code: 2 for bad configuration, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Snapshot(SnapshotError::Listen(_)) => 1,
            RunError::Snapshot(_)
            | RunError::Identity(_)
            | RunError::ControlPlane(_)
            | RunError::Registration(_) => 2,
            RunError::Bind(_) | RunError::Signals(_) => 1,
        }
    }
}

/// Runs the proxy until SIGTERM, SIGINT or `POST /shutdown`, then drains
/// and returns.
pub async fn run(config: ProxyConfig) -> Result<(), RunError> {
    run_with(config, Lifecycle::standalone()).await
}

/// Runs the proxy until `lifecycle` says stop, then drains and returns.
pub async fn run_with(config: ProxyConfig, lifecycle: Lifecycle) -> Result<(), RunError> {
    // 1. Every listener first: a taken port stops start-up. (The tcp
    //    services' ports are bound with the first snapshot, below.)
    let listeners = Listeners::bind(&config).await?;
    let families = Families::register();
    let core = Core::new(&config, &families);

    // 2. Identity, then the first snapshot, before anything is served: a bad
    //    certificate or snapshot file stops start-up.
    let identity = start_identity(&config, &families)?;
    let tcp = tcp_listeners(&config, &core, &families);
    let applier = Applier::new(
        Arc::clone(&core.state),
        families.snapshots.clone(),
        Arc::clone(&core.telemetry),
        identity.clone(),
    )
    .with_zone(config.zone.as_deref())
    .with_tcp(Arc::clone(&tcp))
    .with_on_demand(core.on_demand.clone());
    let facts = crate::topology_facts::ProxyFacts {
        state: Arc::clone(&core.state),
        identity: identity.clone(),
        inbound: listeners.addrs.inbound,
    };
    let source = first_snapshot(&config, &applier, identity.as_ref(), &families, facts).await?;
    let inbound_tls = inbound_tls(&config, identity.as_deref(), &families)?;
    let probe = match &config.app_health_grpc_service {
        Some(service) => AppProbe::grpc(config.app.clone(), service.clone()),
        None => AppProbe::new(
            config.app.clone(),
            config.app_health_path.clone(),
            config.app_http2,
        ),
    };
    let mut registration = config
        .registration
        .as_ref()
        .map(|settings| Registration::new(settings, probe.clone()))
        .transpose()?;
    let mut signals = if lifecycle.signals {
        Some(Signals::install().map_err(RunError::Signals)?)
    } else {
        None
    };

    // 3. Serve: from here on tasks run.
    tokio::spawn(source.instrument(tracing::info_span!("snapshot_source")));
    if let (Some(source), Some(identity)) = (&config.identity, &identity) {
        spawn_identity_tasks(source, identity, &families);
    }
    let draining = Arc::new(AtomicBool::new(false));
    let (ready_applier, ready_identity) = (applier.clone(), identity.clone());
    let admin = Admin::new(
        Arc::clone(&core.state),
        families.requests.clone(),
        applier,
        identity,
        Arc::clone(&draining),
    )
    .with_app_probe(probe)
    .with_shutdown(lifecycle.admin_shutdown.clone())
    .with_tap(core.tap.clone());
    let admin_server = serve_admin(listeners.admin, &config, &families, admin);
    let mut servers = Servers::default();
    serve_outbound(&mut servers, listeners.outbound, &config, &core, &families);
    serve_inbound(
        &mut servers,
        listeners.inbound,
        &config,
        &core,
        &families,
        inbound_tls,
    );
    tracing::info!(
        admin = %listeners.addrs.admin,
        outbound = %listeners.addrs.outbound,
        inbound = %listeners.addrs.inbound,
        app = %config.app,
        tcp_ports = ?tcp.ports(),
        mtls = config.identity.is_some(),
        "tether-proxy serving"
    );
    if let Some(registration) = &mut registration {
        let (applier, identity) = (ready_applier, ready_identity);
        registration.start(Arc::new(move || {
            if !applier.loaded() {
                Some("no snapshot loaded yet")
            } else if identity.as_ref().is_some_and(|i| !i.ready()) {
                Some("no valid mesh certificate")
            } else {
                None
            }
        }));
    }

    // 4. Shutdown.
    let reason = tokio::select! {
        signal = signals::first(signals.as_mut()) => signal,
        reason = lifecycle.drain.requested() => reason,
    };
    tracing::info!(reason, drain_timeout = ?config.drain_timeout, "shutting down: draining in-flight requests and streams");
    draining.store(true, Ordering::Release);
    // Open taps end now, rather than hold their clients through the drain.
    core.tap.close_all();
    if let Some(registration) = &mut registration {
        leave_consul(registration, signals.as_mut()).await;
    }
    drain(servers, &tcp, &core.upgrades, config.drain_timeout).await;
    drop(admin_server);
    Ok(())
}

/// Deregisters, then keeps serving for the grace period while the change
/// reaches the other sidecars (a second signal cuts it short).
async fn leave_consul(registration: &mut Registration, signals: Option<&mut Signals>) {
    registration.deregister().await;
    let grace = registration.grace();
    tracing::info!(?grace, "serving on while the deregistration propagates");
    tokio::select! {
        () = tokio::time::sleep(grace) => {}
        signal = signals::first(signals) => tracing::info!(signal, "second signal: grace period cut short"),
    }
}

/// The HTTP listeners, bound.
struct Listeners {
    admin: TcpListener,
    outbound: TcpListener,
    inbound: TcpListener,
    /// The configured addresses, for the start-up log line.
    addrs: ListenerAddrs,
}

struct ListenerAddrs {
    admin: SocketAddr,
    outbound: SocketAddr,
    inbound: SocketAddr,
}

impl Listeners {
    /// Binds the admin, outbound and inbound addresses; the first taken one
    /// is the error.
    async fn bind(config: &ProxyConfig) -> Result<Self, RunError> {
        Ok(Self {
            admin: bind(config.admin_addr).await.map_err(RunError::Bind)?,
            outbound: bind(config.outbound_addr).await.map_err(RunError::Bind)?,
            inbound: bind(config.inbound_addr).await.map_err(RunError::Bind)?,
            addrs: ListenerAddrs {
                admin: config.admin_addr,
                outbound: config.outbound_addr,
                inbound: config.inbound_addr,
            },
        })
    }
}

/// What the outbound, inbound and tcp paths share.
struct Core {
    /// This proxy's service (`tether-proxy` when none is configured).
    service: String,
    /// The mesh state, swapped whole on every snapshot.
    state: Arc<ArcSwap<MeshState>>,
    telemetry: Arc<Telemetry>,
    access_log: Option<AccessLog>,
    /// Upgraded connections of both paths (drained with the listeners).
    upgrades: Upgrades,
    /// Live taps of both paths (`GET /tap`).
    tap: crate::tap::Tap,
    /// On-demand discovery (with a control plane and `--discovery-wait`).
    on_demand: Option<Arc<discovery::OnDemand>>,
}

impl Core {
    /// An empty state, tracing off until a snapshot turns it on, and the
    /// access log writer when configured.
    fn new(config: &ProxyConfig, families: &Families) -> Self {
        let state = Arc::new(ArcSwap::from_pointee(MeshState::empty(
            discovery::build::unknown_metrics(&families.snapshots),
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
            families.export.clone(),
        );
        let access_log = config
            .access_log
            .then(|| AccessLog::start(families.access_log_dropped.clone()));
        let upgrades = Upgrades::with_access_log(
            families.upgrades.clone(),
            config.upgrade_idle_timeout,
            access_log.clone(),
        );
        let on_demand = match &config.source {
            SnapshotSource::ControlPlane(settings) if !settings.discovery_wait.is_zero() => {
                Some(Arc::new(discovery::OnDemand::new(
                    settings.discovery_wait,
                    families.requests.registry(),
                )))
            }
            _ => None,
        };
        Self {
            service,
            state,
            upgrades,
            telemetry,
            access_log,
            tap: crate::tap::Tap::register(families.requests.registry()),
            on_demand,
        }
    }
}

/// The mesh identity when mTLS is on; with control-plane issuance, the
/// certificate saved in the state directory is restored.
fn start_identity(
    config: &ProxyConfig,
    families: &Families,
) -> Result<Option<Arc<MeshIdentity>>, RunError> {
    let Some(source) = &config.identity else {
        return Ok(None);
    };
    let identity = MeshIdentity::start(source, families.identity.clone())?;
    if let IdentitySource::ControlPlane(settings) = source {
        identity::issuance::restore(&identity, settings);
    }
    Ok(Some(identity))
}

/// The listeners of the snapshot's tcp services (none until one is applied).
fn tcp_listeners(config: &ProxyConfig, core: &Core, families: &Families) -> Arc<TcpListeners> {
    TcpListeners::new(
        TcpSettings {
            ip: config.outbound_addr.ip(),
            max_connections: config.server.max_connections,
        },
        Arc::clone(&core.state),
        families.listeners.clone(),
        core.access_log.clone(),
    )
}

/// The task that keeps snapshots coming.
type SourceTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Applies the first snapshot and returns the task that applies the next
/// ones. A file must load; a control plane is subscribed to in the
/// background after restoring the last good snapshot from the state
/// directory.
async fn first_snapshot(
    config: &ProxyConfig,
    applier: &Applier,
    identity: Option<&Arc<MeshIdentity>>,
    families: &Families,
    facts: crate::topology_facts::ProxyFacts,
) -> Result<SourceTask, RunError> {
    match &config.source {
        SnapshotSource::File {
            path,
            poll_interval,
        } => {
            let (snapshot, text) = load_file(path).await?;
            applier.apply(snapshot)?;
            Ok(Box::pin(watch_file(
                path.clone(),
                *poll_interval,
                applier.clone(),
                text,
            )))
        }
        SnapshotSource::ControlPlane(settings) => {
            let client = ControlPlaneClient::new(
                &settings.url,
                identity.map(Arc::as_ref),
                discovery::CONTROL_PLANE_IDLE_TIMEOUT,
            )?;
            // Counting on before the first snapshot is built, so every
            // endpoint set gets its handle.
            let stats = Arc::clone(&families.snapshots.upstream_stats);
            stats.enable();
            tokio::spawn(
                crate::topology_facts::report_loop(
                    stats,
                    client.clone(),
                    settings.proxy_id.clone(),
                    settings.service.clone(),
                    settings.stats_interval,
                    facts,
                )
                .instrument(tracing::info_span!("stats_report")),
            );
            discovery::restore(settings, applier).await;
            Ok(Box::pin(discovery::subscribe(
                settings.clone(),
                client,
                identity.cloned(),
                applier.clone(),
                families.snapshots.clone(),
            )))
        }
    }
}

/// mTLS on the inbound listener when the proxy has an identity.
fn inbound_tls(
    config: &ProxyConfig,
    identity: Option<&MeshIdentity>,
    families: &Families,
) -> Result<Option<InboundTls>, RunError> {
    let Some(identity) = identity else {
        return Ok(None);
    };
    families
        .listeners
        .inbound_permissive
        .set(i64::from(config.inbound_permissive));
    Ok(Some(InboundTls {
        acceptor: identity.acceptor(config.inbound_permissive)?,
        permissive: config.inbound_permissive,
        handshake_timeout: config.server.header_read_timeout,
    }))
}

/// The tasks that keep the identity fresh: the file watch, and with
/// control-plane issuance the request/renewal loop.
fn spawn_identity_tasks(
    source: &IdentitySource,
    identity: &Arc<MeshIdentity>,
    families: &Families,
) {
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
            let issuance = crate::renewal::run(
                Arc::clone(identity),
                settings.clone(),
                families.identity.clone(),
            );
            tokio::spawn(issuance.instrument(tracing::info_span!("certificate_issuance")));
        }
    }
}
