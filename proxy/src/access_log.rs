//! Opt-in access log: one JSON object per line on stdout, per HTTP request
//! ([`Entry`]) or per opaque TCP connection ([`TcpEntry`]).
//!
//! Lines go through a bounded queue to one writer task, so a slow stdout
//! never stalls requests: when the queue is full the line is dropped and
//! counted in `tether_access_log_dropped_total`.

use std::io::Write;
use std::time::SystemTime;

use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::mpsc;

/// Lines buffered at most before dropping.
const QUEUE: usize = 8192;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// RFC 3339 UTC time the request arrived.
    pub timestamp: String,
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// The service: upstream (outbound) or this proxy's (inbound).
    pub service: String,
    /// The caller's mesh identity, when known (inbound with mTLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_identity: Option<String>,
    /// HTTP method.
    pub method: String,
    /// `Host` / `:authority`.
    pub authority: String,
    /// Path (without the query string, which may carry secrets).
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Arrival to response headers, milliseconds.
    pub duration_ms: f64,
    /// Retries made.
    pub retries: u32,
    /// `tether-error` reason, if the proxy answered itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// A gRPC call's `grpc-status` (from the trailers when the response
    /// streamed: the line is written when the stream ends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u8>,
    /// W3C trace id, when traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// One opaque TCP connection, as logged when it closes.
#[derive(Debug, Serialize)]
pub struct TcpEntry {
    /// RFC 3339 UTC time the connection was accepted.
    pub timestamp: String,
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// `tcp`, or for an upgraded HTTP connection (its stream after the
    /// `101`) `websocket` or `upgrade`: tells these lines from HTTP ones.
    pub protocol: &'static str,
    /// The service: upstream (outbound) or this proxy's (inbound).
    pub service: String,
    /// The caller's mesh identity, when known (inbound with mTLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_identity: Option<String>,
    /// The endpoint connected to (outbound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Bytes received from the client (the app outbound, the peer inbound).
    pub bytes_received: u64,
    /// Bytes sent to the client.
    pub bytes_sent: u64,
    /// Accept to close, milliseconds.
    pub duration_ms: f64,
    /// Why the stream failed or was refused (`unauthorized`,
    /// `upstream-connect`, `no-endpoints`, `all-endpoints-ejected`,
    /// `reset`), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

/// One line of the log.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Line {
    Http(Entry),
    Tcp(TcpEntry),
}

/// The access log sink; `None` when access logs are off.
#[derive(Clone, Debug)]
pub struct AccessLog {
    queue: mpsc::Sender<Line>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Registers the counter of dropped lines (`start`'s argument) in
    /// `registry`.
    pub fn dropped_counter(registry: &prometheus::Registry) -> IntCounter {
        crate::request_metrics::counter(
            registry,
            "tether_access_log_dropped_total",
            "Access log lines dropped because stdout could not keep up.",
        )
    }

    /// Starts the writer task. Must run inside the tokio runtime.
    pub fn start(dropped: IntCounter) -> Self {
        let (queue, mut lines) = mpsc::channel::<Line>(QUEUE);
        tokio::task::spawn_blocking(move || {
            let stdout = std::io::stdout();
            while let Some(entry) = lines.blocking_recv() {
                let mut out = stdout.lock();
                if serde_json::to_writer(&mut out, &entry).is_ok() {
                    let _ = out.write_all(b"\n");
                }
                if lines.is_empty() {
                    let _ = out.flush();
                }
            }
        });
        Self { queue, dropped }
    }

    /// Queues one request's line; drops it (and counts) if the writer is behind.
    pub fn log(&self, entry: Entry) {
        self.send(Line::Http(entry));
    }

    /// Queues one TCP connection's line, likewise.
    pub fn log_tcp(&self, entry: TcpEntry) {
        self.send(Line::Tcp(entry));
    }

    fn send(&self, line: Line) {
        if self.queue.try_send(line).is_err() {
            self.dropped.inc();
        }
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tcp_lines_say_so_and_leave_out_what_is_unknown() {
        let line = Line::Tcp(TcpEntry {
            timestamp: timestamp(SystemTime::UNIX_EPOCH),
            direction: "inbound",
            protocol: "tcp",
            service: "db".into(),
            peer_identity: None,
            endpoint: None,
            bytes_received: 3,
            bytes_sent: 5,
            duration_ms: 1.5,
            error: None,
        });
        let json = serde_json::to_string(&line).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"timestamp":"1970-01-01T00:00:00.000Z","direction":"inbound","protocol":"tcp","service":"db","bytes_received":3,"bytes_sent":5,"duration_ms":1.5}"#
        );
    }

    #[test]
    fn formats_rfc3339() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_305_600_123);
        assert_eq!(timestamp(at), "2026-11-22T00:00:00.123Z");
    }
}
