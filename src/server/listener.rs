//! The proxy listener: accept, serve each connection with hyper (timer-backed
//! header-read timeout, bounded header buffer), and drain on shutdown.

use std::{convert::Infallible, time::Duration};

use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use std::sync::Arc;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    body::Body,
    config::Config,
    keepalive::{Activity, InFlight, WatchedIo},
    proxy::{ConnInfo, Proxy},
};

fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        // Without a timer hyper silently disables its header-read timeout and panics
        // if one is set (DEPENDENCIES pitfall 1): this is the slowloris guard.
        .timer(TokioTimer::new())
        // hyper's header-read timer also runs while a keep-alive connection is idle, so
        // it gets the idle timeout; the shorter header-read deadline is enforced by the
        // connection's watchdog (see `keepalive`). Whichever is shorter wins.
        .header_read_timeout(config.timeouts.idle.max(config.timeouts.header_read))
        // Bounds the request line + headers; hyper answers 431 past it.
        .max_buf_size(config.limits.max_header_size)
        .keep_alive(true);
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

pub async fn serve_proxy(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    config: Config,
    mut stopped: watch::Receiver<bool>,
) {
    let builder = http_builder(&config);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning (pitfall 19).
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let proxy = proxy.clone();
                let activity = Activity::new();
                let io = TokioIo::new(WatchedIo::new(stream, activity.clone()));
                let in_service = activity.clone();
                let service = service_fn(move |req: hyper::Request<Incoming>| {
                    let proxy = proxy.clone();
                    let (in_flight, ambiguous_framing) = in_service.request();
                    let conn = ConnInfo { peer, scheme: "http", ambiguous_framing };
                    async move {
                        let resp = proxy.handle(req, &conn).await;
                        // In flight until hyper drops the body, i.e. the response is sent.
                        Ok::<_, Infallible>(resp.map(|body| hold_until_sent(body, in_flight)))
                    }
                });
                let conn = builder
                    .serve_connection_with_upgrades(io, service)
                    .into_owned();
                let conn = graceful.watch(conn);
                let header_read = config.timeouts.header_read;
                tokio::spawn(async move {
                    tokio::select! {
                        result = conn => {
                            if let Err(e) = result {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        }
                        _ = activity.head_deadline_passed(header_read) => {
                            tracing::debug!("closing a connection whose request head did not arrive in time");
                        }
                    }
                });
            }
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    // Connections first (in-flight requests, including upgrade handshakes), then the
    // tunnels they started: hyper's graceful shutdown does not see upgraded tunnels.
    let drain = async {
        graceful.shutdown().await;
        proxy.tunnels().close();
        proxy.tunnels().wait().await;
    };
    tokio::select! {
        _ = drain => {}
        _ = tokio::time::sleep(config.timeouts.shutdown) => {
            tracing::warn!(
                tunnels = proxy.tunnels().len(),
                "shutdown timeout reached with requests or tunnels still open"
            );
        }
    }
}
