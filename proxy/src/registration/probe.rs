//! The proxy's probe of the local app's health, behind both the Consul TTL
//! check and the admin `/app-health` endpoint: a TCP connect to the app,
//! with a health path an HTTP `GET` of it (2xx is healthy), or a gRPC
//! health check (`grpc.health.v1.Health/Check`, `SERVING` is healthy).

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::{header, HeaderValue, Request};
use http_body_util::BodyExt;

use crate::body::Body;
use crate::grpc;
use crate::transport::{ConnectionSettings, EndpointPool, PoolFactory};

/// One probe, connect to answer: the app is on loopback, so an app that
/// cannot answer a health check in 2 s is as good as down for new traffic.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle probe connection closes after this: above the check interval, so
/// HTTP probes reuse one connection.
const PROBE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether the app is healthy.
    pub healthy: bool,
    /// One line saying what was tried and what happened (the check output).
    pub note: String,
}

/// Probes the local app.
#[derive(Debug, Clone)]
pub struct AppProbe {
    app: Authority,
    kind: ProbeKind,
}

#[derive(Debug, Clone)]
enum ProbeKind {
    Tcp,
    Http {
        path: PathAndQuery,
        http2: bool,
        pool: Arc<EndpointPool>,
    },
    Grpc {
        service: String,
        pool: Arc<EndpointPool>,
    },
}

impl AppProbe {
    /// A probe of `app`: a TCP connect, or `GET path` when a path is given
    /// (over HTTP/2 when the app speaks it).
    pub fn new(app: Authority, path: Option<PathAndQuery>, http2: bool) -> Self {
        let kind = match path {
            None => ProbeKind::Tcp,
            Some(path) => ProbeKind::Http {
                path,
                http2,
                pool: probe_pool(&app, http2),
            },
        };
        Self { app, kind }
    }

    /// A gRPC health check of `app` (HTTP/2) for `service` (empty: the
    /// server as a whole).
    pub fn grpc(app: Authority, service: String) -> Self {
        let pool = probe_pool(&app, true);
        Self {
            app,
            kind: ProbeKind::Grpc { service, pool },
        }
    }

    /// Probes the app once, within a bounded time.
    pub async fn probe(&self) -> Health {
        let app = &self.app;
        let outcome = tokio::time::timeout(PROBE_TIMEOUT, self.attempt()).await;
        match outcome {
            Ok(health) => health,
            Err(_) => Health {
                healthy: false,
                note: format!("app at {app}: no answer within {PROBE_TIMEOUT:?}"),
            },
        }
    }

    async fn attempt(&self) -> Health {
        let app = &self.app;
        match &self.kind {
            ProbeKind::Tcp => match tokio::net::TcpStream::connect(app.as_str()).await {
                Ok(_) => Health {
                    healthy: true,
                    note: format!("app at {app} accepts connections"),
                },
                Err(error) => Health {
                    healthy: false,
                    note: format!("app at {app}: connect failed: {error}"),
                },
            },
            ProbeKind::Http { path, http2, pool } => {
                let request = match http_get(app, path, *http2) {
                    Ok(request) => request,
                    Err(error) => {
                        return Health {
                            healthy: false,
                            note: format!("cannot build GET {path}: {error}"),
                        }
                    }
                };
                match pool.send(request).await {
                    Ok(response) => {
                        let status = response.status();
                        // Read to the end so the connection goes back to the pool.
                        let _ = response.into_body().collect().await;
                        Health {
                            healthy: status.is_success(),
                            note: format!("app at {app}: GET {path} answered {status}"),
                        }
                    }
                    Err(error) => Health {
                        healthy: false,
                        note: format!("app at {app}: GET {path} failed: {error}"),
                    },
                }
            }
            ProbeKind::Grpc { service, pool } => grpc_check(app, service, pool).await,
        }
    }
}

fn probe_pool(app: &Authority, http2: bool) -> Arc<EndpointPool> {
    PoolFactory::new(ConnectionSettings {
        http2,
        connect_timeout: PROBE_TIMEOUT,
        idle_timeout: PROBE_IDLE_TIMEOUT,
        expected_identity: None,
    })
    .pool_for(app)
}

/// One `grpc.health.v1.Health/Check` call: healthy when it answers
/// `grpc-status: 0` and `SERVING`.
async fn grpc_check(app: &Authority, service: &str, pool: &Arc<EndpointPool>) -> Health {
    let unhealthy = |note: String| Health {
        healthy: false,
        note,
    };
    let request = Request::post(format!("http://{app}{}", grpc::health::CHECK_PATH))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, "tether-proxy-health")
        .body(Body::full(grpc::health::check_request(service)));
    let request = match request {
        Ok(request) => request,
        Err(error) => return unhealthy(format!("cannot build the gRPC health check: {error}")),
    };
    let what = format!("app at {app}: gRPC health check of {service:?}");
    let response = match pool.send(request).await {
        Ok(response) => response,
        Err(error) => return unhealthy(format!("{what} failed: {error}")),
    };
    let head_status = grpc::status_of(response.headers());
    let http_status = response.status();
    let collected = match response.into_body().collect().await {
        Ok(collected) => collected,
        Err(error) => return unhealthy(format!("{what}: reading the answer failed: {error}")),
    };
    let code = head_status.or_else(|| collected.trailers().and_then(grpc::status_of));
    match code {
        Some(grpc::Code::Ok) => {}
        Some(code) => return unhealthy(format!("{what} answered grpc-status {}", code.name())),
        None => {
            return unhealthy(format!(
                "{what} answered HTTP {http_status} without a grpc-status"
            ))
        }
    }
    match grpc::health::serving_status(&collected.to_bytes()) {
        Some(grpc::health::SERVING) => Health {
            healthy: true,
            note: format!("{what} answered SERVING"),
        },
        Some(status) => unhealthy(format!(
            "{what} answered {}",
            grpc::health::status_name(status)
        )),
        None => unhealthy(format!("{what}: the answer is not a HealthCheckResponse")),
    }
}

/// `GET path` to the app: origin form over HTTP/1.1, absolute over HTTP/2.
fn http_get(app: &Authority, path: &PathAndQuery, http2: bool) -> http::Result<Request<Body>> {
    let uri = if http2 {
        format!("http://{app}{path}")
    } else {
        path.to_string()
    };
    Request::get(uri)
        .header(header::HOST, HeaderValue::from_str(app.as_str())?)
        .header(header::USER_AGENT, "tether-proxy-health")
        .body(Body::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn listener() -> (TcpListener, Authority) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let authority = addr.to_string().parse().unwrap_or_else(|e| panic!("{e}"));
        (listener, authority)
    }

    #[tokio::test]
    async fn tcp_probe_follows_the_listener() {
        let (listener, app) = listener().await;
        let probe = AppProbe::new(app, None, false);
        let health = probe.probe().await;
        assert!(health.healthy, "{}", health.note);
        drop(listener);
        let health = probe.probe().await;
        assert!(!health.healthy, "{}", health.note);
        assert!(health.note.contains("connect failed"), "{}", health.note);
    }

    /// An app answering every request with `status`, for `requests` requests.
    async fn http_app(listener: TcpListener, status: &'static str, requests: usize) {
        for _ in 0..requests {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let answer =
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    }

    #[tokio::test]
    async fn http_probe_is_healthy_on_2xx_only() {
        for (status, healthy) in [("200 OK", true), ("503 Service Unavailable", false)] {
            let (listener, app) = listener().await;
            let server = tokio::spawn(http_app(listener, status, 1));
            let probe = AppProbe::new(app, Some(PathAndQuery::from_static("/healthz")), false);
            let health = probe.probe().await;
            assert_eq!(health.healthy, healthy, "{}", health.note);
            assert!(
                health.note.contains("GET /healthz answered"),
                "{}",
                health.note
            );
            server.abort();
        }
    }
}
