//! The process lifecycle with the real binary and real signals
//! (docs/configuration.md#signals, docs/decisions.md#lifecycle-reload-and-shutdown):
//! `SIGHUP` re-reads the configuration without dropping connections (secret rotation,
//! bypass and cookie attributes, TLS certificate files renewed in place; a broken file
//! is rejected and the old settings stay), `SIGTERM` stops accepting at once, lets a
//! slow in-flight request finish, closes idle keep-alive connections promptly, gives
//! tunnels up to `timeouts.shutdown`, and exits 0.
//!
//! Signals are sent with `kill(1)` to the child's pid only. The upstream is the scripted
//! in-process one from `harness` (`X-Test-Delay-Ms`, `X-Test-Reply`, `/ws` echo).

mod harness;

use harness::certs::TestPki;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use harness::{
    Resp, SECRET_A, SECRET_B, SetCookie, Upstream,
    binary::{Binary, WAIT},
};
use http::Request;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use session_sidecar::{
    config::Config,
    cookie::CookieSigner,
    server::{self, ReloadError},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_rustls::client::TlsStream;

/// A config for `upstream` with `secrets`, the memory store (unless `extra` has its own
/// `store:`), no admin listener, JSON logs, then `extra`.
fn yaml(upstream: &Upstream, secrets: &[&str], extra: &str) -> String {
    let secrets: Vec<String> = secrets.iter().map(|s| format!("\"{s}\"")).collect();
    let store = if extra.contains("store:") {
        ""
    } else {
        "store: { engine: memory }\n"
    };
    format!(
        "listen: 127.0.0.1:0\nupstream: {}\nsecrets: [{}]\n{store}\
         admin: {{ listen: null }}\nlog: {{ format: json }}\n{extra}",
        upstream.url(),
        secrets.join(", ")
    )
}

// ---------------------------------------------------------------------------------------
// a keep-alive client connection
// ---------------------------------------------------------------------------------------

/// One HTTP/1.1 connection, reused for every request (no reconnects: a request after the
/// connection closed fails the test).
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
    addr: SocketAddr,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Conn::over(stream, addr).await
    }

    /// HTTP/1.1 over an established stream (TCP or TLS) to the sidecar at `addr`.
    async fn over<I>(io: I, addr: SocketAddr) -> Conn
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .expect("handshake");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Conn { sender, task, addr }
    }

    async fn send(&mut self, path: &str, cookie: Option<&str>, headers: &[(&str, &str)]) -> Resp {
        let mut req = Request::get(path).header("host", format!("127.0.0.1:{}", self.addr.port()));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new())).unwrap();
        tokio::time::timeout(WAIT, self.sender.ready())
            .await
            .expect("connection ready in time")
            .expect("the keep-alive connection is still open");
        let resp = tokio::time::timeout(WAIT, self.sender.send_request(req))
            .await
            .expect("response in time")
            .expect("response on the same connection");
        Resp::read(resp).await.expect("the whole response body")
    }

    /// A fresh request (no cookie) whose upstream response sets `{"user": name}`.
    async fn write_user(&mut self, name: &str) -> Resp {
        let reply =
            serde_json::to_string(&[["X-Session-Set", &format!("{{\"user\":\"{name}\"}}")]])
                .unwrap();
        self.send("/", None, &[("x-test-reply", &reply)]).await
    }

    /// Wait until the server closes this connection.
    async fn closed_by_server(self, bound: Duration) {
        tokio::time::timeout(bound, self.task)
            .await
            .expect("the server closes the idle keep-alive connection")
            .unwrap();
    }
}

/// The binary with `yaml(upstream, [SECRET_A], extra)`.
async fn sidecar(upstream: &Upstream, extra: &str) -> Binary {
    Binary::spawn(&yaml(upstream, &[SECRET_A], extra)).await
}

fn session_cookie(resp: &Resp) -> SetCookie {
    resp.cookie("session")
        .unwrap_or_else(|| panic!("no session Set-Cookie: {:?}", resp.headers))
}

// ---------------------------------------------------------------------------------------
// SIGHUP
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_secrets_on_a_keep_alive_connection_that_survives() {
    let upstream = Upstream::start().await;
    let proc = sidecar(&upstream, "").await;
    let mut conn = Conn::open(proc.addr).await;

    // A session signed with A.
    let r = conn.write_user("ann").await;
    assert_eq!(r.status, 200);
    let old = session_cookie(&r).value;
    let signed_by =
        |secret: &str, v: &str| CookieSigner::new("session", &[secret]).verify(v).is_some();
    assert!(signed_by(SECRET_A, &old));

    // Rotate: B signs, A still verifies.
    proc.rewrite(&yaml(&upstream, &[SECRET_B, SECRET_A], ""));
    proc.reload().await;
    assert!(
        proc.log().contains(r#""changed":"secrets""#),
        "{}",
        proc.log()
    );
    let r = conn.send("/", Some(&format!("session={old}")), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.sstatus(), "active", "the A cookie still verifies");
    assert_eq!(r.session()["user"], "ann");
    let new = session_cookie(&r).value;
    assert_ne!(new, old, "re-signed on this response");
    assert_eq!(
        new.split('.').next(),
        old.split('.').next(),
        "same session id"
    );
    assert!(
        signed_by(SECRET_B, &new),
        "re-signed with the new first secret B"
    );
    assert!(!signed_by(SECRET_A, &new));

    // Retire A: the old cookie is now invalid, the re-signed one works.
    proc.rewrite(&yaml(&upstream, &[SECRET_B], ""));
    proc.reload().await;
    let r = conn.send("/", Some(&format!("session={old}")), &[]).await;
    assert_eq!(r.sstatus(), "invalid", "A no longer verifies");
    assert!(session_cookie(&r).is_clearing());
    let r = conn.send("/", Some(&format!("session={new}")), &[]).await;
    assert_eq!(r.sstatus(), "active");
    assert_eq!(r.session()["user"], "ann");
    assert!(
        r.cookie("session").is_none(),
        "signed by the current secret: no re-sign"
    );

    // Three SIGHUPs in a row with an unchanged file: harmless, still the same connection.
    for _ in 0..3 {
        proc.reload().await;
    }
    let r = conn.send("/", Some(&format!("session={new}")), &[]).await;
    assert_eq!(r.sstatus(), "active");
    assert!(!proc.log().contains("reload rejected"), "{}", proc.log());
    let log = proc.log();
    assert!(!log.contains(SECRET_A) && !log.contains(SECRET_B) && !log.contains(&old));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_the_old_one_and_says_where() {
    let upstream = Upstream::start().await;
    let proc = sidecar(&upstream, "bypass: [/static/]\n").await;
    let mut conn = Conn::open(proc.addr).await;
    let cookie = session_cookie(&conn.write_user("bob").await).value;
    let path = proc.config.display().to_string();

    // 1. A YAML syntax error (an unclosed flow sequence on line 7).
    proc.rewrite(&format!(
        "{}bypass: [/static/\n",
        yaml(&upstream, &[SECRET_B], "")
    ));
    proc.reload().await;
    // 2. Valid YAML, invalid setting: a secret that is too short.
    proc.rewrite(&yaml(&upstream, &["short"], ""));
    proc.reload().await;
    // 3. An unknown key.
    proc.rewrite(&yaml(&upstream, &[SECRET_B], "cookies: { nmae: sid }\n"));
    proc.reload().await;

    let log = proc.log();
    let rejected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("configuration reload rejected"))
        .collect();
    assert_eq!(rejected.len(), 3, "{log}");
    for line in &rejected {
        let at = line
            .find(&format!("{path}:"))
            .unwrap_or_else(|| panic!("no {path}: in {line}"));
        let pos: Vec<&str> = line[at + path.len() + 1..].splitn(3, ':').collect();
        assert!(
            pos.len() == 3 && pos[0].parse::<u32>().is_ok() && pos[1].parse::<u32>().is_ok(),
            "FILE:LINE:COL expected in {line}"
        );
    }
    assert!(
        log.contains(&format!("{path}:7:12: unknown key `nmae`")),
        "the unknown key's position: {log}"
    );
    assert!(
        !log.contains("short\""),
        "secret values stay out of the log"
    );

    // The old settings are still in force on the same connection: A verifies, the
    // bypass still applies, nothing was re-signed.
    let r = conn
        .send("/", Some(&format!("session={cookie}")), &[])
        .await;
    assert_eq!(r.sstatus(), "active");
    assert_eq!(r.session()["user"], "bob");
    assert!(
        r.cookie("session").is_none(),
        "still signed by the current secret"
    );
    let r = conn
        .send("/static/app.js", Some(&format!("session={cookie}")), &[])
        .await;
    assert!(
        r.up_all("x-session-status").is_empty(),
        "bypass still in force"
    );

    // A fixed file is picked up by the next SIGHUP.
    proc.rewrite(&yaml(&upstream, &[SECRET_B, SECRET_A], ""));
    proc.reload().await;
    let r = conn
        .send("/", Some(&format!("session={cookie}")), &[])
        .await;
    assert_eq!(r.sstatus(), "active");
    assert!(
        r.cookie("session").is_some(),
        "re-signed with B after the good reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_bypass_and_cookie_attributes_and_names_restart_only_changes() {
    let upstream = Upstream::start().await;
    let proc = sidecar(&upstream, "").await;
    let mut conn = Conn::open(proc.addr).await;

    let r = conn.send("/static/app.js", None, &[]).await;
    assert_eq!(r.sstatus(), "none", "not bypassed yet");
    let c = session_cookie(&conn.write_user("cy").await);
    assert!(c.has("secure") && c.has("httponly"), "{c:?}");
    assert_eq!(c.get("samesite").as_deref(), Some("Lax"));

    // Reloadable: bypass, cookie attributes. Restart-only: the store timeout and the
    // shutdown timeout (named in the log, not applied).
    proc.rewrite(&yaml(
        &upstream,
        &[SECRET_A],
        "bypass: [/static/]\ncookies: { same_site: strict, secure: false, max_age: 1h }\n\
         timeouts: { shutdown: 7s }\nstore: { engine: memory, timeout: 2s }\n",
    ));
    proc.reload().await;
    proc.wait_log("needs a restart: store.timeout, timeouts.shutdown", 1)
        .await;

    let r = conn.send("/static/app.js", None, &[]).await;
    assert!(
        r.up_all("x-session-status").is_empty(),
        "bypassed after the reload: {:?}",
        r.up_headers()
    );
    let c = session_cookie(&conn.write_user("dee").await);
    assert!(!c.has("secure"), "{c:?}");
    assert!(c.has("httponly"));
    assert_eq!(c.get("samesite").as_deref(), Some("Strict"));
    assert_eq!(c.get("max-age").as_deref(), Some("3600"));

    // The restart-only difference is reported again on the next SIGHUP (still pending).
    proc.reload().await;
    proc.wait_log("needs a restart: store.timeout, timeouts.shutdown", 2)
        .await;
}

// ---------------------------------------------------------------------------------------
// SIGTERM
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish_refuses_new_connections_and_exits_0() {
    let upstream = Upstream::start().await;
    let mut proc = sidecar(&upstream, "timeouts: { shutdown: 30s }\n").await;
    let mut conn = Conn::open(proc.addr).await;
    let slow = tokio::spawn(async move {
        let r = conn
            .send("/slow", None, &[("x-test-delay-ms", "8000")])
            .await;
        (r, conn)
    });
    // In flight once the upstream has it.
    let deadline = Instant::now() + WAIT;
    while !upstream.requests().iter().any(|s| s.path == "/slow") {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proc.signal("TERM");

    // The listener closes at once: new connections are refused while the slow request
    // is still being served.
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpStream::connect(proc.addr).await {
            // Refused once the socket is closed; a connection that was still in the
            // accept queue when it closed is reset instead.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                break;
            }
            Err(e) => panic!("unexpected connect error: {e}"),
            Ok(_) => {
                assert!(Instant::now() < deadline, "still accepting after SIGTERM");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert!(
        proc.is_running() && !slow.is_finished(),
        "refused while draining (the slow request takes 8 s)"
    );

    let (r, conn) = tokio::time::timeout(WAIT, slow).await.unwrap().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.echo()["path"], "/slow");
    assert_eq!(
        r.header("connection").as_deref(),
        Some("close"),
        "the drained connection is not kept alive"
    );
    proc.wait_exit_0(WAIT).await;
    conn.closed_by_server(WAIT).await;
    assert!(proc.log().contains("SIGTERM"), "{}", proc.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keep_alive_connections_without_waiting_for_the_deadline() {
    let upstream = Upstream::start().await;
    // A drain deadline far beyond the bound below: exiting within the bound means idle
    // connections did not hold the shutdown.
    let mut proc = sidecar(
        &upstream,
        "timeouts: { shutdown: 120s, idle: 120s, header_read: 100s }\n",
    )
    .await;
    let mut idle = Conn::open(proc.addr).await;
    assert_eq!(idle.send("/", None, &[]).await.status, 200);
    // A second connection that never sent a byte.
    let mut silent = TcpStream::connect(proc.addr).await.unwrap();

    proc.signal("TERM");
    proc.wait_exit_0(Duration::from_secs(60)).await;
    idle.closed_by_server(WAIT).await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .expect("the silent connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_open_tunnel_drains_until_the_deadline_then_exits_0() {
    let upstream = Upstream::start().await;
    let mut proc = sidecar(&upstream, "timeouts: { shutdown: 2s }\n").await;
    let mut tunnel = open_tunnel(proc.addr).await;
    echo(&mut tunnel, b"before").await;

    proc.signal("TERM");
    // The tunnel keeps working while the sidecar drains …
    tokio::time::sleep(Duration::from_millis(300)).await;
    echo(&mut tunnel, b"during the drain").await;
    // … and the client never closes it: the process still exits 0 at the deadline.
    proc.wait_exit_0(WAIT).await;
    assert!(
        proc.log().contains("shutdown timeout reached"),
        "{}",
        proc.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_the_drain_at_once_and_sighup_is_ignored_meanwhile() {
    let upstream = Upstream::start().await;
    // The drain would take 120 s (an open tunnel); the bound below is far shorter.
    let mut proc = sidecar(&upstream, "timeouts: { shutdown: 120s }\n").await;
    let mut tunnel = open_tunnel(proc.addr).await;

    proc.signal("TERM");
    proc.wait_log("shutting down", 1).await;
    proc.signal("HUP");
    echo(&mut tunnel, b"draining").await;
    assert!(proc.is_running(), "still draining");
    assert!(!proc.log().contains("SIGHUP: re-reading"), "{}", proc.log());

    proc.signal("TERM");
    proc.wait_exit_0(Duration::from_secs(60)).await;
    assert!(proc.log().contains("second stop signal"), "{}", proc.log());
    assert!(!proc.log().contains("SIGHUP: re-reading"), "{}", proc.log());
}

/// A raw connection to the sidecar at `addr`, upgraded to the upstream's `/ws` echo.
async fn open_tunnel(addr: SocketAddr) -> TcpStream {
    let mut tunnel = TcpStream::connect(addr).await.unwrap();
    tunnel
        .write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut tunnel).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tunnel
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut byte))
            .await
            .expect("response head in time")
            .unwrap();
        assert_eq!(n, 1, "closed before the end of the head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

async fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut got))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(got, msg);
}

// ---------------------------------------------------------------------------------------
// Running::reload in-process: TLS certificates
// ---------------------------------------------------------------------------------------

fn tls_config(
    upstream: &Upstream,
    pki_cert: &std::path::Path,
    pki_key: &std::path::Path,
    extra: serde_json::Value,
) -> Config {
    let mut cfg = serde_json::json!({
        "listen": "127.0.0.1:0",
        "upstream": upstream.url(),
        "secrets": [SECRET_A],
        "store": {"engine": "memory"},
        "admin": {"listen": null},
        "tls": {"cert": pki_cert, "key": pki_key},
    });
    harness::merge(&mut cfg, extra);
    Config::from_yaml_str(&cfg.to_string(), std::path::Path::new("test.yaml"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `tls_config` with `pki`'s certificate and key and nothing else.
fn pki_config(upstream: &Upstream, pki: &TestPki) -> Config {
    tls_config(
        upstream,
        &pki.cert_file,
        &pki.key_file,
        serde_json::json!({}),
    )
}

/// A TLS connection trusting only `pki`'s CA; the leaf the server presented.
async fn tls_connect(
    addr: SocketAddr,
    pki: &TestPki,
) -> Result<(TlsStream<TcpStream>, CertificateDer<'static>), std::io::Error> {
    tls_connect_with(addr, Arc::new(pki.client_config(&[b"http/1.1"]))).await
}

/// A TLS connection (HTTP/1.1 by ALPN) with `config`; the leaf the server presented.
async fn tls_connect_with(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<(TlsStream<TcpStream>, CertificateDer<'static>), std::io::Error> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok((tls, leaf))
}

fn leaf_of(pki: &TestPki) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(&pki.cert_file)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_certificates_for_new_handshakes_and_rejects_a_bad_one_whole() {
    let upstream = Upstream::start().await;
    let (a, b) = (TestPki::new("reload-a"), TestPki::new("reload-b"));
    let running = server::start(pki_config(&upstream, &a)).await.unwrap();
    let addr = running.addr;

    let (tls, leaf) = tls_connect(addr, &a).await.unwrap();
    assert_eq!(leaf, leaf_of(&a));
    let mut old_conn = Conn::over(tls, addr).await;
    assert_eq!(old_conn.send("/", None, &[]).await.status, 200);

    // New paths: new handshakes present B; the connection made with A keeps working.
    let report = running.reload(&pki_config(&upstream, &b)).unwrap();
    assert_eq!(report.changed, ["tls.cert", "tls.key"]);
    assert!(report.needs_restart.is_empty());
    let (_, leaf) = tls_connect(addr, &b).await.unwrap();
    assert_eq!(leaf, leaf_of(&b));
    assert!(
        tls_connect(addr, &a).await.is_err(),
        "A's CA no longer matches"
    );
    assert_eq!(old_conn.send("/", None, &[]).await.status, 200);

    // Same paths, renewed content (a deployment overwriting the files): re-read too.
    let renewed = TestPki::new("reload-b-renewed");
    std::fs::copy(&renewed.cert_file, &b.cert_file).unwrap();
    std::fs::copy(&renewed.key_file, &b.key_file).unwrap();
    let report = running.reload(&pki_config(&upstream, &b)).unwrap();
    assert!(report.changed.is_empty(), "{report:?}");
    let (_, leaf) = tls_connect(addr, &renewed).await.unwrap();
    assert_eq!(leaf, leaf_of(&renewed));

    // A bad certificate rejects the whole reload: the bypass in the same file is not
    // applied and handshakes keep presenting the renewed pair.
    let garbage = b.dir().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let err = running
        .reload(&tls_config(
            &upstream,
            &garbage,
            &b.key_file,
            serde_json::json!({"bypass": ["/"]}),
        ))
        .unwrap_err();
    assert!(matches!(err, ReloadError::Tls(_)), "{err}");
    assert!(err.to_string().contains("garbage.pem"), "{err}");
    let (tls, leaf) = tls_connect(addr, &renewed).await.unwrap();
    assert_eq!(leaf, leaf_of(&renewed));
    let r = Conn::over(tls, addr).await.send("/", None, &[]).await;
    assert_eq!(
        r.sstatus(),
        "none",
        "bypass not applied: the session is still handled"
    );

    // A file that is not a configuration at all: rejected with FILE:LINE:COL.
    let broken = b.dir().join("broken.yaml");
    std::fs::write(&broken, "listen: [\n").unwrap();
    let err = running.reload_from(&broken).unwrap_err();
    assert!(matches!(err, ReloadError::Config(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}:", broken.display())),
        "{err}"
    );

    running.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// SIGHUP through the binary: TLS certificates
// ---------------------------------------------------------------------------------------

/// A client (ALPN `http/1.1`, no session resumption) trusting every CA in `pkis`: the
/// handshake succeeds with either leaf, so the test sees which one the server chose
/// instead of a failure.
fn trusting_all(pkis: &[&TestPki]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for pki in pkis {
        for cert in CertificateDer::pem_file_iter(&pki.ca_file).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every handshake is a full one: a resumed TLS 1.3 session carries no certificate,
    // and rustls would report the one remembered from the session it resumed.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// The JSON log lines whose message starts with `message`.
fn log_lines(proc: &Binary, message: &str) -> Vec<serde_json::Value> {
    proc.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_re_reads_overwritten_certificate_files_without_dropping_connections() {
    let upstream = Upstream::start().await;
    let (first, second) = (TestPki::new("first"), TestPki::new("second"));
    let (first_leaf, second_leaf) = (leaf_of(&first), leaf_of(&second));
    assert_ne!(first_leaf, second_leaf);
    // The paths never change: only the files' content does (a renewal in place).
    let (cert, key) = (&first.cert_file, &first.key_file);
    let tls = format!(
        "tls: {{ cert: {}, key: {} }}\n",
        serde_json::to_string(cert).unwrap(),
        serde_json::to_string(key).unwrap()
    );
    let proc = sidecar(&upstream, &tls).await;
    let client = trusting_all(&[&first, &second]);

    // A keep-alive connection made with the first certificate.
    let (stream, leaf) = tls_connect_with(proc.addr, client.clone()).await.unwrap();
    assert_eq!(leaf, first_leaf, "served the first leaf at start");
    let mut old_conn = Conn::over(stream, proc.addr).await;
    let r = old_conn.send("/before", None, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.up_one("x-forwarded-proto"), "https");

    // Overwrite both files with the second pair and SIGHUP.
    std::fs::copy(&second.cert_file, cert).unwrap();
    std::fs::copy(&second.key_file, key).unwrap();
    proc.reload().await;
    assert_eq!(
        log_lines(&proc, "configuration reloaded;").len(),
        1,
        "{}",
        proc.log()
    );
    assert!(
        log_lines(&proc, "configuration reload rejected").is_empty(),
        "{}",
        proc.log()
    );

    // New handshakes get the second leaf; the old connection still works.
    let (stream, leaf) = tls_connect_with(proc.addr, client.clone()).await.unwrap();
    assert_eq!(leaf, second_leaf, "a new connection gets the second leaf");
    let r = Conn::over(stream, proc.addr)
        .await
        .send("/new", None, &[])
        .await;
    assert_eq!(r.status, 200);
    let r = old_conn.send("/after-reload", None, &[]).await;
    assert_eq!(r.status, 200, "the old keep-alive TLS connection survives");
    assert_eq!(r.echo()["path"], "/after-reload");

    // A broken key file: rejected, naming the file; the second pair stays in force.
    std::fs::write(key, "not a private key\n").unwrap();
    proc.reload().await;
    let rejected = log_lines(&proc, "configuration reload rejected");
    assert_eq!(rejected.len(), 1, "{}", proc.log());
    let error = rejected[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("tls.key") && error.contains(&key.display().to_string()),
        "the rejection names the key file: {}",
        rejected[0]
    );
    assert_eq!(log_lines(&proc, "configuration reloaded;").len(), 1);
    let (stream, leaf) = tls_connect_with(proc.addr, client.clone()).await.unwrap();
    assert_eq!(
        leaf, second_leaf,
        "still the second leaf after the rejection"
    );
    let r = Conn::over(stream, proc.addr)
        .await
        .send("/after-rejection", None, &[])
        .await;
    assert_eq!(r.status, 200);
    let r = old_conn.send("/still-open", None, &[]).await;
    assert_eq!(r.status, 200, "the first connection is still open");
    assert_eq!(upstream.requests().len(), 5);
    proc.stop().await;
}

// ---------------------------------------------------------------------------------------
// Proxy workers (`workers`, docs/performance.md#a-runtime-per-core)
// ---------------------------------------------------------------------------------------

/// The names of the child's threads (`/proc/<pid>/task/*/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the child's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_the_store_the_caps_reloads_and_the_shutdown() {
    let upstream = Upstream::start().await;
    let extra = "workers: 3\nlimits: { max_connections: 24 }\n";
    let mut proc = sidecar(&upstream, extra).await;
    let names = thread_names(proc.pid());
    for worker in ["proxy-worker-1", "proxy-worker-2", "proxy-worker-3"] {
        assert!(names.iter().any(|n| n == worker), "{names:?}");
    }

    // 24 connections: the kernel spreads them over the three listeners. A session
    // written on each is read on the next one (the memory store is one for all).
    let mut conns = Vec::new();
    for _ in 0..24 {
        conns.push(Conn::open(proc.addr).await);
    }
    let mut cookies = Vec::new();
    for (i, conn) in conns.iter_mut().enumerate() {
        let r = conn.write_user(&format!("u{i}")).await;
        assert_eq!(r.status, 200);
        cookies.push(session_cookie(&r).value);
    }
    for (i, cookie) in cookies.iter().enumerate() {
        let cookie = format!("session={cookie}");
        let next = (i + 1) % conns.len();
        let r = conns[next].send("/", Some(&cookie), &[]).await;
        assert_eq!(
            r.sstatus(),
            "active",
            "session {i} read on connection {next}"
        );
        assert_eq!(r.session()["user"], format!("u{i}"));
    }

    // One cap for all listeners: a 25th connection is closed at accept.
    let mut over = TcpStream::connect(proc.addr).await.unwrap();
    over.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, over.read(&mut buf))
        .await
        .expect("the connection over the cap is closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));

    // A reload reaches every worker: with A retired, no connection accepts its cookies.
    proc.rewrite(&yaml(&upstream, &[SECRET_B], extra));
    proc.reload().await;
    for (i, conn) in conns.iter_mut().enumerate() {
        let r = conn
            .send("/", Some(&format!("session={}", cookies[i])), &[])
            .await;
        assert_eq!(r.sstatus(), "invalid", "connection {i} after the reload");
    }

    proc.signal("TERM");
    proc.wait_exit_0(WAIT).await;
    for conn in conns {
        conn.closed_by_server(WAIT).await;
    }
}
