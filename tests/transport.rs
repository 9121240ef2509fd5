//! The client side of the proxy with real clients: TLS termination (rustls), HTTP/2 over
//! TLS via ALPN and as h2c prior knowledge (hyper's h2 client), forwarding h2 requests to
//! an HTTP/1.1 upstream (`Host`, cookie crumbs, reserved headers), the connection timers
//! on h2 and on silent clients, start-up failures on bad certificates, and h2 requests in
//! the binary's JSON access log (`protocol: HTTP/2`) and in `/metrics`.

mod backing;
mod harness;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use harness::{
    Resp, Sidecar, assert_only_injected,
    binary::{Binary, LISTENING},
    certs::TestPki,
};
use http::{HeaderName, HeaderValue, Request};
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use session_sidecar::{config::Config, server};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_rustls::client::TlsStream;

const SET_ANN: &str = r#"[["X-Session-Set", "{\"user\": \"ann\"}"]]"#;

fn tls_section(pki: &TestPki) -> Value {
    json!({"tls": {"cert": pki.cert_file, "key": pki.key_file}})
}

async fn tls_sidecar(pki: &TestPki, mut extra: Value) -> Sidecar {
    harness::merge(&mut extra, tls_section(pki));
    Sidecar::start(json!({"engine": "memory"}), extra).await
}

/// Two sidecars with the same `extra` settings: one plain, one with TLS from `pki`.
async fn plain_and_tls(pki: &TestPki, extra: Value) -> (Sidecar, Sidecar) {
    let plain = Sidecar::start(json!({"engine": "memory"}), extra.clone()).await;
    (plain, tls_sidecar(pki, extra).await)
}

/// A TLS connection to the sidecar that trusts the test CA, offering `alpn`.
async fn tls_connect(addr: SocketAddr, pki: &TestPki, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_config(alpn)));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(Duration::from_secs(30), connector.connect(name, tcp))
        .await
        .expect("handshake within 30 s")
        .expect("TLS handshake")
}

fn request(uri: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .uri(uri)
        .body(Full::new(Bytes::new()))
        .expect("request");
    for (k, v) in headers {
        // `append`: repeated names (cookie crumbs) stay separate fields.
        req.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    req
}

/// One HTTP/2 client connection (many streams).
struct H2 {
    sender: SendRequest<Full<Bytes>>,
    /// The connection task; it ends when the server closes the connection.
    conn: JoinHandle<Result<(), hyper::Error>>,
    base: String,
}

impl H2 {
    async fn handshake<I>(io: I, scheme: &str, authority: &str) -> H2
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(io),
        )
        .await
        .expect("h2 handshake");
        H2 {
            sender,
            conn: tokio::spawn(conn),
            base: format!("{scheme}://{authority}"),
        }
    }

    fn stream(&self) -> H2Stream {
        H2Stream {
            sender: self.sender.clone(),
            base: self.base.clone(),
        }
    }

    async fn send(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.stream().send(path, headers).await
    }
}

/// A handle for one more stream on an [`H2`] connection (movable into a task).
#[derive(Clone)]
struct H2Stream {
    sender: SendRequest<Full<Bytes>>,
    base: String,
}

impl H2Stream {
    async fn send(mut self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let req = request(&format!("{}{path}", self.base), headers);
        assert_eq!(
            req.version(),
            http::Version::HTTP_11,
            "hyper sets h2 itself"
        );
        let resp = tokio::time::timeout(Duration::from_secs(30), async {
            self.sender.ready().await.expect("h2 connection ready");
            self.sender.send_request(req).await
        })
        .await
        .expect("response within 30 s")
        .expect("h2 response");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        Resp::read(resp).await.expect("response body")
    }
}

/// One HTTP/1.1 request on `io` (a fresh connection).
async fn h1_request<I>(io: I, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(io))
            .await
            .expect("h1 handshake");
    tokio::spawn(conn);
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    let req = request(path, &all);
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .expect("response within 30 s")
        .expect("h1 response");
    assert_eq!(resp.version(), http::Version::HTTP_11);
    Resp::read(resp).await.expect("response body")
}

/// Resolves when the peer closed the connection (EOF or reset); panics after `limit`.
async fn closed_by_server<I: AsyncRead + Unpin>(io: &mut I, limit: Duration) {
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(limit, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open for {limit:?}"
    );
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 over TLS
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn http1_over_tls_round_trip_with_a_session() {
    let pki = TestPki::new("h1");
    let sc = tls_sidecar(&pki, json!({})).await;
    let host = format!("localhost:{}", sc.addr.port());

    let tls = tls_connect(sc.addr, &pki, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = h1_request(tls, &host, "/login", &[("x-test-reply", SET_ANN)]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.up_one("x-forwarded-proto"), "https");
    assert_eq!(r.sstatus(), "none");
    assert!(r.reserved_in_response().is_empty());
    let cookie = r.cookie("session").expect("a session cookie");
    assert!(cookie.has("secure"), "{cookie:?}");
    assert!(cookie.has("httponly"), "{cookie:?}");

    let tls = tls_connect(sc.addr, &pki, &[b"http/1.1"]).await;
    let jar = format!("session={}", cookie.value);
    let r = h1_request(tls, &host, "/", &[("cookie", &jar)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.sstatus(), "active");
    assert_eq!(r.session(), json!({"user": "ann"}));
    assert_only_injected(&r);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_without_alpn_gets_http1() {
    let pki = TestPki::new("no-alpn");
    let sc = tls_sidecar(&pki, json!({})).await;
    let tls = tls_connect(sc.addr, &pki, &[]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let host = format!("localhost:{}", sc.addr.port());
    let r = h1_request(tls, &host, "/plain", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.up_one("x-forwarded-proto"), "https");
    assert_eq!(r.up_one("host"), host);
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http1_still_works_without_tls() {
    let sc = Sidecar::start(json!({"engine": "memory"}), json!({})).await;
    let mut c = sc.client();
    let r = c.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.up_one("x-forwarded-proto"), "http");
}

// ---------------------------------------------------------------------------------------
// HTTP/2
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn http2_over_tls_via_alpn_with_concurrent_streams_and_a_session() {
    let pki = TestPki::new("h2");
    let sc = tls_sidecar(&pki, json!({})).await;
    let tls = tls_connect(sc.addr, &pki, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let authority = format!("localhost:{}", sc.addr.port());
    let h2 = H2::handshake(tls, "https", &authority).await;

    // Write on one stream.
    let r = h2.send("/login", &[("x-test-reply", SET_ANN)]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.reserved_in_response().is_empty());
    assert!(
        r.header("connection").is_none(),
        "no connection-specific fields on h2"
    );
    let cookie = r.cookie("session").expect("a session cookie");
    assert!(cookie.has("secure"));
    let session_crumb = format!("session={}", cookie.value);

    // Read on several concurrent streams of the same connection, each with the cookie
    // split in crumbs and forged reserved headers in every spelling h2 allows.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let stream = h2.stream();
        let session_crumb = session_crumb.clone();
        tasks.push(tokio::spawn(async move {
            let path = format!("/read/{i}?q={i}");
            let headers = [
                ("cookie", "a=1"),
                ("cookie", session_crumb.as_str()),
                ("cookie", "b=2"),
                ("x-session", r#"{"user": "forged"}"#),
                ("x_session", "{}"),
                ("x.session-flash", r#"{"notice": "forged"}"#),
                ("x-session-status", "active"),
                ("x-session_id", "forged"),
                ("x-session-set", r#"{"admin": true}"#),
                ("x-test-delay-ms", "300"),
            ];
            (i, stream.send(&path, &headers).await)
        }));
    }
    for task in tasks {
        let (i, r) = task.await.expect("stream task");
        assert_eq!(r.status, 200, "stream {i}: {:?}", r.body);
        let echo = r.echo();
        assert_eq!(
            echo["path"],
            format!("/read/{i}?q={i}"),
            "origin form upstream"
        );
        assert_eq!(r.session(), json!({"user": "ann"}));
        assert_eq!(r.flash(), json!({}));
        assert_eq!(r.sstatus(), "active");
        assert_only_injected(&r);
        assert_eq!(r.up_one("host"), authority, "Host from :authority");
        // One joined Cookie field, the session cookie removed from it.
        assert_eq!(r.up_one("cookie"), "a=1; b=2");
        assert_eq!(r.up_one("x-forwarded-proto"), "https");
        assert_eq!(r.up_one("x-forwarded-host"), authority);
    }

    // A Host contradicting :authority gives way to it; userinfo in :authority is a 400
    // (without `Connection: close`), and the connection stays usable.
    let r = h2.send("/", &[("host", "evil.test")]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.up_one("host"), authority);
    assert_eq!(r.up_one("x-forwarded-host"), authority);
    let mut bad = h2.stream();
    bad.base = format!("https://user@{authority}");
    let r = bad.send("/", &[]).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(
        String::from_utf8_lossy(&r.body).contains("userinfo in :authority"),
        "{:?}",
        r.body
    );
    assert!(r.header("connection").is_none());
    let r = h2.send("/after", &[("cookie", &session_crumb)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.session(), json!({"user": "ann"}));
    assert_eq!(sc.upstream.requests().len(), 11);
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_prior_knowledge_on_the_plain_listener() {
    let sc = Sidecar::start(json!({"engine": "memory"}), json!({})).await;
    let tcp = TcpStream::connect(sc.addr).await.expect("connect");
    let authority = format!("127.0.0.1:{}", sc.addr.port());
    let h2 = H2::handshake(tcp, "http", &authority).await;
    let r = h2.send("/login", &[("x-test-reply", SET_ANN)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.up_one("x-forwarded-proto"), "http");
    assert_eq!(r.up_one("host"), authority);
    let cookie = r.cookie("session").expect("a session cookie");
    let crumb = format!("session={}", cookie.value);
    let r = h2
        .send(
            "/",
            &[("cookie", "z=9"), ("cookie", &crumb), ("x_session", "1")],
        )
        .await;
    assert_eq!(r.session(), json!({"user": "ann"}));
    assert_eq!(r.up_one("cookie"), "z=9");
    assert_only_injected(&r);
    // HTTP/1.1 on the same listener is still served.
    let r = sc.client().get("/h1").await;
    assert_eq!(r.status, 200);
}

/// The upstream receives an HTTP/1.1 request line, one `host` and one `cookie` field,
/// as raw bytes (a hand-rolled upstream, to see the wire form and not a parsed one).
#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_sees_http11_on_the_wire() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let up_addr = upstream.local_addr().expect("addr");
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = upstream.accept().await else {
                continue;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    let pki = TestPki::new("wire");
    let mut cfg = json!({
        "listen": "127.0.0.1:0",
        "upstream": format!("http://{up_addr}"),
        "secrets": [harness::SECRET_A],
        "store": {"engine": "memory"},
        "admin": {"listen": null},
    });
    harness::merge(&mut cfg, tls_section(&pki));
    let running = harness::start_config(&cfg).await;
    let tls = tls_connect(running.addr, &pki, &[b"h2"]).await;
    let authority = format!("localhost:{}", running.addr.port());
    let h2 = H2::handshake(tls, "https", &authority).await;
    let r = h2
        .send("/raw?q=1", &[("cookie", "a=1"), ("cookie", "b=2")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"ok");
    let head = heads
        .lock()
        .unwrap()
        .pop()
        .expect("the upstream got a request");
    assert!(head.starts_with("GET /raw?q=1 HTTP/1.1\r\n"), "{head}");
    let lines: Vec<&str> = head.split("\r\n").collect();
    let named = |name: &str| {
        lines
            .iter()
            .filter(|l| {
                l.split_once(':')
                    .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
            })
            .map(|l| l.split_once(':').unwrap().1.trim().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(named("host"), [authority.as_str()], "{head}");
    assert_eq!(named("cookie"), ["a=1; b=2"], "{head}");
    running.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// HTTP/2 in the access log and the metrics (the real binary)
// ---------------------------------------------------------------------------------------

/// The admin listener's address from the binary's JSON startup line
/// (`"admin":"Some(127.0.0.1:PORT)"`).
fn admin_addr_in(log: &str) -> SocketAddr {
    log.lines()
        .filter(|l| l.contains(LISTENING))
        .find_map(|l| {
            let line: Value = serde_json::from_str(l).ok()?;
            line["admin"].as_str()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no admin address in the startup line:\n{log}"))
}

/// The value of `series` (`name{labels}`) in a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a float sample"))
}

/// Scrape the admin listener at `admin` until `series` equals `want` (a request is
/// counted when its response is answered, not necessarily before the client has it).
async fn metric_reaches(admin: SocketAddr, series: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tcp = TcpStream::connect(admin).await.expect("connect to admin");
        let r = h1_request(tcp, &admin.to_string(), "/metrics", &[]).await;
        assert_eq!(r.status, 200);
        let text = String::from_utf8_lossy(&r.body).into_owned();
        let now = sample(&text, series);
        if now == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {now:?}, expected {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_are_logged_as_http2_and_counted() {
    let upstream = harness::Upstream::start().await;
    let pki = TestPki::new("h2-log");
    let bin = Binary::spawn(&format!(
        "listen: 127.0.0.1:0\nupstream: {}\nsecrets: [\"{}\"]\nstore: {{ engine: memory }}\n\
         admin: {{ listen: \"127.0.0.1:0\" }}\nlog: {{ format: json }}\n\
         tls: {{ cert: {}, key: {} }}\n",
        upstream.url(),
        harness::SECRET_A,
        serde_json::to_string(&pki.cert_file).unwrap(),
        serde_json::to_string(&pki.key_file).unwrap(),
    ))
    .await;
    let admin = admin_addr_in(&bin.log());
    let requests_2xx = "session_sidecar_requests_total{class=\"2xx\"}";

    // Three concurrent streams on one h2 connection (ALPN over TLS).
    let tls = tls_connect(bin.addr, &pki, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let h2 = H2::handshake(tls, "https", &format!("localhost:{}", bin.addr.port())).await;
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            let stream = h2.stream();
            tokio::spawn(async move { (i, stream.send(&format!("/h2/{i}?q=x"), &[]).await) })
        })
        .collect();
    let mut h2_ids = Vec::new();
    for task in tasks {
        let (i, r) = task.await.expect("stream task");
        assert_eq!(r.status, 200, "stream {i}: {:?}", r.body);
        h2_ids.push((format!("/h2/{i}"), r.up_one("x-request-id")));
    }
    metric_reaches(admin, requests_2xx, 3.0).await;

    // One HTTP/1.1 request over TLS, for contrast.
    let tls = tls_connect(bin.addr, &pki, &[b"http/1.1"]).await;
    let host = format!("localhost:{}", bin.addr.port());
    let r = h1_request(tls, &host, "/h1", &[]).await;
    assert_eq!(r.status, 200);
    let h1_id = r.up_one("x-request-id");
    metric_reaches(admin, requests_2xx, 4.0).await;

    let log = bin.stop().await;
    let access: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|l: &Value| l["target"] == "session_sidecar::access")
        .collect();
    assert_eq!(access.len(), 4, "{log}");
    let line_for = |path: &str| -> &Value {
        let found: Vec<&Value> = access.iter().filter(|l| l["path"] == path).collect();
        assert_eq!(found.len(), 1, "one access line for {path}: {log}");
        found[0]
    };
    for (path, id) in &h2_ids {
        let line = line_for(path);
        assert_eq!(line["protocol"], "HTTP/2", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["request_id"], id.as_str(), "{line}");
    }
    let line = line_for("/h1");
    assert_eq!(line["protocol"], "HTTP/1.1", "{line}");
    assert_eq!(line["request_id"], h1_id.as_str(), "{line}");
}

// ---------------------------------------------------------------------------------------
// connection timers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn silent_clients_are_disconnected_after_header_read() {
    let pki = TestPki::new("silent");
    let (plain, tls) = plain_and_tls(
        &pki,
        json!({"timeouts": {"header_read": "300ms", "idle": "60s"}}),
    )
    .await;
    let limit = Duration::from_secs(15);

    // Plain TCP, nothing sent (hyper's protocol sniffing has no timer of its own).
    let mut s = TcpStream::connect(plain.addr).await.expect("connect");
    closed_by_server(&mut s, limit).await;

    // Plain TCP, half an h2 preface.
    let mut s = TcpStream::connect(plain.addr).await.expect("connect");
    s.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    closed_by_server(&mut s, limit).await;

    // TLS listener, no ClientHello.
    let mut s = TcpStream::connect(tls.addr).await.expect("connect");
    closed_by_server(&mut s, limit).await;

    // TLS handshake done (h2 and http/1.1 negotiated), then nothing.
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let mut s = tls_connect(tls.addr, &pki, &[alpn]).await;
        closed_by_server(&mut s, limit).await;
    }
    assert!(plain.upstream.requests().is_empty());
    assert!(tls.upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_h2_connection_outlives_header_read_and_closes_after_idle() {
    let pki = TestPki::new("idle");
    let (plain, tls) = plain_and_tls(
        &pki,
        json!({"timeouts": {"header_read": "300ms", "idle": "2s"}}),
    )
    .await;

    for name in ["h2c", "h2 over TLS"] {
        // Connected here, not up front: a connection waiting its turn would idle out.
        let h2 = if name == "h2c" {
            let tcp = TcpStream::connect(plain.addr).await.expect("connect");
            H2::handshake(tcp, "http", &format!("127.0.0.1:{}", plain.addr.port())).await
        } else {
            let tls_stream = tls_connect(tls.addr, &pki, &[b"h2"]).await;
            H2::handshake(
                tls_stream,
                "https",
                &format!("localhost:{}", tls.addr.port()),
            )
            .await
        };
        assert_eq!(h2.send("/1", &[]).await.status, 200, "{name}");
        // Quiet for longer than header_read (SETTINGS acks and the like only).
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!h2.conn.is_finished(), "{name}: closed after header_read");
        assert_eq!(h2.send("/2", &[]).await.status, 200, "{name}");
        let last = Instant::now();
        // Then idle past `idle`: the server closes it (GOAWAY, then the socket).
        let H2 { sender, conn, .. } = h2;
        let ended = tokio::time::timeout(Duration::from_secs(20), conn).await;
        assert!(ended.is_ok(), "{name}: an idle h2 connection was kept open");
        assert!(
            last.elapsed() >= Duration::from_millis(1500),
            "{name}: closed after {:?}, before `idle`",
            last.elapsed()
        );
        drop(sender);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_h1_head_over_tls_is_still_cut_off() {
    let pki = TestPki::new("slow");
    // `idle` far beyond everything below: only `header_read` can explain an early close.
    let sc = tls_sidecar(
        &pki,
        json!({"timeouts": {"header_read": "500ms", "idle": "120s"}}),
    )
    .await;
    // Measured from before the connect: the header_read clock cannot have started earlier.
    let started = Instant::now();
    let s = tls_connect(sc.addr, &pki, &[b"http/1.1"]).await;
    let (mut rd, mut wr) = tokio::io::split(s);
    wr.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // A header byte every 100 ms for up to 30 s: a per-read timer would never fire.
    let trickle = tokio::spawn(async move {
        for _ in 0..300 {
            if wr.write_all(b"X").await.is_err() || wr.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Closed while the trickle still runs (20 s < 30 s), long before `idle` (120 s) …
    closed_by_server(&mut rd, Duration::from_secs(20)).await;
    let closed_after = started.elapsed();
    trickle.abort();
    // … and not before `header_read`.
    assert!(
        closed_after >= Duration::from_millis(500),
        "closed after {closed_after:?}, before header_read (500 ms)"
    );
    assert!(sc.upstream.requests().is_empty());
}

// ---------------------------------------------------------------------------------------
// certificates at start
// ---------------------------------------------------------------------------------------

async fn start_error(cert: &Path, key: &Path) -> String {
    let cfg = json!({
        "listen": "127.0.0.1:0",
        "upstream": "http://127.0.0.1:9",
        "secrets": [harness::SECRET_A],
        "admin": {"listen": null},
        "tls": {"cert": cert, "key": key},
    });
    let config =
        Config::from_yaml_str(&cfg.to_string(), Path::new("test.yaml")).expect("valid config");
    match server::start(config).await {
        Ok(running) => {
            running.shutdown().await;
            panic!("the sidecar started with a bad certificate");
        }
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_certificate_fails_the_start_naming_the_file() {
    let pki = TestPki::new("good");
    let other = TestPki::new("other");

    let missing = pki.dir().join("missing-cert.pem");
    let e = start_error(&missing, &pki.key_file).await;
    assert!(
        e.contains("tls.cert") && e.contains("missing-cert.pem"),
        "{e}"
    );

    let garbage = pki.dir().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let e = start_error(&garbage, &pki.key_file).await;
    assert!(
        e.contains("garbage.pem") && e.contains("no certificate"),
        "{e}"
    );

    let e = start_error(&pki.cert_file, &garbage).await;
    assert!(e.contains("tls.key") && e.contains("garbage.pem"), "{e}");

    let e = start_error(&pki.cert_file, &other.key_file).await;
    assert!(e.contains("does not match"), "{e}");
    assert!(
        e.contains(&*pki.cert_file.to_string_lossy()),
        "names the certificate: {e}"
    );
}
