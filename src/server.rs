//! Listeners and connection lifecycle: accept, serve HTTP/1.1 with hyper (timer-backed
//! header-read timeout, bounded header buffer), graceful shutdown on SIGTERM/SIGINT.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    admin,
    body::Body,
    config::{Config, Engine},
    keepalive::{Activity, InFlight, WatchedIo},
    proxy::{Proxy, Settings, forward::Upstream},
    store::{
        Lifetimes, any::AnyStore, memcached::MemcachedStore, memory::MemoryStore, redis::RedisStore,
    },
};

/// A started sidecar: its bound addresses and a handle to stop it.
#[derive(Debug)]
pub struct Running {
    /// The proxy listener's address (useful with port 0).
    pub addr: SocketAddr,
    /// The admin listener's address, when enabled.
    pub admin_addr: Option<SocketAddr>,
    /// The shared pipeline (tests inspect the store through it).
    pub proxy: Arc<Proxy>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stop accepting, let in-flight requests finish (up to `timeouts.shutdown`), return.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Build the store the config names.
pub fn build_store(config: &Config) -> anyhow::Result<AnyStore> {
    let lifetimes = Lifetimes {
        ttl: config.session.ttl,
        absolute_ttl: config.session.absolute_ttl,
        max_size: config.session.max_size,
    };
    match config.store.engine {
        Engine::Memory => Ok(AnyStore::Memory(MemoryStore::new(
            config.store.storage.max_entries,
            lifetimes,
        ))),
        Engine::Redis => Ok(AnyStore::Redis(RedisStore::new(&config.store, lifetimes)?)),
        Engine::Memcached => Ok(AnyStore::Memcached(MemcachedStore::new(
            &config.store,
            lifetimes,
        )?)),
    }
}

/// Bind the listeners and start serving in background tasks.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    // Never fall back to plain HTTP when the operator asked for TLS.
    if config.tls.is_some() {
        anyhow::bail!(
            "tls: TLS termination is not in this build yet; remove `tls:` and terminate \
             TLS in front of the sidecar (a load balancer or nginx) for now"
        );
    }
    let store = Arc::new(build_store(&config)?);
    report_store_at_start(&store).await;
    let settings = Settings::from_config(&config)?;
    let upstream = Upstream::from_config(&config)?;
    let proxy = Arc::new(Proxy::new(settings, store.clone(), upstream));
    let (stop, stopped) = watch::channel(false);

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (listen)", config.listen))?;
    let addr = listener.local_addr()?;
    let mut tasks = vec![tokio::spawn(serve_proxy(
        listener,
        proxy.clone(),
        config.clone(),
        stopped.clone(),
    ))];

    let mut admin_addr = None;
    if let Some(admin_listen) = config.admin.listen {
        let listener = TcpListener::bind(admin_listen)
            .await
            .with_context(|| format!("cannot listen on {admin_listen} (admin.listen)"))?;
        admin_addr = Some(listener.local_addr()?);
        tasks.push(tokio::spawn(serve_admin(
            listener,
            store.clone(),
            stopped.clone(),
        )));
    }
    tracing::info!(%addr, admin = ?admin_addr, engine = ?config.store.engine, "session-sidecar listening");
    Ok(Running {
        addr,
        admin_addr,
        proxy,
        stop,
        tasks,
    })
}

/// SPEC §7: start even when the store is down, but say so, and name a database setting
/// the server cannot honour.
async fn report_store_at_start(store: &AnyStore) {
    if let AnyStore::Redis(redis) = store {
        match redis.check_databases().await {
            Ok(()) => tracing::info!("session store reachable"),
            Err(e) => {
                tracing::error!(error = %e, "session store check failed at start; requests that need it get 503 until it is fixed")
            }
        }
    }
}

/// Run until SIGTERM or SIGINT, then shut down gracefully.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let running = start(config).await?;
    wait_for_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

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

async fn serve_proxy(
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
                    async move {
                        let resp = proxy.handle(req, peer, ambiguous_framing).await;
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
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(config.timeouts.shutdown) => {
            tracing::warn!("shutdown timeout reached with requests still in flight");
        }
    }
}

async fn serve_admin(
    listener: TcpListener,
    store: Arc<AnyStore>,
    mut stopped: watch::Receiver<bool>,
) {
    let builder = {
        let mut b = auto::Builder::new(TokioExecutor::new()).http1_only();
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10));
        b
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let store = store.clone();
                let service = service_fn(move |req| {
                    let store = store.clone();
                    async move { Ok::<_, Infallible>(admin::handle(req, store).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = stopped.changed() => break,
        }
    }
}
