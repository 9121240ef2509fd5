//! The client-side timers of one connection that hyper does not enforce itself.
//!
//! HTTP/1.1 has two: `timeouts.header_read` (a request head must arrive within it once
//! its first byte did: the slowloris guard) and `timeouts.idle` (a keep-alive connection
//! may sit idle that long between requests). hyper has one timer for both (its
//! header-read timeout also runs while the connection is idle), so hyper gets `idle`,
//! and this watchdog adds the shorter `header_read`: [`WatchedIo`] notes when the first
//! byte of a new request head arrives while no request is in flight, the service marks
//! when a head was parsed ([`Activity::request`]) and when its response finished (the
//! returned guard is dropped), and [`Activity::expired`] resolves when a started head
//! overstays.
//!
//! A connection is armed when it is accepted (after the TLS handshake): a client that
//! connects and sends nothing is closed after `header_read` too — hyper's protocol
//! sniffing has no timer of its own (docs/decisions.md#proxying, "Two client timers").
//!
//! HTTP/2 has no request head in that sense: PING, SETTINGS and WINDOW_UPDATE frames
//! arrive while no request is in flight, and a stream's HEADERS are bounded by h2's own
//! limits. Once the 24-byte connection preface has been read the connection is h2, the
//! head deadline and the raw head scan stop, and the watchdog enforces only `idle`: no
//! stream in flight for that long ([`Expiry::Idle`], the listener sends GOAWAY).
//!
//! The bytes of an HTTP/1 request head are also handed to the raw framing scan in
//! [`super::head_scan`], whose result comes back with [`Activity::request`].
//!
//! A request *body* has its own bound, `timeouts.body_read`, on the body itself rather
//! than here ([`crate::body::ReadTimeout`]): it applies to HTTP/1 and HTTP/2 streams
//! alike and only while the body's reader waits for the client.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
    time::Instant,
};

use super::head_scan::{HeadFraming, HeadScan};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What one connection is doing, shared by its IO, its service and its watchdog.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    /// The connection became a tunnel (`101`): its bytes are opaque from now on and
    /// nothing here watches them.
    tunnel: AtomicBool,
    /// Wakes the watchdog when a deadline starts, moves or ends.
    notify: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Requests (h2: streams) whose head was parsed and whose response is not finished.
    /// HTTP/1 bytes read meanwhile belong to a body (or a pipelined request), not to a
    /// new head.
    in_flight: usize,
    /// When the first byte of the next request head arrived (HTTP/1, and while the
    /// protocol is not known yet).
    head_started: Option<Instant>,
    /// HTTP/2: when the last stream in flight finished (or the preface arrived).
    idle_since: Option<Instant>,
    proto: Proto,
    /// Framing facts of the request head being read (see [`HeadScan`]; HTTP/1 only).
    scan: HeadScan,
}

/// What the connection speaks, as far as its bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// So far the bytes read match the first `matched` bytes of [`H2_PREFACE`].
    Sniffing {
        matched: usize,
    },
    Http1,
    Http2,
}

impl Default for Proto {
    fn default() -> Self {
        Proto::Sniffing { matched: 0 }
    }
}

/// Why the watchdog wants the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request head (or the first bytes of a new connection) did not arrive within
    /// `header_read`: close at once.
    HeadTimeout,
    /// An HTTP/2 connection had no stream in flight for `idle`: close gracefully.
    Idle,
}

/// Held while a request is in flight; dropping it marks the response finished.
#[derive(Debug)]
pub struct InFlight {
    inner: Arc<Inner>,
}

impl InFlight {
    /// A second hold on the same request: the request counts as in flight until both
    /// are dropped. The listener gives one to the request body, so an upload that goes
    /// on after an early response is still that request's body, not a new head.
    pub fn also(&self) -> InFlight {
        lock(&self.inner).in_flight += 1;
        InFlight {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = lock(&self.inner);
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.in_flight == 0 && st.proto == Proto::Http2 {
            st.idle_since = Some(Instant::now());
            drop(st);
            self.inner.notify.notify_one();
        }
    }
}

fn lock(inner: &Inner) -> MutexGuard<'_, State> {
    inner.state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Activity {
    /// An activity with no deadline running (nothing read yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// A freshly accepted connection: its first request head (for h2: its preface) must
    /// arrive within the header-read limit from now. `http1_only` when the protocol is
    /// already known to be HTTP/1.1 (TLS with ALPN `http/1.1`): no preface sniffing.
    pub fn accepted(http1_only: bool) -> Self {
        let activity = Self::default();
        {
            let mut st = activity.state();
            st.head_started = Some(Instant::now());
            if http1_only {
                st.proto = Proto::Http1;
            }
        }
        activity
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner)
    }

    /// Whether the connection preface showed HTTP/2.
    pub fn is_http2(&self) -> bool {
        self.state().proto == Proto::Http2
    }

    /// Requests (h2: streams) in flight right now.
    pub fn in_flight(&self) -> usize {
        self.state().in_flight
    }

    /// The connection switched protocols (`101`): stop watching its bytes.
    pub fn upgraded(&self) {
        self.inner.tunnel.store(true, Ordering::Release);
    }

    /// A request head was parsed: its deadline is met; the request is in flight until
    /// the guard is dropped. Also says what the raw scan of its head found (HTTP/1
    /// only: h2 has no such framing, and is always [`HeadFraming::Clean`]).
    pub fn request(&self) -> (InFlight, HeadFraming) {
        let mut st = self.state();
        st.in_flight += 1;
        st.head_started = None;
        st.idle_since = None;
        let scan = std::mem::take(&mut st.scan);
        let framing = if st.proto == Proto::Http2 {
            HeadFraming::Clean
        } else {
            scan.result()
        };
        (
            InFlight {
                inner: self.inner.clone(),
            },
            framing,
        )
    }

    fn bytes_read(&self, bytes: &[u8]) {
        if self.inner.tunnel.load(Ordering::Acquire) {
            return;
        }
        let mut st = self.state();
        if let Proto::Sniffing { matched } = st.proto {
            let n = bytes.len().min(H2_PREFACE.len() - matched);
            if bytes[..n] != H2_PREFACE[matched..matched + n] {
                st.proto = Proto::Http1;
            } else if matched + n == H2_PREFACE.len() {
                st.proto = Proto::Http2;
                st.head_started = None;
                if st.in_flight == 0 {
                    st.idle_since = Some(Instant::now());
                }
                drop(st);
                self.inner.notify.notify_one();
                return;
            } else {
                st.proto = Proto::Sniffing {
                    matched: matched + n,
                };
            }
        }
        if st.proto == Proto::Http2 || st.in_flight != 0 {
            return;
        }
        st.scan.feed(bytes);
        if st.head_started.is_none() {
            st.head_started = Some(Instant::now());
            drop(st);
            self.inner.notify.notify_one();
        }
    }

    /// Resolves when the connection should be closed: a request head (HTTP/1, or the
    /// first bytes of a connection) has been arriving for longer than `header_read`, or
    /// an HTTP/2 connection has had no stream in flight for `idle`.
    pub async fn expired(&self, header_read: Duration, idle: Duration) -> Expiry {
        loop {
            let notified = self.inner.notify.notified();
            let deadline = {
                let st = self.state();
                match st.proto {
                    Proto::Http2 if st.in_flight == 0 => {
                        st.idle_since.map(|at| (at + idle, Expiry::Idle, at))
                    }
                    Proto::Http2 => None,
                    _ => st
                        .head_started
                        .map(|at| (at + header_read, Expiry::HeadTimeout, at)),
                }
            };
            let Some((deadline, kind, mark)) = deadline else {
                notified.await;
                continue;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = notified => continue,
            }
            let st = self.state();
            let still = match kind {
                Expiry::HeadTimeout => st.proto != Proto::Http2 && st.head_started == Some(mark),
                Expiry::Idle => {
                    st.proto == Proto::Http2 && st.in_flight == 0 && st.idle_since == Some(mark)
                }
            };
            if still {
                return kind;
            }
        }
    }
}

/// An IO that reports reads to its connection's [`Activity`], and keeps `held` (the
/// connection's share of gauges and caps) alive exactly as long as the connection: an
/// upgraded connection hands this IO to its tunnel.
#[derive(Debug)]
pub struct WatchedIo<T, H = ()> {
    io: T,
    activity: Activity,
    _held: H,
}

impl<T, H> WatchedIo<T, H> {
    pub fn new(io: T, activity: Activity, held: H) -> Self {
        WatchedIo {
            io,
            activity,
            _held: held,
        }
    }
}

impl<T: AsyncRead + Unpin, H: Unpin> AsyncRead for WatchedIo<T, H> {
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

impl<T: AsyncWrite + Unpin, H: Unpin> AsyncWrite for WatchedIo<T, H> {
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

    #[test]
    fn the_head_scan_is_reported_with_its_request_once() {
        let activity = Activity::new();
        activity.bytes_read(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(activity.request().1, HeadFraming::Ambiguous);
        assert_eq!(activity.request().1, HeadFraming::Unseen, "reported once");
    }

    #[test]
    fn a_head_is_clean_only_when_seen_whole_from_its_request_line() {
        let a = Activity::new();
        a.bytes_read(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        let (guard, framing) = a.request();
        assert_eq!(framing, HeadFraming::Clean);
        // Pipelined: the next head arrives while the first is in flight.
        a.bytes_read(
            b"POST /b HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        drop(guard);
        assert_eq!(a.request().1, HeadFraming::Unseen);
        // Two heads in one read: the second is not scanned.
        let a = Activity::new();
        a.bytes_read(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(a.request().1, HeadFraming::Clean);
        assert_eq!(a.request().1, HeadFraming::Unseen);
        // A head whose start was read in flight: the scan starts mid-head.
        let a = Activity::new();
        let (guard, _) = a.request();
        a.bytes_read(b"POST /c HTTP/1.1\r\nContent-Le");
        drop(guard);
        a.bytes_read(b"ngth: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(a.request().1, HeadFraming::Unseen);
        // HTTP/1.0 and a request line split across reads are fine.
        let a = Activity::new();
        a.bytes_read(b"GET / HTT");
        a.bytes_read(b"P/1.0\r\n\r\n");
        assert_eq!(a.request().1, HeadFraming::Clean);
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// `Some(expiry)` when the watchdog fires within `within`.
    async fn fires(
        a: &Activity,
        header_read: Duration,
        idle: Duration,
        within: Duration,
    ) -> Option<Expiry> {
        tokio::time::timeout(within, a.expired(header_read, idle))
            .await
            .ok()
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_runs_only_while_a_head_is_arriving() {
        let a = Activity::new();
        let limit = Duration::from_secs(10);
        // Idle: no deadline at all (hyper's own timer covers HTTP/1 keep-alive idle).
        assert_eq!(fires(&a, limit, limit, HOUR).await, None);
        // A head starts and completes in time: no deadline.
        a.bytes_read(b"G");
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (guard, _) = a.request();
        assert_eq!(fires(&a, limit, limit, Duration::from_secs(60)).await, None);
        // Body bytes while in flight start nothing.
        a.bytes_read(b"body");
        assert!(a.state().head_started.is_none());
        drop(guard);
        // A head that stalls trips the deadline.
        a.bytes_read(b"GET / HT");
        assert_eq!(
            fires(&a, limit, HOUR, Duration::from_secs(11)).await,
            Some(Expiry::HeadTimeout)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_expires() {
        let limit = Duration::from_secs(10);
        for http1_only in [false, true] {
            let a = Activity::accepted(http1_only);
            assert_eq!(
                fires(&a, limit, HOUR, Duration::from_secs(11)).await,
                Some(Expiry::HeadTimeout)
            );
        }
        // A partial preface is no better.
        let a = Activity::accepted(false);
        a.bytes_read(&H2_PREFACE[..10]);
        assert!(!a.is_http2());
        assert_eq!(
            fires(&a, limit, HOUR, Duration::from_secs(11)).await,
            Some(Expiry::HeadTimeout)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn h2_is_detected_by_its_preface_and_only_idles_out() {
        let header_read = Duration::from_secs(1);
        let idle = Duration::from_secs(60);
        let a = Activity::accepted(false);
        // The preface split across reads, followed by a SETTINGS frame in the same read.
        a.bytes_read(&H2_PREFACE[..5]);
        let mut rest = H2_PREFACE[5..].to_vec();
        rest.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        a.bytes_read(&rest);
        assert!(a.is_http2());
        // Frames while nothing is in flight (PING, WINDOW_UPDATE) are not a request
        // head: no header-read deadline, however long.
        a.bytes_read(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            fires(&a, header_read, idle, Duration::from_secs(30)).await,
            None
        );
        // A stream in flight holds the connection open past `idle`.
        let (stream, ambiguous) = a.request();
        assert_eq!(ambiguous, HeadFraming::Clean, "no head scan on h2");
        assert_eq!(
            fires(&a, header_read, idle, Duration::from_secs(600)).await,
            None
        );
        // The idle clock restarts when the last stream ends.
        drop(stream);
        tokio::time::sleep(Duration::from_secs(59)).await;
        let (stream, _) = a.request();
        drop(stream);
        assert_eq!(
            fires(&a, header_read, idle, Duration::from_secs(59)).await,
            None
        );
        assert_eq!(
            fires(&a, header_read, idle, Duration::from_secs(2)).await,
            Some(Expiry::Idle)
        );
    }

    #[test]
    fn http1_never_looks_like_h2() {
        let a = Activity::accepted(false);
        a.bytes_read(b"PRI * HTTP/1.1\r\n");
        assert!(!a.is_http2());
        a.bytes_read(&H2_PREFACE[14..]);
        assert!(!a.is_http2(), "once HTTP/1, always HTTP/1");
        let a = Activity::accepted(true);
        a.bytes_read(H2_PREFACE);
        assert!(!a.is_http2(), "ALPN said http/1.1");
    }
}
