//! Observability (docs/decisions.md#observability): `/metrics` parsed whole
//! and its counters moving by exact amounts (memory and a real `redis-server`), the admin
//! listener kept off the proxy port, `X-Request-Id` trust rules, and the binary's JSON
//! access log without cookie values, session data or query strings.

mod backing;
mod harness;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use harness::{
    Client, Sidecar,
    binary::{self, Binary},
};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

/// A plain HTTP/1.1 exchange on a fresh connection: (status, content-type, body).
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .expect("answer within 30 s")
        .expect("response");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ctype, String::from_utf8(body.to_vec()).unwrap())
}

fn admin_addr(s: &Sidecar) -> SocketAddr {
    s.running
        .as_ref()
        .and_then(|r| r.admin_addr)
        .expect("admin listener enabled")
}

/// Every sample of a scrape, keyed `name{labels}` (labels as printed).
type Samples = BTreeMap<String, f64>;

/// Parse a whole Prometheus text exposition, failing on anything malformed: every
/// non-comment line is `name{labels} value` with a float value, every sample belongs to
/// a family with `# HELP` and `# TYPE`, no series appears twice.
fn parse(text: &str) -> Samples {
    let mut help = BTreeSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Samples::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_alphabetic() || b == b'_' || b == b':' || (i > 0 && b.is_ascii_digit())
            })
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect("HELP has a text");
            assert!(
                valid_name(name) && !doc.is_empty(),
                "bad HELP line {line:?}"
            );
            assert!(help.insert(name.to_owned()), "HELP twice for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a type");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad TYPE line {line:?}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice for {name}"
            );
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "unexpected line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value of {line:?} is not a float"));
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("labels close with }");
                for pair in labels.split(',') {
                    let (k, v) = pair.split_once('=').expect("label is k=\"v\"");
                    assert!(valid_name(k), "bad label name in {line:?}");
                    assert!(
                        v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "bad label value in {line:?}"
                    );
                }
                name
            }
            None => series,
        };
        assert!(valid_name(name), "bad metric name in {line:?}");
        let family = if types.contains_key(name) {
            name
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
                })
                .unwrap_or_else(|| panic!("sample {name} has no # TYPE family"))
        };
        assert!(help.contains(family), "family {family} has no # HELP");
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "series twice: {series}"
        );
    }
    assert_eq!(
        help,
        types.keys().cloned().collect(),
        "HELP and TYPE name the same families"
    );
    assert!(!samples.is_empty());
    samples
}

async fn scrape(s: &Sidecar) -> Samples {
    let (status, ctype, body) = http(admin_addr(s), "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    parse(&body)
}

fn get(samples: &Samples, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in {samples:#?}"))
}

fn delta(before: &Samples, after: &Samples, series: &str) -> f64 {
    get(after, series) - get(before, series)
}

/// Assert each `series` moved by exactly `by`.
fn assert_moved(before: &Samples, after: &Samples, expected: &[(&str, f64)]) {
    for (series, by) in expected {
        assert_eq!(
            delta(before, after, series),
            *by,
            "{series} moved by {} instead of {by}",
            delta(before, after, series)
        );
    }
}

/// Scrape until `series` equals `want` (connections close asynchronously).
async fn eventually(s: &Sidecar, series: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = get(&scrape(s).await, series);
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed {now}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bound a socket wait generously (the machine is slow, but a hang must fail).
async fn timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("no answer within 20 s")
}

fn set(v: Value) -> (&'static str, String) {
    ("x-session-set", v.to_string())
}

async fn write(c: &mut Client, pairs: &[(&str, String)], extra: &[(&str, &str)]) -> harness::Resp {
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    c.write_with(&pairs, extra).await
}

const REQUESTS: &str = "session_sidecar_requests_total";

fn class(c: &str) -> String {
    format!("{REQUESTS}{{class=\"{c}\"}}")
}

const LOADS: &str = "session_sidecar_store_duration_seconds_count{op=\"load\"}";
const APPLIES: &str = "session_sidecar_store_duration_seconds_count{op=\"apply\"}";
const CREATED: &str = "session_sidecar_sessions_created_total";
const REGENERATED: &str = "session_sidecar_sessions_regenerated_total";
const DESTROYED: &str = "session_sidecar_sessions_destroyed_total";
const CONNECTIONS: &str = "session_sidecar_active_connections";
const TUNNELS: &str = "session_sidecar_open_tunnels";

fn rejected(reason: &str) -> String {
    format!("session_sidecar_writes_rejected_total{{reason=\"{reason}\"}}")
}

fn store_error(kind: &str) -> String {
    format!("session_sidecar_store_errors_total{{kind=\"{kind}\"}}")
}

async fn with_admin(store: Value, extra: Value) -> Sidecar {
    let mut cfg = json!({"admin": {"listen": "127.0.0.1:0"}});
    harness::merge(&mut cfg, extra);
    Sidecar::start(store, cfg).await
}

// ---------------------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------------------

/// A client that goes away before its answer (here: an HTTP/1 disconnect while the
/// app is still working) is counted and logged once, as nginx's 499.
#[tokio::test]
async fn a_client_that_leaves_early_is_counted_as_499() {
    let s = with_admin(json!({"engine": "memory"}), json!({})).await;
    let before = scrape(&s).await;
    let mut stream = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Test-Delay-Ms: 3000\r\n\r\n")
        .await
        .expect("send");
    // Gone once the app has the request.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.upstream.requests().iter().any(|r| r.path == "/slow") {
        assert!(
            Instant::now() < deadline,
            "the request never reached the app"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);
    eventually(&s, &class("4xx"), get(&before, &class("4xx")) + 1.0).await;
    let after = scrape(&s).await;
    assert_moved(
        &before,
        &after,
        &[(&class("2xx"), 0.0), (&class("5xx"), 0.0)],
    );
}

#[tokio::test]
async fn counters_move_by_exact_amounts() {
    let s = with_admin(
        json!({"engine": "memory"}),
        json!({"timeouts": {"upstream_response": "1s"}}),
    )
    .await;
    let before = scrape(&s).await;
    let (mut a, mut b, mut c, mut d) = (s.client(), s.client(), s.client(), s.client());

    // Create, regenerate, destroy.
    assert_eq!(
        write(&mut a, &[set(json!({"n": "x"}))], &[]).await.status,
        200
    );
    let regen = [
        ("x-session-regenerate", "1".to_owned()),
        set(json!({"m": 1})),
    ];
    assert_eq!(write(&mut a, &regen, &[]).await.status, 200);
    let destroy = [("x-session-destroy", "1".to_owned())];
    assert_eq!(write(&mut a, &destroy, &[]).await.status, 200);
    assert!(a.cookie.is_none());
    // A malformed instruction: 502, nothing written.
    let bad = [("x-session-set", "not json".to_owned())];
    assert_eq!(write(&mut b, &bad, &[]).await.status, 502);
    // Writes on a 5xx are dropped.
    let r = write(&mut b, &[set(json!({"k": 1}))], &[("x-test-status", "500")]).await;
    assert_eq!(r.status, 500);
    assert!(b.cookie.is_none());
    // The store refuses Incr on a string: 502.
    assert_eq!(
        write(&mut c, &[set(json!({"s": "str"}))], &[]).await.status,
        200
    );
    let incr = [("x-session-incr", json!({"s": 1}).to_string())];
    assert_eq!(write(&mut c, &incr, &[]).await.status, 502);
    // Destroy plus a write: one destroyed, one created.
    let both = [("x-session-destroy", "1".to_owned()), set(json!({"z": 1}))];
    assert_eq!(write(&mut c, &both, &[]).await.status, 200);
    // The upstream answers after `timeouts.upstream_response`: 504.
    let slow = d.get_with("/", &[("x-test-delay-ms", "3000")]).await;
    assert_eq!(slow.status, 504);

    let after = scrape(&s).await;
    assert_moved(
        &before,
        &after,
        &[
            (&class("1xx"), 0.0),
            (&class("2xx"), 5.0),
            (&class("3xx"), 0.0),
            (&class("4xx"), 0.0),
            (&class("5xx"), 4.0),
            (CREATED, 3.0),
            (REGENERATED, 1.0),
            (DESTROYED, 2.0),
            (&rejected("malformed"), 1.0),
            (&rejected("server_error"), 1.0),
            (&rejected("store_rejected"), 1.0),
            (&rejected("store_unavailable"), 0.0),
            (&store_error("rejected"), 1.0),
            (&store_error("unavailable"), 0.0),
            (&store_error("timeout"), 0.0),
            (&store_error("corrupt"), 0.0),
            // Loads: regenerate, destroy, incr, destroy+write (cookie-carrying requests).
            (LOADS, 4.0),
            // Applies: create, move, destroy, create, rejected incr, destroy-then-create.
            (APPLIES, 6.0),
            (
                "session_sidecar_upstream_errors_total{kind=\"timeout\"}",
                1.0,
            ),
            (
                "session_sidecar_upstream_errors_total{kind=\"unreachable\"}",
                0.0,
            ),
            // Every request but the timed-out one got response headers.
            (
                "session_sidecar_upstream_response_duration_seconds_count",
                8.0,
            ),
        ],
    );
    // Histograms are consistent: the +Inf bucket is the count.
    assert_eq!(
        get(
            &after,
            "session_sidecar_store_duration_seconds_bucket{op=\"apply\",le=\"+Inf\"}"
        ),
        get(&after, APPLIES)
    );
}

#[tokio::test]
async fn gauges_follow_connections_and_tunnels() {
    let s = with_admin(json!({"engine": "memory"}), json!({})).await;
    eventually(&s, CONNECTIONS, 0.0).await;

    // A keep-alive connection stays counted until it closes. (tokio sockets: the
    // sidecar runs on this test's runtime.)
    let mut kept = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    kept.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = timeout(kept.read(&mut buf)).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    eventually(&s, CONNECTIONS, 1.0).await;

    // An upgraded tunnel (the test upstream echoes bytes on /ws).
    let mut ws = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    ws.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let n = timeout(ws.read(&mut buf)).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    timeout(ws.read_exact(&mut echoed)).await.unwrap();
    assert_eq!(&echoed, b"ping");
    eventually(&s, TUNNELS, 1.0).await;
    let during = scrape(&s).await;
    assert_eq!(get(&during, &class("1xx")), 1.0);

    drop(kept);
    drop(ws);
    eventually(&s, TUNNELS, 0.0).await;
    eventually(&s, CONNECTIONS, 0.0).await;
}

#[tokio::test]
async fn redis_store_latency_and_errors_are_counted() {
    let mut redis = backing::RedisServer::start();
    let s = with_admin(
        json!({"engine": "redis", "on_error": "anonymous",
               "storage": {"host": "127.0.0.1", "port": redis.port()}}),
        json!({}),
    )
    .await;
    let before = scrape(&s).await;
    let mut c = s.client();
    assert_eq!(
        write(&mut c, &[set(json!({"a": 1}))], &[]).await.status,
        200
    );
    let r = c.get("/").await;
    assert_eq!(r.session(), json!({"a": 1}));
    let mid = scrape(&s).await;
    assert_moved(
        &before,
        &mid,
        &[(LOADS, 1.0), (APPLIES, 1.0), (CREATED, 1.0)],
    );
    assert!(
        get(
            &mid,
            "session_sidecar_store_duration_seconds_sum{op=\"load\"}"
        ) > 0.0,
        "a real round trip takes time"
    );

    // The store goes away: the load fails (anonymous mode forwards without a session)
    // and the response's write cannot be applied.
    redis.kill();
    let r = write(&mut c, &[set(json!({"b": 2}))], &[]).await;
    assert_eq!(r.status, 503);
    let after = scrape(&s).await;
    assert_moved(
        &mid,
        &after,
        &[
            (LOADS, 1.0),
            (APPLIES, 0.0),
            (&rejected("store_unavailable"), 1.0),
            (&class("5xx"), 1.0),
        ],
    );
    let failed = delta(&mid, &after, &store_error("unavailable"))
        + delta(&mid, &after, &store_error("timeout"));
    assert_eq!(
        failed, 1.0,
        "one failed load, counted as unavailable or timeout"
    );
}

// ---------------------------------------------------------------------------------------
// the admin listener is not the proxy listener
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn admin_paths_on_the_proxy_port_go_to_the_upstream() {
    let s = with_admin(json!({"engine": "memory"}), json!({})).await;
    for path in ["/metrics", "/healthz", "/readyz"] {
        let mut c = s.client();
        let r = c.get(path).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.echo()["path"], path, "the upstream answered {path}");
        assert!(!String::from_utf8_lossy(&r.body).contains("session_sidecar_"));
    }
    let seen: Vec<String> = s.upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(seen, ["/metrics", "/healthz", "/readyz"]);

    let admin = admin_addr(&s);
    assert_ne!(admin, s.addr);
    assert_eq!(http(admin, "GET", "/healthz").await.0, 200);
    assert_eq!(http(admin, "GET", "/readyz").await.0, 200);
    assert_eq!(http(admin, "GET", "/nope").await.0, 404);
    assert_eq!(http(admin, "POST", "/metrics").await.0, 405);
    let (status, _, body) = http(admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    // The admin scrape never reaches the upstream.
    assert_eq!(s.upstream.requests().len(), 3);
    assert!(
        body.contains("# TYPE session_sidecar_requests_total counter"),
        "{body}"
    );
}

// ---------------------------------------------------------------------------------------
// X-Request-Id
// ---------------------------------------------------------------------------------------

fn is_generated(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn untrusted_clients_get_a_fresh_request_id() {
    let s = Sidecar::start(json!({"engine": "memory"}), json!({})).await;
    let mut c = s.client();
    let plain = c.get("/").await.up_one("x-request-id");
    assert!(is_generated(&plain), "{plain}");
    let r = c.get_with("/", &[("x-request-id", "client-chosen")]).await;
    let id = r.up_one("x-request-id");
    assert!(is_generated(&id), "{id}");
    assert_ne!(id, plain);
}

#[tokio::test]
async fn a_trusted_proxy_keeps_its_sane_request_id() {
    let s = Sidecar::start(
        json!({"engine": "memory"}),
        json!({"trusted_proxies": ["127.0.0.1/32"]}),
    )
    .await;
    let mut c = s.client();
    let r = c.get_with("/", &[("x-request-id", "lb-7f3a-0001")]).await;
    assert_eq!(r.up_one("x-request-id"), "lb-7f3a-0001");

    let long = "a".repeat(201);
    for insane in ["has space", "a,b", "quote\"d", long.as_str()] {
        let r = c.get_with("/", &[("x-request-id", insane)]).await;
        let id = r.up_one("x-request-id");
        assert!(is_generated(&id), "{insane:?} was replaced, got {id}");
    }
    // Two values: replaced too.
    let r = c
        .get_with("/", &[("x-request-id", "one"), ("x-request-id", "two")])
        .await;
    assert!(is_generated(&r.up_one("x-request-id")));

    // Error bodies carry the same id the upstream saw.
    let r = c
        .write_with(
            &[("x-session-set", "not json")],
            &[("x-request-id", "lb-7f3a-0002")],
        )
        .await;
    assert_eq!(r.status, 502);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(body.contains("(request id lb-7f3a-0002)"), "{body}");
    let seen = s.upstream.requests();
    let last = seen.last().unwrap();
    let sent: Vec<&str> = last
        .headers
        .iter()
        .filter(|(k, _)| k == "x-request-id")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(sent, ["lb-7f3a-0002"]);
}

#[tokio::test]
async fn error_bodies_and_upstream_share_the_generated_id() {
    let s = Sidecar::start(json!({"engine": "memory"}), json!({})).await;
    let mut c = s.client();
    let r = c.write(&[("x-session-set", "not json")]).await;
    assert_eq!(r.status, 502);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    let seen = s.upstream.requests();
    let (_, id) = seen[0]
        .headers
        .iter()
        .find(|(k, _)| k == "x-request-id")
        .expect("upstream saw X-Request-Id");
    assert!(is_generated(id));
    assert!(body.contains(&format!("(request id {id})")), "{body}");
}

// ---------------------------------------------------------------------------------------
// the access log (the real binary)
// ---------------------------------------------------------------------------------------

/// The sidecar's own config for `upstream`, then the `log:` section.
fn binary_config(upstream: &harness::Upstream, log: &str) -> String {
    binary::config(&format!("upstream: {}\nlog: {log}\n", upstream.url()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_has_the_fields_and_no_secrets() {
    let upstream = harness::Upstream::start().await;
    let bin = Binary::spawn(&binary_config(&upstream, "{ format: json }")).await;
    let mut c = Client::new(bin.addr);
    let canary = json!({"canary_key_q9": "canary-data-7f3a"});
    let first = write(&mut c, &[set(canary.clone())], &[]).await;
    assert_eq!(first.status, 200);
    let cookie = c.cookie.clone().expect("a session cookie");
    let r = c
        .get_with(
            "/page?token=qs-secret-1",
            &[("x-request-id", "client-id-not-trusted")],
        )
        .await;
    assert_eq!(r.session(), canary, "the session reached the app");
    let sent_id = r.up_one("x-request-id");
    let log = bin.stop().await;

    // JSON format: every line is a JSON object.
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "session_sidecar::access")
        .collect();
    assert_eq!(access.len(), 2, "{log}");
    let line = access[1];
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], "/page", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["session"], "active", "{line}");
    assert_eq!(line["protocol"], "HTTP/1.1", "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{line}"
    );
    assert_eq!(
        line["request_id"],
        sent_id.as_str(),
        "log and upstream share the id"
    );
    assert!(is_generated(&sent_id));
    assert_eq!(access[0]["session"], "none");

    let (sid, mac) = cookie.split_once('.').unwrap();
    for secret in [
        cookie.as_str(),
        sid,
        mac,
        "canary-data-7f3a",
        "canary_key_q9",
        "qs-secret-1",
        "client-id-not-trusted",
        harness::SECRET_A,
    ] {
        assert!(
            !log.contains(secret),
            "{secret:?} leaked into the log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_overrides_log_level_and_text_format_works() {
    let upstream = harness::Upstream::start().await;
    let config = binary_config(&upstream, "{ format: text, level: warn }");
    // `log.level: warn` alone would hide the access lines; RUST_LOG brings them back
    // and keeps every other info line out (the startup line too, hence `quiet`).
    let bin = Binary::with_config(&config)
        .env("RUST_LOG", "warn,session_sidecar::access=info")
        .quiet()
        .spawn()
        .await;
    let mut c = Client::new(bin.addr);
    assert_eq!(c.get("/text?q=1").await.status, 200);
    let log = bin.stop().await;
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("session_sidecar::access"))
        .collect();
    assert_eq!(access.len(), 1, "{log}");
    for field in [
        "method=GET",
        "path=/text",
        "status=200",
        "session=\"none\"",
        "request_id=",
    ] {
        assert!(
            access[0].contains(field) || access[0].contains(&field.replace('"', "")),
            "{field} missing in {}",
            access[0]
        );
    }
    assert!(!log.contains("q=1"), "{log}");
    assert!(
        !log.contains("listening"),
        "info lines other than access are filtered: {log}"
    );

    // Without RUST_LOG, `log.level: warn` hides the access lines.
    let bin = Binary::with_config(&config).quiet().spawn().await;
    let mut c = Client::new(bin.addr);
    assert_eq!(c.get("/text").await.status, 200);
    let log = bin.stop().await;
    assert!(!log.contains("session_sidecar::access"), "{log}");
}

/// The access line names a session's owner only by a pseudonym, unless `log.owner: true`
/// (docs/configuration.md#admin-and-logging).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_carry_the_owner_as_a_pseudonym_unless_asked() {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use sha2::{Digest, Sha256};
    let owner = "alice.secret@example.com";
    let pseudonym: String = URL_SAFE_NO_PAD
        .encode(Sha256::digest(format!("\"{owner}\"").as_bytes()))
        .chars()
        .take(12)
        .collect();
    let upstream = harness::Upstream::start().await;
    for clear in [false, true] {
        let log = format!("{{ format: json, owner: {clear} }}");
        let bin = Binary::spawn(&binary_config(&upstream, &log)).await;
        let mut c = Client::new(bin.addr);
        let literal = format!("\"{owner}\"");
        let r = write(&mut c, &[("x-session-owner", literal)], &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(c.get("/page").await.sstatus(), "active");
        let log = bin.stop().await;
        let page: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["path"] == "/page")
            .collect();
        assert_eq!(page.len(), 1, "{log}");
        if clear {
            assert_eq!(page[0]["owner"], json!(format!("\"{owner}\"")), "{log}");
        } else {
            assert_eq!(page[0]["owner"], json!(pseudonym), "{log}");
            assert!(!log.contains("alice.secret"), "the owner leaked:\n{log}");
        }
    }
}
