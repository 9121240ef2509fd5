//! The admin listener (docs/security.md §18): `/healthz` (alive), `/readyz` (store
//! reachable), `/metrics` (Prometheus text format 0.0.4, see [`crate::metrics`]), and
//! with `admin.token` the session admin API ([`sessions`], docs/protocol.md §11).
//!
//! It has its own socket (`admin.listen`, default `127.0.0.1:9090`, `null` disables it)
//! and its own router: nothing here is reachable through the proxy listener, where
//! every path, `/metrics` included, goes to the upstream.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    body::{Body, full},
    metrics::{self, AdminResult},
    proxy::Proxy,
    store::{SessionStore, StoreError, any::AnyStore, redis::CacheStats, timed::TimedStore},
};

pub mod sessions;

/// Answer one admin request.
pub async fn handle<B>(req: Request<B>, proxy: &Proxy) -> Response<Body> {
    if sessions::is_sessions_path(req.uri().path()) {
        return session_api(&req, proxy).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            // Bounded by `store.timeout` (the store's wrapper), as every store call.
            match readiness(proxy.store()).await {
                Ok(None) => text(StatusCode::OK, "ready\n".into()),
                Ok(Some(topology)) => text(StatusCode::OK, format!("ready\n{topology}\n")),
                Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
            }
        }
        "/metrics" => {
            let m = proxy.metrics();
            m.set_open_tunnels(proxy.open_tunnels());
            m.set_runtime_alive_tasks(proxy.alive_tasks());
            // Each proxy worker has its own Redis store (connections, cache): the
            // cache counters add up; every store follows the same failovers, so the
            // count is the largest any of them saw.
            let mut changes = None;
            let mut cache: Option<CacheStats> = None;
            for pipeline in proxy.pipelines() {
                if let AnyStore::Redis(redis) = pipeline.store().engine() {
                    changes = changes.max(Some(redis.master_changes()));
                    if let Some(s) = redis.cache_stats() {
                        let c = cache.get_or_insert_with(CacheStats::default);
                        c.hits += s.hits;
                        c.misses += s.misses;
                        c.invalidations += s.invalidations;
                        c.drops += s.drops;
                        c.entries += s.entries;
                    }
                }
            }
            if let Some(n) = changes {
                m.set_store_master_changes(n);
            }
            if let Some(stats) = cache {
                m.set_store_cache(&stats);
            }
            let mut resp = text(StatusCode::OK, m.encode());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// The session admin API: token first, then the call.
async fn session_api<B>(req: &Request<B>, proxy: &Proxy) -> Response<Body> {
    let settings = proxy.settings();
    let metrics = proxy.metrics();
    let Some(token) = &settings.admin_token else {
        return text(
            StatusCode::NOT_FOUND,
            "not found: the session admin API is off (set admin.token)\n".into(),
        );
    };
    if !sessions::authorized(req.headers(), &token.0) {
        metrics.admin_call(AdminResult::Unauthorized);
        let mut resp = text(StatusCode::UNAUTHORIZED, "unauthorized\n".into());
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    let path = req.uri().path();
    let answer = match sessions::parse(req.method(), path, req.uri().query()) {
        Ok(call) => sessions::run(proxy.store(), metrics, call).await,
        Err(refused) => {
            metrics.admin_call(AdminResult::BadRequest);
            refused
        }
    };
    let mut resp = text(answer.status, answer.body);
    if answer.json {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if answer.status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(header::ALLOW, sessions::allowed(path));
    }
    resp
}

/// Is the store usable? For Redis, also which topology and its state (the master in
/// use, the failovers seen: docs/configuration.md#redis), as the second line of
/// `/readyz`.
async fn readiness(store: &TimedStore<AnyStore>) -> Result<Option<String>, StoreError> {
    match store.engine() {
        AnyStore::Redis(redis) => store.bounded(redis.describe()).await.map(Some),
        _ => store.ping().await.map(|()| None),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Serve the admin listener until `stopped` changes.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, mut stopped: watch::Receiver<bool>) {
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
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let proxy = proxy.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, Infallible>(handle(req, &proxy).await) }
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
