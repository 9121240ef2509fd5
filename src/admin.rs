//! The admin listener (SPEC §9): `/healthz` (alive), `/readyz` (store reachable).
//! Never served on the proxy listener, so clients cannot probe it.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    body::{Body, full},
    store::{SessionStore, any::AnyStore},
};

/// Answer one admin request.
pub async fn handle(req: Request<Incoming>, store: Arc<AnyStore>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            // Bounded by `store.timeout` inside the engine.
            match store.ping().await {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Serve the admin listener until `stopped` changes.
pub async fn serve(
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
                    async move { Ok::<_, Infallible>(handle(req, store).await) }
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
