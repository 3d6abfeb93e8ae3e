//! The outbound TCP listeners: one per tcp service, on the outbound
//! listener's IP and the service's `outbound_port`, following snapshots.
//!
//! Reconciliation runs inside the discovery applier (`discovery::Applier::apply`,
//! a caller above this module): [`TcpListeners::reconcile`] binds the new
//! ports synchronously before the state is swapped (a port that cannot be
//! bound refuses the snapshot, and nothing changes), [`Reconcile::commit`]
//! starts their accept loops after it and stops the listeners of ports no
//! longer wanted. A port in both snapshots keeps its listener and its
//! connections; each accepted connection looks its service up by port in
//! the state in force.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch, Semaphore};
use tracing::Instrument;

use super::outbound;
use crate::access_log::AccessLog;
use crate::request_metrics::Direction;
use crate::state::MeshState;
use crate::transport::{ByteCounters, Counted, ListenerMetrics};

/// Connections the kernel may queue on a listener before accepting them.
const BACKLOG: u32 = 1024;

/// A tcp service's port that cannot be listened on.
#[derive(Debug, thiserror::Error)]
#[error("tcp service `{service}`: cannot listen on {addr}: {source} (is another process or service using port {}?)", addr.port())]
pub struct TcpBindError {
    /// The service.
    pub service: String,
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Where and how the listeners listen.
#[derive(Debug, Clone, Copy)]
pub struct TcpSettings {
    /// The outbound listener's IP.
    pub ip: IpAddr,
    /// Connections served at once per listener.
    pub max_connections: usize,
}

/// The running TCP listeners.
pub struct TcpListeners {
    shared: Arc<Shared>,
    running: Mutex<Running>,
}

/// What accept loops and connections share.
struct Shared {
    settings: TcpSettings,
    state: Arc<ArcSwap<MeshState>>,
    metrics: ListenerMetrics,
    bytes: ByteCounters,
    access_log: Option<AccessLog>,
    /// `true` once draining; every accept loop and stream holds a receiver,
    /// so `closed()` resolves when all have ended.
    drain: watch::Sender<bool>,
}

#[derive(Default)]
struct Running {
    active: HashMap<u16, Active>,
    /// Listeners being stopped, whose accept loop may still hold the
    /// socket: a snapshot that wants the port back takes it over.
    stopping: HashMap<u16, Weak<TcpListener>>,
}

struct Active {
    listener: Arc<TcpListener>,
    /// Dropped to stop the accept loop.
    _stop: oneshot::Sender<()>,
}

/// Ports bound for a snapshot not yet in force; dropping it undoes them.
pub struct Reconcile<'a> {
    shared: &'a Arc<Shared>,
    running: MutexGuard<'a, Running>,
    added: Vec<(u16, Arc<TcpListener>)>,
    removed: Vec<u16>,
}

impl TcpListeners {
    /// No listeners yet.
    pub fn new(
        settings: TcpSettings,
        state: Arc<ArcSwap<MeshState>>,
        metrics: ListenerMetrics,
        access_log: Option<AccessLog>,
    ) -> Arc<Self> {
        let shared = Shared {
            settings,
            state,
            bytes: metrics.bytes(Direction::Outbound),
            metrics,
            access_log,
            drain: watch::Sender::new(false),
        };
        Arc::new(Self {
            shared: Arc::new(shared),
            running: Mutex::new(Running::default()),
        })
    }

    /// Ports listened on now.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.lock().active.keys().copied().collect();
        ports.sort_unstable();
        ports
    }

    fn lock(&self) -> MutexGuard<'_, Running> {
        // A poisoned lock means a panic mid-update; the map is still usable.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds every port `next` wants that is not listened on yet. On error
    /// what was bound is released and nothing changes. Holds the listeners'
    /// lock until the result is committed or dropped.
    pub fn reconcile(&self, next: &MeshState) -> Result<Reconcile<'_>, TcpBindError> {
        let mut running = self.lock();
        running.stopping.retain(|_, weak| weak.strong_count() > 0);
        let draining = *self.shared.drain.borrow();
        let mut added = Vec::new();
        for (&port, service) in &next.tcp {
            if draining || running.active.contains_key(&port) {
                continue;
            }
            let taken_over = running.stopping.remove(&port).and_then(|w| w.upgrade());
            let listener = match taken_over {
                Some(listener) => listener,
                None => {
                    let addr = SocketAddr::new(self.shared.settings.ip, port);
                    let listener = bind(addr).map_err(|source| TcpBindError {
                        service: service.service.name.clone(),
                        addr,
                        source,
                    })?;
                    Arc::new(listener)
                }
            };
            added.push((port, listener));
        }
        let removed = running
            .active
            .keys()
            .filter(|port| !next.tcp.contains_key(port))
            .copied()
            .collect();
        Ok(Reconcile {
            shared: &self.shared,
            running,
            added,
            removed,
        })
    }

    /// Stops every listener and waits up to `deadline` for open streams to
    /// end; returns whether all did. Streams still open are dropped when
    /// the process exits.
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.shared.drain.send_replace(true);
        self.lock().active.clear();
        tokio::time::timeout(deadline, self.shared.drain.closed())
            .await
            .is_ok()
    }
}

impl Reconcile<'_> {
    /// Puts the reconciliation in force (after the state it was made for):
    /// starts the new listeners' accept loops, stops the removed ones.
    pub fn commit(mut self) {
        for port in std::mem::take(&mut self.removed) {
            if let Some(active) = self.running.active.remove(&port) {
                tracing::info!(port, "tcp listener closed: its service left the snapshot");
                let weak = Arc::downgrade(&active.listener);
                self.running.stopping.insert(port, weak);
            }
        }
        for (port, listener) in std::mem::take(&mut self.added) {
            let (stop, stopped) = oneshot::channel();
            let addr = listener.local_addr().ok();
            tracing::info!(?addr, "tcp listener open");
            let accepting = accept_loop(
                Arc::clone(self.shared),
                port,
                Arc::clone(&listener),
                stopped,
            );
            tokio::spawn(accepting.instrument(tracing::info_span!("tcp_listener", port)));
            let active = Active {
                listener,
                _stop: stop,
            };
            self.running.active.insert(port, active);
        }
    }
}

/// Binds `addr` now (not on a task), so the caller learns of a taken port.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    // Registering with the reactor needs a runtime; say so instead of panicking.
    tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

async fn accept_loop(
    shared: Arc<Shared>,
    port: u16,
    listener: Arc<TcpListener>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut drain = shared.drain.subscribe();
    let slots = Arc::new(Semaphore::new(shared.settings.max_connections));
    while !*drain.borrow_and_update() {
        let permit = tokio::select! {
            _ = &mut stopped => break,
            _ = drain.changed() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut stopped => break,
            _ = drain.changed() => break,
            accepted = crate::transport::accept(&listener) => accepted,
        };
        // The service in force for this port now (it may have been removed
        // an instant ago: the connection is then closed).
        let Some(service) = shared.state.load().tcp.get(&port).cloned() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let guard = shared.metrics.connection_opened(Direction::Outbound);
        let app = Counted::new(stream, shared.bytes.clone());
        let access_log = shared.access_log.clone();
        let held = drain.clone();
        let span = tracing::debug_span!("tcp_connection", %peer, service = %service.service.name);
        tokio::spawn(
            async move {
                outbound::serve(app, service, access_log).await;
                drop((guard, permit, held));
            }
            .instrument(span),
        );
    }
}
