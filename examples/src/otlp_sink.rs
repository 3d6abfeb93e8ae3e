//! `tether-otlp-sink`: an OTLP trace receiver that accepts and counts, for
//! benchmarks. It reads every export request to the end and answers
//! success (gRPC `grpc-status: 0`, or HTTP 200 on `/v1/traces`) without
//! decoding or storing anything, so a benchmark can measure what tracing
//! costs the proxy apart from what a real collector costs the machine.
//!
//! `GET /stats` answers `{"requests":N,"bytes":N}`.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "tether-otlp-sink",
    about = "Accepts OTLP trace exports (gRPC or HTTP/protobuf), counts them, keeps nothing"
)]
struct Args {
    /// Where to listen (HTTP/2 cleartext for gRPC and HTTP/1.1 on one port).
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: SocketAddr,
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    bytes: AtomicU64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "tether-otlp-sink: cannot listen on {}: {error}",
                args.listen
            );
            return std::process::ExitCode::from(1);
        }
    };
    let counts = Arc::new(Counts::default());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("tether-otlp-sink: accept: {error}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let counts = Arc::clone(&counts);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let counts = Arc::clone(&counts);
                async move { Ok::<_, Infallible>(answer(request, &counts).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(request: Request<Incoming>, counts: &Counts) -> Response<Full<Bytes>> {
    if request.method() == Method::GET && request.uri().path() == "/stats" {
        let body = format!(
            "{{\"requests\":{},\"bytes\":{}}}\n",
            counts.requests.load(Ordering::Relaxed),
            counts.bytes.load(Ordering::Relaxed)
        );
        return Response::new(Full::new(Bytes::from(body)));
    }
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let size = match request.into_body().collect().await {
        Ok(body) => body.to_bytes().len() as u64,
        Err(_) => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        }
    };
    counts.requests.fetch_add(1, Ordering::Relaxed);
    counts.bytes.fetch_add(size, Ordering::Relaxed);
    let mut response = Response::new(Full::new(Bytes::new()));
    let headers = response.headers_mut();
    if grpc {
        // A trailers-only answer: status in the headers, no message.
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from_static("0"));
    } else {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
    }
    response
}
