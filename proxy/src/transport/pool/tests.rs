//! The pool against a real hyper server on loopback that counts the
//! connections it accepts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::*;

/// A server answering `size` bytes to every request; counts connections.
async fn server(size: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let (addr, opened, _closed) = counting_server(size).await;
    (addr, opened)
}

/// A server answering `size` bytes to every request; counts the connections
/// it accepts and those that have closed.
async fn counting_server(size: usize) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let opened = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (counted, ended) = (Arc::clone(&opened), Arc::clone(&closed));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let ended = Arc::clone(&ended);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |_: Request<hyper::body::Incoming>| async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![b'x'; size]))))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, opened, closed)
}

fn pool(addr: SocketAddr, http2: bool) -> Arc<EndpointPool> {
    pool_with_idle_timeout(addr, http2, Duration::from_secs(60))
}

fn pool_with_idle_timeout(addr: SocketAddr, http2: bool, idle: Duration) -> Arc<EndpointPool> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(1)));
    let authority: Authority = addr.to_string().parse().unwrap_or_else(|e| panic!("{e}"));
    EndpointPool::new(
        &authority,
        PoolSettings {
            factory_id: 1,
            connector: MeshConnector::new(http, None),
            http2,
            idle_timeout: idle,
        },
    )
}

fn get(addr: SocketAddr, http2: bool) -> Request<Body> {
    let uri = if http2 {
        format!("http://{addr}/")
    } else {
        "/".to_owned()
    };
    Request::get(uri)
        .header("host", "api")
        .body(Body::Empty)
        .unwrap_or_default()
}

async fn read(response: Response<Body>) -> usize {
    response
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes().len())
        .unwrap_or(0)
}

#[tokio::test]
async fn http1_reuses_a_connection_once_the_body_is_read() {
    let (addr, connections) = server(1024).await;
    let pool = pool(addr, false);
    for _ in 0..20 {
        let response = pool
            .send(get(addr, false))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(response).await, 1024);
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one connection, reused"
    );
    assert_eq!(pool.idle_connections(), 1);
}

#[tokio::test]
async fn http1_does_not_reuse_a_connection_whose_body_was_dropped() {
    let (addr, connections) = server(256 * 1024).await;
    let pool = pool(addr, false);
    let unread = pool
        .send(get(addr, false))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(unread);
    assert_eq!(
        pool.idle_connections(),
        0,
        "a half-read connection is not pooled"
    );
    let response = pool
        .send(get(addr, false))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read(response).await, 256 * 1024);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn http1_concurrent_requests_get_connections_of_their_own_and_all_come_back() {
    let (addr, connections) = server(16).await;
    let pool = pool(addr, false);
    let responses =
        futures_util::future::join_all((0..8).map(|_| pool.send(get(addr, false)))).await;
    let bodies = futures_util::future::join_all(
        responses
            .into_iter()
            .map(|r| read(r.unwrap_or_else(|e| panic!("{e}")))),
    )
    .await;
    assert!(bodies.iter().all(|n| *n == 16));
    let opened = connections.load(Ordering::SeqCst);
    assert!(
        (2..=8).contains(&opened),
        "{opened} connections for 8 concurrent requests"
    );
    assert_eq!(pool.idle_connections(), opened, "every connection returned");
}

#[tokio::test]
async fn http2_multiplexes_every_request_on_one_connection() {
    let (addr, connections) = server(1024).await;
    let pool = pool(addr, true);
    let responses =
        futures_util::future::join_all((0..32).map(|_| pool.send(get(addr, true)))).await;
    for response in responses {
        let response = response.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(response).await, 1024);
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refused_connect_is_a_connect_error() {
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"));
    for http2 in [false, true] {
        let error = pool(addr, http2)
            .send(get(addr, http2))
            .await
            .err()
            .unwrap_or_else(|| panic!("nothing listens there"));
        assert!(error.is_connect(), "{error}");
    }
}

#[tokio::test(start_paused = true)]
async fn idle_connections_expire() {
    let (addr, connections) = server(8).await;
    let pool = pool(addr, false);
    let response = pool
        .send(get(addr, false))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    read(response).await;
    tokio::time::advance(Duration::from_secs(61)).await;
    let response = pool
        .send(get(addr, false))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    read(response).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "the expired one was not reused"
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_at_its_timeout_without_a_new_request() {
    let (addr, opened, closed) = counting_server(8).await;
    let pool = pool_with_idle_timeout(addr, false, Duration::from_millis(200));
    let response = pool
        .send(get(addr, false))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read(response).await, 8);
    assert_eq!(pool.idle_connections(), 1, "kept while within its timeout");
    assert_eq!(closed.load(Ordering::SeqCst), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while closed.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        closed.load(Ordering::SeqCst),
        1,
        "the server saw the idle connection close"
    );
    assert_eq!(pool.idle_connections(), 0);
    assert_eq!(opened.load(Ordering::SeqCst), 1);

    // The reaper ended with the last idle connection; the next one put
    // back starts another.
    let response = pool
        .send(get(addr, false))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read(response).await, 8);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while closed.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(closed.load(Ordering::SeqCst), 2);
}
