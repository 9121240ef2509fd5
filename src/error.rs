//! Request-path failures and the one place that maps them to HTTP responses
//! (docs/protocol.md §10.9): short plain-text bodies that carry the request id, nothing
//! else.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::{
    body::{Body, full},
    store::StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Ambiguous message framing (request smuggling): 400 and the connection closes.
    #[error("bad request framing: {0}")]
    BadFraming(&'static str),
    /// An HTTP/2 request that cannot be forwarded as HTTP/1.1 (RFC 9113 §8.3.1: userinfo
    /// in `:authority`, several `Host` fields and no `:authority`): 400.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// A transfer coding other than a single `chunked` (RFC 9112 §6.1): 501, close.
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// The client's request body broke off while it was being forwarded: malformed
    /// chunked framing, an HTTP/2 stream the client reset, a connection that ended
    /// mid-body. The upstream exchange is abandoned (never completed with a different
    /// body); 400, close.
    #[error("malformed request body: {0}")]
    RequestBody(String),
    /// No request body bytes within `timeouts.body_read` while the sidecar waited for
    /// them: 408, close.
    #[error("request body timed out")]
    BodyTimeout,
    /// The request's `Cookie` header(s) exceed `limits.max_header_size`.
    #[error("request header fields too large")]
    HeaderTooLarge,
    /// The upstream could not be reached or broke the exchange.
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    /// The upstream broke the HTTP exchange in a way we refuse to pass on (e.g. a `101`
    /// nobody asked for): 502.
    #[error("bad upstream response: {0}")]
    UpstreamProtocol(&'static str),
    /// The upstream sent no response headers within `timeouts.upstream_response`.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream's write instructions are malformed: nothing was written.
    #[error("malformed session instruction from upstream: {0}")]
    BadInstruction(String),
    /// The store failed, timed out, or refused the change set.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store is unavailable and `store.on_error: anonymous` lets the request through
    /// without a session, but this response wanted to write.
    #[error("session store unavailable: the write was not applied")]
    WriteWithoutStore,
    /// The OS random source failed: no session id can be issued safely.
    #[error("cannot generate a session id: {0}")]
    Random(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadFraming(_) | ProxyError::Malformed(_) | ProxyError::RequestBody(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UpstreamUnreachable(_) | ProxyError::UpstreamProtocol(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadInstruction(_) => StatusCode::BAD_GATEWAY,
            // The upstream asked for something the stored session cannot take (Incr on
            // a string, too large): the app's fault, like a malformed header.
            ProxyError::Store(StoreError::Rejected(_)) => StatusCode::BAD_GATEWAY,
            ProxyError::Store(_) | ProxyError::WriteWithoutStore | ProxyError::Random(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Framing errors leave the connection in an unknown state: it must not be reused.
    /// So does a body that broke off or stalled: its remaining bytes are unknown.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProxyError::BadFraming(_)
                | ProxyError::UnsupportedTransferCoding
                | ProxyError::HeaderTooLarge
                | ProxyError::RequestBody(_)
                | ProxyError::BodyTimeout
        )
    }

    /// The short text a client sees. Never includes session data, ids or secrets.
    fn public_reason(&self) -> String {
        match self {
            ProxyError::Store(StoreError::Rejected(e)) => e.to_string(),
            ProxyError::BadInstruction(m) => m.clone(),
            ProxyError::UpstreamUnreachable(_) => "upstream unreachable".into(),
            // hyper's wording stays in the log.
            ProxyError::RequestBody(_) => "malformed or incomplete request body".into(),
            ProxyError::Store(_) | ProxyError::WriteWithoutStore => {
                "session store unavailable".into()
            }
            other => other.to_string(),
        }
    }

    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let status = self.status();
        let text = format!(
            "{} {}: {} (request id {request_id})\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.public_reason()
        );
        let mut resp = Response::new(full(Bytes::from(text)));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.closes_connection() {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ApplyError;

    #[test]
    fn statuses() {
        assert_eq!(ProxyError::UpstreamTimeout.status(), 504);
        assert_eq!(ProxyError::UpstreamUnreachable("x".into()).status(), 502);
        assert_eq!(ProxyError::Store(StoreError::Timeout).status(), 503);
        let rejected = StoreError::Rejected(ApplyError::TooLarge { size: 2, max: 1 });
        assert_eq!(ProxyError::Store(rejected).status(), 502);
        assert_eq!(ProxyError::HeaderTooLarge.status(), 431);
        assert_eq!(ProxyError::UnsupportedTransferCoding.status(), 501);
        let r = ProxyError::BadFraming("x").into_response("abc");
        assert_eq!(r.headers()[header::CONNECTION], "close");
    }
}
