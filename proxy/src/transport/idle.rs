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
        () = idle_for(&activity, started, idle) => None,
    }
}

/// Returns once nothing has moved for `idle`: `activity` holds the time of
/// the last byte, in milliseconds after `started`.
async fn idle_for(activity: &AtomicU64, started: Instant, idle: Duration) {
    loop {
        let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
        let due = last + idle;
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
        let millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(millis, Ordering::Relaxed);
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
        activity.store(6_000, Ordering::Relaxed);
        let waiting = Instant::now();
        idle_for(&activity, started, timeout).await;
        // Due 10 s after the last byte, not 10 s after the start.
        assert!(waiting.elapsed() >= Duration::from_secs(10));
    }
}
