//! HTTP-level harness: a real upstream HTTP server in the test process that echoes what
//! it received and answers with scripted headers, a sidecar started in-process on port 0,
//! and a small client with a one-cookie jar. [`binary`] runs the real binary as a child
//! process (one-shot commands too); [`certs`] makes a test CA and leaf certificates. The
//! backing stores (`redis-server`, `memcached`) are in `backing`.
//!
//! Upstream control headers (none is reserved, so they pass the sidecar):
//! `X-Test-Reply: [[name, value], ...]` response headers, `X-Test-Status: N`,
//! `X-Test-Delay-Ms: N`, `X-Test-Trailers: [[name, value], ...]` (chunked reply with
//! trailers). The reply body is JSON: `{"method","path","headers":[[n,v]...],"body_len",
//! "trailers":[[n,v]...]}`.
#![allow(dead_code)]

pub mod binary;
pub mod certs;
pub mod raw;

use std::{
    convert::Infallible,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use session_sidecar::{config::Config, server};
use tokio::net::TcpListener;

pub const SECRET_A: &str = "acceptance-secret-A-0123456789abcdefghijklmnopqrstuvwxyz";
pub const SECRET_B: &str = "acceptance-secret-B-0123456789abcdefghijklmnopqrstuvwxyz";

// ---------------------------------------------------------------------------------------
// upstream
// ---------------------------------------------------------------------------------------

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

/// The scripted upstream; dropped with the test runtime.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::listen(serve_scripted).await
    }

    /// Bind a loopback port and hand every accepted connection, with the request log, to
    /// `handle` (which must not block: it spawns what takes time).
    async fn listen<H>(handle: H) -> Upstream
    where
        H: Fn(tokio::net::TcpStream, Arc<Mutex<Vec<Seen>>>) + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                handle(stream, log.clone());
            }
        });
        Upstream { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

type UpBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

async fn answer(
    req: Request<hyper::body::Incoming>,
    log: Arc<Mutex<Vec<Seen>>>,
) -> Response<UpBody> {
    let headers = header_pairs(req.headers());
    let get = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| String::from_utf8(v.as_bytes().to_vec()).ok())
    };
    let reply: Vec<(String, String)> = get("x-test-reply")
        .and_then(|r| serde_json::from_str(&r).ok())
        .unwrap_or_default();
    let status = get("x-test-status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200u16);
    let delay = get("x-test-delay-ms")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0u64);
    let trailers: Option<Vec<(String, String)>> =
        get("x-test-trailers").and_then(|t| serde_json::from_str(&t).ok());
    let method = req.method().to_string();
    let path = req.uri().to_string();
    let wants_ws = req.uri().path() == "/ws";
    log.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
    });

    if wants_ws {
        // Echo upgrade: answer 101, then echo raw bytes back.
        let on_upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()).boxed_unsync());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("connection", HeaderValue::from_static("upgrade"));
        resp.headers_mut()
            .insert("upgrade", HeaderValue::from_static("echo"));
        add_headers(resp.headers_mut(), &reply);
        return resp;
    }

    let mut body_len = 0usize;
    let mut req_trailers = Vec::new();
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(d) = frame.data_ref() {
            body_len += d.len();
        } else if let Some(t) = frame.trailers_ref() {
            req_trailers.extend(header_pairs(t));
        }
    }
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let record = json!({
        "method": method, "path": path, "headers": headers,
        "body_len": body_len, "trailers": req_trailers,
    });
    let text = Bytes::from(record.to_string());
    let body: UpBody = match trailers {
        None => Full::new(text).boxed_unsync(),
        Some(t) => {
            let mut map = HeaderMap::new();
            add_headers(&mut map, &t);
            FramesBody(vec![Frame::data(text), Frame::trailers(map)].into()).boxed_unsync()
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    add_headers(resp.headers_mut(), &reply);
    resp
}

/// A body that yields prepared frames (data then trailers).
struct FramesBody(std::collections::VecDeque<Frame<Bytes>>);

impl http_body::Body for FramesBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// A header map as `(name, value)` pairs in order (values decoded lossily as UTF-8).
pub fn header_pairs(map: &HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn add_headers(map: &mut HeaderMap, pairs: &[(String, String)]) {
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v.as_bytes()),
        ) {
            map.append(k, v);
        }
    }
}

/// Serve the scripted upstream (`answer`) as HTTP/1.1 on one accepted connection.
fn serve_scripted<S>(io: S, log: Arc<Mutex<Vec<Seen>>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = service_fn(move |req| {
            let log = log.clone();
            async move { Ok::<_, Infallible>(answer(req, log).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
            .await;
    });
}

impl Upstream {
    /// The scripted upstream over TLS with `pki`'s leaf (valid for `localhost` and
    /// `127.0.0.1`). It offers ALPN `h2` and `http/1.1` like a typical server but serves
    /// HTTP/1.1 only, so a client that negotiated `h2` would fail. `addr` is its TCP
    /// address; `url()` does not apply (write `https://localhost:{port}`).
    pub async fn start_tls(pki: &certs::TestPki) -> Upstream {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert_file)
            .expect("cert file")
            .collect::<Result<_, _>>()
            .expect("cert PEM");
        let key = PrivateKeyDer::from_pem_file(&pki.key_file).expect("key PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Upstream::listen(move |stream, log| {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses our certificate aborts the handshake.
                if let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
                {
                    serve_scripted(tls, log);
                }
            });
        })
        .await
    }
}

/// The scripted upstream on a unix socket, counting the connections it accepted.
pub struct UnixUpstream {
    pub path: std::path::PathBuf,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl UnixUpstream {
    /// Listen on `path` (which must not exist yet; its directory is the caller's).
    pub async fn start(path: &Path) -> UnixUpstream {
        let listener = tokio::net::UnixListener::bind(path).expect("bind unix upstream");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (log, count) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                serve_scripted(stream, log.clone());
            }
        });
        UnixUpstream {
            path: path.to_owned(),
            seen,
            connections,
        }
    }

    /// The `upstream:` value for this socket.
    pub fn url(&self) -> String {
        format!("unix:{}", self.path.display())
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------
// client
// ---------------------------------------------------------------------------------------

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Resp {
    /// Read `resp` whole. A body that fails midway (the connection broke) is `Err` with
    /// the status and headers and an empty body.
    pub async fn read(resp: Response<hyper::body::Incoming>) -> Result<Resp, Resp> {
        let mut r = Resp {
            status: resp.status().as_u16(),
            headers: header_pairs(resp.headers()),
            body: Bytes::new(),
        };
        match resp.into_body().collect().await {
            Ok(body) => {
                r.body = body.to_bytes();
                Ok(r)
            }
            Err(_) => Err(r),
        }
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.all(name).into_iter().next()
    }

    /// What the upstream received (the echo body).
    pub fn echo(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not an upstream echo: {} {:?}", self.status, self.body))
    }

    pub fn up_headers(&self) -> Vec<(String, String)> {
        serde_json::from_value(self.echo()["headers"].clone()).unwrap()
    }

    pub fn up_all(&self, name: &str) -> Vec<String> {
        self.up_headers()
            .into_iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }

    pub fn up_one(&self, name: &str) -> String {
        let all = self.up_all(name);
        assert_eq!(
            all.len(),
            1,
            "upstream saw {name} {} times: {:?}",
            all.len(),
            self.up_headers()
        );
        all[0].clone()
    }

    pub fn session(&self) -> Value {
        serde_json::from_str(&self.up_one("x-session")).unwrap()
    }

    pub fn flash(&self) -> Value {
        serde_json::from_str(&self.up_one("x-session-flash")).unwrap()
    }

    pub fn sstatus(&self) -> String {
        self.up_one("x-session-status")
    }

    /// Reserved names (any spelling) the upstream saw, in headers and trailers.
    pub fn up_reserved(&self) -> Vec<String> {
        let echo = self.echo();
        let mut names: Vec<String> = self.up_headers().into_iter().map(|(k, _)| k).collect();
        let trailers: Vec<(String, String)> =
            serde_json::from_value(echo["trailers"].clone()).unwrap_or_default();
        names.extend(trailers.into_iter().map(|(k, _)| k));
        names.into_iter().filter(|n| is_reserved(n)).collect()
    }

    /// Reserved names that reached the client.
    pub fn reserved_in_response(&self) -> Vec<String> {
        self.headers
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|n| is_reserved(n))
            .collect()
    }

    /// The `Set-Cookie` for `name`, at most one.
    pub fn cookie(&self, name: &str) -> Option<SetCookie> {
        let found: Vec<SetCookie> = self
            .all("set-cookie")
            .iter()
            .map(|v| SetCookie::parse(v))
            .filter(|c| c.name == name)
            .collect();
        assert!(found.len() <= 1, "several Set-Cookie for {name}: {found:?}");
        found.into_iter().next()
    }
}

/// The upstream saw exactly the three injected reserved headers (any spelling counts as
/// reserved), each once.
pub fn assert_only_injected(r: &Resp) {
    let mut names: Vec<String> = r
        .up_reserved()
        .into_iter()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["x-session", "x-session-flash", "x-session-status"],
        "{:?}",
        r.up_headers()
    );
}

pub fn is_reserved(name: &str) -> bool {
    name.to_ascii_lowercase()
        .replace(['_', '.'], "-")
        .starts_with("x-session")
}

/// A parsed `Set-Cookie`.
#[derive(Debug, Clone)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    pub attrs: Vec<(String, Option<String>)>,
}

impl SetCookie {
    pub fn parse(raw: &str) -> SetCookie {
        let mut parts = raw.split(';').map(str::trim);
        let (name, value) = parts
            .next()
            .unwrap_or("")
            .split_once('=')
            .unwrap_or(("", ""));
        let attrs = parts
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_owned())),
                None => (p.to_ascii_lowercase(), None),
            })
            .collect();
        SetCookie {
            name: name.to_owned(),
            value: value.to_owned(),
            attrs,
        }
    }

    pub fn has(&self, attr: &str) -> bool {
        self.attrs
            .iter()
            .any(|(k, _)| k == &attr.to_ascii_lowercase())
    }

    pub fn get(&self, attr: &str) -> Option<String> {
        self.attrs
            .iter()
            .find(|(k, _)| k == &attr.to_ascii_lowercase())
            .and_then(|(_, v)| v.clone())
    }

    pub fn is_clearing(&self) -> bool {
        self.get("max-age")
            .is_some_and(|v| v.parse::<i64>().map(|n| n <= 0).unwrap_or(false))
    }
}

/// A client with a one-cookie jar; one fresh connection per request.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub cookie_name: String,
    pub cookie: Option<String>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            cookie_name: "session".into(),
            cookie: None,
        }
    }

    /// The session id part of the jar's cookie.
    pub fn sid(&self) -> Option<String> {
        self.cookie
            .as_ref()
            .map(|c| c.split('.').next().unwrap_or("").to_owned())
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Resp {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect to sidecar");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("127.0.0.1:{}", self.addr.port()));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("{}={c}", self.cookie_name));
        }
        for (k, v) in headers {
            req = req.header(
                *k,
                HeaderValue::from_bytes(v.as_bytes()).expect("header value"),
            );
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .expect("response within 30 s")
            .expect("response");
        let resp = Resp::read(resp).await.unwrap_or_else(|head| head);
        if let Some(c) = resp.cookie(&self.cookie_name) {
            self.cookie = if c.is_clearing() || c.value.is_empty() {
                None
            } else {
                Some(c.value)
            };
        }
        resp
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        self.request("GET", path, &[], None).await
    }

    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", path, headers, None).await
    }

    /// A GET whose upstream response carries the given instruction headers.
    pub async fn write(&mut self, instructions: &[(&str, &str)]) -> Resp {
        self.write_with(instructions, &[]).await
    }

    pub async fn write_with(
        &mut self,
        instructions: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Resp {
        let reply = serde_json::to_string(instructions).unwrap();
        let mut all = vec![("x-test-reply", reply.as_str())];
        all.extend_from_slice(headers);
        self.request("GET", "/", &all, None).await
    }
}

// ---------------------------------------------------------------------------------------
// raw sockets (malformed input, slow clients)
// ---------------------------------------------------------------------------------------

/// Send raw bytes on a fresh connection and read until the peer closes or `wait` passes.
pub fn raw_exchange(addr: SocketAddr, data: &[u8], wait: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(data).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

// ---------------------------------------------------------------------------------------
// the sidecar
// ---------------------------------------------------------------------------------------

/// Deep-merge `over` into `base` (objects merge, everything else replaces).
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

/// A running sidecar in this process, with its upstream.
pub struct Sidecar {
    pub upstream: Upstream,
    pub running: Option<server::Running>,
    pub addr: SocketAddr,
    pub config: Value,
}

impl Sidecar {
    /// Start a sidecar for `store` (a `store:` section) merged with `extra` config.
    pub async fn start(store: Value, extra: Value) -> Sidecar {
        let upstream = Upstream::start().await;
        let mut cfg = json!({
            "listen": "127.0.0.1:0",
            "upstream": upstream.url(),
            "secrets": [SECRET_A],
            "store": store,
            "admin": {"listen": null},
        });
        merge(&mut cfg, extra);
        let running = start_config(&cfg).await;
        Sidecar {
            addr: running.addr,
            upstream,
            running: Some(running),
            config: cfg,
        }
    }

    /// The admin listener's address. Configure `admin.listen: 127.0.0.1:0`: the kernel
    /// picks the port as it binds, so no other process can take it in between (a port
    /// found free beforehand can be).
    pub fn admin_addr(&self) -> SocketAddr {
        self.running
            .as_ref()
            .and_then(|r| r.admin_addr)
            .expect("the admin listener is on")
    }

    pub fn client(&self) -> Client {
        let mut c = Client::new(self.addr);
        if let Some(name) = self.config["cookies"]["name"].as_str() {
            c.cookie_name = name.to_owned();
        }
        c
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// Start a sidecar from a JSON config (JSON is YAML).
pub async fn start_config(cfg: &Value) -> server::Running {
    let config = Config::from_yaml_str(&cfg.to_string(), Path::new("test.yaml"))
        .unwrap_or_else(|e| panic!("config rejected: {e}\n{cfg:#}"));
    server::start(config).await.expect("sidecar starts")
}
