//! Two client timers on one HTTP/1.1 connection: `timeouts.header_read` (a request head
//! must arrive within it once its first byte did: the slowloris guard) and
//! `timeouts.idle` (a keep-alive connection may sit idle that long between requests).
//!
//! hyper has one timer for both (its header-read timeout also runs while the connection
//! is idle), so hyper gets `idle`, and this watchdog adds the shorter `header_read`:
//! [`WatchedIo`] notes when the first byte of a new request head arrives while no
//! request is in flight, the service marks when a head was parsed ([`Activity::request`])
//! and when its response finished (the returned guard is dropped), and
//! [`Activity::head_deadline_passed`] resolves when a started head overstays.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
    time::Instant,
};

/// What one connection is doing, shared by its IO, its service and its watchdog.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Requests whose head was parsed and whose response is not finished. Bytes read
    /// meanwhile belong to a body (or a pipelined request), not to a new head.
    in_flight: AtomicUsize,
    /// When the first byte of the next request head arrived.
    head_started: Mutex<Option<Instant>>,
    /// Wakes the watchdog when `head_started` is set.
    notify: Notify,
}

/// Held while a request is in flight; dropping it marks the response finished.
#[derive(Debug)]
pub struct InFlight {
    inner: Arc<Inner>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    pub fn new() -> Self {
        Self::default()
    }

    fn head_started(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.inner
            .head_started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A request head was parsed: its deadline is met; the request is in flight until
    /// the guard is dropped.
    pub fn request(&self) -> InFlight {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        *self.head_started() = None;
        InFlight {
            inner: self.inner.clone(),
        }
    }

    fn bytes_read(&self) {
        if self.inner.in_flight.load(Ordering::Acquire) != 0 {
            return;
        }
        let mut started = self.head_started();
        if started.is_none() {
            *started = Some(Instant::now());
            drop(started);
            self.inner.notify.notify_one();
        }
    }

    /// Resolves when a request head has been arriving for longer than `limit`.
    pub async fn head_deadline_passed(&self, limit: Duration) {
        loop {
            let started = *self.head_started();
            match started {
                None => self.inner.notify.notified().await,
                Some(at) => {
                    tokio::time::sleep_until(at + limit).await;
                    if *self.head_started() == Some(at) {
                        return;
                    }
                }
            }
        }
    }
}

/// An IO that reports reads to its connection's [`Activity`].
#[derive(Debug)]
pub struct WatchedIo<T> {
    io: T,
    activity: Activity,
}

impl<T> WatchedIo<T> {
    pub fn new(io: T, activity: Activity) -> Self {
        WatchedIo { io, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadline_runs_only_while_a_head_is_arriving() {
        let a = Activity::new();
        let limit = Duration::from_secs(10);
        // Idle: no deadline at all.
        let idle = tokio::time::timeout(Duration::from_secs(3600), a.head_deadline_passed(limit));
        assert!(idle.await.is_err());
        // A head starts and completes in time: no deadline.
        a.bytes_read();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let guard = a.request();
        let w = tokio::time::timeout(Duration::from_secs(60), a.head_deadline_passed(limit));
        assert!(w.await.is_err());
        // Body bytes while in flight start nothing.
        a.bytes_read();
        assert!(a.head_started().is_none());
        drop(guard);
        // A head that stalls trips the deadline.
        a.bytes_read();
        let w = tokio::time::timeout(Duration::from_secs(11), a.head_deadline_passed(limit));
        assert!(w.await.is_ok());
    }
}
