//! The admin listener (SPEC §9): `/healthz` (alive), `/readyz` (store reachable).
//! Never served on the proxy listener, so clients cannot probe it.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;

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
