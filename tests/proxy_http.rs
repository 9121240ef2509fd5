//! The proxy's own behaviour on the memory engine, as a client and the app see it:
//! reserved-header stripping in every spelling and both directions, the cookie rules,
//! forwarding headers, bypass routes, error statuses, framing, timeouts, upgrades.

mod backing;
mod harness;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use harness::{Client, SECRET_A, SECRET_B, Sidecar, assert_only_injected, raw_exchange};
use serde_json::{Value, json};

async fn memory(extra: Value) -> Sidecar {
    Sidecar::start(json!({"engine": "memory"}), extra).await
}

// ---------------------------------------------------------------------------------------
// reserved headers
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn spoofed_reserved_headers_in_every_spelling_never_reach_the_app() {
    let sc = memory(json!({})).await;
    let mut c = sc.client();
    c.write(&[("x-session-set", r#"{"user":"ann"}"#)]).await;
    let spoofs = [
        ("X-Session", r#"{"user":"admin"}"#),
        ("x-session", r#"{"user":"admin"}"#),
        ("X_Session", r#"{"user":"admin"}"#),
        ("x.session", r#"{"user":"admin"}"#),
        ("X-SESSION-STATUS", "active"),
        ("x_session_flash", r#"{"f":1}"#),
        ("X-Session-Id", "forged"),
        ("X-Session-Set", r#"{"user":"admin"}"#),
        ("x-sessionfoo", "1"),
        ("X-Session", ""),
    ];
    let r = c.get_with("/", &spoofs).await;
    assert_only_injected(&r);
    assert_eq!(r.session(), json!({"user": "ann"}));
    assert_eq!(r.sstatus(), "active");
    assert_eq!(
        c.get("/").await.session(),
        json!({"user": "ann"}),
        "a client's Set is never applied"
    );
}

#[tokio::test]
async fn connection_listed_reserved_header_cannot_remove_injected_ones() {
    let sc = memory(json!({})).await;
    let r = sc
        .client()
        .get_with(
            "/",
            &[
                ("connection", "X-Session, x-session-status, keep-alive"),
                ("x-session", "{}"),
            ],
        )
        .await;
    assert_only_injected(&r);
    assert_eq!(r.sstatus(), "none");
}

#[tokio::test]
async fn reserved_request_trailers_are_stripped() {
    let sc = memory(json!({})).await;
    let req = b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-Session, X-Other\r\n\r\n\
5\r\nhello\r\n0\r\nX-Session: {\"user\":\"admin\"}\r\nx_session_status: active\r\nX-Other: kept\r\n\r\n";
    let (resp, _) = tokio::task::spawn_blocking({
        let addr = sc.addr;
        move || raw_exchange(addr, req, Duration::from_secs(3))
    })
    .await
    .unwrap();
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    let body = body.lines().find(|l| l.starts_with('{')).unwrap_or(body);
    let echo: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{resp}"));
    assert_eq!(echo["body_len"], 5);
    let trailers = echo["trailers"].as_array().unwrap();
    assert!(
        trailers
            .iter()
            .all(|t| !harness::is_reserved(t[0].as_str().unwrap())),
        "{trailers:?}"
    );
    assert!(trailers.iter().any(|t| t[0] == "x-other"), "{trailers:?}");
}

#[tokio::test]
async fn reserved_response_headers_and_trailers_never_reach_the_client() {
    let sc = memory(json!({})).await;
    let mut c = sc.client();
    let r = c
        .write_with(
            &[
                ("X_Session_Set", r#"{"u":1}"#),
                ("x-session-foo", "1"),
                ("X-Session", "{}"),
                ("x.session.id", "1"),
            ],
            &[(
                "x-test-trailers",
                r#"[["X-Session-Set","{\"t\":1}"],["x-other","1"]]"#,
            )],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.reserved_in_response().is_empty(), "{:?}", r.headers);
    assert!(
        r.cookie("session").is_none(),
        "spellings other than the exact instruction are not applied"
    );
    assert!(c.cookie.is_none());
}

#[tokio::test]
async fn custom_prefix_renames_the_whole_family() {
    let sc = memory(json!({"headers": {"prefix": "X-Auth-State"}})).await;
    let mut c = sc.client();
    c.write(&[("X-Auth-State-Set", r#"{"a":1}"#)]).await;
    let r = c
        .get_with(
            "/",
            &[("x_auth_state", "spoof"), ("X-Session", "not-reserved-now")],
        )
        .await;
    assert_eq!(r.up_one("x-auth-state"), r#"{"a":1}"#);
    assert_eq!(r.up_one("x-auth-state-status"), "active");
    assert_eq!(r.up_one("x-session"), "not-reserved-now");
}

// ---------------------------------------------------------------------------------------
// cookies
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn session_cookie_is_removed_from_the_upstream_cookie_header() {
    let sc = memory(json!({})).await;
    let mut c = sc.client();
    c.write(&[("x-session-set", r#"{"a":1}"#)]).await;
    let cookie = format!("theme=dark; session={}; lang=en", c.cookie.clone().unwrap());
    let mut bare = Client::new(sc.addr);
    let r = bare.get_with("/", &[("cookie", cookie.as_str())]).await;
    assert_eq!(r.sstatus(), "active");
    assert_eq!(r.up_one("cookie"), "theme=dark; lang=en");

    let fwd = memory(json!({"cookies": {"forward": true}})).await;
    let mut c = fwd.client();
    c.write(&[("x-session-set", r#"{"a":1}"#)]).await;
    let r = c.get("/").await;
    assert!(r.up_one("cookie").starts_with("session="));
}

#[tokio::test]
async fn invalid_and_tossed_cookies() {
    let sc = memory(json!({})).await;
    let mut c = sc.client();
    c.write(&[("x-session-set", r#"{"a":1}"#)]).await;
    let good = c.cookie.clone().unwrap();
    // A planted cookie in front of the real one is skipped (cookie tossing).
    let mut bare = Client::new(sc.addr);
    let tossed = format!("session=forged.value; session={good}");
    let r = bare.get_with("/", &[("cookie", tossed.as_str())]).await;
    assert_eq!(
        (r.sstatus(), r.session()),
        ("active".to_string(), json!({"a": 1}))
    );
    // A bad signature: status invalid, the cookie is cleared.
    let forged = format!("session={}.AAAA", good.split('.').next().unwrap());
    let r = bare.get_with("/", &[("cookie", forged.as_str())]).await;
    assert_eq!(r.sstatus(), "invalid");
    assert!(r.cookie("session").unwrap().is_clearing());
    // A cookie signed for another cookie name does not verify (name binding).
    let other = memory(json!({"cookies": {"name": "other"}})).await;
    let mut o = other.client();
    o.write(&[("x-session-set", r#"{"a":1}"#)]).await;
    let replay = format!("session={}", o.cookie.unwrap());
    assert_eq!(
        bare.get_with("/", &[("cookie", replay.as_str())])
            .await
            .sstatus(),
        "invalid"
    );
}

#[tokio::test]
async fn rotated_secret_still_verifies_and_is_resigned() {
    let mut sc = memory(json!({"secrets": [SECRET_B]})).await;
    let mut c = sc.client();
    c.write(&[("x-session-set", r#"{"a":1}"#)]).await;
    let old_cookie = c.cookie.clone().unwrap();
    // Rotate in place (what SIGHUP does): A signs, B still verifies.
    let mut cfg = sc.config.clone();
    cfg["secrets"] = json!([SECRET_A, SECRET_B]);
    let config = session_sidecar::config::Config::from_yaml_str(
        &cfg.to_string(),
        std::path::Path::new("t.yaml"),
    )
    .unwrap();
    let running = sc.running.as_ref().unwrap();
    running
        .proxy
        .replace_settings(session_sidecar::proxy::Settings::from_config(&config).unwrap());
    let r = c.get("/").await;
    assert_eq!(r.sstatus(), "active");
    let ck = r.cookie("session").expect("re-signed cookie");
    assert_ne!(ck.value, old_cookie);
    assert_eq!(
        ck.value.split('.').next(),
        old_cookie.split('.').next(),
        "same id"
    );
    assert!(
        c.get("/").await.cookie("session").is_none(),
        "re-signed once"
    );
    sc.stop().await;
}

#[tokio::test]
async fn the_app_cannot_overwrite_the_session_cookie() {
    let sc = memory(json!({})).await;
    let mut c = sc.client();
    c.write(&[("x-session-set", r#"{"a":1}"#)]).await;
    let r = c
        .get_with(
            "/",
            &[(
                "x-test-reply",
                r#"[["set-cookie","session=flask-owned; Path=/"],["set-cookie","theme=dark"]]"#,
            )],
        )
        .await;
    assert_eq!(r.all("set-cookie"), ["theme=dark"]);
    assert_eq!(c.get("/").await.session(), json!({"a": 1}));
}

#[tokio::test]
async fn cache_control_becomes_private_when_the_cookie_is_set() {
    let sc = memory(json!({})).await;
    let mut c = sc.client();
    let r = c
        .write(&[
            ("x-session-set", r#"{"a":1}"#),
            ("cache-control", "public, max-age=60, s-maxage=600"),
        ])
        .await;
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("private, max-age=60")
    );
    let r = c
        .get_with(
            "/",
            &[("x-test-reply", r#"[["cache-control","public, max-age=5"]]"#)],
        )
        .await;
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("public, max-age=5"),
        "untouched without Set-Cookie"
    );
}

#[tokio::test]
async fn configured_cookie_attributes_and_lifetime() {
    let sc = memory(json!({"cookies": {"name": "__Host-sid", "same_site": "strict", "expires_days": 2, "rolling": true}})).await;
    let mut c = sc.client();
    let r = c.write(&[("x-session-set", r#"{"a":1}"#)]).await;
    let ck = r.cookie("__Host-sid").expect("cookie");
    assert_eq!(ck.get("samesite").as_deref(), Some("Strict"));
    assert_eq!(ck.get("max-age").as_deref(), Some("172800"));
    assert!(!ck.has("domain"));
    assert!(
        c.get("/").await.cookie("__Host-sid").is_some(),
        "rolling re-sends a persistent cookie"
    );
}

// ---------------------------------------------------------------------------------------
// proxying
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn forwarded_headers_untrusted_and_trusted() {
    let sc = memory(json!({})).await;
    let r = sc
        .client()
        .get_with(
            "/",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-host", "evil"),
                ("forwarded", "for=6.6.6.6"),
            ],
        )
        .await;
    assert_eq!(r.up_one("x-forwarded-for"), "127.0.0.1");
    assert_eq!(r.up_one("x-forwarded-proto"), "http");
    assert_eq!(
        r.up_one("x-forwarded-host"),
        format!("127.0.0.1:{}", sc.addr.port())
    );
    assert!(r.up_all("forwarded").is_empty());
    let trusted = memory(json!({"trusted_proxies": ["127.0.0.0/8"]})).await;
    let r = trusted
        .client()
        .get_with("/", &[("x-forwarded-for", "6.6.6.6")])
        .await;
    assert_eq!(r.up_one("x-forwarded-for"), "6.6.6.6, 127.0.0.1");
}

#[tokio::test]
async fn bypass_routes_skip_sessions_but_still_strip() {
    let sc = memory(json!({"bypass": ["/static/"]})).await;
    let mut c = sc.client();
    c.write(&[("x-session-flash-set", r#"{"f":1}"#)]).await;
    let r = c
        .request(
            "GET",
            "/static/app.css",
            &[
                ("x-session", "spoof"),
                ("x-test-reply", r#"[["x-session-set","{\"b\":1}"]]"#),
            ],
            None,
        )
        .await;
    assert!(r.up_reserved().is_empty(), "{:?}", r.up_headers());
    assert!(r.reserved_in_response().is_empty());
    assert!(r.cookie("session").is_none());
    let r = c.get("/").await;
    assert_eq!(
        r.flash(),
        json!({"f": 1}),
        "bypass routes never consume flash"
    );
    assert_eq!(r.session(), json!({}), "bypass routes never write");
}

#[tokio::test]
async fn upstream_down_is_502_with_request_id() {
    let port = backing::free_port();
    let mut sc = memory(json!({})).await;
    sc.stop().await;
    let mut cfg = sc.config.clone();
    cfg["upstream"] = json!(format!("http://127.0.0.1:{port}"));
    let running = harness::start_config(&cfg).await;
    let r = Client::new(running.addr).get("/").await;
    assert_eq!(r.status, 502);
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("request id"), "{body}");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    running.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let sc = memory(json!({"timeouts": {"upstream_response": "300ms"}})).await;
    let r = sc
        .client()
        .get_with("/", &[("x-test-delay-ms", "2000")])
        .await;
    assert_eq!(r.status, 504);
}

#[tokio::test]
async fn status_headers_and_bodies_pass_through() {
    let sc = memory(json!({})).await;
    let mut c = sc.client();
    let r = c
        .get_with(
            "/p?q=1",
            &[
                ("x-test-status", "404"),
                (
                    "x-test-reply",
                    r#"[["x-app","yes"],["set-cookie","theme=dark"]]"#,
                ),
            ],
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-app").as_deref(), Some("yes"));
    assert_eq!(r.all("set-cookie"), ["theme=dark"]);
    assert_eq!(r.echo()["path"], "/p?q=1");
    let body = bytes::Bytes::from(vec![b'z'; 300_000]);
    let r = c.request("POST", "/up", &[], Some(body)).await;
    assert_eq!(r.echo()["body_len"], 300_000);
}

#[tokio::test]
async fn upgrade_passes_through_with_session_injected() {
    let sc = memory(json!({})).await;
    let mut c = sc.client();
    c.write(&[("x-session-set", r#"{"user":"ann"}"#)]).await;
    let cookie = c.cookie.clone().unwrap();
    let addr = sc.addr;
    let upstream_seen = sc.upstream.seen.clone();
    let echoed = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\nCookie: session={cookie}\r\nX_Session: {{\"user\":\"admin\"}}\r\n\r\n").unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        s.write_all(b"ping-through-the-tunnel").unwrap();
        let mut got = [0u8; 23];
        s.read_exact(&mut got).unwrap();
        (head, String::from_utf8_lossy(&got).into_owned())
    })
    .await
    .unwrap();
    assert!(echoed.0.starts_with("HTTP/1.1 101"), "{}", echoed.0);
    assert_eq!(echoed.1, "ping-through-the-tunnel");
    let seen = upstream_seen.lock().unwrap().last().cloned().unwrap();
    let session: Vec<_> = seen
        .headers
        .iter()
        .filter(|(k, _)| harness::is_reserved(k))
        .collect();
    assert_eq!(session.len(), 3, "{:?}", seen.headers);
    assert!(
        seen.headers
            .iter()
            .any(|(k, v)| k == "x-session" && v == r#"{"user":"ann"}"#)
    );
}

/// h2c smuggling: behind a `101` for `Upgrade: h2c` the client would speak HTTP/2
/// straight to the app, past every strip. The upgrade is never passed on, and a `101`
/// the client did not ask for (or for another protocol) becomes a 502, not a tunnel.
#[tokio::test]
async fn h2c_upgrade_is_never_forwarded_and_an_unasked_101_is_refused() {
    let sc = memory(json!({})).await;
    let mut c = sc.client();
    let h2c = [
        ("connection", "Upgrade, HTTP2-Settings"),
        ("upgrade", "h2c"),
        ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
    ];
    let r = c.get_with("/page", &h2c).await;
    assert_eq!(r.status, 200);
    let seen = r.up_headers();
    for name in ["upgrade", "connection", "http2-settings"] {
        assert!(
            !seen.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)),
            "{name} reached the app: {seen:?}"
        );
    }
    // The scripted upstream answers `/ws` with `101 Upgrade: echo` whatever it was
    // asked: for an h2c offer (forwarded as a plain request) that is a 101 nobody
    // asked for.
    let r = c.get_with("/ws", &h2c).await;
    assert_eq!(r.status, 502, "{:?}", r.headers);
    // A WebSocket request answered with another protocol is refused the same way.
    let r = c
        .get_with(
            "/ws",
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        )
        .await;
    assert_eq!(r.status, 502, "{:?}", r.headers);
}

// ---------------------------------------------------------------------------------------
// framing, limits, timeouts
// ---------------------------------------------------------------------------------------

fn exchange(sc: &Sidecar, data: &'static [u8]) -> (String, bool) {
    raw_exchange(sc.addr, data, Duration::from_secs(3))
}

/// hyper removes `Content-Length` when `Transfer-Encoding` is present before the
/// service runs; the connection's head scanner still sees both, and the request is
/// refused without reaching the app (request smuggling, docs/protocol.md §10.4).
#[tokio::test(flavor = "multi_thread")]
async fn content_length_with_transfer_encoding_is_refused_and_closed() {
    let sc = memory(json!({})).await;
    let (resp, closed) = tokio::task::block_in_place(|| {
        exchange(&sc, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    });
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(closed, "the connection is closed: {resp}");
    assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{resp}");
    assert!(sc.upstream.requests().is_empty(), "nothing reached the app");
    // The same connection state does not leak into the next, clean request.
    let r = sc
        .client()
        .request(
            "POST",
            "/ok",
            &[],
            Some(bytes::Bytes::from_static(b"hello")),
        )
        .await;
    assert_eq!(r.status, 200);
}

/// A head pipelined behind another request is read while that one is in flight, so
/// the raw scan cannot vouch for it: with `Transfer-Encoding` it is refused like a seen
/// CL+TE. Pipelined requests without a transfer coding are served as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_pipelined_request_with_transfer_encoding_is_refused() {
    let sc = memory(json!({})).await;
    let (resp, closed) = tokio::task::block_in_place(|| {
        exchange(&sc, b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nPOST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    });
    let statuses: Vec<&str> = resp
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &resp[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "400"], "{resp}");
    assert!(closed, "the connection is closed: {resp}");
    let paths: Vec<String> = sc.upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/first"], "only the first request reached the app");

    let (resp, _) = tokio::task::block_in_place(|| {
        exchange(&sc, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    });
    assert_eq!(resp.matches("HTTP/1.1 200").count(), 3, "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_transfer_encoding_is_refused_and_closed() {
    let sc = memory(json!({})).await;
    let (resp, closed) = tokio::task::block_in_place(|| {
        exchange(&sc, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    });
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(closed);
    assert!(sc.upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn other_transfer_codings_are_501() {
    let sc = memory(json!({})).await;
    let (resp, closed) = tokio::task::block_in_place(|| {
        exchange(
            &sc,
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        )
    });
    assert!(
        resp.starts_with("HTTP/1.1 501") || resp.starts_with("HTTP/1.1 400"),
        "{resp}"
    );
    assert!(closed);
    assert!(sc.upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_headers_get_431() {
    let sc = memory(json!({"limits": {"max_header_size": "8KiB"}})).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let (resp, _) = tokio::task::block_in_place(|| {
        raw_exchange(sc.addr, big.as_bytes(), Duration::from_secs(3))
    });
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_connection_is_closed_after_header_read_timeout() {
    let sc = memory(json!({"timeouts": {"header_read": "1s"}})).await;
    let addr = sc.addr;
    let (closed_after, _) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        // Trickle one header byte at a time, never finishing the head.
        let mut buf = [0u8; 1024];
        for _ in 0..40 {
            if s.write_all(b"X").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = s.read(&mut buf);
        (started.elapsed(), ())
    })
    .await
    .unwrap();
    assert!(
        closed_after < Duration::from_secs(4),
        "held open for {closed_after:?}"
    );
    assert!(sc.upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_outlives_header_read_but_not_idle() {
    let sc = memory(json!({"timeouts": {"header_read": "1s", "idle": "3s"}})).await;
    let addr = sc.addr;
    let (second_ok, closed_after) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let read_response = |s: &mut TcpStream| {
            let mut buf = vec![0u8; 65536];
            let n = s.read(&mut buf).unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        s.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(read_response(&mut s).starts_with("HTTP/1.1 200"));
        // Idle for longer than header_read: the connection stays usable.
        std::thread::sleep(Duration::from_millis(1600));
        s.write_all(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let second_ok = read_response(&mut s).starts_with("HTTP/1.1 200");
        // Idle past `idle`: closed by the sidecar.
        let idle_start = Instant::now();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "expected EOF");
        (second_ok, idle_start.elapsed())
    })
    .await
    .unwrap();
    assert!(
        second_ok,
        "an idle keep-alive connection was closed after header_read"
    );
    assert!(
        closed_after >= Duration::from_secs(2) && closed_after < Duration::from_secs(6),
        "{closed_after:?}"
    );
}

/// An app may answer before it has read an upload (a redirect, an early error, a
/// streaming reply). The rest of the upload is still that request's body: it must
/// reach the app, and the connection's header-read deadline must not take it for a
/// slow next request head.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_that_continues_after_an_early_response_is_not_cut() {
    // An upstream that answers as soon as it has the head, then keeps reading.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let received = std::thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        while !data.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "upstream: connection closed before the head");
            data.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap();
        let head_end = data.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut body = data.split_off(head_end);
        while body.len() < 60 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
        body.len()
    });
    let sc = Sidecar::start(
        json!({"engine": "memory"}),
        json!({
            "upstream": format!("http://{up_addr}"),
            "timeouts": {"header_read": "500ms", "idle": "30s"},
        }),
    )
    .await;
    let addr = sc.addr;
    let client = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\n")
            .unwrap();
        s.write_all(&[b'a'; 30]).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"ok") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "client: closed before the response");
            got.extend_from_slice(&buf[..n]);
        }
        // The rest trickles in, each piece further apart than `header_read`.
        let mut rest = Ok(());
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(800));
            rest = rest.and_then(|()| s.write_all(&[b'b'; 10]));
        }
        (String::from_utf8_lossy(&got).into_owned(), rest.is_ok())
    });
    let (resp, _) = client.await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body_len = tokio::task::spawn_blocking(move || received.join().unwrap())
        .await
        .unwrap();
    assert_eq!(body_len, 60, "the upload was cut after the early response");
}

/// docs/security.md §14: connections over `limits.max_connections` (or the per-address cap)
/// are closed at accept; the others keep working, and a freed slot admits again.
#[tokio::test(flavor = "multi_thread")]
async fn connection_caps_close_extra_connections_at_accept() {
    fn closed_at_once(addr: std::net::SocketAddr) -> bool {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        // The server closes without reading: EOF, or a reset.
        matches!(s.read(&mut b), Ok(0) | Err(_))
    }
    /// One whole keep-alive exchange (head, then exactly Content-Length body bytes).
    fn request_works(s: &mut TcpStream) -> bool {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
            return false;
        }
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if !matches!(s.read(&mut b), Ok(1)) {
                return false;
            }
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        head.starts_with("http/1.1 200") && s.read_exact(&mut body).is_ok()
    }
    for (limits, note) in [
        (
            json!({"max_connections": 2, "max_connections_per_ip": null}),
            "total",
        ),
        (
            json!({"max_connections": 100, "max_connections_per_ip": 2}),
            "per ip",
        ),
    ] {
        let sc = memory(json!({"limits": limits})).await;
        let addr = sc.addr;
        tokio::task::spawn_blocking(move || {
            let mut a = TcpStream::connect(addr).unwrap();
            let mut b = TcpStream::connect(addr).unwrap();
            assert!(request_works(&mut a), "{note}");
            assert!(request_works(&mut b), "{note}");
            assert!(
                closed_at_once(addr),
                "{note}: a third connection was served"
            );
            assert!(request_works(&mut a), "{note}: admitted ones keep working");
            drop(a);
            // The slot frees once the server has seen the close.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let mut c = TcpStream::connect(addr).unwrap();
                if request_works(&mut c) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{note}: the freed slot never admitted"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(b);
        })
        .await
        .unwrap();
    }
}
