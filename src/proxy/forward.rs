//! The upstream side: a pooled keep-alive HTTP/1.1 client (SPEC §8.1) with connect and
//! response-header timeouts.

use std::time::Duration;

use http::{Request, Response, Uri, Version, uri::PathAndQuery};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use crate::{
    body::Body,
    config::{Config, Upstream as UpstreamConfig},
    error::ProxyError,
};

/// Where requests go and how long we wait for them.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    authority: http::uri::Authority,
    response_timeout: Duration,
}

/// Why an upstream could not be set up from the config.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("upstream {0}: not supported by this build yet (only http:// upstreams are)")]
    Unsupported(String),
    #[error("upstream authority {0:?} is not valid")]
    BadAuthority(String),
}

impl Upstream {
    pub fn from_config(config: &Config) -> Result<Self, UpstreamSetupError> {
        let authority = match &config.upstream {
            UpstreamConfig::Tcp {
                https: false,
                authority,
            } => authority.clone(),
            UpstreamConfig::Tcp { https: true, .. } => {
                return Err(UpstreamSetupError::Unsupported("https://".into()));
            }
            UpstreamConfig::Unix(_) => {
                return Err(UpstreamSetupError::Unsupported("unix:".into()));
            }
        };
        let authority: http::uri::Authority = authority
            .parse()
            .map_err(|_| UpstreamSetupError::BadAuthority(authority.clone()))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeouts.upstream_connect));
        // Small request/response headers dominate: Nagle would add up to 40 ms per
        // exchange on a keep-alive connection (DEPENDENCIES pitfall 5).
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            // Without a pool timer the idle timeout is silently ignored and idle sockets
            // pile up (pitfall 3). Keep it below the app's own keep-alive to avoid
            // reusing a socket the app is closing (pitfall 4).
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.timeouts.idle)
            .build(connector);
        Ok(Upstream {
            client,
            authority,
            response_timeout: config.timeouts.upstream_response,
        })
    }

    /// Send `req` (its URI holding only path and query) to the upstream and wait for the
    /// response headers; the body streams afterwards.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, ProxyError> {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| ProxyError::UpstreamUnreachable(e.to_string()))?;
        *req.version_mut() = Version::HTTP_11;
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout),
            Ok(Err(e)) => Err(ProxyError::UpstreamUnreachable(error_chain(&e))),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

/// The error and its causes on one line, for the log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}
