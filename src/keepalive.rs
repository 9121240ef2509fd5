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
    /// Framing facts of the request head being read (see [`HeadScan`]).
    scan: Mutex<HeadScan>,
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

    fn scan(&self) -> std::sync::MutexGuard<'_, HeadScan> {
        self.inner.scan.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request head was parsed: its deadline is met; the request is in flight until
    /// the guard is dropped. Also says whether the head carried both `Content-Length`
    /// and `Transfer-Encoding` (hyper drops the former before the service could see it).
    pub fn request(&self) -> (InFlight, bool) {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        *self.head_started() = None;
        let ambiguous = std::mem::take(&mut *self.scan()).is_ambiguous();
        (
            InFlight {
                inner: self.inner.clone(),
            },
            ambiguous,
        )
    }

    fn bytes_read(&self, bytes: &[u8]) {
        if self.inner.in_flight.load(Ordering::Acquire) != 0 {
            return;
        }
        self.scan().feed(bytes);
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

/// Watches the raw bytes of one request head for the framing headers hyper normalises
/// away: with both `Content-Length` and `Transfer-Encoding`, hyper removes the length
/// before the service runs, and SPEC §8.6 wants such a request refused (400), not
/// forwarded. Only names at line starts are matched, case-insensitively; scanning stops
/// at the blank line that ends the head. No allocation: a fixed window of the current
/// line's first bytes.
#[derive(Debug, Default)]
struct HeadScan {
    /// The first bytes of the current line (enough for the longest name we look for).
    line: [u8; 18],
    line_len: usize,
    /// Bytes seen in the current line (may exceed the window).
    line_bytes: usize,
    content_length: bool,
    transfer_encoding: bool,
    done: bool,
}

impl HeadScan {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.done {
                return;
            }
            if b == b'\n' {
                self.end_line();
                continue;
            }
            if self.line_len < self.line.len() {
                self.line[self.line_len] = b.to_ascii_lowercase();
                self.line_len += 1;
            }
            self.line_bytes += 1;
        }
    }

    fn end_line(&mut self) {
        let line = &self.line[..self.line_len];
        let blank = self.line_bytes == 0 || (self.line_bytes == 1 && line == b"\r");
        if blank {
            self.done = true;
        } else if line.starts_with(b"content-length:") || line.starts_with(b"content-length ") {
            self.content_length = true;
        } else if line.starts_with(b"transfer-encoding:") {
            self.transfer_encoding = true;
        }
        self.line_len = 0;
        self.line_bytes = 0;
    }

    fn is_ambiguous(&self) -> bool {
        self.content_length && self.transfer_encoding
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
            self.activity.bytes_read(&buf.filled()[before..]);
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

    fn scan(chunks: &[&[u8]]) -> bool {
        let mut s = HeadScan::default();
        for c in chunks {
            s.feed(c);
        }
        s.is_ambiguous()
    }

    #[test]
    fn head_scan_finds_both_framing_headers_across_reads() {
        assert!(scan(&[
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
        assert!(scan(&[
            b"POST / HTTP/1.1\r\nTRANSFER-enc",
            b"oding: chunked\r\ncontent-LENGTH: 5\r\n\r\n"
        ]));
        assert!(!scan(&[b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"]));
        assert!(
            !scan(&[
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nContent-Length: 1\r\n"
            ]),
            "the body is not the head"
        );
        assert!(!scan(&[
            b"GET / HTTP/1.1\r\nX-Content-Length: 1\r\nX: transfer-encoding:\r\n\r\n"
        ]));
        let activity = Activity::new();
        activity.bytes_read(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(activity.request().1);
        assert!(!activity.request().1, "reported once");
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_runs_only_while_a_head_is_arriving() {
        let a = Activity::new();
        let limit = Duration::from_secs(10);
        // Idle: no deadline at all.
        let idle = tokio::time::timeout(Duration::from_secs(3600), a.head_deadline_passed(limit));
        assert!(idle.await.is_err());
        // A head starts and completes in time: no deadline.
        a.bytes_read(b"G");
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (guard, _) = a.request();
        let w = tokio::time::timeout(Duration::from_secs(60), a.head_deadline_passed(limit));
        assert!(w.await.is_err());
        // Body bytes while in flight start nothing.
        a.bytes_read(b"body");
        assert!(a.head_started().is_none());
        drop(guard);
        // A head that stalls trips the deadline.
        a.bytes_read(b"GET / HT");
        let w = tokio::time::timeout(Duration::from_secs(11), a.head_deadline_passed(limit));
        assert!(w.await.is_ok());
    }
}
