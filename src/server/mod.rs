//! Starting and stopping the sidecar: build the store and the pipeline, bind the proxy
//! and admin listeners, and shut down gracefully (in-flight requests and upgraded
//! tunnels drain up to `timeouts.shutdown`).
//!
//! The accept loop and per-connection serving live in [`listener`], the per-connection
//! timers in [`watchdog`] (with the raw request-head scan in [`head_scan`]), signal
//! handling in [`signals`].

pub mod admission;
pub mod head_scan;
pub mod listener;
pub mod signals;
pub mod watchdog;
mod workers;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use self::admission::Admission;

use crate::{
    admin,
    config::{Config, ConfigError, Storage},
    proxy::{Proxy, Settings, SettingsError, forward::Upstream},
    reload,
    store::{
        Lifetimes, any::AnyStore, memcached::MemcachedStore, memory::MemoryStore,
        redis::RedisStore, timed::TimedStore,
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
    /// The proxy workers ([`start_with_workers`]); none with [`start`].
    workers: Vec<workers::Worker>,
    /// Lets the workers drop their runtimes once all have drained.
    release: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The configuration in force; `SIGHUP` compares the re-read file with it (see
    /// [`crate::reload`]). The lock also serialises reloads.
    config: std::sync::Mutex<Config>,
    /// The proxy listener's certificates when it speaks TLS (swapped on reload).
    tls: Option<Arc<crate::tls::TlsCerts>>,
}

impl Running {
    /// The proxy listener's certificates, when `tls` is configured;
    /// [`TlsCerts::reload`](crate::tls::TlsCerts::reload) swaps them for new handshakes.
    pub fn tls_certs(&self) -> Option<&Arc<crate::tls::TlsCerts>> {
        self.tls.as_ref()
    }

    /// Stop accepting, let in-flight requests and tunnels finish (up to
    /// `timeouts.shutdown`), return.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        for w in self.workers {
            let _ = w.stopped.await;
        }
        let _ = self.release.send(true);
    }

    /// Put a re-read configuration in force (`SIGHUP`): secrets, cookie settings,
    /// bypass routes, trusted proxies, `headers.expose_id`, `store.on_error` and the TLS
    /// certificates apply to new requests and handshakes; open connections and tunnels
    /// are untouched. Restart-only settings that differ are named in the report and
    /// otherwise ignored ([`crate::reload`]).
    ///
    /// # Errors
    /// When the new settings or certificates cannot be built; then nothing changes and
    /// the previous configuration stays in force.
    pub fn reload(&self, config: &Config) -> Result<ReloadReport, ReloadError> {
        let mut current = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let plan = reload::plan(&current, config.clone());
        // Everything that can fail comes before anything is swapped.
        let settings = Settings::from_config(&plan.effective)?;
        // Certificates are re-read on every reload (renewed files, same paths). On
        // error `TlsCerts::reload` keeps the old pair and the settings are not swapped.
        if let (Some(certs), Some(tls)) = (self.tls_certs(), plan.effective.tls.as_ref()) {
            certs.reload(tls)?;
        }
        let settings = Arc::new(settings);
        for w in &self.workers {
            w.proxy.replace_settings(settings.clone());
        }
        self.proxy.replace_settings(settings);
        *current = plan.effective;
        Ok(ReloadReport {
            changed: plan.changed,
            needs_restart: plan.needs_restart,
        })
    }

    /// Read `path` and [`reload`](Running::reload) it.
    ///
    /// # Errors
    /// As [`Running::reload`], and [`ReloadError::Config`] when the file cannot be read
    /// or is not a valid configuration (`FILE:LINE:COLUMN: message`).
    pub fn reload_from(&self, path: &Path) -> Result<ReloadReport, ReloadError> {
        let config = Config::load(path)?;
        self.reload(&config)
    }

    /// The file the running configuration came from.
    pub fn config_path(&self) -> PathBuf {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .path
            .clone()
    }
}

/// What a reload applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Reloadable settings whose value changed (names, never values).
    pub changed: Vec<&'static str>,
    /// Settings that differ from the running ones but need a restart (not applied).
    pub needs_restart: Vec<&'static str>,
}

/// Why a re-read configuration was rejected (the previous one stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read or is invalid; the message is `FILE:LINE:COLUMN: ...`.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Build the store the config names.
pub fn build_store(config: &Config) -> anyhow::Result<AnyStore> {
    let lifetimes = Lifetimes {
        ttl: config.session.ttl,
        absolute_ttl: config.session.absolute_ttl,
        max_size: config.session.max_size,
        touch_after: config.session.touch_after,
    };
    let store = &config.store;
    Ok(match &store.storage {
        Storage::Memory(options) => {
            AnyStore::Memory(MemoryStore::new(options.max_entries, lifetimes))
        }
        Storage::Redis(options) => AnyStore::Redis(
            RedisStore::new(options, &store.key_prefix, store.timeout, lifetimes)?
                .with_cache(store.cache.max_entries),
        ),
        Storage::Memcached(options) => {
            AnyStore::Memcached(MemcachedStore::new(options, &store.key_prefix, lifetimes))
        }
    })
}

/// Everything [`start`] builds from a configuration before it binds a socket: the TLS
/// certificates, the store engine, the per-request settings and the upstream client.
/// No network I/O (stores connect on first use), but the certificate and CA files are
/// read.
///
/// `session-sidecar check` builds it too and drops it, so that what `check` accepts,
/// `run` starts (docs/configuration.md#check-is-authoritative): only binding the
/// listeners is left to fail at start. Call it inside a tokio runtime (the upstream
/// pool starts its idle sweep).
#[derive(Debug)]
pub struct Prepared {
    tls: Option<Arc<crate::tls::TlsCerts>>,
    store: AnyStore,
    settings: Settings,
    upstream: Upstream,
}

/// Build what [`start`] needs from `config`; see [`Prepared`].
///
/// # Errors
/// A certificate, key or CA file that cannot be loaded, or settings the upstream client
/// or the store client refuse, each with the file or setting named.
pub fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    // Certificates first: a bad one fails the start with the file named, before
    // anything is bound (and never falls back to plain HTTP).
    let tls = config
        .tls
        .as_ref()
        .map(crate::tls::TlsCerts::load)
        .transpose()?;
    Ok(Prepared {
        tls,
        store: build_store(config)?,
        settings: Settings::from_config(config)?,
        upstream: Upstream::from_config(config)?,
    })
}

/// Bind the listeners and start serving in background tasks of the current runtime
/// (tests, the demo). The binary uses [`start_with_workers`].
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with_workers(config, 0).await
}

/// [`start`], the proxy listener served by `workers` proxy workers, each on its own
/// thread and current-thread runtime with its own `SO_REUSEPORT` listener (see
/// [`workers`]); the caller's runtime keeps the admin listener, signals and reloads.
/// `0`: the caller's runtime serves the proxy listener too.
pub async fn start_with_workers(config: Config, workers: usize) -> anyhow::Result<Running> {
    let Prepared {
        tls,
        store,
        settings,
        upstream,
    } = prepare(&config)?;
    // One registry per sidecar (no globals): the store and the pipeline record, the
    // admin listener serves it.
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let store = Arc::new(TimedStore::new(
        store,
        config.store.timeout,
        metrics.clone(),
    ));
    report_store_at_start(&store).await;
    let proxy = Arc::new(Proxy::new(settings, store.clone(), upstream, metrics));
    let (stop, stopped) = watch::channel(false);

    let listener = if workers > 0 {
        workers::reuseport_listener(config.listen)
    } else {
        TcpListener::bind(config.listen).await
    }
    .with_context(|| format!("cannot listen on {} (listen)", config.listen))?;
    let addr = listener.local_addr()?;
    let admission = Admission::new(
        config.limits.max_connections,
        config.limits.max_connections_per_ip,
    );
    let mut tasks = Vec::new();
    let mut extra = Vec::new();
    let (release, released) = watch::channel(false);
    if workers == 0 {
        tasks.push(tokio::spawn(listener::serve_proxy(
            listener,
            proxy.clone(),
            config.clone(),
            tls.clone(),
            admission,
            stopped.clone(),
        )));
    } else {
        // The first worker takes the listener bound here (it fixed the port).
        let mut first = Some(listener.into_std()?);
        let shared = workers::Shared {
            addr,
            config: config.clone(),
            tls: tls.clone(),
            admission,
            metrics: proxy.metrics().clone(),
            store: store.clone(),
            stop: stopped.clone(),
            release: released,
        };
        for index in 1..=workers {
            match workers::spawn(index, workers, &shared, first.take()).await {
                Ok(worker) => extra.push(worker),
                Err(e) => {
                    // Stop what already runs before failing the start.
                    let _ = stop.send(true);
                    for w in extra {
                        let _ = w.stopped.await;
                    }
                    let _ = release.send(true);
                    return Err(e);
                }
            }
        }
        proxy.set_workers(
            extra
                .iter()
                .map(|w| (w.proxy.clone(), w.runtime.clone()))
                .collect(),
        );
    }

    let mut admin_addr = None;
    if let Some(admin_listen) = config.admin.listen {
        let listener = TcpListener::bind(admin_listen)
            .await
            .with_context(|| format!("cannot listen on {admin_listen} (admin.listen)"))?;
        admin_addr = Some(listener.local_addr()?);
        tasks.push(tokio::spawn(admin::serve(
            listener,
            proxy.clone(),
            stopped.clone(),
        )));
    }
    let admin = admin_addr.map_or_else(|| "disabled".to_owned(), |a| a.to_string());
    tracing::info!(%addr, tls = tls.is_some(), %admin, engine = config.store.storage.engine_name(), "session-sidecar listening");
    Ok(Running {
        addr,
        admin_addr,
        proxy,
        workers: extra,
        release,
        stop,
        tasks,
        config: std::sync::Mutex::new(config),
        tls,
    })
}

/// docs/protocol.md §9.6: start even when the store is down, but say so, and name a
/// database setting the server cannot honour.
async fn report_store_at_start(store: &TimedStore<AnyStore>) {
    if let AnyStore::Redis(redis) = store.engine() {
        match store.bounded(redis.check_databases()).await {
            Ok(()) => tracing::info!("session store reachable"),
            Err(e) => {
                tracing::error!(error = %e, "session store check failed at start; requests that need it get 503 until it is fixed")
            }
        }
    }
}

/// Run until SIGTERM or SIGINT, then shut down gracefully; SIGHUP re-reads the
/// configuration file (see [`Running::reload`]).
/// `workers` as in [`start_with_workers`].
pub async fn run(config: Config, workers: usize) -> anyhow::Result<()> {
    // Before binding: from here on a SIGHUP is queued instead of killing the process.
    let mut signals = signals::Signals::install().context("cannot install the signal handlers")?;
    let running = start_with_workers(config, workers).await?;
    let reason = loop {
        match signals.recv().await {
            signals::Request::Reload => reload_on_signal(&running),
            signals::Request::Shutdown(reason) => break reason,
        }
    };
    tracing::info!(
        signal = reason,
        "shutting down: no new connections; draining in-flight requests and tunnels"
    );
    // SIGHUP is no longer asked for, so it is ignored; a second stop signal ends the
    // drain early (an operator pressing Ctrl-C twice).
    tokio::select! {
        () = running.shutdown() => tracing::info!("shutdown complete"),
        again = signals.next_shutdown() => {
            tracing::warn!(signal = again, "second stop signal: exiting without waiting for the drain");
        }
    }
    Ok(())
}

/// Handle one SIGHUP: log what was applied, what needs a restart, or why the new file
/// was rejected. Never fails: the running configuration stays in force on error.
fn reload_on_signal(running: &Running) {
    let path = running.config_path();
    tracing::info!(path = %path.display(), "SIGHUP: re-reading the configuration");
    // Reading the config and certificate files blocks: never on a runtime thread that
    // is serving proxy requests. The binary runs this on its control-plane thread (the
    // proxy workers have threads of their own); on a multi-thread runtime (tests) this
    // worker hands its other tasks to another thread meanwhile.
    let reload = || running.reload_from(&path);
    let result = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(reload),
        _ => reload(),
    };
    match result {
        Ok(report) => {
            if !report.needs_restart.is_empty() {
                tracing::warn!(
                    "needs a restart: {} (changed in the file; ignored until the sidecar restarts)",
                    report.needs_restart.join(", ")
                );
            }
            tracing::info!(
                changed = report.changed.join(", "),
                "configuration reloaded; new requests use it"
            );
        }
        Err(e) => tracing::error!(
            error = %e,
            "configuration reload rejected; the previous configuration stays in force"
        ),
    }
}
