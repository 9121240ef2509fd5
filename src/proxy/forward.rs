//! The upstream side (docs/protocol.md §10.1): a pooled keep-alive HTTP/1.1 client to an
//! `http://`, `https://` or `unix:` upstream, with connect and response-header timeouts.
//!
//! One [`Upstream`] type dispatches over three pools ([`super::pool`]) that differ only
//! in their connector ([`super::connect`]); the pool settings are the same for all three.

use std::time::Duration;

use http::{
    HeaderValue, Request, Response, Uri, Version, header,
    uri::{Authority, PathAndQuery, Scheme},
};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

use super::{
    connect::{self, ConnectTimeout, TlsSetupError, UnixConnector},
    pool::{Pool, PooledBody, SendError},
};
use crate::{
    body::{Body, BodyTimeout},
    config::{Config, Upstream as UpstreamConfig},
    error::ProxyError,
};

/// How long an idle pooled connection is kept. It must stay below the app's own
/// keep-alive timeout, which the sidecar cannot know: reusing a socket the app is
/// closing fails the request (`IncompleteMessage`, docs/decisions.md#upstreams). Common app
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
#[derive(Debug)]
pub struct Upstream {
    client: Clients,
    /// The `Host` of a request that arrives without one: the upstream's authority.
    host: HeaderValue,
    response_timeout: Duration,
}

/// The pool, by kind of upstream.
#[derive(Debug)]
enum Clients {
    Http(Pool<ConnectTimeout<HttpConnector>>),
    Https(Pool<ConnectTimeout<HttpsConnector<HttpConnector>>>),
    Unix(Pool<ConnectTimeout<UnixConnector>>),
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
        let (client, authority) = match &config.upstream {
            UpstreamConfig::Tcp { https, authority } => {
                let authority: Authority = authority
                    .parse()
                    .map_err(|_| UpstreamSetupError::BadAuthority(authority.clone()))?;
                let mut tcp = HttpConnector::new();
                // HttpConnector's own timeout covers the TCP connect of each address
                // tried; `ConnectTimeout` bounds the whole connect, TLS included.
                tcp.set_connect_timeout(Some(connect_timeout));
                // Small request/response heads dominate: Nagle would add up to 40 ms per
                // exchange on a keep-alive connection (hyper-util's HttpConnector leaves
                // TCP_NODELAY off).
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
                    let target = target(Scheme::HTTPS, &authority)?;
                    (
                        Clients::Https(Pool::new(
                            ConnectTimeout::new(https, connect_timeout),
                            target,
                            POOL_MAX_IDLE,
                            POOL_IDLE_TIMEOUT,
                        )),
                        authority,
                    )
                } else {
                    tcp.enforce_http(true);
                    let target = target(Scheme::HTTP, &authority)?;
                    (
                        Clients::Http(Pool::new(
                            ConnectTimeout::new(tcp, connect_timeout),
                            target,
                            POOL_MAX_IDLE,
                            POOL_IDLE_TIMEOUT,
                        )),
                        authority,
                    )
                }
            }
            UpstreamConfig::Unix(path) => {
                let authority = Authority::from_static(UNIX_AUTHORITY);
                let target = target(Scheme::HTTP, &authority)?;
                (
                    Clients::Unix(Pool::new(
                        ConnectTimeout::new(UnixConnector::new(path), connect_timeout),
                        target,
                        POOL_MAX_IDLE,
                        POOL_IDLE_TIMEOUT,
                    )),
                    authority,
                )
            }
        };
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| UpstreamSetupError::BadAuthority(authority.to_string()))?;
        Ok(Upstream {
            client,
            host,
            response_timeout: config.timeouts.upstream_response,
        })
    }

    /// Send `req` (its URI holding only path and query) to the upstream and wait for the
    /// response headers; the body streams afterwards.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<PooledBody>, ProxyError> {
        *req.uri_mut() = origin_form(req.uri());
        *req.version_mut() = Version::HTTP_11;
        // The request's `Host` is kept; only a request without one gets the upstream's
        // authority (as hyper-util's `set_host` did).
        req.headers_mut()
            .entry(header::HOST)
            .or_insert_with(|| self.host.clone());
        let response = async {
            match &self.client {
                Clients::Http(c) => c.send(req).await,
                Clients::Https(c) => c.send(req).await,
                Clients::Unix(c) => c.send(req).await,
            }
        };
        match tokio::time::timeout(self.response_timeout, response).await {
            Err(_) => Err(ProxyError::UpstreamTimeout),
            Ok(Err(e)) => Err(match request_body_failure(&e) {
                // The client's body failed while it was being sent: the client's error.
                Some(cause) => request_body_error(cause),
                // The chain names the cause (refused, TLS verification, timeout); it is
                // logged with the request id, the client only sees "upstream unreachable".
                None => ProxyError::UpstreamUnreachable(error_chain(&e)),
            }),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

/// The error of the client's request body, when that is why the exchange failed: hyper's
/// client reports a failing request body as a user error whose cause is the body's own
/// error (a chunked framing error or a reset stream from the client's connection, or
/// [`BodyTimeout`]). hyper has then cut the upstream connection: the app saw at most an
/// incomplete message.
fn request_body_failure(e: &SendError) -> Option<&(dyn std::error::Error + 'static)> {
    match e {
        SendError::Send(e) if e.is_user() => std::error::Error::source(e),
        _ => None,
    }
}

/// What the client is told about its failed body: 408 when it stalled, else 400.
fn request_body_error(cause: &(dyn std::error::Error + 'static)) -> ProxyError {
    if cause.is::<BodyTimeout>() {
        ProxyError::BodyTimeout
    } else {
        ProxyError::RequestBody(error_chain(cause))
    }
}

/// The URI the connector connects to (and, for `https`, verifies).
fn target(scheme: Scheme, authority: &Authority) -> Result<Uri, UpstreamSetupError> {
    Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|_| UpstreamSetupError::BadAuthority(authority.to_string()))
}

/// The origin-form request target of a forwarded request: the request's path and query
/// only (`/` when it has none). An absolute-form target (a client talking to a proxy)
/// loses its own scheme and authority: requests go to the configured upstream only.
fn origin_form(original: &Uri) -> Uri {
    let path = original
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
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
    fn requests_go_out_in_origin_form() {
        let uri = |s: &'static str| Uri::from_static(s);
        assert_eq!(origin_form(&uri("/a/b?x=1&y")), "/a/b?x=1&y");
        // An absolute-form request target loses its own authority: the request goes
        // to the configured upstream only.
        assert_eq!(origin_form(&uri("http://evil.example/p?q")), "/p?q");
        assert_eq!(origin_form(&uri("http://evil.example")), "/");
        let auth = Authority::from_static("app.internal:8443");
        assert_eq!(
            target(Scheme::HTTPS, &auth).expect("target"),
            "https://app.internal:8443/"
        );
    }

    #[test]
    fn a_failed_request_body_is_the_clients_error() {
        let e = request_body_error(&BodyTimeout);
        assert!(matches!(e, ProxyError::BodyTimeout), "{e:?}");
        assert_eq!(e.status(), 408);
        assert!(e.closes_connection());
        let parse = std::io::Error::new(std::io::ErrorKind::InvalidData, "invalid chunk size");
        let e = request_body_error(&parse);
        assert!(
            matches!(&e, ProxyError::RequestBody(m) if m == "invalid chunk size"),
            "{e:?}"
        );
        assert_eq!(e.status(), 400);
        assert!(e.closes_connection());
        // Connect failures are the upstream's.
        let connect = SendError::Connect("refused".into());
        assert!(request_body_failure(&connect).is_none());
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
