//! Copying a stream both ways until it ends or goes idle: the one idle
//! timeout of opaque TCP streams, passed-through captured streams and
//! upgraded HTTP connections.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Copies both ways until both directions end (`Some`, with the bytes
/// each way or the error), or until nothing has moved for `idle` (`None`;
/// dropping the streams then closes them).
pub async fn copy_until_idle<C, S>(
    client: &mut C,
    server: &mut S,
    idle: Duration,
) -> Option<io::Result<(u64, u64)>>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    copy_until_idle_or_silent(client, server, idle, idle).await
}

/// [`copy_until_idle`], but a stream where no byte has moved either way
/// within `first_byte` of the start is idle then (a connection that was
/// silent before it was relayed, and stays so, is not held for `idle`).
pub async fn copy_until_idle_or_silent<C, S>(
    client: &mut C,
    server: &mut S,
    first_byte: Duration,
    idle: Duration,
) -> Option<io::Result<(u64, u64)>>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let started = Instant::now();
    let activity = AtomicU64::new(0);
    // Every byte either way crosses the client's side: reads are the
    // client's bytes, writes the server's.
    let mut client = Active {
        inner: client,
        activity: &activity,
        started,
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, server) => Some(copied),
        () = idle_for(&activity, started, first_byte, idle) => None,
    }
}

/// Returns once nothing has moved for `idle`, or nothing at all within
/// `first_byte`: `activity` holds the time of the last byte in
/// milliseconds after `started`, plus one (0: no byte yet).
async fn idle_for(activity: &AtomicU64, started: Instant, first_byte: Duration, idle: Duration) {
    loop {
        let due = match activity.load(Ordering::Relaxed) {
            0 => started + first_byte,
            moved => started + Duration::from_millis(moved - 1) + idle,
        };
        if Instant::now() >= due {
            return;
        }
        tokio::time::sleep_until(due).await;
    }
}

/// A stream that notes when bytes last moved through it (a relaxed store
/// per read or write that moved bytes).
struct Active<'a, S: ?Sized> {
    inner: &'a mut S,
    activity: &'a AtomicU64,
    started: Instant,
}

impl<S: ?Sized> Active<'_, S> {
    fn moved(&self) {
        let millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.activity.store(millis + 1, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Active<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.moved();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Active<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.moved();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_means_no_byte_for_the_whole_timeout() {
        let started = Instant::now();
        let activity = AtomicU64::new(0);
        let timeout = Duration::from_secs(10);
        tokio::time::sleep(Duration::from_secs(6)).await;
        activity.store(6_001, Ordering::Relaxed);
        let waiting = Instant::now();
        idle_for(&activity, started, timeout, timeout).await;
        // Due 10 s after the last byte, not 10 s after the start.
        assert!(waiting.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_silent_from_the_start_is_idle_at_the_first_byte_deadline() {
        let (mut client, _client_peer) = tokio::io::duplex(64);
        let (mut server, _server_peer) = tokio::io::duplex(64);
        let started = Instant::now();
        let copied = copy_until_idle_or_silent(
            &mut client,
            &mut server,
            Duration::from_secs(30),
            Duration::from_secs(3600),
        )
        .await;
        assert!(copied.is_none());
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(30) && waited < Duration::from_secs(31));
        // One byte, and the long idle timeout applies from then on.
        let activity = AtomicU64::new(0);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        activity.store(5_001, Ordering::Relaxed);
        idle_for(
            &activity,
            started,
            Duration::from_secs(30),
            Duration::from_secs(3600),
        )
        .await;
        assert!(started.elapsed() >= Duration::from_secs(3605));
    }
}
