//! The access log line and the request counter, written exactly once per request: when
//! the pipeline answers, or — when the client goes away first (an HTTP/1 disconnect, an
//! HTTP/2 stream reset) and hyper drops the request's future — on drop, with nginx's
//! status `499`.

use std::time::Instant;

use http::{Method, StatusCode, Version};

use crate::{metrics::Metrics, protocol::SessionStatus};

/// nginx's "client closed request": no response was sent.
pub const CLIENT_CLOSED: u16 = 499;

/// One request's access line, written when dropped.
#[derive(Debug)]
pub struct AccessLine<'a> {
    metrics: &'a Metrics,
    started: Instant,
    method: Method,
    /// The path only: query strings carry tokens often enough to stay out of logs.
    path: String,
    version: Version,
    pub request_id: String,
    /// Filled in by the pipeline as it learns it.
    pub session: SessionStatus,
    /// The loaded session's owner as logged: a pseudonym (the first 12 characters of the
    /// owner's index key) unless `log.owner: true` (docs/configuration.md).
    pub owner: Option<String>,
    status: Option<StatusCode>,
}

impl<'a> AccessLine<'a> {
    pub fn new<B>(metrics: &'a Metrics, req: &http::Request<B>, request_id: String) -> Self {
        AccessLine {
            metrics,
            started: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            version: req.version(),
            request_id,
            session: SessionStatus::None,
            owner: None,
            status: None,
        }
    }

    /// The response is ready: this is the status logged.
    pub fn answered(&mut self, status: StatusCode) {
        self.status = Some(status);
    }
}

impl Drop for AccessLine<'_> {
    fn drop(&mut self) {
        let status = match self.status {
            Some(s) => s,
            None => StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST),
        };
        self.metrics.request(status);
        // Never cookie values, session data or query strings (docs/security.md §16).
        tracing::info!(
            target: "session_sidecar::access",
            method = %self.method,
            path = %self.path,
            status = status.as_u16(),
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            session = self.session.as_str(),
            owner = self.owner.as_deref(),
            request_id = %self.request_id,
            protocol = protocol_name(self.version),
        );
    }
}

/// The access log's protocol field.
pub fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "other",
    }
}
