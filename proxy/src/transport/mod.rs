//! Connections: the upstream connection pool and the downstream acceptor.
//! mTLS slots in here (a TLS connector and acceptor) without touching the
//! stacks above.

mod client;
mod server;

pub use client::{ClientSettings, UpstreamClient};
pub use server::{bind, ServerSettings, Servers};
