//! Opaque TCP between sidecars, for `protocol: tcp` services, authorized by
//! caller identity alone (L4).
//!
//! ```text
//! outbound  app ─► 127.0.0.1:<outbound_port>  (one listener per tcp service, listeners.rs)
//!             → pick      the service's balancer; outlier ejection skips endpoints
//!             → connect   connect_timeout; on failure another endpoint, up to
//!                         retries.attempts (budgeted); failures feed outliers
//!             → secure    mTLS, ALPN `tether-tcp`, the server must be the service;
//!                         plaintext mesh: the PREAMBLE instead            (outbound.rs)
//!             → relay     copy both ways, half-close passed on             (relay.rs)
//! inbound   peer ─► inbound listener (transport::server)
//!             → classify  ALPN `tether-tcp`, or the plaintext PREAMBLE (transport/preamble.rs)
//!             → authorize the caller's SPIFFE ID against L4 rules
//!             → connect   the local app (--app)
//!             → relay                                                      (inbound.rs)
//! ```
//!
//! Captured (transparent) connections that are not HTTP are routed by
//! their original destination in `captured.rs`.
//!
//! Why ALPN and a preamble: the inbound port is shared with HTTP. With TLS
//! the protocol is negotiated in the handshake, costing nothing; without
//! TLS a fixed preamble no HTTP request starts with is read byte by byte
//! and HTTP is let through at its first differing byte.

mod captured;
mod inbound;
mod listeners;
mod outbound;
mod relay;

use std::sync::Arc;
use std::time::Duration;

pub use captured::TcpCaptured;
pub use inbound::TcpInbound;
pub use listeners::{Reconcile, TcpBindError, TcpListeners, TcpSettings};

use crate::identity::{IdentityError, MeshIdentity};
use crate::transport::TlsTarget;

/// Idle limit of inbound streams and of passed-through (captured, outside
/// the mesh) ones, which have no service policy: the caller's sidecar
/// closes a `tcp` service's idle stream at its `stream_idle_timeout`; this
/// is the backstop for a peer that vanished without a FIN.
pub const BACKSTOP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// TLS settings to reach `service`'s endpoints with opaque TCP: as for HTTP
/// (the endpoint must prove it is `service`), but offering only ALPN
/// `tether-tcp`.
pub fn tls_target(identity: &MeshIdentity, service: &str) -> Result<TlsTarget, IdentityError> {
    let (_, mut target) = identity.target(service, false)?;
    let mut config = (*target.config).clone();
    config.alpn_protocols = vec![tether_certs::MESH_TCP_ALPN.to_vec()];
    target.config = Arc::new(config);
    Ok(target)
}
