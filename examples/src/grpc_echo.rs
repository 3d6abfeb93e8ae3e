//! `tether-grpc-echo`: a gRPC server for benchmarks that answers every
//! unary call by sending the request message back, then `grpc-status: 0`
//! in the trailers, without decoding it: any method, any message type
//! (e.g. `bench.Echo/Unary` with `message Msg { string text = 1; }`).
//! HTTP/2 cleartext (h2c) only.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "tether-grpc-echo",
    about = "Answers every unary gRPC call with its own request message (h2c)"
)]
struct Args {
    /// Where to listen (HTTP/2 cleartext).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
}

type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "tether-grpc-echo: cannot listen on {}: {error}",
                args.listen
            );
            return std::process::ExitCode::from(1);
        }
    };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("tether-grpc-echo: accept: {error}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|request| async move {
                Ok::<_, Infallible>(answer(request).await)
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(request: Request<Incoming>) -> Response<StreamBody<Frames>> {
    let (message, status) = match request.into_body().collect().await {
        Ok(body) => (body.to_bytes(), "0"),
        Err(_) => (Bytes::new(), "13"), // INTERNAL
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    let mut frames = Vec::with_capacity(2);
    if !message.is_empty() {
        frames.push(Ok(Frame::data(message)));
    }
    frames.push(Ok(Frame::trailers(trailers)));
    let mut response = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}
