//! Starting and stopping the sidecar: build the store and the pipeline, bind the proxy
//! and admin listeners, and shut down gracefully (in-flight requests and upgraded
//! tunnels drain up to `timeouts.shutdown`).
//!
//! The accept loop and per-connection serving live in [`listener`], signal handling in
//! [`signals`].

pub mod listener;
pub mod signals;

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    admin,
    config::{Config, Engine},
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
    /// Stop accepting, let in-flight requests and tunnels finish (up to
    /// `timeouts.shutdown`), return.
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
    let mut tasks = vec![tokio::spawn(listener::serve_proxy(
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
        tasks.push(tokio::spawn(admin::serve(
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
    signals::wait_for_shutdown().await;
    tracing::info!("shutting down: draining in-flight requests");
    running.shutdown().await;
    Ok(())
}
