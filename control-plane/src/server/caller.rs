//! Who is calling the API: the TLS accept step that turns a connection into
//! a [`Caller`], and the rule that a proxy may only read and report for the
//! service its certificate names.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tether_certs::SpiffeId;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::metrics::ControlMetrics;

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The caller of one connection.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The API is plaintext (no CA): callers are not authenticated.
    Plaintext,
    /// TLS without a client certificate (a proxy bootstrapping with a join
    /// token, `tether-control status`, Prometheus).
    Anonymous,
    /// TLS with a verified mesh certificate for this identity.
    Service(Arc<SpiffeId>),
    /// The plaintext admin listener (read-only endpoints).
    Admin,
}

impl Caller {
    /// The verified identity, if any.
    pub fn identity(&self) -> Option<&SpiffeId> {
        match self {
            Caller::Service(id) => Some(id),
            Caller::Plaintext | Caller::Anonymous | Caller::Admin => None,
        }
    }

    /// Whether this caller may read or report for `service`; otherwise the
    /// status and message to answer. Plaintext APIs allow everything (there
    /// is nothing to check against).
    pub fn may_act_for(&self, service: &str) -> Result<(), (StatusCode, String)> {
        match self {
            Caller::Plaintext => Ok(()),
            Caller::Anonymous | Caller::Admin => Err((
                StatusCode::UNAUTHORIZED,
                format!("a client certificate for `{service}` is required: present the proxy's mesh certificate\n"),
            )),
            Caller::Service(id) if id.service_name() == service => Ok(()),
            Caller::Service(id) => Err((
                StatusCode::FORBIDDEN,
                format!("{id} may not act for `{service}`: a proxy reads and reports only for its own service\n"),
            )),
        }
    }
}

/// A connection after the optional TLS step.
pub enum Accepted {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Runs the TLS handshake when `tls` is set; `None` if it failed (counted
/// and logged at debug: port scanners and plaintext clients are routine).
pub async fn accept(
    stream: TcpStream,
    tls: Option<&TlsAcceptor>,
    metrics: &ControlMetrics,
) -> Option<(Accepted, Caller)> {
    let Some(tls) = tls else {
        return Some((Accepted::Plain(stream), Caller::Plaintext));
    };
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await;
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            metrics.tls_handshake_errors.inc();
            tracing::debug!(%error, "TLS handshake on the API failed");
            return None;
        }
        Err(_) => {
            metrics.tls_handshake_errors.inc();
            tracing::debug!("TLS handshake on the API timed out");
            return None;
        }
    };
    let caller = match stream.get_ref().1.peer_certificates() {
        None | Some([]) => Caller::Anonymous,
        Some(chain) => match tether_certs::peer_spiffe_id(chain) {
            Ok(id) => Caller::Service(Arc::new(id)),
            Err(error) => {
                // The chain verified against the bundle but names no single
                // service: treat the caller as anonymous.
                tracing::warn!(%error, "client certificate without a usable SPIFFE ID");
                Caller::Anonymous
            }
        },
    };
    Some((Accepted::Tls(Box::new(stream)), caller))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_acts_only_for_its_own_service() {
        let web = Caller::Service(Arc::new(
            SpiffeId::service("tether.local", "web").unwrap_or_else(|e| panic!("{e}")),
        ));
        assert!(web.may_act_for("web").is_ok());
        assert_eq!(
            web.may_act_for("api").map_err(|(s, _)| s),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            Caller::Anonymous.may_act_for("web").map_err(|(s, _)| s),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert!(Caller::Plaintext.may_act_for("anything").is_ok());
    }
}
