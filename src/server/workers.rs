//! Extra proxy workers: each a thread with its own current-thread tokio runtime, its own
//! `SO_REUSEPORT` listener on the proxy address (the kernel spreads new connections over
//! the listeners), its own upstream pool and, for the network engines, its own store
//! connections. Nothing moves between threads on the request path: no work stealing, no
//! wake-up of another thread for a store reply. What the workers share with the main
//! runtime: the metrics, the connection caps, the stop signal, the TLS certificates and,
//! with the memory engine or the Redis session cache, the store itself
//! (docs/performance.md#a-runtime-per-core).

use std::{net::SocketAddr, sync::Arc, thread};

use anyhow::Context as _;
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::{oneshot, watch},
};

use super::{admission::Admission, build_store, listener};
use crate::{
    config::{Config, Storage},
    metrics::Metrics,
    proxy::{Proxy, Settings, forward::Upstream},
    store::{any::AnyStore, timed::TimedStore},
    tls::TlsCerts,
};

/// A started worker: its pipeline (reloads swap its settings) and the signal that it
/// drained and stopped.
#[derive(Debug)]
pub(super) struct Worker {
    pub(super) proxy: Arc<Proxy>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) stopped: oneshot::Receiver<()>,
}

/// What every worker shares with the main runtime.
pub(super) struct Shared {
    pub(super) addr: SocketAddr,
    pub(super) config: Config,
    pub(super) tls: Option<Arc<TlsCerts>>,
    pub(super) admission: Admission,
    pub(super) metrics: Arc<Metrics>,
    /// The control plane's store, used by every worker when [`shares_store`].
    pub(super) store: Arc<TimedStore<AnyStore>>,
    pub(super) stop: watch::Receiver<bool>,
    /// Set once every worker has drained: only then does a worker drop its runtime. A
    /// shared store's connections may be driven by tasks on any worker's runtime (the
    /// one whose call opened them), and another worker may still be draining.
    pub(super) release: watch::Receiver<bool>,
}

/// A listener on `addr` with `SO_REUSEPORT`, so that several can share the address.
pub(super) fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Whether the workers use the control plane's store instead of one each: the memory
/// store (it holds the sessions), and Redis with `store.cache` on. A cache is what makes
/// a sidecar read its own writes at once: with one per worker, a write on one
/// connection would leave another worker's entry stale until Redis's invalidation
/// arrived, and a client's next request may come on another connection.
fn shares_store(config: &Config) -> bool {
    match config.store.storage {
        Storage::Memory(_) => true,
        Storage::Redis(_) => config.store.cache.max_entries > 0,
        Storage::Memcached(_) => false,
    }
}

/// The configuration a worker builds its store from: its share of the store
/// connections (`store.storage.max_connections` is divided among the workers).
fn worker_config(config: &Config, workers: usize) -> Config {
    let mut config = config.clone();
    let share = |n: usize| n.div_ceil(workers).max(1);
    match &mut config.store.storage {
        Storage::Redis(o) => o.max_connections = share(o.max_connections),
        Storage::Memcached(o) => o.max_connections = share(o.max_connections),
        Storage::Memory(_) => {}
    }
    config
}

type Ready = anyhow::Result<(Arc<Proxy>, tokio::runtime::Handle)>;

/// Start worker `index` of `workers` on its own thread; returns once it listens (on
/// `listener` when given, the one bound first to learn the address, else on a new one).
pub(super) async fn spawn(
    index: usize,
    workers: usize,
    shared: &Shared,
    listener: Option<std::net::TcpListener>,
) -> anyhow::Result<Worker> {
    let (ready_tx, ready_rx) = oneshot::channel::<Ready>();
    let (stopped_tx, stopped_rx) = oneshot::channel();
    let config = worker_config(&shared.config, workers);
    let (addr, tls, admission, metrics, stop) = (
        shared.addr,
        shared.tls.clone(),
        shared.admission.clone(),
        shared.metrics.clone(),
        shared.stop.clone(),
    );
    let mut release = shared.release.clone();
    let shared_store = shares_store(&config).then(|| shared.store.clone());
    thread::Builder::new()
        .name(format!("proxy-worker-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::Error::new(e).context("worker runtime")));
                    return;
                }
            };
            runtime.block_on(async move {
                let started = (|| {
                    let store = match shared_store {
                        Some(store) => store,
                        None => Arc::new(TimedStore::new(
                            build_store(&config)?,
                            config.store.timeout,
                            metrics.clone(),
                        )),
                    };
                    let proxy = Arc::new(Proxy::new(
                        Settings::from_config(&config)?,
                        store,
                        Upstream::from_config(&config)?,
                        metrics,
                    ));
                    let listener = match listener {
                        Some(l) => TcpListener::from_std(l),
                        None => reuseport_listener(addr),
                    }
                    .with_context(|| format!("cannot listen on {addr} (listen, worker {index})"))?;
                    anyhow::Ok((proxy, listener))
                })();
                let (proxy, listener) = match started {
                    Ok(pair) => pair,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok((proxy.clone(), tokio::runtime::Handle::current())));
                listener::serve_proxy(listener, proxy, config, tls, admission, stop).await;
                let _ = stopped_tx.send(());
                // Keep this runtime's tasks (store connections others may use) running
                // until every worker has drained; a dropped sender also releases.
                let _ = release.wait_for(|r| *r).await;
            });
            // Dropping the runtime cancels what is left (idle store connections).
            drop(runtime);
        })
        .context("cannot start a worker thread")?;
    let (proxy, runtime) = ready_rx
        .await
        .context("a worker thread ended before it listened")??;
    Ok(Worker {
        proxy,
        runtime,
        stopped: stopped_rx,
    })
}
