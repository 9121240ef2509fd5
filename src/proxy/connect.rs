//! Connectors for the upstream client (docs/protocol.md §10.1): the TLS client
//! configuration of an `https://` upstream, a unix-socket connector for `unix:` upstreams,
//! and a wrapper that bounds a whole connect (TCP, TLS handshake or unix connect) by
//! `timeouts.upstream_connect`.
//!
//! The connectors are `tower_service::Service<Uri>` (hyper-util's connector interface);
//! the pool that uses them is [`super::pool`], configured in [`super::forward`].

use std::{
    future::Future,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::net::UnixStream;

/// The only application protocol offered to an `https://` upstream: requests are always
/// forwarded as HTTP/1.1, so an upstream must not pick `h2`.
pub const UPSTREAM_ALPN: &[u8] = b"http/1.1";

/// Why the TLS client for an `https://` upstream could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("upstream_tls.ca: cannot read {path}: {reason}")]
    CaUnreadable { path: PathBuf, reason: String },
    #[error("upstream_tls.ca: {path} holds no PEM certificate")]
    CaEmpty { path: PathBuf },
    #[error("upstream_tls.ca: a certificate in {path} is not usable as a root: {reason}")]
    CaInvalid { path: PathBuf, reason: String },
    #[error(
        "no system root certificate could be loaded for the https upstream{details}; set \
         `upstream_tls.ca` to the PEM bundle of the CA that signed the upstream's certificate"
    )]
    NoSystemRoots { details: String },
    #[error("upstream TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("upstream host {0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// The rustls client configuration for an `https://` upstream: ring provider, safe
/// default protocol versions, roots from `ca` (a PEM bundle) or else the system's, ALPN
/// `http/1.1` only, no client certificate.
pub fn tls_client_config(ca: Option<&Path>) -> Result<ClientConfig, TlsSetupError> {
    let roots = match ca {
        Some(path) => roots_from_pem_file(path)?,
        None => roots_from_native(rustls_native_certs::load_native_certs())?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![UPSTREAM_ALPN.to_vec()];
    Ok(config)
}

/// The name the upstream's certificate is verified against (and sent as SNI): the host
/// of `upstream`, without the brackets of an IPv6 literal.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsSetupError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(bare.to_owned()).map_err(|_| TlsSetupError::ServerName(host.to_owned()))
}

/// Every certificate of a PEM bundle as trust anchors; an unreadable, empty or invalid
/// bundle is an error naming the file.
pub fn roots_from_pem_file(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| TlsSetupError::CaUnreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let mut roots = RootCertStore::empty();
    for cert in iter {
        let cert = cert.map_err(|e| TlsSetupError::CaUnreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| TlsSetupError::CaInvalid {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError::CaEmpty {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// The system's roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured by rustls-native-certs).
/// Unparsable ones are skipped, as browsers do; none at all is an error.
pub fn roots_from_native(
    found: rustls_native_certs::CertificateResult,
) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added > 0 {
        if ignored > 0 || !found.errors.is_empty() {
            tracing::debug!(
                added,
                ignored,
                errors = found.errors.len(),
                "some system root certificates were skipped"
            );
        }
        return Ok(roots);
    }
    let mut reasons: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
    if ignored > 0 {
        reasons.push(format!("{ignored} unparsable certificate(s)"));
    }
    // Bound the message: a broken certificate directory can yield one error per file.
    const SHOWN: usize = 3;
    let more = reasons.len().saturating_sub(SHOWN);
    reasons.truncate(SHOWN);
    if more > 0 {
        reasons.push(format!("{more} more"));
    }
    let details = if reasons.is_empty() {
        String::new()
    } else {
        format!(" ({})", reasons.join("; "))
    };
    Err(TlsSetupError::NoSystemRoots { details })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ConnectFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// Connects every request to one unix socket, whatever the URI says (the URI only keys
/// the pool). Streams are `TokioIo<UnixStream>`, which hyper-util pools as plain
/// HTTP/1.1 connections.
#[derive(Debug, Clone)]
pub struct UnixConnector {
    path: Arc<Path>,
}

impl UnixConnector {
    pub fn new(path: &Path) -> Self {
        UnixConnector {
            path: Arc::from(path),
        }
    }
}

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = BoxError;
    type Future = ConnectFuture<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = self.path.clone();
        Box::pin(async move {
            match UnixStream::connect(&*path).await {
                Ok(stream) => Ok(TokioIo::new(stream)),
                // The path is configuration, not a secret; it makes the log actionable.
                Err(e) => {
                    Err(io::Error::new(e.kind(), format!("unix:{}: {e}", path.display())).into())
                }
            }
        })
    }
}

/// Bounds a whole connect by `limit`: the TCP connect, the TLS handshake that follows
/// (which `HttpConnector`'s own timeout does not cover) or the unix connect.
#[derive(Debug, Clone)]
pub struct ConnectTimeout<C> {
    inner: C,
    limit: Duration,
}

impl<C> ConnectTimeout<C> {
    pub fn new(inner: C, limit: Duration) -> Self {
        ConnectTimeout { inner, limit }
    }
}

impl<C> tower_service::Service<Uri> for ConnectTimeout<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = ConnectFuture<C::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let limit = self.limit;
        let connecting = self.inner.call(dst);
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect timed out after {limit:?} (timeouts.upstream_connect)"),
                )
                .into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let dir = tempdir();
        let path = dir.path().join("nope.pem");
        let e = tls_client_config(Some(&path)).expect_err("missing file");
        assert!(matches!(e, TlsSetupError::CaUnreadable { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("upstream_tls.ca"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
    }

    #[test]
    fn an_empty_or_pem_less_ca_file_is_named() {
        let dir = tempdir();
        for (name, content) in [
            ("empty.pem", ""),
            ("text.pem", "not a certificate\n"),
            (
                "key-only.pem",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, content).expect("write");
            let e = roots_from_pem_file(&path).expect_err(name);
            let text = e.to_string();
            assert!(text.contains(&path.display().to_string()), "{name}: {text}");
        }
    }

    #[test]
    fn a_garbled_certificate_is_refused_with_the_file_name() {
        let dir = tempdir();
        let path = dir.path().join("bad.pem");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let e = roots_from_pem_file(&path).expect_err("garbage DER");
        assert!(matches!(e, TlsSetupError::CaInvalid { .. }), "{e:?}");
        assert!(e.to_string().contains("bad.pem"), "{e}");
    }

    #[test]
    fn no_system_roots_is_an_error_with_a_hint() {
        let e = roots_from_native(rustls_native_certs::CertificateResult::default())
            .expect_err("no roots");
        let text = e.to_string();
        assert!(text.contains("upstream_tls.ca"), "{text}");

        let mut found = rustls_native_certs::CertificateResult::default();
        found
            .certs
            .extend((0..5).map(|i| CertificateDer::from(vec![0x30, i])));
        let text = roots_from_native(found).expect_err("only junk").to_string();
        assert!(text.contains("5 unparsable"), "{text}");
    }

    #[test]
    fn a_ca_bundle_is_loaded_and_the_client_offers_http1_only() {
        let dir = tempdir();
        let path = dir.path().join("ca.pem");
        let mut bundle = String::new();
        for cn in ["first CA", "second CA"] {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            let key = rcgen::KeyPair::generate().expect("key");
            bundle.push_str(&params.self_signed(&key).expect("self-signed").pem());
        }
        std::fs::write(&path, bundle).expect("write");
        assert_eq!(roots_from_pem_file(&path).expect("bundle").len(), 2);
        let config = tls_client_config(Some(&path)).expect("client config");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn server_names_accept_dns_names_and_ip_literals() {
        assert!(matches!(
            server_name("app.internal"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("bad name").is_err());
    }

    #[tokio::test]
    async fn a_unix_connect_to_a_missing_path_fails_naming_it() {
        use tower_service::Service as _;
        let dir = tempdir();
        let path = dir.path().join("missing.sock");
        let mut c = ConnectTimeout::new(UnixConnector::new(&path), Duration::from_secs(5));
        let e = c
            .call(Uri::from_static("http://localhost/"))
            .await
            .expect_err("no socket");
        assert!(e.to_string().contains("missing.sock"), "{e}");
    }

    #[tokio::test]
    async fn a_connect_that_never_completes_times_out() {
        use tower_service::Service as _;
        #[derive(Clone)]
        struct Never;
        impl tower_service::Service<Uri> for Never {
            type Response = ();
            type Error = io::Error;
            type Future = std::future::Pending<Result<(), io::Error>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Uri) -> Self::Future {
                std::future::pending()
            }
        }
        let mut c = ConnectTimeout::new(Never, Duration::from_millis(50));
        let e = c
            .call(Uri::from_static("http://localhost/"))
            .await
            .expect_err("times out");
        assert!(e.to_string().contains("timed out"), "{e}");
    }
}
