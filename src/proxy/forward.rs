//! The upstream side (SPEC §8.1): a pooled keep-alive HTTP/1.1 client to an `http://`,
//! `https://` or `unix:` upstream, with connect and response-header timeouts.
//!
//! One [`Upstream`] type dispatches over three hyper-util clients that differ only in
//! their connector ([`super::connect`]); the pool settings are the same for all three.

use std::time::Duration;

use http::{
    Request, Response, Uri, Version,
    uri::{Authority, PathAndQuery, Scheme},
};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connect, HttpConnector},
    },
    rt::{TokioExecutor, TokioTimer},
};

use super::connect::{self, ConnectTimeout, TlsSetupError, UnixConnector};
use crate::{
    body::Body,
    config::{Config, Upstream as UpstreamConfig},
    error::ProxyError,
};

/// How long an idle pooled connection is kept. It must stay below the app's own
/// keep-alive timeout, which the sidecar cannot know: reusing a socket the app is
/// closing fails the request (`IncompleteMessage`, DEPENDENCIES pitfall 4). Common app
/// servers close idle connections after 2 s (gunicorn's async workers) or 5 s (Node,
/// uvicorn, Apache), so 1 s stays below all of them; the cost is a fresh connect after a
/// second of silence, cheap on the loopback or a unix socket (docs/decisions.md).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Idle connections kept per upstream: a burst may open more, the surplus is closed
/// when it goes idle.
pub const POOL_MAX_IDLE: usize = 256;

/// The authority of requests to a unix socket. It only keys the pool (one socket per
/// sidecar) and is the `Host` of a request that arrives without one, as for `http://`
/// upstreams, where the upstream's own authority fills in.
const UNIX_AUTHORITY: &str = "localhost";

/// Where requests go and how long we wait for them.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: Clients,
    scheme: Scheme,
    authority: Authority,
    response_timeout: Duration,
}

/// The pooled client, by kind of upstream.
#[derive(Debug, Clone)]
enum Clients {
    Http(Client<ConnectTimeout<HttpConnector>, Body>),
    Https(Client<ConnectTimeout<HttpsConnector<HttpConnector>>, Body>),
    Unix(Client<ConnectTimeout<UnixConnector>, Body>),
}

/// Why an upstream could not be set up from the config.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("upstream authority {0:?} is not valid")]
    BadAuthority(String),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

impl Upstream {
    pub fn from_config(config: &Config) -> Result<Self, UpstreamSetupError> {
        let connect_timeout = config.timeouts.upstream_connect;
        let (client, scheme, authority) = match &config.upstream {
            UpstreamConfig::Tcp { https, authority } => {
                let authority: Authority = authority
                    .parse()
                    .map_err(|_| UpstreamSetupError::BadAuthority(authority.clone()))?;
                let mut tcp = HttpConnector::new();
                // HttpConnector's own timeout covers the TCP connect of each address
                // tried; `ConnectTimeout` bounds the whole connect, TLS included.
                tcp.set_connect_timeout(Some(connect_timeout));
                // Small request/response heads dominate: Nagle would add up to 40 ms per
                // exchange on a keep-alive connection (DEPENDENCIES pitfall 5).
                tcp.set_nodelay(true);
                if *https {
                    // Fail at startup, not on the first request, on a host rustls cannot
                    // verify against.
                    connect::server_name(authority.host())?;
                    let ca = config.upstream_tls.as_ref().and_then(|t| t.ca.as_deref());
                    let tls = connect::tls_client_config(ca)?;
                    tcp.enforce_http(false);
                    // `From` rather than the builder: the builder refuses a config with
                    // ALPN set and would offer none for HTTP/1.1 only. SNI and
                    // verification use the URI's host, i.e. the configured upstream host.
                    let https = HttpsConnector::from((tcp, tls));
                    (
                        Clients::Https(pooled(ConnectTimeout::new(https, connect_timeout))),
                        Scheme::HTTPS,
                        authority,
                    )
                } else {
                    tcp.enforce_http(true);
                    (
                        Clients::Http(pooled(ConnectTimeout::new(tcp, connect_timeout))),
                        Scheme::HTTP,
                        authority,
                    )
                }
            }
            UpstreamConfig::Unix(path) => (
                Clients::Unix(pooled(ConnectTimeout::new(
                    UnixConnector::new(path),
                    connect_timeout,
                ))),
                Scheme::HTTP,
                Authority::from_static(UNIX_AUTHORITY),
            ),
        };
        Ok(Upstream {
            client,
            scheme,
            authority,
            response_timeout: config.timeouts.upstream_response,
        })
    }

    /// Send `req` (its URI holding only path and query) to the upstream and wait for the
    /// response headers; the body streams afterwards.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, ProxyError> {
        *req.uri_mut() = upstream_uri(&self.scheme, &self.authority, req.uri())
            .map_err(|e| ProxyError::UpstreamUnreachable(e.to_string()))?;
        *req.version_mut() = Version::HTTP_11;
        // The client keeps the request's `Host`; only a request without one gets the
        // URI's authority (hyper-util's `set_host`, on by default).
        let response = match &self.client {
            Clients::Http(c) => c.request(req),
            Clients::Https(c) => c.request(req),
            Clients::Unix(c) => c.request(req),
        };
        match tokio::time::timeout(self.response_timeout, response).await {
            Err(_) => Err(ProxyError::UpstreamTimeout),
            // The chain names the cause (refused, TLS verification, timeout); it is
            // logged with the request id, the client only sees "upstream unreachable".
            Ok(Err(e)) => Err(ProxyError::UpstreamUnreachable(error_chain(&e))),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

/// A pooled HTTP/1.1 client over `connector`.
fn pooled<C>(connector: C) -> Client<C, Body>
where
    C: Connect + Clone,
{
    Client::builder(TokioExecutor::new())
        // Without a pool timer the idle timeout is silently ignored and idle sockets
        // pile up (DEPENDENCIES pitfall 3).
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .build(connector)
}

/// The absolute URI of a forwarded request: the upstream's scheme and authority, the
/// request's path and query (`/` when it has none, e.g. `OPTIONS *` aside).
fn upstream_uri(
    scheme: &Scheme,
    authority: &Authority,
    original: &Uri,
) -> Result<Uri, http::Error> {
    let path = original
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme(scheme.clone())
        .authority(authority.clone())
        .path_and_query(path)
        .build()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_keep_path_and_query_and_take_the_upstream_authority() {
        let auth = Authority::from_static("app.internal:8443");
        let uri = |s: &'static str| Uri::from_static(s);
        assert_eq!(
            upstream_uri(&Scheme::HTTPS, &auth, &uri("/a/b?x=1&y")).expect("uri"),
            "https://app.internal:8443/a/b?x=1&y"
        );
        // An absolute-form request target (a client talking to a proxy) loses its own
        // authority: the request goes to the configured upstream only.
        assert_eq!(
            upstream_uri(&Scheme::HTTP, &auth, &uri("http://evil.example/p?q")).expect("uri"),
            "http://app.internal:8443/p?q"
        );
        assert_eq!(
            upstream_uri(&Scheme::HTTP, &auth, &uri("http://evil.example")).expect("uri"),
            "http://app.internal:8443/"
        );
        let unix = Authority::from_static(UNIX_AUTHORITY);
        assert_eq!(
            upstream_uri(&Scheme::HTTP, &unix, &uri("/x")).expect("uri"),
            "http://localhost/x"
        );
    }

    #[test]
    fn error_chains_join_causes() {
        let inner = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
        let outer = std::io::Error::other(Wrapper(inner));
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(
            error_chain(&outer),
            "client error (Connect): connect timed out"
        );
    }
}
