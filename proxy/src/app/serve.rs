//! Serving: the admin, outbound and inbound HTTP servers (the inbound one
//! also takes the mesh's TCP streams), and their drain.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::families::Families;
use super::Core;
use crate::admin::Admin;
use crate::config::ProxyConfig;
use crate::inbound::{Inbound, InboundSettings};
use crate::observe::Observer;
use crate::outbound::Outbound;
use crate::request_metrics::Direction;
use crate::tcp::{TcpCaptured, TcpInbound, TcpListeners};
use crate::transport::{
    CapturedHandler, ConnectionSettings, InboundTls, ListenerOptions, PoolFactory, Servers,
    StreamHandler,
};
use crate::upgrade::Upgrades;

/// Connect timeout to the local app: it is on loopback, so a second means
/// it is not listening, not that it is far.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle connections to the local app close after this; below the common
/// 75 s keep-alive of app servers, so the proxy never races their close.
const APP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves `/metrics`, `/ready` and the rest on the admin listener; kept
/// apart from the mesh servers so it answers while they drain.
pub(super) fn serve_admin(
    listener: TcpListener,
    config: &ProxyConfig,
    families: &Families,
    admin: Admin,
) -> Servers {
    let mut server = Servers::default();
    let options = ListenerOptions {
        direction: None,
        settings: config.server,
        tls: None,
        streams: None,
        captured: None,
    };
    server.spawn(
        listener,
        options,
        families.listeners.clone(),
        move |request| {
            let admin = admin.clone();
            async move { admin.handle(request).await }
        },
    );
    server
}

/// Serves the local app's requests to the mesh.
pub(super) fn serve_outbound(
    servers: &mut Servers,
    listener: TcpListener,
    config: &ProxyConfig,
    core: &Core,
    families: &Families,
) {
    let observer = Observer::new(
        Arc::clone(&core.telemetry),
        core.access_log.clone(),
        Direction::Outbound,
    )
    .with_tap(core.tap.clone());
    // Transparent capture is detected per connection (original_dst.rs).
    // In an `Arc`: one reference count per request, whatever it holds.
    let outbound = Arc::new(
        Outbound::new(Arc::clone(&core.state), observer)
            .with_passthrough(&families.listeners)
            .with_upgrades(core.upgrades.clone())
            .with_on_demand(core.on_demand.clone()),
    );
    let captured: Arc<dyn CapturedHandler> = Arc::new(TcpCaptured::new(
        Arc::clone(&core.state),
        &families.listeners,
        core.access_log.clone(),
    ));
    let options = ListenerOptions {
        direction: Some(Direction::Outbound),
        settings: config.server,
        tls: None,
        streams: None,
        captured: Some(captured),
    };
    servers.spawn(
        listener,
        options,
        families.listeners.clone(),
        // The request's future itself, not wrapped in an `async` block:
        // see `Outbound::handle`.
        move |request| Arc::clone(&outbound).handle(request),
    );
}

/// Serves the mesh's requests and TCP streams to the local app.
pub(super) fn serve_inbound(
    servers: &mut Servers,
    listener: TcpListener,
    config: &ProxyConfig,
    core: &Core,
    families: &Families,
    tls: Option<InboundTls>,
) {
    let service = &core.service;
    let app = PoolFactory::new(ConnectionSettings {
        http2: config.app_http2,
        connect_timeout: APP_CONNECT_TIMEOUT,
        idle_timeout: APP_IDLE_TIMEOUT,
        expected_identity: None,
    });
    let inbound = Inbound::new(
        InboundSettings {
            service: service.clone(),
            app: config.app.clone(),
            max_requests: config.inbound_max_requests,
            max_pending: config.inbound_max_pending,
            upgrades: core.upgrades.clone(),
        },
        app,
        families.requests.service(Direction::Inbound, service),
        Observer::new(
            Arc::clone(&core.telemetry),
            core.access_log.clone(),
            Direction::Inbound,
        )
        .with_tap(core.tap.clone()),
        Arc::clone(&core.state),
        &families.requests,
    );
    let streams: Arc<dyn StreamHandler> = Arc::new(TcpInbound::new(
        service,
        config.app.clone(),
        Arc::clone(&core.state),
        &families.requests,
        &families.tcp,
        core.access_log.clone(),
    ));
    let options = ListenerOptions {
        direction: Some(Direction::Inbound),
        settings: config.server,
        tls,
        streams: Some(streams),
        captured: None,
    };
    servers.spawn(
        listener,
        options,
        families.listeners.clone(),
        move |request| {
            let inbound = inbound.clone();
            async move { inbound.handle(request).await }
        },
    );
}

/// Stops the HTTP and tcp listeners together; open requests, streams and
/// upgraded connections get the same deadline.
pub(super) async fn drain(
    servers: Servers,
    tcp: &TcpListeners,
    upgrades: &Upgrades,
    deadline: Duration,
) {
    let (http, tcp, upgraded) = tokio::join!(
        servers.drain(deadline),
        tcp.drain(deadline),
        upgrades.drain(deadline)
    );
    if http && tcp && upgraded {
        tracing::info!("drained cleanly");
    } else {
        tracing::warn!("drain deadline passed with requests or streams still open");
    }
}
