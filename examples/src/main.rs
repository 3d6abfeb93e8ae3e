//! `tether-sample`: a tiny HTTP service for the quickstart and benchmarks.
//!
//! - `tether-sample --name api --listen 127.0.0.1:18081` answers every request
//!   with `hello from api` (or `--body-size N` bytes, for benchmarks).
//! - `tether-sample --name web --listen 127.0.0.1:18080 --call api --sidecar 127.0.0.1:15001`
//!   calls `http://api/` through its sidecar on every request and includes the
//!   answer, forwarding the trace headers so app and sidecar spans join one trace.
//! - `--fail-percent N` answers N % of requests with a 500 (rollout demos).
//! - `--delay 100ms --workers 4`: each request costs 100 ms and at most 4 are
//!   worked on at once (a service of bounded capacity: 40 requests/s), for
//!   the chaos suite's overload scenario.
//! - `GET /bytes/N` streams N bytes in 64 KiB chunks without holding them;
//!   `POST /sink` reads the body to the end and answers its length. The
//!   benchmark uses both to show that bodies stream through the proxy.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Trace headers a well-behaved app copies from its request to its calls.
const TRACE_HEADERS: &[&str] = &[
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-request-id",
];

#[derive(Debug, Parser)]
#[command(
    name = "tether-sample",
    about = "A tiny sample service for Tether demos and benchmarks"
)]
struct Args {
    /// The service's name, echoed in answers.
    #[arg(long, default_value = "sample")]
    name: String,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: SocketAddr,
    /// A mesh service to call on every request (through --sidecar).
    #[arg(long)]
    call: Option<String>,
    /// The local sidecar's outbound listener.
    #[arg(long, default_value = "127.0.0.1:15001")]
    sidecar: SocketAddr,
    /// A plain URL to call on every request instead (e.g. http://api:8080),
    /// as an app that knows nothing of the mesh would: with transparent
    /// capture its sidecar still carries the call.
    #[arg(long, conflicts_with = "call")]
    call_url: Option<String>,
    /// Answer with this many bytes instead of a greeting (benchmarks).
    #[arg(long, default_value_t = 0)]
    body_size: usize,
    /// Answer this percent of requests with a 500, spread evenly (e.g. 20:
    /// every fifth), to demo a rollout that rolls back.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100))]
    fail_percent: u64,
    /// Work each request costs before its answer (a service of bounded
    /// capacity, for the chaos suite's overload scenario).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Requests worked on at once (0: no limit); more wait their turn, as
    /// in a server with a fixed pool of workers. With `--delay`, capacity
    /// is this many per delay.
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

struct App {
    /// Permits for `--workers` (None: no limit).
    workers: Option<tokio::sync::Semaphore>,
    args: Args,
    /// Requests answered so far (for --fail-percent).
    served: std::sync::atomic::AtomicU64,
    body: Bytes,
    client: Client<HttpConnector, Full<Bytes>>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let body = if args.body_size > 0 {
        Bytes::from(vec![b'x'; args.body_size])
    } else {
        Bytes::from(format!("hello from {}\n", args.name))
    };
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("tether-sample: cannot listen on {}: {error}", args.listen);
            return std::process::ExitCode::from(1);
        }
    };
    eprintln!("tether-sample {} listening on {}", args.name, args.listen);
    // Idle pooled connections expire before the sidecar closes them (it
    // closes a keep-alive connection idle for its header-read timeout,
    // 30 s): reusing one the server is closing loses the request.
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(20))
        .build_http();
    let workers = (args.workers > 0).then(|| tokio::sync::Semaphore::new(args.workers));
    let app = Arc::new(App {
        workers,
        args,
        served: std::sync::atomic::AtomicU64::new(0),
        body,
        client,
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let app = Arc::clone(&app);
                async move { Ok::<_, Infallible>(app.answer(request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl App {
    async fn answer(&self, request: Request<Incoming>) -> Response<AppBody> {
        let _worker = match &self.workers {
            Some(workers) => workers.acquire().await.ok(),
            None => None,
        };
        if !self.args.delay.is_zero() {
            tokio::time::sleep(self.args.delay).await;
        }
        let percent = self.args.fail_percent;
        if percent > 0 {
            let n = self
                .served
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if (n * percent) % 100 < percent {
                return status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "{} failing on purpose (--fail-percent {percent})\n",
                        self.args.name
                    ),
                );
            }
        }
        let path = request.uri().path();
        if let Some(n) = path
            .strip_prefix("/bytes/")
            .and_then(|n| n.parse::<u64>().ok())
        {
            return Response::new(stream_bytes(n));
        }
        if path == "/sink" {
            let mut body = request.into_body();
            let mut total = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                total += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            return Response::new(full(Bytes::from(format!("{total}\n"))));
        }
        let (mut call, upstream) = match (&self.args.call, &self.args.call_url) {
            (Some(service), _) => (
                Request::get(format!(
                    "http://{}{}",
                    self.args.sidecar,
                    request.uri().path()
                ))
                .header("host", service.as_str()),
                service.as_str(),
            ),
            (None, Some(url)) => (
                Request::get(format!(
                    "{}{}",
                    url.trim_end_matches('/'),
                    request.uri().path()
                )),
                url.as_str(),
            ),
            (None, None) => return Response::new(full(self.body.clone())),
        };
        for name in TRACE_HEADERS {
            if let Some(value) = request.headers().get(*name) {
                call = call.header(*name, value);
            }
        }
        let Ok(call) = call.body(Full::new(Bytes::new())) else {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot build the upstream request\n".into(),
            );
        };
        match self.client.request(call).await {
            Ok(response) => {
                let code = response.status();
                let reason = response
                    .headers()
                    .get("tether-error")
                    .and_then(|v| v.to_str().ok())
                    .map(|r| format!(" (tether-error: {r})"))
                    .unwrap_or_default();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let text = format!(
                    "hello from {} → {upstream} answered {code}{reason}: {}",
                    self.args.name,
                    String::from_utf8_lossy(&body)
                );
                status(
                    if code.is_success() {
                        StatusCode::OK
                    } else {
                        StatusCode::BAD_GATEWAY
                    },
                    text,
                )
            }
            Err(error) => status(
                StatusCode::BAD_GATEWAY,
                format!(
                    "hello from {}: calling {upstream} failed: {error}\n",
                    self.args.name
                ),
            ),
        }
    }
}

/// Answers are either buffered or streamed.
type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(bytes: Bytes) -> AppBody {
    Full::new(bytes).boxed()
}

/// `n` bytes in 64 KiB chunks, produced as the client reads them.
fn stream_bytes(n: u64) -> AppBody {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
    let frames = futures_util::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            (left > 0).then(|| {
                let take = left.min(CHUNK);
                (
                    Ok(http_body::Frame::data(chunk.slice(..take as usize))),
                    left - take,
                )
            })
        }
    });
    http_body_util::StreamBody::new(frames).boxed()
}

fn status(code: StatusCode, text: String) -> Response<AppBody> {
    let mut response = Response::new(full(Bytes::from(text)));
    *response.status_mut() = code;
    response
}
