//! `https://` and `unix:` upstreams (docs/protocol.md §10.1), end to end with real
//! components: the scripted upstream served over rustls with a CA generated in the test, or
//! on a unix socket; the sidecar in-process (and the binary where the environment matters).

mod backing;
mod harness;

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use bytes::Bytes;
use harness::{
    Client, SECRET_A, UnixUpstream, Upstream,
    binary::{self, Binary},
    certs::TestPki,
    start_config,
};
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use session_sidecar::{config::Config, server};

fn sidecar_config(upstream: &str, extra: Value) -> Value {
    let mut cfg = json!({
        "listen": "127.0.0.1:0",
        "upstream": upstream,
        "secrets": [SECRET_A],
        "store": {"engine": "memory"},
        "admin": {"listen": null},
    });
    harness::merge(&mut cfg, extra);
    cfg
}

fn https_config(port: u16, ca: &Path, extra: Value) -> Value {
    let mut cfg = sidecar_config(
        &format!("https://localhost:{port}"),
        json!({"upstream_tls": {"ca": ca}}),
    );
    harness::merge(&mut cfg, extra);
    cfg
}

/// A session written, then read back, with reserved headers stripped both ways.
async fn session_round_trip(addr: SocketAddr) {
    let mut client = Client::new(addr);
    let r = client
        .write_with(
            &[
                ("X-Session-Set", r#"{"user":"ann"}"#),
                ("X-Session-Flash-Set", r#"{"notice":"hi"}"#),
            ],
            // A client's forged session header never reaches the upstream.
            &[("X-Session", r#"{"user":"mallory"}"#)],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.sstatus(), "none");
    assert_eq!(r.session(), json!({}));
    assert!(
        r.reserved_in_response().is_empty(),
        "{:?}",
        r.reserved_in_response()
    );
    assert!(client.cookie.is_some(), "a session cookie was issued");

    let r = client.get("/read").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.sstatus(), "active");
    assert_eq!(r.session(), json!({"user": "ann"}));
    assert_eq!(r.flash(), json!({"notice": "hi"}));
    // The client's Host is passed through unchanged.
    assert_eq!(r.up_one("host"), format!("127.0.0.1:{}", addr.port()));
    assert!(r.reserved_in_response().is_empty());
}

/// POST a chunked body whose first chunk must reach `seen` before the rest is sent:
/// the sidecar streams the body, it does not buffer it.
async fn streamed_post(addr: SocketAddr, seen: impl Fn() -> usize) {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 16;
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let body = ChunkBody(rx);
    let req = Request::post("/upload")
        .header("host", format!("127.0.0.1:{}", addr.port()))
        .body(body)
        .expect("request");
    let before = seen();
    let response = tokio::spawn(async move { sender.send_request(req).await });
    tx.send(Bytes::from(vec![b'a'; CHUNK]))
        .await
        .expect("first chunk");
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen() == before {
        assert!(
            Instant::now() < deadline,
            "the upstream never saw the request head while the body was still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 1..CHUNKS {
        tx.send(Bytes::from(vec![b'b'; CHUNK]))
            .await
            .expect("chunk");
    }
    drop(tx);
    let resp = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .expect("response in time")
        .expect("task")
        .expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let echo: Value = serde_json::from_slice(&body).expect("echo");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_len"], CHUNK * CHUNKS);
}

/// A request body fed chunk by chunk from the test (sent chunked, no length).
struct ChunkBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChunkBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

// ---- https ----------------------------------------------------------------------------

#[tokio::test]
async fn https_upstream_trusted_through_upstream_tls_ca_serves_sessions() {
    let pki = TestPki::new("upstream");
    let up = Upstream::start_tls(&pki).await;
    let running = start_config(&https_config(up.addr.port(), &pki.ca_file, json!({}))).await;

    session_round_trip(running.addr).await;
    let seen = up.seen.clone();
    streamed_post(running.addr, move || seen.lock().unwrap().len()).await;
    // The path and query go upstream unchanged.
    let r = Client::new(running.addr).get("/a/b?x=1&y=%20").await;
    assert_eq!(r.echo()["path"], "/a/b?x=1&y=%20");
    assert!(
        up.requests().len() >= 4,
        "every request went through TLS: {:?}",
        up.requests().len()
    );
    running.shutdown().await;
}

#[tokio::test]
async fn https_upstream_by_ip_address_verifies_the_ip_san() {
    let pki = TestPki::new("upstream");
    let up = Upstream::start_tls(&pki).await;
    let cfg = sidecar_config(
        &format!("https://127.0.0.1:{}", up.addr.port()),
        json!({"upstream_tls": {"ca": pki.ca_file}}),
    );
    let running = start_config(&cfg).await;
    let r = Client::new(running.addr).get("/").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.sstatus(), "none");
    running.shutdown().await;
}

#[tokio::test]
async fn https_upstream_signed_by_another_ca_is_a_502() {
    let pki = TestPki::new("upstream");
    let other = TestPki::new("other");
    let up = Upstream::start_tls(&pki).await;
    let running = start_config(&https_config(up.addr.port(), &other.ca_file, json!({}))).await;
    let mut client = Client::new(running.addr);
    for _ in 0..2 {
        let r = client.get("/").await;
        assert_eq!(r.status, 502, "{:?}", r.body);
        let body = String::from_utf8_lossy(&r.body);
        assert!(body.contains("upstream unreachable"), "{body}");
        // The cause is for the log, not for the client.
        assert!(!body.to_ascii_lowercase().contains("certificate"), "{body}");
    }
    assert!(
        up.requests().is_empty(),
        "nothing may be sent to an unverified upstream"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_bounded_by_the_connect_timeout() {
    // Accepts TCP, never answers the ClientHello.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let pki = TestPki::new("upstream");
    let cfg = https_config(
        port,
        &pki.ca_file,
        json!({"timeouts": {"upstream_connect": "1s", "upstream_response": "60s"}}),
    );
    let running = start_config(&cfg).await;
    let r = Client::new(running.addr).get("/").await;
    // 502 (connect failed), not 504 after the 60 s response timeout.
    assert_eq!(r.status, 502, "{:?}", r.body);
    running.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_empty_upstream_ca_file_fails_start_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing-ca.pem");
    let empty = dir.path().join("empty-ca.pem");
    std::fs::write(&empty, "").expect("write");
    for ca in [&missing, &empty] {
        let cfg = https_config(8443, ca, json!({}));
        let config = Config::from_yaml_str(&cfg.to_string(), Path::new("test.yaml"))
            .expect("the config itself is valid");
        let e = server::start(config)
            .await
            .expect_err("start must fail without a usable CA");
        let text = format!("{e:#}");
        assert!(text.contains(&ca.display().to_string()), "{text}");
        assert!(text.contains("upstream_tls.ca"), "{text}");
    }
}

// ---- unix -----------------------------------------------------------------------------

#[tokio::test]
async fn unix_upstream_serves_sessions_and_reuses_its_connection() {
    let dir = tempfile::tempdir().expect("temp dir");
    let up = UnixUpstream::start(&dir.path().join("app.sock")).await;
    let running = start_config(&sidecar_config(&up.url(), json!({}))).await;

    session_round_trip(running.addr).await;
    let seen = up.seen.clone();
    streamed_post(running.addr, move || seen.lock().unwrap().len()).await;

    // Sequential requests share pooled connections (each client request comes on its
    // own connection to the sidecar).
    let before = up.connections();
    let mut client = Client::new(running.addr);
    const N: usize = 6;
    for i in 0..N {
        let r = client.get(&format!("/seq/{i}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.echo()["path"], format!("/seq/{i}"));
        // Let the finished connection go back to the pool.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let opened = up.connections() - before;
    assert!(
        opened <= 2,
        "{opened} upstream connections for {N} sequential requests: not reused"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_request_without_host_gets_a_host_on_a_unix_upstream() {
    let dir = tempfile::tempdir().expect("temp dir");
    let up = UnixUpstream::start(&dir.path().join("app.sock")).await;
    let running = start_config(&sidecar_config(&up.url(), json!({}))).await;
    let addr = running.addr;
    // raw_exchange blocks: keep it off the runtime that serves the sidecar.
    let (text, _) = tokio::task::spawn_blocking(move || {
        harness::raw_exchange(addr, b"GET /old HTTP/1.0\r\n\r\n", Duration::from_secs(10))
    })
    .await
    .expect("raw exchange");
    assert!(
        text.lines().next().unwrap_or("").contains(" 200 "),
        "{text}"
    );
    let seen = up.requests();
    let host: Vec<_> = seen[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "host")
        .collect();
    assert_eq!(host.len(), 1, "{:?}", seen[0].headers);
    assert_eq!(host[0].1, "localhost");
    running.shutdown().await;
}

#[tokio::test]
async fn a_missing_unix_socket_is_a_502_not_a_hang() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nobody-listens.sock");
    let cfg = sidecar_config(&format!("unix:{}", path.display()), json!({}));
    let running = start_config(&cfg).await;
    let r = Client::new(running.addr).get("/").await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert!(String::from_utf8_lossy(&r.body).contains("upstream unreachable"));
    running.shutdown().await;
}

// ---- the binary: system roots and the log ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_upstream_tls_ca_the_system_roots_are_used() {
    let pki = TestPki::new("upstream");
    let up = Upstream::start_tls(&pki).await;
    // rustls-native-certs reads SSL_CERT_FILE instead of the platform store.
    let config = format!("upstream: https://localhost:{}\n", up.addr.port());
    let bin = Binary::with_config(binary::config(&config))
        .env("SSL_CERT_FILE", &pki.ca_file)
        .spawn()
        .await;
    let r = Client::new(bin.addr).get("/via-system-roots").await;
    let log = bin.stop().await;
    assert_eq!(r.status, 200, "{:?}\n{log}", r.body);
    assert_eq!(r.echo()["path"], "/via-system-roots");
}

#[test]
fn without_any_root_the_binary_refuses_to_start_with_a_hint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("no-roots.pem");
    std::fs::write(&empty, "").expect("write");
    let path = binary::write_config(
        dir.path(),
        &binary::config("upstream: https://localhost:8443\n"),
    );
    let out = binary::command()
        .arg("--config")
        .arg(&path)
        .env("SSL_CERT_FILE", &empty)
        .output()
        .expect("run the binary");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no system root certificate") && err.contains("upstream_tls.ca"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_failure_is_logged_with_its_cause_but_no_cookie() {
    let pki = TestPki::new("upstream");
    let other = TestPki::new("other");
    let up = Upstream::start_tls(&pki).await;
    // Two sidecars share one real redis-server and the secret: the first (trusting the
    // upstream's CA) creates a session; the binary (trusting another CA) then gets a
    // request with that valid cookie, loads the session and fails at the handshake.
    let redis = tokio::task::block_in_place(backing::RedisServer::start);
    let store = json!({"engine": "redis", "storage": {"host": "127.0.0.1", "port": redis.port()}});
    let good = start_config(&https_config(
        up.addr.port(),
        &pki.ca_file,
        json!({"store": store}),
    ))
    .await;
    let mut client = Client::new(good.addr);
    let r = client
        .write(&[("X-Session-Set", r#"{"canary_key_k4":"canary-data-5d1e"}"#)])
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let cookie = client.cookie.clone().expect("a session cookie");
    good.shutdown().await;

    let config = format!(
        "upstream: https://localhost:{}\nupstream_tls: {{ ca: {} }}\nstore: {}\n",
        up.addr.port(),
        other.ca_file.display(),
        store
    );
    let bin = Binary::spawn(&binary::config(&config)).await;
    client.addr = bin.addr;
    let r = client.get("/").await;
    let log = bin.stop().await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert!(
        log.contains("UnknownIssuer") || log.contains("unknown issuer"),
        "the cause is logged: {log}"
    );
    // The cookie was verified and its session loaded before the upstream failed.
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("session_sidecar::access"))
        .collect();
    assert_eq!(access.len(), 1, "{log}");
    assert!(
        access[0].contains("session=\"active\"") || access[0].contains("session=active"),
        "the request carried a live session: {}",
        access[0]
    );
    let (sid, mac) = cookie.split_once('.').expect("sid.mac");
    for secret in [
        cookie.as_str(),
        sid,
        mac,
        "canary-data-5d1e",
        "canary_key_k4",
    ] {
        assert!(
            !log.contains(secret),
            "{secret:?} leaked into the log:\n{log}"
        );
    }
    assert_eq!(
        up.requests().len(),
        1,
        "only the first sidecar reached the upstream"
    );
}
