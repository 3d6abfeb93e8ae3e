//! A real HTTP backend on a loopback port whose behaviour tests can change
//! while it runs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How the backend answers.
#[derive(Debug, Clone)]
pub struct Behavior {
    /// Status of normal answers.
    pub status: u16,
    /// Delay before answering.
    pub delay: Duration,
    /// Answer this many requests with 503 first.
    pub fail_first: usize,
    /// Drop the connection without answering, for every request.
    pub reset: bool,
    /// Body size in bytes (the backend's name when 0).
    pub body_size: usize,
    /// Extra headers on every answer (e.g. `Retry-After`).
    pub headers: Vec<(&'static str, &'static str)>,
    /// Answer every Nth request with 500 (0: never), e.g. 5 for 20 %.
    pub fail_every: usize,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            status: 200,
            delay: Duration::ZERO,
            fail_first: 0,
            reset: false,
            body_size: 0,
            headers: Vec::new(),
            fail_every: 0,
        }
    }
}

/// A running backend; stops when dropped.
pub struct Backend {
    /// Its address.
    pub addr: SocketAddr,
    /// Its name (sent back in `x-backend`).
    pub name: String,
    state: Arc<State>,
    task: JoinHandle<()>,
}

struct State {
    name: String,
    hits: AtomicUsize,
    failed: AtomicUsize,
    /// Requests carrying `tether-mirror: 1` (mirrored copies).
    mirrored: AtomicUsize,
    /// Body bytes of those requests.
    mirrored_bytes: AtomicUsize,
    behavior: Mutex<Behavior>,
}

impl Backend {
    /// Starts a backend answering 200 with its name.
    pub async fn start(name: &str) -> Self {
        Self::with(name, Behavior::default()).await
    }

    /// Starts a backend with the given behaviour.
    pub async fn with(name: &str, behavior: Behavior) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let state = Arc::new(State {
            name: name.to_owned(),
            hits: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            mirrored: AtomicUsize::new(0),
            mirrored_bytes: AtomicUsize::new(0),
            behavior: Mutex::new(behavior),
        });
        let task = tokio::spawn(serve(listener, Arc::clone(&state)));
        Self {
            addr,
            name: name.to_owned(),
            state,
            task,
        }
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Requests received so far that carried `tether-mirror: 1` (copies
    /// sent by a proxy's traffic mirror).
    pub fn mirrored(&self) -> usize {
        self.state.mirrored.load(Ordering::SeqCst)
    }

    /// Body bytes of the mirrored requests received so far.
    pub fn mirrored_bytes(&self) -> usize {
        self.state.mirrored_bytes.load(Ordering::SeqCst)
    }

    /// Requests answered with a failure on purpose (503 or 500) so far.
    pub fn failed(&self) -> usize {
        self.state.failed.load(Ordering::SeqCst)
    }

    /// Changes the behaviour of later requests.
    pub fn set(&self, change: impl FnOnce(&mut Behavior)) {
        if let Ok(mut behavior) = self.state.behavior.lock() {
            change(&mut behavior);
        }
    }

    /// `host:port` as a string for snapshots.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { answer(&state, request).await }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let n = state.hits.fetch_add(1, Ordering::SeqCst);
    let behavior = state.behavior.lock().map(|b| b.clone()).unwrap_or_default();
    let header = |name: &str| {
        let value = request.headers().get(name).and_then(|h| h.to_str().ok());
        value.unwrap_or("").to_owned()
    };
    let host = header("host");
    let traceparent = header("traceparent");
    let mirrored = header("tether-mirror") == "1";
    let body = request
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if mirrored {
        state.mirrored_bytes.fetch_add(body.len(), Ordering::SeqCst);
        state.mirrored.fetch_add(1, Ordering::SeqCst);
    }
    if !behavior.delay.is_zero() {
        tokio::time::sleep(behavior.delay).await;
    }
    if behavior.reset {
        // An error from the service makes hyper drop the connection unanswered.
        return Err(std::io::Error::other("reset on purpose"));
    }
    let status = if n < behavior.fail_first {
        state.failed.fetch_add(1, Ordering::SeqCst);
        503
    } else if behavior.fail_every > 0 && (n + 1).is_multiple_of(behavior.fail_every) {
        state.failed.fetch_add(1, Ordering::SeqCst);
        500
    } else {
        behavior.status
    };
    let payload = if behavior.body_size > 0 {
        Bytes::from(vec![b'x'; behavior.body_size])
    } else {
        Bytes::from(state.name.clone())
    };
    let mut response = Response::builder();
    for (name, value) in &behavior.headers {
        response = response.header(*name, *value);
    }
    let response = response
        .status(status)
        .header("x-backend", state.name.as_str())
        .header("x-host", host)
        .header("x-traceparent", traceparent)
        .header("x-body-len", body.len())
        .body(Full::new(payload))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    Ok::<_, std::io::Error>(response)
}
