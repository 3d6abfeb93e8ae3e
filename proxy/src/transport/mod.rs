//! Connections: the upstream connection pool (plain or mTLS) and the
//! downstream acceptor (plain, mTLS, or permissive; HTTP or opaque TCP).

mod connector;
mod idle;
mod listener_metrics;
mod pool;
mod pool_factory;
pub mod preamble;
mod server;
mod stream;

pub use connector::{tls_connect, MeshConnector, TlsTarget};
pub use idle::{copy_until_idle, copy_until_idle_or_silent};
pub use listener_metrics::{ConnectionGuard, ListenerMetrics};
pub use pool::{ClientError, EndpointPool, PoolSettings, MAX_IDLE_PER_ENDPOINT};
pub use pool_factory::{ConnectionSettings, PoolFactory};
pub use server::{
    accept, bind, CapturedHandler, InboundTls, ListenerOptions, Peer, PeerIdentity, ServerSettings,
    Servers, StreamHandler,
};
pub use stream::{ByteCounters, Counted, Downstream, MeshStream, Rewind};
