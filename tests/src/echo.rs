//! A TCP echo app on a loopback port, and a client that streams through it.
//!
//! The app echoes every byte until the client half-closes, then closes its
//! own side. So that one app can sit behind a sidecar for TCP and HTTP at
//! once, a connection that starts with `GET ` gets a fixed HTTP answer
//! instead (header `x-backend: echo-app`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const HTTP_ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nx-backend: echo-app\r\nconnection: close\r\n\r\necho";

/// A running echo app; stops when dropped.
pub struct EchoServer {
    /// Its address.
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl EchoServer {
    /// Starts on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream));
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream) {
    // Decide as bytes arrive: anything that stops looking like `GET ` is
    // echoed at once (a one-byte ping must not wait for three more).
    let mut first = Vec::new();
    let mut buf = [0u8; 4096];
    let http = loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break false,
            Ok(n) => first.extend_from_slice(&buf[..n]),
        }
        let k = first.len().min(4);
        if first[..k] != b"GET "[..k] {
            break false;
        }
        if first.len() >= 4 {
            break true;
        }
    };
    if http {
        while !first.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => first.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream.write_all(HTTP_ANSWER).await;
        let _ = stream.shutdown().await;
        return;
    }
    let (mut read, mut write) = stream.split();
    if write.write_all(&first).await.is_err() {
        return;
    }
    let _ = tokio::io::copy(&mut read, &mut write).await;
    let _ = write.shutdown().await;
}

/// Connects to `addr`, sends `payload` while reading, half-closes its write
/// side and reads until the server closes: the bytes that came back. An
/// error if anything failed or it took over 10 s.
pub async fn exchange(addr: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let stream = TcpStream::connect(addr).await?;
    exchange_on(stream, payload).await
}

/// [`exchange`] on an open connection.
pub async fn exchange_on(mut stream: TcpStream, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let work = async {
        let (mut read, mut write) = stream.split();
        let sending = async {
            write.write_all(payload).await?;
            write.shutdown().await
        };
        let mut echoed = Vec::new();
        let receiving = read.read_to_end(&mut echoed);
        let (sent, received) = tokio::join!(sending, receiving);
        // Sending may fail once the server has closed (refused streams):
        // what was received still tells the story, unless both failed.
        match (sent, received) {
            (_, Ok(_)) => Ok(echoed),
            (Ok(()), Err(error)) | (Err(_), Err(error)) => Err(error),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// A payload of `len` bytes that is not all one value (so a reordering or a
/// lost chunk shows) and does not start like an HTTP request.
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Writes one byte on `stream` and expects it echoed within 5 s.
pub async fn ping(stream: &mut TcpStream, byte: u8) -> bool {
    let mut got = [0u8; 1];
    stream.write_all(&[byte]).await.is_ok()
        && tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut got))
            .await
            .is_ok_and(|r| r.is_ok())
        && got[0] == byte
}

/// Whether a connection to `addr` is refused.
pub async fn refused(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_err()
}

/// Whether `echoed` is exactly `sent` (compares lengths first, so a
/// failure message need not print megabytes).
pub fn same(echoed: &[u8], sent: &[u8]) -> bool {
    echoed.len() == sent.len() && echoed == sent
}
