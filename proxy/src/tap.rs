//! Tap: a live, sampled view of the requests crossing this sidecar (both
//! directions), streamed to a few admin clients (`GET /tap`, `admin.rs`).
//!
//! Bounded so it cannot hurt the proxy: at most [`MAX_CLIENTS`] taps at
//! once, each sampled to its own rate (at most [`MAX_RATE`] events a
//! second), each fed through a bounded channel where an event that does not
//! fit is dropped and counted, never waited for. Header values are never
//! copied; names only on request (`?headers=names`).
//!
//! Free when nobody taps: the request path reads one relaxed atomic
//! ([`Tap::is_active`]) per request and copies nothing more.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, Method};
use http_body::Frame;
use prometheus::{IntCounter, IntGauge, Registry};
use tokio::sync::mpsc;

use crate::request_metrics::Direction;

/// Taps open at once: each costs a filter check and a channel send per
/// sampled request; four is enough for a few operators watching.
pub const MAX_CLIENTS: usize = 4;
/// Events a second a tap gets when it does not ask (`?rate=`): enough to
/// see what flows, little enough to read.
pub const DEFAULT_RATE: u32 = 10;
/// The most events a second a tap may ask for: bounds the JSON encoding
/// and copying a tap adds, whatever the request rate.
pub const MAX_RATE: u32 = 100;
/// Events waiting for a slow client before new ones are dropped: one
/// second at the highest rate (a few tens of KiB per client at most).
pub const CLIENT_BUFFER: usize = MAX_RATE as usize;

/// The tap hub of one proxy, shared by both paths' observers and the admin
/// server. Cloning is cheap.
#[derive(Clone)]
pub struct Tap {
    hub: Arc<Hub>,
}

impl Default for Tap {
    /// A hub without metrics (tests, observers built before the proxy's).
    fn default() -> Self {
        Self::with_parts(None, CLIENT_BUFFER)
    }
}

struct Hub {
    /// Clients open: the one thing the request path reads while nobody taps.
    active: AtomicUsize,
    clients: Mutex<Vec<Client>>,
    next_id: AtomicU64,
    metrics: Option<TapMetrics>,
    /// Each client's channel capacity.
    buffer: usize,
}

/// The tap's metric families.
#[derive(Clone)]
struct TapMetrics {
    clients: IntGauge,
    events: IntCounter,
    dropped: IntCounter,
}

struct Client {
    id: u64,
    filter: TapFilter,
    sampler: Sampler,
    sender: mpsc::Sender<Arc<TapEvent>>,
    dropped: Arc<AtomicU64>,
}

/// What a tap wants to see (`/tap` query parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapFilter {
    /// Only requests of this service (outbound: the called service;
    /// inbound: this proxy's own).
    pub service: Option<String>,
    /// Only one direction.
    pub direction: Option<Direction>,
    /// Only paths starting with this.
    pub path_prefix: Option<String>,
    /// Include request header names (never values).
    pub header_names: bool,
    /// Events a second, at most ([`DEFAULT_RATE`] when unset).
    pub rate: u32,
}

impl TapFilter {
    /// Reads `service=`, `direction=`, `path_prefix=`, `headers=names|none`
    /// and `rate=` from a query string; an unknown key or bad value is an
    /// error that says what was expected.
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut filter = TapFilter {
            rate: DEFAULT_RATE,
            ..TapFilter::default()
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "service" => filter.service = Some(value),
                "direction" => {
                    filter.direction = Some(match value.as_str() {
                        "inbound" => Direction::Inbound,
                        "outbound" => Direction::Outbound,
                        _ => return Err(format!("direction=`{value}`: expected inbound or outbound")),
                    })
                }
                "path_prefix" => filter.path_prefix = Some(value),
                "headers" => {
                    filter.header_names = match value.as_str() {
                        "names" => true,
                        "none" => false,
                        "values" => return Err("headers=values: header values are never tapped (they carry credentials); use headers=names".into()),
                        _ => return Err(format!("headers=`{value}`: expected names or none")),
                    }
                }
                "rate" => {
                    filter.rate = match value.parse::<u32>() {
                        Ok(rate) if (1..=MAX_RATE).contains(&rate) => rate,
                        _ => return Err(format!("rate=`{value}`: expected events a second, 1 to {MAX_RATE}")),
                    }
                }
                _ => return Err(format!("unknown parameter `{key}`: expected service, direction, path_prefix, headers, rate")),
            }
        }
        Ok(filter)
    }

    fn matches(&self, event: &TapEvent) -> bool {
        self.direction.is_none_or(|d| d == event.direction)
            && self.service.as_deref().is_none_or(|s| s == event.service)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| event.path.starts_with(p))
    }
}

/// `%XX` and `+` decoded (lossy on bad UTF-8): enough for path prefixes.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |at: usize| {
            bytes
                .get(at)
                .and_then(|h| (*h as char).to_digit(16))
                .map(|d| d as u8)
        };
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi * 16 + lo);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// At most `rate` events in each one-second window.
#[derive(Debug)]
struct Sampler {
    rate: u32,
    window: Instant,
    taken: u32,
}

impl Sampler {
    fn new(rate: u32, now: Instant) -> Self {
        Self {
            rate,
            window: now,
            taken: 0,
        }
    }

    fn admit(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.taken = 0;
        }
        if self.taken < self.rate {
            self.taken += 1;
            true
        } else {
            false
        }
    }
}

/// What a tapped request's start recorded: taken only while a tap is open.
#[derive(Debug)]
pub struct TapRequest {
    arrived: SystemTime,
    method: Method,
    authority: String,
    path: String,
    header_names: Vec<HeaderName>,
}

impl TapRequest {
    /// Copies what a tap event needs of `request` (no header value).
    pub fn of<B>(request: &http::Request<B>, arrived: SystemTime) -> Self {
        Self {
            arrived,
            method: request.method().clone(),
            authority: crate::authority::of_request(request)
                .unwrap_or("")
                .to_owned(),
            path: request.uri().path().to_owned(),
            header_names: request.headers().keys().cloned().collect(),
        }
    }
}

/// The upstream a tapped request was sent to (outbound: the endpoint of its
/// last try; inbound: the app), left in the response's extensions by the
/// path that knows it, only for tapped requests.
#[derive(Debug, Clone)]
pub struct TapUpstream(pub String);

/// How a tapped request ended.
#[derive(Debug)]
pub struct TapOutcome<'a> {
    /// Which path.
    pub direction: Direction,
    /// The called service (outbound) or this proxy's (inbound).
    pub service: &'a str,
    /// The caller's SPIFFE ID (inbound, mTLS).
    pub peer: Option<&'a str>,
    /// Response status.
    pub status: u16,
    /// Time to the response's head.
    pub latency: Duration,
    /// `tether-error`, when the proxy answered itself.
    pub error: Option<&'static str>,
    /// Where it went.
    pub upstream: Option<String>,
}

/// One tapped request, as every client that samples it receives it.
#[derive(Debug)]
pub struct TapEvent {
    /// Arrival, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Which path.
    pub direction: Direction,
    /// The service.
    pub service: String,
    /// Method.
    pub method: Method,
    /// Authority (`Host`).
    pub authority: String,
    /// Path (no query: it may carry secrets).
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Time to the response's head.
    pub latency: Duration,
    /// The caller's SPIFFE ID (inbound).
    pub peer: Option<String>,
    /// The endpoint (outbound) or app (inbound) it went to.
    pub upstream: Option<String>,
    /// `tether-error`.
    pub error: Option<&'static str>,
    /// Request header names.
    pub header_names: Vec<HeaderName>,
}

impl TapEvent {
    /// One JSON line for a client: header names only if it asked, and how
    /// many events it has lost so far.
    pub fn to_line(&self, header_names: bool, dropped: u64) -> Bytes {
        let mut value = serde_json::json!({
            "timestamp_ms": self.timestamp_ms,
            "direction": self.direction.as_str(),
            "service": self.service,
            "method": self.method.as_str(),
            "authority": self.authority,
            "path": self.path,
            "status": self.status,
            "latency_ms": self.latency.as_secs_f64() * 1e3,
            "peer_identity": self.peer,
            "upstream": self.upstream,
            "tether_error": self.error,
            "dropped": dropped,
        });
        if let (true, Some(object)) = (header_names, value.as_object_mut()) {
            let names: Vec<&str> = self.header_names.iter().map(HeaderName::as_str).collect();
            object.insert("headers".to_owned(), serde_json::json!(names));
        }
        let mut line = serde_json::to_vec(&value).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TapError {
    /// [`MAX_CLIENTS`] taps are open already.
    #[error("{MAX_CLIENTS} taps are open already: close one and retry")]
    Full,
}

impl Tap {
    /// A hub whose clients, events and drops are counted in `registry`
    /// (`tether_tap_clients`, `tether_tap_events_total`,
    /// `tether_tap_events_dropped_total`).
    pub fn register(registry: &Registry) -> Self {
        use crate::request_metrics::{counter, gauge};
        let clients = gauge(
            registry,
            "tether_tap_clients",
            "Tap clients open (GET /tap).",
        );
        let events = counter(
            registry,
            "tether_tap_events_total",
            "Tap events sent to tap clients (sampled requests).",
        );
        let dropped = counter(
            registry,
            "tether_tap_events_dropped_total",
            "Tap events dropped because a tap client read too slowly.",
        );
        let metrics = TapMetrics {
            clients,
            events,
            dropped,
        };
        Self::with_parts(Some(metrics), CLIENT_BUFFER)
    }

    fn with_parts(metrics: Option<TapMetrics>, buffer: usize) -> Self {
        Self {
            hub: Arc::new(Hub {
                active: AtomicUsize::new(0),
                clients: Mutex::new(Vec::new()),
                next_id: AtomicU64::new(0),
                metrics,
                buffer: buffer.max(1),
            }),
        }
    }

    /// Whether any tap is open: the request path's one check (a relaxed
    /// load: a request that misses a tap opened this instant is not tapped).
    #[inline]
    pub fn is_active(&self) -> bool {
        self.hub.active.load(Ordering::Relaxed) > 0
    }

    /// Opens a tap, or [`TapError::Full`].
    pub fn subscribe(&self, filter: TapFilter) -> Result<TapStream, TapError> {
        let Ok(mut clients) = self.hub.clients.lock() else {
            return Err(TapError::Full);
        };
        if clients.len() >= MAX_CLIENTS {
            return Err(TapError::Full);
        }
        let (sender, receiver) = mpsc::channel(self.hub.buffer);
        let id = self.hub.next_id.fetch_add(1, Ordering::Relaxed);
        let dropped = Arc::new(AtomicU64::new(0));
        let header_names = filter.header_names;
        clients.push(Client {
            id,
            sampler: Sampler::new(filter.rate.clamp(1, MAX_RATE), Instant::now()),
            filter,
            sender,
            dropped: Arc::clone(&dropped),
        });
        self.hub.active.store(clients.len(), Ordering::Relaxed);
        if let Some(metrics) = &self.hub.metrics {
            metrics.clients.set(clients.len() as i64);
        }
        Ok(TapStream {
            receiver,
            dropped,
            header_names,
            _subscription: Subscription {
                hub: Arc::clone(&self.hub),
                id,
            },
        })
    }

    /// Offers a finished request to every open tap: each takes it if its
    /// filter matches and its rate allows, dropping (and counting) it when
    /// its buffer is full. The event is built once, for the first taker.
    pub fn publish(&self, request: TapRequest, outcome: TapOutcome<'_>) {
        let Ok(mut clients) = self.hub.clients.lock() else {
            return;
        };
        let event = Arc::new(TapEvent {
            timestamp_ms: request
                .arrived
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            direction: outcome.direction,
            service: outcome.service.to_owned(),
            method: request.method,
            authority: request.authority,
            path: request.path,
            status: outcome.status,
            latency: outcome.latency,
            peer: outcome.peer.map(str::to_owned),
            upstream: outcome.upstream,
            error: outcome.error,
            header_names: request.header_names,
        });
        let now = Instant::now();
        for client in clients.iter_mut() {
            if !client.filter.matches(&event) || !client.sampler.admit(now) {
                continue;
            }
            match client.sender.try_send(Arc::clone(&event)) {
                Ok(()) => {
                    if let Some(metrics) = &self.hub.metrics {
                        metrics.events.inc();
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    client.dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(metrics) = &self.hub.metrics {
                        metrics.dropped.inc();
                    }
                }
                // Gone: its subscription removes it.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    /// Ends every open tap (their streams finish): at shutdown.
    pub fn close_all(&self) {
        if let Ok(mut clients) = self.hub.clients.lock() {
            clients.clear();
            self.hub.active.store(0, Ordering::Relaxed);
            if let Some(metrics) = &self.hub.metrics {
                metrics.clients.set(0);
            }
        }
    }

    /// Taps open now.
    pub fn clients(&self) -> usize {
        self.hub.active.load(Ordering::Relaxed)
    }
}

/// Removes its client from the hub when the stream is dropped (the client
/// went away).
struct Subscription {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut clients) = self.hub.clients.lock() {
            clients.retain(|c| c.id != self.id);
            self.hub.active.store(clients.len(), Ordering::Relaxed);
            if let Some(metrics) = &self.hub.metrics {
                metrics.clients.set(clients.len() as i64);
            }
        }
    }
}

/// One tap's events as newline-delimited JSON: an HTTP response body that
/// ends when the tap is closed, and closes the tap when dropped.
pub struct TapStream {
    receiver: mpsc::Receiver<Arc<TapEvent>>,
    dropped: Arc<AtomicU64>,
    header_names: bool,
    _subscription: Subscription,
}

impl TapStream {
    /// The next event's line, `None` once the tap is closed.
    pub async fn next_line(&mut self) -> Option<Bytes> {
        let event = self.receiver.recv().await?;
        Some(event.to_line(self.header_names, self.dropped.load(Ordering::Relaxed)))
    }

    /// Events this tap lost to a full buffer so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl http_body::Body for TapStream {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match this.receiver.poll_recv(cx) {
            Poll::Ready(Some(event)) => {
                let line = event.to_line(this.header_names, this.dropped.load(Ordering::Relaxed));
                Poll::Ready(Some(Ok(Frame::data(line))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests;
