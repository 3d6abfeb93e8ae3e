//! Copies one opaque TCP stream both ways and reports it when it ends:
//! per-service byte counters while it runs, one access-log line at the end.

use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::access_log::{timestamp, AccessLog, TcpEntry};
use crate::errors::Reason;
use crate::request_metrics::Direction;
use crate::tcp_metrics::TcpMetrics;
use crate::transport::{copy_until_idle_or_silent, Counted};

/// How a stream ended, for its log line.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Bytes from the client.
    pub received: u64,
    /// Bytes to the client.
    pub sent: u64,
    /// Why it failed or was refused, if it did.
    pub error: Option<Reason>,
}

/// Copies between `client` (the side that connected to this proxy) and
/// `server` until both directions end, or until no byte has moved either
/// way for `idle` (both are then closed). An end of stream on one side is
/// passed on as a half-close (TCP FIN, or TLS close_notify then FIN), and
/// the other direction keeps flowing; each direction moves through one
/// fixed buffer, never a whole stream.
pub async fn relay<C, S>(client: C, server: S, metrics: &TcpMetrics, idle: Duration) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    relay_first_byte(client, server, metrics, idle, idle).await
}

/// [`relay`], closing a stream where no byte moved either way within
/// `first_byte` of the start.
pub async fn relay_first_byte<C, S>(
    client: C,
    mut server: S,
    metrics: &TcpMetrics,
    first_byte: Duration,
    idle: Duration,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = Counted::new(client, metrics.bytes.clone());
    let copied = copy_until_idle_or_silent(&mut client, &mut server, first_byte, idle).await;
    let (received, sent) = client.totals();
    let error = match copied {
        Some(Ok(_)) => None,
        Some(Err(error)) => {
            tracing::debug!(%error, received, sent, "tcp stream ended with an error");
            Some(Reason::Reset)
        }
        None => {
            tracing::debug!(?idle, received, sent, "tcp stream idle: closed");
            Some(Reason::IdleTimeout)
        }
    };
    Outcome {
        received,
        sent,
        error,
    }
}

/// The access-log line of one stream, filled in as it goes.
pub struct StreamLog {
    started: Instant,
    arrived: SystemTime,
    direction: Direction,
    service: String,
    peer: Option<String>,
    /// The endpoint connected to (outbound).
    pub endpoint: Option<String>,
}

impl StreamLog {
    /// A stream accepted now.
    pub fn start(direction: Direction, service: &str, peer: Option<String>) -> Self {
        Self {
            started: Instant::now(),
            arrived: SystemTime::now(),
            direction,
            service: service.to_owned(),
            peer,
            endpoint: None,
        }
    }

    /// Writes the line, when the access log is on.
    pub fn finish(self, log: Option<&AccessLog>, outcome: Outcome) {
        let Some(log) = log else {
            return;
        };
        log.log_tcp(TcpEntry {
            timestamp: timestamp(self.arrived),
            direction: self.direction.as_str(),
            protocol: "tcp",
            service: self.service,
            peer_identity: self.peer,
            endpoint: self.endpoint,
            bytes_received: outcome.received,
            bytes_sent: outcome.sent,
            duration_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            error: outcome.error.map(Reason::as_str),
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::tcp_metrics::TcpFamilies;

    fn metrics() -> TcpMetrics {
        TcpFamilies::register(&prometheus::Registry::new()).service(Direction::Outbound, "db")
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_is_closed_and_a_busy_one_is_not() {
        let (client, mut app) = tokio::io::duplex(64);
        let (server, mut upstream) = tokio::io::duplex(64);
        let idle = Duration::from_secs(60);
        let relaying = tokio::spawn(async move { relay(client, server, &metrics(), idle).await });
        // Traffic every 40 s keeps it open past several idle periods.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(40)).await;
            app.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            upstream.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
        }
        assert!(!relaying.is_finished(), "a busy stream stays open");
        // Then silence: closed one idle period after the last byte.
        let outcome = relaying.await.unwrap();
        assert_eq!(outcome.error, Some(Reason::IdleTimeout));
        assert_eq!(outcome.received, 20);
        let mut rest = Vec::new();
        assert_eq!(
            app.read_to_end(&mut rest).await.unwrap(),
            0,
            "the client's end is closed"
        );
    }
}
