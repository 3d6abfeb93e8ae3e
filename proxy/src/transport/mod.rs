//! Connections: the upstream connection pool (plain or mTLS) and the
//! downstream acceptor (plain, mTLS, or permissive).

mod client;
mod connector;
mod server;
mod stream;

pub use client::{ClientSettings, UpstreamClient};
pub use connector::{MeshConnector, TlsTarget};
pub use server::{bind, InboundTls, Peer, PeerIdentity, ServerSettings, Servers};
pub use stream::MeshStream;
