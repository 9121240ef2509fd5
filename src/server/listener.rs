//! The proxy listener: accept, terminate TLS when configured, serve HTTP/1.1 and HTTP/2
//! on the same socket with hyper, watch each connection's timers, and drain on shutdown.
//!
//! - Over TLS, ALPN decides: `h2` → HTTP/2, `http/1.1` → HTTP/1.1, none → sniffed like
//!   plain TCP. The handshake is bounded by `timeouts.header_read`.
//! - On plain TCP hyper's auto builder sniffs the h2 preface (h2c prior knowledge);
//!   anything else is HTTP/1.1. No `Upgrade: h2c`.
//! - hyper has no timer while it sniffs, none for h2 requests and one shared
//!   header-read/idle timer for h1 (docs/decisions.md#proxying, "Two client timers"): the
//!   connection's [`Activity`] watchdog closes a connection whose first bytes or request
//!   head are late (`header_read`) and an HTTP/2 connection with no stream for `idle`
//!   (GOAWAY first).
//! - Shutdown: stop accepting, ask every connection to finish gracefully (h1: close after
//!   the response in flight; h2: GOAWAY, streams in flight complete), then close and
//!   wait for the upgraded tunnels, all within `timeouts.shutdown`.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::watch,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    admission::{Admission, Admitted, Refused},
    head_scan::HeadFraming,
    watchdog::{Activity, Expiry, InFlight, WatchedIo},
};
use crate::{
    body::{Body, BoxError, ReadTimeout},
    config::Config,
    proxy::{ConnInfo, Proxy},
    tls::TlsCerts,
};

/// Streams one HTTP/2 client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// HTTP/2 flow-control windows: 64 KiB per stream, 1 MiB per connection
/// (docs/security.md §14; hyper's adaptive window would grow them).
pub const H2_STREAM_WINDOW: u32 = 64 * 1024;
pub const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// HTTP/2 keep-alive: a PING this often while the connection is quiet, and the
/// connection is closed when it is not answered within [`H2_PING_TIMEOUT`] (a vanished
/// peer). PINGs never count as activity for `timeouts.idle`.
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Rapid reset (CVE-2023-44487): streams reset by the client before we accepted them,
/// and streams we had to reset for protocol errors, before the connection is closed.
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// One builder per way a connection can start: sniffed (plain TCP, TLS without ALPN),
/// HTTP/1.1 only (ALPN `http/1.1`), HTTP/2 only (ALPN `h2`).
struct Builders {
    auto: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new(config: &Config) -> Self {
        let auto = http_builder(config);
        Builders {
            http1: auto.clone().http1_only(),
            http2: auto.clone().http2_only(),
            auto,
        }
    }
}

fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Without a timer hyper silently disables its header-read timeout and panics
        // if one is set (docs/security.md §13): this is the slowloris guard.
        .timer(TokioTimer::new())
        // hyper's header-read timer also runs while a keep-alive connection is idle, so
        // it gets the idle timeout; the shorter header-read deadline is enforced by the
        // connection's watchdog (see `watchdog`). Whichever is shorter wins.
        .header_read_timeout(config.timeouts.idle.max(config.timeouts.header_read))
        // Bounds the request line + headers; hyper answers 431 past it.
        .max_buf_size(config.limits.max_header_size)
        .keep_alive(true);
    builder
        .http2()
        // Keep-alive pings panic without a timer.
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        // Flow-control windows (docs/security.md §14): what one client can make us buffer.
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        // Decoded header list size (RFC 9113 §6.5.2); hyper refuses larger with 431.
        .max_header_list_size(u32::try_from(config.limits.max_header_size).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS);
    builder
}

/// Keep `guard` alive as long as the response body.
fn hold_until_sent(body: Body, guard: InFlight) -> Body {
    use http_body_util::BodyExt as _;
    body.map_frame(move |frame| {
        let _ = &guard;
        frame
    })
    .boxed_unsync()
}

/// The request body with a hold on its request: hyper drops the body once it has been
/// read to the end (or abandoned), and only then may the connection's next bytes be a
/// new request head. The hold is `None` when the request has no body to wait for. Each
/// wait for the client's next body bytes is bounded by `timeouts.body_read`
/// ([`ReadTimeout`]).
#[derive(Debug)]
pub struct HeldBody {
    body: ReadTimeout<Incoming>,
    _guard: Option<InFlight>,
}

impl http_body::Body for HeldBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Accept until `stopped`, then drain (see the module docs). `tls`: terminate TLS with
/// these certificates (they may be swapped by a reload meanwhile).
pub async fn serve_proxy(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    config: Config,
    tls: Option<Arc<TlsCerts>>,
    admission: Admission,
    mut stopped: watch::Receiver<bool>,
) {
    let builders = Arc::new(Builders::new(&config));
    let acceptor = tls.as_ref().map(TlsCerts::acceptor);
    let timers = Timers {
        header_read: config.timeouts.header_read,
        body_read: config.timeouts.body_read,
        idle: config.timeouts.idle,
    };
    let connections = TaskTracker::new();
    // Cancelled at the shutdown deadline: connections still open then are dropped.
    let cut = CancellationToken::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Caps first: a refused connection costs no TLS work and no task.
                let admitted = match admission.admit(peer.ip()) {
                    Ok(admitted) => admitted,
                    Err(refused) => {
                        proxy.metrics().connection_refused(refused == Refused::PerIp);
                        tracing::debug!(peer = %peer, cap = ?refused, "connection refused: cap reached");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = Connection {
                    admitted: Some(admitted),
                    proxy: proxy.clone(),
                    builders: builders.clone(),
                    timers,
                    stopped: stopped.clone(),
                    cut: cut.clone(),
                    peer,
                };
                match &acceptor {
                    None => connections.spawn(conn.serve_plain(stream)),
                    Some(acceptor) => connections.spawn(conn.serve_tls(acceptor.clone(), stream)),
                };
            }
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    // Connections first (in-flight requests, including upgrade handshakes), then the
    // tunnels they started: a connection ends at its `101`, its tunnel lives on.
    connections.close();
    let drain = async {
        connections.wait().await;
        proxy.tunnels().close();
        proxy.tunnels().wait().await;
    };
    tokio::select! {
        _ = drain => {}
        _ = tokio::time::sleep(config.timeouts.shutdown) => {
            tracing::warn!(
                connections = connections.len(),
                tunnels = proxy.tunnels().len(),
                "shutdown timeout reached with requests or tunnels still open; cutting them"
            );
            // Embedded use (tests, the demo) keeps the runtime: end what is left rather
            // than leave it running after `shutdown()` returned.
            cut.cancel();
            proxy.tunnels().cut_all();
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Timers {
    header_read: Duration,
    /// Each wait for a request body's next bytes (HTTP/1 and HTTP/2 alike).
    body_read: Duration,
    idle: Duration,
}

/// One accepted client connection.
struct Connection {
    /// Its share of the connection caps, moved into the connection's IO (so a tunnel
    /// keeps holding it).
    admitted: Option<Admitted>,
    proxy: Arc<Proxy>,
    builders: Arc<Builders>,
    timers: Timers,
    stopped: watch::Receiver<bool>,
    /// The shutdown deadline passed: drop the connection.
    cut: CancellationToken,
    peer: SocketAddr,
}

impl Connection {
    async fn serve_plain(self, stream: TcpStream) {
        let builders = self.builders.clone();
        self.serve(stream, &builders.auto, false, "http").await;
    }

    async fn serve_tls(mut self, acceptor: tokio_rustls::TlsAcceptor, stream: TcpStream) {
        let handshake = tokio::time::timeout(self.timers.header_read, acceptor.accept(stream));
        let stream = tokio::select! {
            result = handshake => match result {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                    return;
                }
            },
            _ = self.stopped.wait_for(|stop| *stop) => return,
        };
        let builders = self.builders.clone();
        let (builder, http1_only) = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => (&builders.http2, false),
            Some(b"http/1.1") => (&builders.http1, true),
            // No ALPN: sniff, as on plain TCP (an h1 client gets h1).
            _ => (&builders.auto, false),
        };
        self.serve(stream, builder, http1_only, "https").await;
    }

    async fn serve<I>(
        mut self,
        io: I,
        builder: &auto::Builder<TokioExecutor>,
        http1_only: bool,
        scheme: &'static str,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The IO holds the connection's gauge count and its share of the caps until it
        // is dropped: by hyper, or by the tunnel the connection becomes.
        let held = (
            self.proxy.metrics().connection_opened(),
            self.admitted.take(),
        );
        let activity = Activity::accepted(http1_only);
        let io = TokioIo::new(WatchedIo::new(io, activity.clone(), held));
        let proxy = self.proxy.clone();
        let in_service = activity.clone();
        let peer = self.peer;
        let peer_value = crate::proxy::headers::peer_value(peer.ip());
        let body_read = self.timers.body_read;
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let proxy = proxy.clone();
            let (in_flight, framing) = in_service.request();
            // A head the raw scan could not see whole (pipelined behind another
            // request) may have hidden a Content-Length: with Transfer-Encoding it is
            // refused like a seen CL+TE (docs/protocol.md §10.4).
            let ambiguous_framing = match framing {
                HeadFraming::Clean => false,
                HeadFraming::Ambiguous => true,
                HeadFraming::Unseen => req.headers().contains_key(http::header::TRANSFER_ENCODING),
            };
            // The request stays in flight until its body is read too (an app may
            // answer before it has read an upload).
            let body_hold = (!http_body::Body::is_end_stream(req.body())).then(|| in_flight.also());
            let req = req.map(|body| HeldBody {
                body: ReadTimeout::new(body, body_read),
                _guard: body_hold,
            });
            let in_service = in_service.clone();
            let conn = ConnInfo {
                peer,
                peer_value: peer_value.clone(),
                scheme,
                ambiguous_framing,
            };
            // Boxed: hyper keeps room for the service's future in every connection, also
            // while it idles, and the pipeline's future is several KiB (store calls,
            // upstream exchange). One allocation per request instead keeps idle
            // keep-alive connections small (docs/performance.md#what-the-profile-showed:
            // RSS with 1,000 of them).
            Box::pin(async move {
                let resp = proxy.handle(req, &conn).await;
                if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    in_service.upgraded();
                }
                // In flight until hyper drops the body, i.e. the response is sent.
                Ok::<_, Infallible>(resp.map(|body| hold_until_sent(body, in_flight)))
            })
        });
        let conn = builder.serve_connection_with_upgrades(io, service);
        let mut conn = std::pin::pin!(conn);
        let Timers {
            header_read, idle, ..
        } = self.timers;
        let mut stopping = false;
        // After a graceful close was asked for because of idleness: give up waiting for
        // the client's part of it (its PING ack) at this instant.
        let mut give_up: Option<Instant> = None;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = self.cut.cancelled() => {
                    tracing::debug!(peer = %peer, "connection cut at the shutdown deadline");
                    return;
                }
                _ = self.stopped.wait_for(|stop| *stop), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
                expiry = activity.expired(header_read, idle), if give_up.is_none() => match expiry {
                    Expiry::HeadTimeout => {
                        tracing::debug!(peer = %peer, "closing a connection whose request head did not arrive in time");
                        return;
                    }
                    Expiry::Idle => {
                        tracing::debug!(peer = %peer, "closing an idle HTTP/2 connection (GOAWAY)");
                        if !stopping {
                            conn.as_mut().graceful_shutdown();
                        }
                        give_up = Some(Instant::now() + header_read);
                    }
                },
                _ = tokio::time::sleep_until(give_up.unwrap_or_else(Instant::now)), if give_up.is_some() => {
                    if activity.in_flight() > 0 {
                        // A stream opened while the GOAWAY was on its way: let it
                        // finish; the connection closes after it (or idles again).
                        give_up = None;
                        continue;
                    }
                    tracing::debug!(peer = %peer, "idle HTTP/2 connection did not close in time; dropping it");
                    return;
                }
            }
        }
    }
}
