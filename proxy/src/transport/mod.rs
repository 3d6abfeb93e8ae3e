//! Connections: the upstream connection pool (plain or mTLS) and the
//! downstream acceptor (plain, mTLS, or permissive; HTTP or opaque TCP).

mod client;
mod connector;
mod server;
mod stream;

pub use client::{ClientSettings, UpstreamClient};
pub use connector::{tls_connect, MeshConnector, TlsTarget};
pub use server::{
    bind, InboundTls, ListenerOptions, Peer, PeerIdentity, ServerSettings, Servers, StreamHandler,
};
pub use stream::{ByteCounters, Counted, Downstream, MeshStream, Rewind};
