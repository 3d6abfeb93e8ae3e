//! Opt-in access log: one JSON object per line on stdout.
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
    pub error: Option<String>,
    /// W3C trace id, when traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// The access log sink; `None` when access logs are off.
#[derive(Clone, Debug)]
pub struct AccessLog {
    queue: mpsc::Sender<Entry>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer task. Must run inside the tokio runtime.
    pub fn start(dropped: IntCounter) -> Self {
        let (queue, mut lines) = mpsc::channel::<Entry>(QUEUE);
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

    /// Queues one line; drops it (and counts) if the writer is behind.
    pub fn log(&self, entry: Entry) {
        if self.queue.try_send(entry).is_err() {
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
    fn formats_rfc3339() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_305_600_123);
        assert_eq!(timestamp(at), "2026-11-22T00:00:00.123Z");
    }
}
