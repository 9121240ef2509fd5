//! The body type every response and forwarded request uses: streamed, never buffered
//! whole (docs/protocol.md §10.1), with reserved trailers stripped on the way
//! (docs/protocol.md §3.2).

use std::sync::Arc;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};

use crate::protocol::ReservedPrefix;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed body of any origin (the peer's `Incoming` or our own text).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete in-memory body (error pages, admin answers).
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Stream `body` through, removing reserved names from its trailers: a client cannot
/// smuggle `X-Session` to the app in a trailer (Traefik CVE-2026-88004), and an app
/// cannot send instructions (or leak them to the client) that way.
pub fn strip_reserved_trailers<B>(body: B, prefix: Arc<ReservedPrefix>) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_frame(move |frame: Frame<Bytes>| match frame.into_trailers() {
        Ok(mut trailers) => {
            prefix.strip(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    })
    .map_err(Into::into)
    .boxed_unsync()
}
